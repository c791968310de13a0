"""TOML bytes -> validated models, with errors an operator can act on.

The one place where spec and config files become models (STYLE: validate at
the edge), and where a spec file's name becomes a collector id. Also the
reverse direction for ``reconciler new`` (a starter spec, written with
tomli-w) and the JSON Schema behind ``reconciler schema``.

Every problem is one line ``FILE: KEY: reason``, with nested keys dotted
(``resource_limits.open_files``) and list items indexed (``args[2]``); all of a
file's problems are listed, not just the first. Pydantic's own messages never
reach the user: they are rewritten from the JSON Schema of the field
("must be a whole number >= 0 or "unlimited" (got -1)").

Pure: callers (the ``source`` layer, the CLI) read the bytes; this module never
touches the filesystem. Called by ``reconciler.source`` and ``reconciler.cli``.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from reconciler.errors import InvalidSpec
from reconciler.spec.models import ID_PATTERN, CollectorSpec, ManagerConfigFile

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

SPEC_SUFFIX = ".toml"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ID_RE = re.compile(ID_PATTERN)
_ID_SHOWN = ID_PATTERN.removeprefix("^").removesuffix("$")

Model = TypeVar("Model", bound=BaseModel)
Loc = tuple[str | int, ...]


# --- File names -----------------------------------------------------------------------


def is_ignored_filename(name: str) -> bool:
    """Whether a directory entry is not a spec file at all, and is skipped silently.

    Only ``*.toml`` names count. Names starting with ``.`` are ignored: hidden
    files, editor swap and lock files (``.web.toml.swp``, ``.#web.toml``) and a
    Kubernetes ConfigMap volume's ``..data`` machinery. Editor backups
    (``web.toml~``, ``#web.toml#``) do not end in ``.toml``. Takes a name, or a
    path of which only the last part counts; never looks at the filesystem.
    """
    name = PurePath(name).name
    return name.startswith(".") or not name.endswith(SPEC_SUFFIX)


def is_spec_filename(name: str) -> bool:
    """Whether a file name is a spec file's: ``<id>.toml`` with a valid collector id."""
    return not is_ignored_filename(name) and _is_id(_stem(name))


def collector_id_from_filename(name: str) -> str:
    """The collector id a spec file name stands for (its stem).

    Raises ``InvalidSpec`` ("NAME: file name: reason") for a name that is not a
    spec file's: a ``*.toml`` file whose stem is not a valid id is an error the
    operator must see, unlike an ignored name (see ``is_ignored_filename``).
    """
    if is_ignored_filename(name):
        raise InvalidSpec(
            f"{name}: file name: not a spec file (spec files are named <id>{SPEC_SUFFIX} "
            'and do not start with ".")'
        )
    stem = _stem(name)
    if not _is_id(stem):
        raise InvalidSpec(f"{name}: file name: {_bad_id_reason(stem, suffix=SPEC_SUFFIX)}")
    return stem


def _stem(name: str) -> str:
    return PurePath(name).name.removesuffix(SPEC_SUFFIX)


def _is_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def _bad_id_reason(value: str, *, suffix: str = "", noun: str = "id") -> str:
    reason = f"{_show(value)} is not a valid collector {noun}: must match {_ID_SHOWN}"
    # Most bad names are a capital letter or a space away from a good one.
    slug = re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-_.")[:63]
    if _is_id(slug):
        reason += f" (try {_show(slug + suffix)})"
    return reason


# --- Parsing --------------------------------------------------------------------------


def parse_spec(data: bytes, *, filename: str, collector_id: str) -> CollectorSpec:
    """Parse one spec file's bytes; raise ``InvalidSpec`` listing every problem.

    ``filename`` is only used in messages (give the path the operator knows);
    ``collector_id`` is the file's stem, see ``collector_id_from_filename``. An
    invalid ``collector_id`` is reported as a problem of the file name, next to
    any problems of its content.
    """
    problems: list[str] = []
    id_ok = _is_id(collector_id)
    if not id_ok:
        problems.append(
            f"{filename}: file name: {_bad_id_reason(collector_id, suffix=SPEC_SUFFIX)}"
        )
    raw = _toml(data, filename=filename, problems=problems)
    spec = _validate(CollectorSpec, raw, filename=filename, problems=problems)
    given_id = raw.get("id")
    if id_ok and isinstance(given_id, str) and _is_id(given_id) and given_id != collector_id:
        # Checked on the raw value so that it is listed even when other keys fail.
        problems.append(
            f"{filename}: id: must be {_show(collector_id)}, the file name without "
            f"{SPEC_SUFFIX} (got {_show(given_id)})"
        )
    if problems or spec is None:
        raise InvalidSpec("; ".join(problems), problems=problems)
    return spec


def parse_manager_config(data: bytes, *, filename: str) -> ManagerConfigFile:
    """Parse a ``reconciler run --config`` file; raise ``InvalidSpec`` listing every problem."""
    problems: list[str] = []
    raw = _toml(data, filename=filename, problems=problems)
    config = _validate(ManagerConfigFile, raw, filename=filename, problems=problems)
    if problems or config is None:
        raise InvalidSpec("; ".join(problems), problems=problems)
    return config


_TOML_POSITION = re.compile(
    r"^(?P<reason>.*) \((?:at line (?P<line>\d+), column (?P<column>\d+)|at end of document)\)$"
)


def _toml(data: bytes, *, filename: str, problems: list[str]) -> dict[str, Any]:
    """The TOML document, or raise ``InvalidSpec`` with ``problems`` plus the syntax error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(f"{filename}: line {line}, column {column}: not UTF-8 text ({exc.reason})")
        raise InvalidSpec("; ".join(problems), problems=problems) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{filename}: {_toml_error(str(exc), text)}")
        raise InvalidSpec("; ".join(problems), problems=problems) from exc


def _toml_error(message: str, text: str) -> str:
    """'line 3, column 7: invalid TOML: reason' from tomllib's message."""
    # Python 3.11's TOMLDecodeError has no lineno/colno: they are in the message.
    match = _TOML_POSITION.match(message)
    if match is None:
        return f"invalid TOML: {message}"
    reason = match["reason"][:1].lower() + match["reason"][1:]
    if not match["line"]:
        if reason == "invalid value":
            reason += " (is a [ or a quote left open?)"
        return f"end of file: invalid TOML: {reason}"
    line, column = int(match["line"]), int(match["column"])
    rest = text.splitlines()[line - 1][column - 1 :] if line <= len(text.splitlines()) else ""
    word = _BARE_WORD.match(rest)
    if reason == "invalid value" and word:
        # The likeliest cause: a string written without quotes (type = procmond).
        # Never echo what may be a secret (env = { TOKEN = s3cret }).
        if _secret_line(text.splitlines(), line - 1):
            reason += " (a string needs double quotes)"
        else:
            reason += f" (a string needs double quotes: {_show(word[0])})"
    return f"line {line}, column {column}: invalid TOML: {reason}"


_BARE_WORD = re.compile(r"(?!(?:true|false|inf|nan)\b)[A-Za-z_][\w.-]*")


def _validate(
    model: type[Model], raw: dict[str, Any], *, filename: str, problems: list[str]
) -> Model | None:
    """Validate ``raw`` as ``model``; on failure add one line per problem and return None.

    Validation is strict, through JSON: TOML values are already typed, so a
    string where a number or boolean belongs (``auto_restart = "no"``) is a
    mistake to report, not to coerce. Going through JSON keeps the conversions
    TOML needs (array -> tuple, string -> enum) that strict Python mode refuses.
    """
    dates: dict[Loc, Any] = {}
    payload = json.dumps(_jsonable(raw, loc=(), dates=dates), allow_nan=True)
    try:
        return model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        found = _describe_errors(model, raw, errors=exc, dates=dates)
    problems.extend(f"{filename}: {key}: {reason}" for key, reason in found)
    return None


# TOML dates and times have no JSON form and no field accepts one. They are
# replaced by a value that every field type rejects (a table whose one key is
# not a field and whose value is not a string), and the errors at or below
# that place are then reported as one problem naming the date.
_DATE_MARK = "\0toml-date"


def _jsonable(value: Any, *, loc: Loc, dates: dict[Loc, Any]) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item, loc=(*loc, key), dates=dates) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item, loc=(*loc, index), dates=dates) for index, item in enumerate(value)]
    if isinstance(value, datetime.date | datetime.time):
        dates[loc] = value
        return {_DATE_MARK: [None]}
    return value


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
    ID_PATTERN: f"a lowercase name matching {_ID_SHOWN}",
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


