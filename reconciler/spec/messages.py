"""Pydantic's validation errors rewritten as ``FILE: KEY: reason`` lines an operator can act on.

Reasons come from the JSON Schema of the field ("must be a whole number >= 0"); values
under secret keys (``env``, probe URLs) are never echoed. Used by ``reconciler.spec.load``.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.spec.models import ID_PATTERN
from reconciler.spec.schema import clean_schema, resolve

ID_SHOWN = ID_PATTERN.removeprefix("^").removesuffix("$")
Loc = tuple[str | int, ...]


# --- Turning pydantic errors into operator messages -----------------------------------

# Errors that mean "right type, out of range": the message shows the bounds.
# Other type errors show the kind of value only ("must be a number").
_CONSTRAINT_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
        "finite_number",
        "string_pattern_mismatch",
        "string_too_short",
        "string_too_long",
        "too_short",
        "too_long",
    }
)

# Patterns are described in words; an unknown pattern is shown as is.
_PATTERN_WORDS = {
    ID_PATTERN: f"a lowercase name matching {ID_SHOWN}",
    r"^https?://": "an http:// or https:// URL",
    r"^\[?[^\s\]]+\]?:\d{1,5}$": 'HOST:PORT, such as "127.0.0.1:9101"',
}


@dataclass(frozen=True, slots=True)
class _Site:
    """Where an error is, in the file's terms."""

    loc: Loc
    """The key path, without pydantic's union branch tags."""
    schema: dict[str, Any] | None
    """JSON Schema of the value there; None for an unknown key."""
    table: dict[str, Any] | None
    """JSON Schema of the table holding the last key."""
    union: bool
    """The error came from one branch of a union: describe the whole union."""


def describe_errors(
    model: type[BaseModel], raw: dict[str, Any], *, errors: ValidationError, dates: dict[Loc, Any]
) -> list[tuple[str, str]]:
    """(key, reason) per problem, deduplicated, in the order the keys appear in the file."""
    root = clean_schema(model)
    found: dict[tuple[str, str], tuple[int, ...]] = {}
    for error in errors.errors(include_url=False):
        site = _locate(root, error["loc"])
        date_loc = next((loc for loc in dates if site.loc[: len(loc)] == loc), None)
        if date_loc is not None and not (site.schema is None and site.loc == date_loc):
            site = _locate(root, date_loc)
            shown = _show_at(site.loc, dates[date_loc])
            reason = f"must be {_words(site.schema, bounds=True)} (got {shown})"
        else:
            reason = _reason(error, site=site, root=root)
        key = _key_text(site.loc)
        found.setdefault((key, reason), _file_order(raw, site.loc))
    return sorted(found, key=found.__getitem__)


