"""TOML bytes -> validated models, with errors an operator can act on.

The one place where spec and config files become models (STYLE: validate at
the edge). Every problem names the file, the key and the reason. Pure: callers
read the bytes; this module never touches the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from reconciler.errors import InvalidSpec
from reconciler.spec.models import CollectorSpec, ManagerConfigFile

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


def _describe(error: ErrorDetails) -> tuple[str, str]:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return key, "unknown key"
    if error["type"] == "missing":
        return key, "required key is missing"
    return key, str(error["msg"]).removeprefix("Value error, ")


def _problems(filename: str, exc: ValidationError) -> list[str]:
    return [f"{filename}: {key}: {reason}" for key, reason in map(_describe, exc.errors())]


def _toml(data: bytes, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidSpec(f"{filename}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSpec(f"{filename}: invalid TOML: {exc}") from exc


def parse_spec(data: bytes, *, filename: str, collector_id: str) -> CollectorSpec:
    """Parse one spec file's bytes; raise ``InvalidSpec`` listing every problem."""
    raw = _toml(data, filename)
    try:
        spec = CollectorSpec.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(filename, exc)
        raise InvalidSpec("; ".join(problems), problems=problems) from exc
    if spec.id is not None and spec.id != collector_id:
        raise InvalidSpec(
            f"{filename}: id: {spec.id!r} does not match the file name (expected {collector_id!r})"
        )
    return spec


def parse_manager_config(data: bytes, *, filename: str) -> ManagerConfigFile:
    """Parse a ``reconciler run --config`` file."""
    raw = _toml(data, filename)
    try:
        return ManagerConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(filename, exc)
        raise InvalidSpec("; ".join(problems), problems=problems) from exc


def _digest(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_hash(model: BaseModel) -> str:
    """Identity of a whole spec: equal for specs that mean the same, whatever the formatting."""
    return _digest(model.model_dump(mode="json", exclude_defaults=True))


def process_hash(model: BaseModel) -> str:
    """Identity of what the process is: differs exactly when a change needs a restart."""
    dumped = model.model_dump(mode="json")
    return _digest({key: dumped.get(key) for key in PROCESS_IDENTITY_KEYS})