def _describe_errors(
    model: type[BaseModel], raw: dict[str, Any], *, errors: ValidationError, dates: dict[Loc, Any]
) -> list[tuple[str, str]]:
    """(key, reason) per problem, deduplicated, in the order the keys appear in the file."""
    root = _clean_schema(model)
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
        schema = _resolve(schema, root)
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
    schema = _resolve(schema, root)
    return _Site(tuple(path), schema, table, union="anyOf" in schema)


def _unknown_key_reason(site: _Site, root: dict[str, Any]) -> str:
    key = str(site.loc[-1])
    here = list((site.table or {}).get("properties", {}))
    close = difflib.get_close_matches(key, here, n=1)
    if close:
        return f"unknown key (did you mean {_show(close[0])}?)"
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
        field = _resolve(field, root)
        if field.get("type") == "object":
            yield from ((name, *path) for path in _tables_with_key(field, key, root=root))


def _did_you_mean(value: Any, schema: dict[str, Any]) -> str:
    options = [option for option in schema.get("enum", []) if isinstance(option, str)]
    if not isinstance(value, str) or not options:
        return ""
    close = difflib.get_close_matches(value, options, n=1)
    return f"; did you mean {_show(close[0])}?" if close else ""


def _words(schema: dict[str, Any] | None, *, bounds: bool) -> str:
    """What a value matching ``schema`` is, in words: 'a whole number >= 0'."""
    schema = schema or {}
    if "anyOf" in schema:
        return " or ".join(_words(branch, bounds=True) for branch in schema["anyOf"])
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        options = [_show(option) for option in schema["enum"]]
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
        f"{symbol} {_show(schema[keyword])}"
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
        return _show(value)
    if isinstance(value, bool):
        return "a boolean, value not shown"
    kinds = ((int, "a number"), (float, "a number"), (str, "a string"), (dict, "a table"))
    kind = next((name for cls, name in kinds if isinstance(value, cls)), "an array or date")
    return f"{kind}, value not shown"


