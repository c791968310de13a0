"""The JSON Schema of spec files (``reconciler schema``), also the source of the words
that validation messages use for a field. Pure."""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel

from reconciler.spec.models import CollectorSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --- JSON Schema ----------------------------------------------------------------------


@functools.cache
def clean_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema without the null branches TOML cannot express."""
    cleaned: dict[str, Any] = _without_null(model.model_json_schema())
    return cleaned


def _without_null(node: Any) -> Any:
    # ``X | None`` fields mean "key absent"; TOML has no null, so an editor
    # offering ``null`` would only mislead.
    if isinstance(node, list):
        return [_without_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {
        key: _without_null(value)
        for key, value in node.items()
        if not (key == "default" and value is None)
    }
    if "anyOf" in node:
        branches = [branch for branch in node["anyOf"] if branch != {"type": "null"}]
        if len(branches) == 1:
            del node["anyOf"]
            node = {**branches[0], **node}
        else:
            node["anyOf"] = branches
    return node


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        schema = {**root["$defs"][name], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (taplo, Even Better TOML) and CI linters."""
    schema = json.loads(json.dumps(clean_schema(CollectorSpec)))  # a copy callers may change
    schema.pop("title", None)
    schema.pop("description", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "reconciler collector spec",
        "description": (
            "One collector, in <specs_dir>/<id>.toml: the file name without .toml is the "
            "collector id. Unknown keys are errors. Check a file with `reconciler validate`."
        ),
        **schema,
    }
