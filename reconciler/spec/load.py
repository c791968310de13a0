"""TOML bytes -> validated models, with errors an operator can act on (``messages``).

The one place where spec and config files become models (STYLE: validate at
the edge), and where a spec file's name becomes a collector id. Also the
reverse direction for ``reconciler new`` (a starter spec, written with
tomli-w). The JSON Schema is ``schema``'s, the hashes ``identity``'s.

Every problem is one line ``FILE: KEY: reason``, with nested keys dotted
(``resource_limits.open_files``) and list items indexed (``args[2]``); all of a
file's problems are listed, not just the first. Pydantic's own messages never
reach the user: ``messages`` rewrites them from the JSON Schema of the field
("must be a whole number >= 0 or "unlimited" (got -1)").

Pure: callers (the ``source`` layer, the CLI) read the bytes; this module never
touches the filesystem. Called by ``reconciler.source`` and ``reconciler.cli``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tomllib
from collections.abc import Sequence
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from reconciler.errors import InvalidSpec
from reconciler.spec.messages import ID_SHOWN, Loc, describe_errors, secret_line, show
from reconciler.spec.models import ID_PATTERN, CollectorSpec, ManagerConfigFile

SPEC_SUFFIX = ".toml"

_ID_RE = re.compile(ID_PATTERN)

Model = TypeVar("Model", bound=BaseModel)


# --- File names -----------------------------------------------------------------------


def is_ignored_filename(name: str) -> bool:
    """Whether a directory entry is not a spec file at all, and is skipped silently.

    Only ``*.toml`` names count. Names starting with ``.`` are ignored: hidden
    files, editor swap and lock files (``.web.toml.swp``, ``.#web.toml``) and a
    Kubernetes ConfigMap volume's ``..data`` machinery. Editor backups
    (``web.toml~``, ``#web.toml#``) do not end in ``.toml``. Takes a name, or a
    path of which only the last part counts; never looks at the filesystem.
    """
    name = os.path.basename(name.rstrip("/"))  # PurePath(name).name, in a tenth of the time
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
    return os.path.basename(name.rstrip("/")).removesuffix(SPEC_SUFFIX)


def _is_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def _bad_id_reason(value: str, *, suffix: str = "", noun: str = "id") -> str:
    reason = f"{show(value)} is not a valid collector {noun}: must match {ID_SHOWN}"
    # Most bad names are a capital letter or a space away from a good one.
    slug = re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-_.")[:63]
    if _is_id(slug):
        reason += f" (try {show(slug + suffix)})"
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
            f"{filename}: id: must be {show(collector_id)}, the file name without "
            f"{SPEC_SUFFIX} (got {show(given_id)})"
        )
    if id_ok and spec is not None and collector_id in spec.after:
        problems.append(f"{filename}: after: {show(collector_id)} cannot start after itself")
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
        if secret_line(text.splitlines(), line - 1):
            reason += " (a string needs double quotes)"
        else:
            reason += f" (a string needs double quotes: {show(word[0])})"
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
        found = describe_errors(model, raw, errors=exc, dates=dates)
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
        f"# Collector {show(collector_id)}: the file name ({filename}) is its id.\n"
        f"# Check it with `reconciler validate {filename}`; every key: `reconciler schema`.\n"
        + tomli_w.dumps(document)
    )
    parse_spec(text.encode(), filename=filename, collector_id=collector_id)
    return text
