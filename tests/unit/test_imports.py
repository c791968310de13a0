"""``reconciler.imports``: withheld and deferred modules, as ``reconciler run`` uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_CHILD = r"""
import json, sys
from reconciler.imports import withheld

with withheld():
    import asyncio, hashlib, hmac, shutil
    failed = []
    for name in ("ssl", "_hashlib", "bz2", "lzma"):
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
    "which": shutil.which("sh"),
}
import bz2, ssl  # after: importable again, for the code that needs it
print(json.dumps({**inside, "ssl_after": ssl.SSLContext.__name__,
                  "bz2_after": bz2.decompress(bz2.compress(b"x")).decode()}))
"""


def test_openssl_and_the_archive_codecs_are_withheld_inside_and_importable_after() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=30, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["failed"] == ["ssl", "_hashlib", "bz2", "lzma"]
    assert seen["asyncio_tls"] is False and seen["openssl_hashes"] is False
    # The interpreter's own SHA-256 and HMAC: the digests OpenSSL's would give.
    import hashlib
    import hmac

    assert seen["sha256"] == hashlib.sha256(b"reconciler").hexdigest()
    assert seen["hmac"] == hmac.new(b"k", b"m", "sha256").hexdigest()
    assert seen["ssl_after"] == "SSLContext"
    import shutil

    assert seen["which"] == shutil.which("sh")  # what the daemon imports shutil for
    assert seen["bz2_after"] == "x"
    assert done.stderr == ""


def test_modules_already_loaded_are_left_as_they_are() -> None:
    from reconciler.imports import withheld

    assert "ssl" in sys.modules  # the test process has it
    loaded = sys.modules["ssl"]
    with withheld(("ssl",)):
        import ssl
    assert ssl is loaded and sys.modules["ssl"] is loaded


_DEFERRED_CHILD = r"""
import json, sys
from reconciler.imports import deferred

with deferred():
    from importlib.metadata import entry_points
    import importlib, inspect
    stand_in = sys.modules["importlib.metadata"]
    inspect.getmodule(inspect.currentframe())  # reads every module's __file__: no use
    before = {"zipfile": "zipfile" in sys.modules, "real": type(stand_in).__name__}
    scripts = entry_points(group="console_scripts")  # the first call loads the module
    after = {"real": type(sys.modules["importlib.metadata"]).__name__,
             "reconciler": "reconciler" in scripts.names,
             "version": importlib.metadata.version("pydantic")}
print(json.dumps({"before": before, "after": after}))
"""

_UNUSED_CHILD = r"""
import json, sys, importlib
from reconciler.imports import deferred

with deferred():
    from importlib.metadata import entry_points
print(json.dumps({"left": "importlib.metadata" in sys.modules,
                  "attribute": hasattr(importlib, "metadata")}))
import importlib.metadata
print(json.dumps({"version": importlib.metadata.version("pydantic"),
                  "plugins": [e.name for e in entry_points(group="no such group")]}))
"""

_DAEMON_CHILD = r"""
import json, os, sys
from reconciler.imports import for_the_daemon

with for_the_daemon():
    import reconciler.daemon
    from reconciler.spec import parse_spec
    parse_spec(b'type = "x"\nargs = ["1"]\n', filename="x.toml", collector_id="x")
print(json.dumps({
    "loaded": [name for name in ("importlib.metadata", "zipfile", "email", "csv", "ssl",
                                 # what only an error, a diff, /openapi.json or a test uses
                                 "difflib", "reconciler.plan.diff", "reconciler.api.openapi",
                                 "reconciler.process.fake")
               if name in sys.modules],
    "plugins": os.environ.get("PYDANTIC_DISABLE_PLUGINS"),
}))
"""


def _child(program: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True, text=True, timeout=30, check=True, env=env,
    )
    assert done.stderr == ""
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_deferred_module_loads_at_its_first_use() -> None:
    import pydantic

    [seen] = _child(_DEFERRED_CHILD)
    assert seen["before"] == {"zipfile": False, "real": "_StandIn"}
    assert seen["after"] == {"real": "module", "reconciler": True, "version": pydantic.VERSION}


def test_an_unused_stand_in_is_gone_on_leaving_and_its_functions_still_work() -> None:
    import pydantic

    left, used = _child(_UNUSED_CHILD)
    assert left == {"left": False, "attribute": False}
    assert used == {"version": pydantic.VERSION, "plugins": []}


def test_the_daemon_imports_without_openssl_package_metadata_or_rare_requests() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    [seen] = _child(_DAEMON_CHILD, env)
    assert seen == {"loaded": [], "plugins": "__all__"}
    # An operator's own choice of pydantic plugins is kept.
    [seen] = _child(_DAEMON_CHILD, {**env, "PYDANTIC_DISABLE_PLUGINS": "logfire"})
    assert seen["plugins"] == "logfire"


def test_a_deferred_module_already_loaded_is_left_as_it_is() -> None:
    import importlib.metadata

    from reconciler.imports import deferred

    loaded = sys.modules["importlib.metadata"]
    with deferred():
        from importlib.metadata import entry_points
    assert sys.modules["importlib.metadata"] is loaded is importlib.metadata
    assert entry_points is loaded.entry_points