def _reason(error: Any, *, site: _Site, root: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden" or site.schema is None:
        return _unknown_key_reason(site, root)
    if kind == "missing":
        return "required key is missing"
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error["input"]
    bounds = site.union or kind in _CONSTRAINT_ERRORS
    reason = f"must be {_words(site.schema, bounds=bounds)} (got {_show_at(site.loc, value)}"
    if site.schema.get("type") == "object" and _is_array_of_tables(value):
        header = _key_text(site.loc)
        return f"{reason}; write [{header}], not [[{header}]])"
    if _is_secret(site.loc):
        return reason + ")"
    return reason + _did_you_mean(value, site.schema) + ")"


def _locate(root: dict[str, Any], loc: Sequence[str | int]) -> _Site:
    """Follow ``loc`` through the schema; stop at an unknown key or a union."""
    schema, table = root, None
    path: list[str | int] = []
    for part in loc:
        schema = resolve(schema, root)
        if "anyOf" in schema:
            # The rest of the loc is a pydantic branch tag, not a key in the file.
            return _Site(tuple(path), schema, table, union=True)
        if schema.get("type") == "object" and "properties" in schema:
            table = schema
            if part not in schema["properties"]:
                return _Site((*path, part), None, table, union=False)
            schema = schema["properties"][part]
        elif schema.get("type") == "object":
            extra = schema.get("additionalProperties")
            table, schema = schema, extra if isinstance(extra, dict) else {}
        elif schema.get("type") == "array" and isinstance(part, int):
            schema = schema.get("items", {})
        else:
            break
        path.append(part)
    schema = resolve(schema, root)
    return _Site(tuple(path), schema, table, union="anyOf" in schema)


def _unknown_key_reason(site: _Site, root: dict[str, Any]) -> str:
    key = str(site.loc[-1])
    here = list((site.table or {}).get("properties", {}))
    close = _close_matches(key, here)
    if close:
        return f"unknown key (did you mean {show(close[0])}?)"
    homes = [table for table in _tables_with_key(root, key, root=root) if table != site.loc[:-1]]
    if not homes:
        return "unknown key"
    if homes[0] == () and len(site.loc) > 1:
        # The classic TOML slip: every key after a [table] header belongs to it.
        header = _key_text(site.loc[:-1])
        return (
            f"unknown key ({key} is a top-level key: keys after a [{header}] header "
            "belong to that table, so move it above the header)"
        )
    return f"unknown key (it belongs in the [{_key_text(homes[0])}] table)"


def _tables_with_key(schema: dict[str, Any], key: str, *, root: dict[str, Any]) -> Iterator[Loc]:
    """Paths of the tables in ``schema`` that have a field named ``key``."""
    properties: dict[str, Any] = schema.get("properties", {})
    if key in properties:
        yield ()
    for name, field in properties.items():
        field = resolve(field, root)
        if field.get("type") == "object":
            yield from ((name, *path) for path in _tables_with_key(field, key, root=root))


def _close_matches(word: str, options: list[str]) -> list[str]:
    # Imported on the first error only: the daemon that never sees one never loads difflib.
    import difflib

    return difflib.get_close_matches(word, options, n=1)


def _did_you_mean(value: Any, schema: dict[str, Any]) -> str:
    options = [option for option in schema.get("enum", []) if isinstance(option, str)]
    if not isinstance(value, str) or not options:
        return ""
    close = _close_matches(value, options)
    return f"; did you mean {show(close[0])}?" if close else ""


def _words(schema: dict[str, Any] | None, *, bounds: bool) -> str:
    """What a value matching ``schema`` is, in words: 'a whole number >= 0'."""
    schema = schema or {}
    if "anyOf" in schema:
        return " or ".join(_words(branch, bounds=True) for branch in schema["anyOf"])
    if "const" in schema:
        return show(schema["const"])
    if "enum" in schema:
        options = [show(option) for option in schema["enum"]]
        if len(options) == 1:
            return options[0]
        return "one of " + ", ".join(options[:-1]) + " or " + options[-1]
    kind = schema.get("type")
    if kind == "string":
        pattern = schema.get("pattern")
        if pattern is None:
            return "a path" if schema.get("format") == "path" else "a string"
        return _PATTERN_WORDS.get(pattern, f"a string matching {pattern}")
    if kind == "boolean":
        return "true or false"
    if kind in ("integer", "number"):
        noun = "a whole number" if kind == "integer" else "a number"
        return noun + (_bounds_words(schema) if bounds else "")
    if kind == "array":
        items = _words(schema.get("items"), bounds=True)
        what = "a list of strings" if items == "a string" else "a list"
        return "a non-empty " + what[2:] if bounds and schema.get("minItems") else what
    if kind == "object":
        extra = schema.get("additionalProperties")
        if "properties" not in schema and isinstance(extra, dict) and extra.get("type") == "string":
            return "a table of strings"
        return "a table"
    return "a valid value"


def _bounds_words(schema: dict[str, Any]) -> str:
    words = [
        f"{symbol} {show(schema[keyword])}"
        for keyword, symbol in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if keyword in schema
    ]
    return (" " + " and ".join(words)) if words else ""


SECRET_LOCATIONS = (("env",), ("health_check", "http"))
"""Where a spec holds secrets (tokens in env, credentials in a probe URL): a
problem there names the kind of value it got, never the value, because
problems reach logs, ``reconciler status`` and the control API."""


def _is_secret(loc: Sequence[str | int]) -> bool:
    return any(tuple(loc[: len(prefix)]) == prefix for prefix in SECRET_LOCATIONS)


def _show_at(loc: Sequence[str | int], value: Any) -> str:
    if not _is_secret(loc):
        return show(value)
    if isinstance(value, bool):
        return "a boolean, value not shown"
    kinds = ((int, "a number"), (float, "a number"), (str, "a string"), (dict, "a table"))
    kind = next((name for cls, name in kinds if isinstance(value, cls)), "an array or date")
    return f"{kind}, value not shown"


_TABLE_HEADER = re.compile(r"\s*\[+\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def secret_line(lines: list[str], index: int) -> bool:
    """Whether line ``index`` sets a value in a secret location (see ``SECRET_LOCATIONS``)."""
    table = next((m[1] for line in reversed(lines[:index]) if (m := _TABLE_HEADER.match(line))), "")
    key_match = _KEY.match(lines[index]) if index < len(lines) else None
    key = key_match[1].replace('"', "").replace("'", "") if key_match else ""
    path = tuple(part.strip() for part in f"{table}.{key}".strip(".").split("."))
    return _is_secret(path) or lines[index].lstrip().startswith("env")


def show(value: Any) -> str:
    """A value as it would be written in TOML, shortened: "ten", -1, true, [1, 2]."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        # Lone surrogates (a file name that is not UTF-8) are escaped: the
        # message must be printable.
        text = json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()
    elif _is_array_of_tables(value):
        text = "an array of tables"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(loc: Loc) -> str:
    """``resource_limits.open_files``, ``args[2]``, ``env."MY.VAR"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            text += f".{name}" if text else name
    return text or "(top level)"


def _file_order(raw: Any, loc: Loc) -> tuple[int, ...]:
    """Where ``loc`` is in the parsed document, so problems read top to bottom."""
    order: list[int] = []
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            order.append(list(raw).index(part))
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            order.append(part)
            raw = raw[part]
        else:
            # A missing key has no place in the file: list it after the rest.
            order.append(1 << 30)
            break
    return tuple(order)
