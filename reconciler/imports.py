"""What ``reconciler run`` imports the daemon without: OpenSSL, through ``ssl`` and ``_hashlib``.

Two standard modules load OpenSSL (libssl and libcrypto) at import, for nothing the daemon
does unless an https probe runs. They are 6.7 MiB of a daemon's 42 MiB with 200 collectors
(``bench/import_cost.py``):

- ``ssl``: asyncio imports it for TLS transports. The daemon opens none: the https probe does its
  own TLS (``reconciler.process.tls``) and loads ssl when it first runs;
- ``_hashlib``: OpenSSL's hashes, which ``hashlib`` and ``hmac`` (which pydantic imports)
  use when they can. Without it they fall back to the interpreter's own SHA-256, the same digest,
  for the spec and state hashes the daemon makes.

Only the daemon's own process does this, from its command line, before anything imports
asyncio. Embedders importing ``reconciler.daemon`` are untouched.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

WITHHELD = ("ssl", "_hashlib")


@contextlib.contextmanager
def withheld(names: tuple[str, ...] = WITHHELD) -> Iterator[None]:
    """While inside, ``import`` of each of ``names`` not yet loaded fails with ImportError.

    Modules that can do without one (``try: import ssl / except ImportError``) load
    without it. On leaving, each can be imported again, by the code that needs it.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not here"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
