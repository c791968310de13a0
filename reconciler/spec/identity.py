"""Deterministic identity of a spec: ``spec_hash`` (what it means) and ``process_hash``
(what the process is). Equal hashes mean no action; used by the loop and ``diff``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

PROCESS_IDENTITY_KEYS = (
    "type",
    "binary_path",
    "args",
    "env",
    "working_dir",
    "user",
    "group",
    "resource_limits",
    "log",
)
"""Keys that say what the process is: a change to any of them means a restart."""


# --- Identity -------------------------------------------------------------------------


def _canonical(model: BaseModel, *, include: set[str] | None = None) -> Any:
    # Defaults left out, so that writing a default out (or a new key with a
    # default in a later version) does not change the identity; empty tables
    # too: "[resource_limits]" with nothing in it means no limits.
    dumped = model.model_dump(mode="json", include=include, exclude_defaults=True)
    return _prune_empty(dumped)


def _prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {key: _prune_empty(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item != {}}
    return value


def _digest(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_hash(model: BaseModel) -> str:
    """Identity of a whole spec: equal for specs that mean the same, whatever the formatting.

    Key order, comments, spelling out a default and the optional ``id`` key
    (always the file name) make no difference.
    """
    return _digest(_whole(model))


def process_hash(model: BaseModel) -> str:
    """Identity of what the process is: differs exactly when a change needs a restart."""
    return _digest(_canonical(model, include=set(PROCESS_IDENTITY_KEYS)))


def spec_hashes(model: BaseModel) -> tuple[str, str]:
    """``(spec_hash(model), process_hash(model))`` from one dump of the model.

    The process keys of the whole dump are what a dump of those keys alone
    gives (pruning works per key): one ``model_dump`` per spec read, not two.
    """
    whole = _whole(model)
    process = {key: whole[key] for key in PROCESS_IDENTITY_KEYS if key in whole}
    return _digest(whole), _digest(process)


def _whole(model: BaseModel) -> Any:
    canonical = _canonical(model)
    canonical.pop("id", None)  # always the file name
    return canonical