_TABLE_HEADER = re.compile(r"\s*\[+\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def _secret_line(lines: list[str], index: int) -> bool:
    """Whether line ``index`` sets a value in a secret location (see ``SECRET_LOCATIONS``)."""
    table = next((m[1] for line in reversed(lines[:index]) if (m := _TABLE_HEADER.match(line))), "")
    key_match = _KEY.match(lines[index]) if index < len(lines) else None
    key = key_match[1].replace('"', "").replace("'", "") if key_match else ""
    path = tuple(part.strip() for part in f"{table}.{key}".strip(".").split("."))
    return _is_secret(path) or lines[index].lstrip().startswith("env")


def _show(value: Any) -> str:
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
        text = "[" + ", ".join(_show(item) for item in value) + "]"
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


# --- JSON Schema ----------------------------------------------------------------------


@functools.cache
def _clean_schema(model: type[BaseModel]) -> dict[str, Any]:
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


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        schema = {**root["$defs"][name], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (taplo, Even Better TOML) and CI linters."""
    schema = json.loads(json.dumps(_clean_schema(CollectorSpec)))  # a copy callers may change
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


# --- Starter spec ---------------------------------------------------------------------


def starter_spec(
    collector_id: str,
    *,
    collector_type: str | None = None,
    binary_path: str | None = None,
    args: Sequence[str] = (),
) -> str:
    """A valid spec file for ``reconciler new``, with the useful defaults written out.

    The type defaults to the id. No ``id`` key is written: the file name is the
    id, and a second copy would only break when the file is renamed. The
    result is checked with ``parse_spec`` before it is returned, so it always
    round-trips; raises ``InvalidSpec`` for a bad id or type.
    """
    if not _is_id(collector_id):
        raise InvalidSpec(_bad_id_reason(collector_id))
    if collector_type is not None and not _is_id(collector_type):
        raise InvalidSpec(_bad_id_reason(collector_type, noun="type"))
    document: dict[str, Any] = {"type": collector_type or collector_id, "state": "running"}
    if binary_path is not None:
        document["binary_path"] = binary_path
    document |= {
        "args": list(args),
        "auto_restart": True,
        "max_restarts": 3,
        "graceful_timeout_seconds": 30,
        "stop_signal": "SIGTERM",
        "log": "file",
    }
    filename = collector_id + SPEC_SUFFIX
    text = (
        f"# Collector {_show(collector_id)}: the file name ({filename}) is its id.\n"
        f"# Check it with `reconciler validate {filename}`; every key: `reconciler schema`.\n"
        + tomli_w.dumps(document)
    )
    parse_spec(text.encode(), filename=filename, collector_id=collector_id)
    return text


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
    canonical = _canonical(model)
    canonical.pop("id", None)
    return _digest(canonical)


def process_hash(model: BaseModel) -> str:
    """Identity of what the process is: differs exactly when a change needs a restart."""
    return _digest(_canonical(model, include=set(PROCESS_IDENTITY_KEYS)))
