"""``reconciler.imports.withheld``: in a fresh interpreter, as ``reconciler run`` uses it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_CHILD = r"""
import json, sys
from reconciler.imports import withheld

with withheld():
    import asyncio, hashlib, hmac
    failed = []
    for name in ("ssl", "_hashlib"):
        try:
            __import__(name)
        except ImportError:
            failed.append(name)
inside = {
    "failed": failed,
    "asyncio_tls": asyncio.base_events.ssl is not None,
    "openssl_hashes": "_hashlib" in sys.modules,
    "sha256": hashlib.sha256(b"reconciler").hexdigest(),
    "hmac": hmac.new(b"k", b"m", "sha256").hexdigest(),
}
import ssl  # after: importable again, for the code that needs it
print(json.dumps({**inside, "ssl_after": ssl.SSLContext.__name__}))
"""


def test_ssl_and_openssls_hashes_are_withheld_inside_and_importable_after() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=30, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["failed"] == ["ssl", "_hashlib"]
    assert seen["asyncio_tls"] is False and seen["openssl_hashes"] is False
    # The interpreter's own SHA-256 and HMAC: the digests OpenSSL's would give.
    import hashlib
    import hmac

    assert seen["sha256"] == hashlib.sha256(b"reconciler").hexdigest()
    assert seen["hmac"] == hmac.new(b"k", b"m", "sha256").hexdigest()
    assert seen["ssl_after"] == "SSLContext"
    assert done.stderr == ""


def test_modules_already_loaded_are_left_as_they_are() -> None:
    from reconciler.imports import withheld

    assert "ssl" in sys.modules  # the test process has it
    loaded = sys.modules["ssl"]
    with withheld(("ssl",)):
        import ssl
    assert ssl is loaded and sys.modules["ssl"] is loaded
