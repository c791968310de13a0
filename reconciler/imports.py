"""What ``reconciler run`` imports the daemon without: OpenSSL, and ``importlib.metadata``.

Two standard modules load OpenSSL (libssl and libcrypto) at import, for nothing the daemon
does unless an https probe runs. They are 6.7 MiB of a daemon's 42 MiB with 200 collectors
(``bench/import_cost.py``):

- ``ssl``: asyncio imports it for TLS transports. The daemon opens none: the https probe does its
  own TLS (``reconciler.process.tls``) and loads ssl when it first runs;
- ``_hashlib``: OpenSSL's hashes, which ``hashlib`` and ``hmac`` (which pydantic imports)
  use when they can. Without it they fall back to the interpreter's own SHA-256, the same digest,
  for the spec and state hashes the daemon makes.

Two more are withheld for what they cost with nothing to do: ``bz2`` and ``lzma``, which
``shutil`` imports for archive formats (``make_archive``) the daemon never writes; it imports
shutil for ``which``. 0.3 MiB with their libraries (``bench/import_cost.py``). Without them
shutil only leaves those two formats out of its archive list.

A third module is put off rather than withheld (:func:`deferred`): ``importlib.metadata``, which
pydantic imports to look up its plugins, 1.3 MiB with the zipfile, email and csv modules it
loads. Pydantic's plugins are off in the daemon (``PYDANTIC_DISABLE_PLUGINS``, unless its
environment sets it), so nothing calls it.

Only the daemon's own process does this, from its command line, before anything imports
asyncio (:func:`for_the_daemon`). Embedders importing ``reconciler.daemon`` are untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

WITHHELD = ("ssl", "_hashlib", "bz2", "lzma")
DEFERRED: Mapping[str, tuple[str, ...]] = {"importlib.metadata": ("entry_points",)}
"""Modules put off, each with the functions other modules import from it by name."""


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


class _StandIn(types.ModuleType):
    """In ``sys.modules`` for a module not loaded yet; the first use of it loads the module."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            # What walks sys.modules (inspect.getmodule reads each __file__) is no use of it.
            raise AttributeError(attribute)
        return getattr(_loaded(self.__name__), attribute)


def _loaded(name: str) -> types.ModuleType:
    """The real module ``name``, imported now if only its stand-in is there."""
    if isinstance(sys.modules.get(name), _StandIn):
        del sys.modules[name]
    return importlib.import_module(name)


def _forwarder(name: str, function: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(_loaded(name), function)(*args, **kwargs)

    call.__name__ = call.__qualname__ = function
    return call


@contextlib.contextmanager
def deferred(modules: Mapping[str, tuple[str, ...]] = DEFERRED) -> Iterator[None]:
    """While inside, ``import`` of each module named here not yet loaded gives a stand-in.

    Using the stand-in loads the real module: reading any attribute, or calling one of the
    functions named here, which ``from module import function`` hands out without loading
    it. On leaving, a stand-in nothing used is taken out of ``sys.modules`` (the functions
    handed out keep working, loading the module when called).
    """
    standing: list[tuple[str, _StandIn, types.ModuleType | None]] = []
    for name, functions in modules.items():
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        stand_in = _StandIn(name)
        if spec.submodule_search_locations is not None:
            # A package: ``from package import name`` looks for a submodule through it.
            stand_in.__path__ = list(spec.submodule_search_locations)
        for function in functions:
            setattr(stand_in, function, _forwarder(name, function))
        package, _, leaf = name.rpartition(".")
        parent = sys.modules.get(package) if package else None
        sys.modules[name] = stand_in
        if parent is not None and not hasattr(parent, leaf):
            setattr(parent, leaf, stand_in)
        standing.append((name, stand_in, parent))
    try:
        yield
    finally:
        for name, stand_in, parent in standing:
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            leaf = name.rpartition(".")[2]
            if parent is not None and getattr(parent, leaf, None) is stand_in:
                delattr(parent, leaf)


@contextlib.contextmanager
def for_the_daemon() -> Iterator[None]:
    """How ``reconciler run`` imports the daemon: OpenSSL withheld, ``importlib.metadata``
    deferred, pydantic's plugins off (unless the environment says otherwise)."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    with withheld(), deferred():
        yield


STANDARD_LIBRARY_PROBE = os.path.join(os.path.dirname(os.__file__), "asyncio", "base_events.py")
"""A standard module the daemon imports: its ``-OO`` bytecode stands for the library's."""


def optimised_command() -> list[str] | None:
    """The command line that starts this process again under ``python -OO``, or None.

    ``-OO`` leaves docstrings (and asserts) out of the bytecode: with 200 collectors, 1.3 MiB
    of the daemon's memory (``bench/import_cost.py``). None when the process already runs so,
    or when the ``-OO`` bytecode (``*.opt-2.pyc``) of the standard library, pydantic or the
    reconciler is missing: the interpreter would then compile their modules at every start,
    which costs more time than their docstrings cost memory. ``make venv``, the Ansible role
    and the benchmark's install write it (``python -OO -m compileall``).
    """
    if sys.flags.optimize >= 2 or not sys.executable or not sys.orig_argv:
        return None
    pydantic = importlib.util.find_spec("pydantic")
    if pydantic is None or pydantic.origin is None:
        return None
    sources = (
        STANDARD_LIBRARY_PROBE,
        os.path.join(os.path.dirname(pydantic.origin), "main.py"),
        os.path.join(os.path.dirname(__file__), "daemon.py"),
    )
    for source in sources:
        if not os.path.exists(importlib.util.cache_from_source(source, optimization=2)):
            return None
    return [sys.executable, "-OO", *sys.orig_argv[1:]]
