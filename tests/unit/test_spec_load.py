"""Spec files as an operator writes them: what parses, what each mistake says, identity hashes.

Pure: bytes in, models or ``InvalidSpec`` out. The messages asserted here are
exactly what ``reconciler validate`` and the status/metrics of a running
reconciler show.
"""

from __future__ import annotations

import json
import operator
import re
import string
from collections.abc import Callable
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import InvalidSpec
from reconciler.spec import (
    ID_PATTERN,
    PROCESS_IDENTITY_KEYS,
    CollectorSpec,
    collector_id_from_filename,
    is_ignored_filename,
    is_spec_filename,
    json_schema,
    parse_manager_config,
    parse_spec,
    process_hash,
    spec_hash,
    spec_hashes,
    starter_spec,
)
from reconciler.state import DesiredState


def parse(text: str, *, filename: str = "web.toml", collector_id: str = "web") -> CollectorSpec:
    return parse_spec(text.encode(), filename=filename, collector_id=collector_id)


def problems_of(text: str | bytes, **names: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(
            data,
            filename=names.get("filename", "web.toml"),
            collector_id=names.get("collector_id", "web"),
        )
    assert caught.value.code == "INVALID_SPEC"
    assert str(caught.value) == "; ".join(caught.value.problems)
    return caught.value.problems


# --- Valid specs -------------------------------------------------------------------------


DESIGN_EXAMPLE = """
type = "procmond"
state = "running"
binary_path = "/usr/local/bin/procmond"
args = ["--config", "/etc/procmond.conf"]
env = { RUST_LOG = "info" }
working_dir = "/var/lib/procmond"
user = "daemoneye"
auto_restart = true
max_restarts = 3
graceful_timeout_seconds = 30
force_timeout_seconds = 5
stop_signal = "SIGTERM"
log = "file"

[resource_limits]
memory_max_bytes = 268435456
open_files = 4096
processes = 64
cpu_max_percent = 50

[health_check]
exec = ["procmond", "--health"]
interval_seconds = 60
timeout_seconds = 5
failure_threshold = 3
"""


def test_the_design_example_parses() -> None:
    spec = parse(DESIGN_EXAMPLE, filename="procmond.toml", collector_id="procmond")
    assert spec.type == "procmond"
    assert spec.args == ("--config", "/etc/procmond.conf")
    assert spec.graceful_timeout_seconds == 30.0
    assert spec.resource_limits is not None and spec.resource_limits.open_files == 4096
    assert spec.health_check is not None and spec.health_check.exec == ["procmond", "--health"]


def test_only_type_is_required_and_the_rest_defaults() -> None:
    spec = parse('type = "web"')
    assert spec.state == DesiredState.RUNNING
    assert spec.max_restarts == 3
    assert spec.log == "file"
    assert spec.args == ()


@pytest.mark.parametrize(
    ("text", "check"),
    [
        pytest.param('max_restarts = "unlimited"', ("max_restarts", "unlimited"), id="unlimited"),
        pytest.param("max_restarts = 0", ("max_restarts", 0), id="zero-restarts"),
        pytest.param('stop_signal = "int"', ("stop_signal", "SIGINT"), id="signal-normalised"),
        pytest.param(
            "graceful_timeout_seconds = 0", ("graceful_timeout_seconds", 0.0), id="no-wait"
        ),
        pytest.param('state = "paused"', ("state", DesiredState.PAUSED), id="paused"),
        pytest.param('id = "web"', ("id", "web"), id="id-equal-to-stem"),
    ],
)
def test_accepted_values(text: str, check: tuple[str, Any]) -> None:
    key, expected = check
    assert getattr(parse(f'type = "web"\n{text}'), key) == expected


# --- Problems: one line each, FILE: KEY: reason ----------------------------------------------

PROBLEMS = [
    pytest.param(
        "max_restarts = -1",
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got -1)',
        id="negative-max-restarts",
    ),
    pytest.param(
        'max_restarts = "never"',
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got "never")',
        id="union-gives-one-message",
    ),
    pytest.param(
        "max_restarts = 1.5",
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got 1.5)',
        id="fractional-max-restarts",
    ),
    pytest.param(
        "max_restarts = true",
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got true)',
        id="bool-is-not-a-number",
    ),
    pytest.param(
        "argz = []",
        'web.toml: argz: unknown key (did you mean "args"?)',
        id="typo-suggestion",
    ),
    pytest.param("colour = 1", "web.toml: colour: unknown key", id="unknown-key-no-suggestion"),
    pytest.param(
        'graceful_timeout_seconds = "ten"',
        'web.toml: graceful_timeout_seconds: must be a number (got "ten")',
        id="string-for-number",
    ),
    pytest.param(
        'graceful_timeout_seconds = "10"',
        'web.toml: graceful_timeout_seconds: must be a number (got "10")',
        id="no-coercion-from-string",
    ),
    pytest.param(
        "graceful_timeout_seconds = -1",
        "web.toml: graceful_timeout_seconds: must be a number >= 0 (got -1)",
        id="negative-timeout-shows-bound",
    ),
    pytest.param(
        'auto_restart = "no"',
        'web.toml: auto_restart: must be true or false (got "no")',
        id="string-for-bool",
    ),
    pytest.param(
        'state = "run"',
        'web.toml: state: must be one of "running", "paused" or "stopped" '
        '(got "run"; did you mean "running"?)',
        id="enum-with-suggestion",
    ),
    pytest.param(
        'log = "syslog"',
        'web.toml: log: must be one of "file", "inherit" or "null" (got "syslog")',
        id="enum-without-suggestion",
    ),
    pytest.param(
        'args = "--verbose"',
        'web.toml: args: must be a list of strings (got "--verbose")',
        id="string-for-list",
    ),
    pytest.param(
        'args = ["a", "b", 3]',
        "web.toml: args[2]: must be a string (got 3)",
        id="list-item",
    ),
    pytest.param(
        'env = { A = 1, "MY.VAR" = true }',
        "web.toml: env.A: must be a string (got a number, value not shown)\n"
        'web.toml: env."MY.VAR": must be a string (got a boolean, value not shown)',
        id="env-values-quoted-keys",
    ),
    pytest.param(
        'env = { "A=B" = "1" }',
        'web.toml: env: "A=B" is not an environment variable name (empty, or has "=" or NUL)',
        id="env-name",
    ),
    pytest.param(
        'stop_signal = "SIGFOO"',
        'web.toml: stop_signal: must be a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT" '
        '(got "SIGFOO")',
        id="signal-name",
    ),
    pytest.param(
        "resource_limits = 5",
        "web.toml: resource_limits: must be a table (got 5)",
        id="number-for-table",
    ),
    pytest.param(
        "[resource_limits]\nopen_files = 0",
        "web.toml: resource_limits.open_files: must be a whole number > 0 (got 0)",
        id="nested-key-dotted",
    ),
    pytest.param(
        "[resource_limits]\ncpu_max_percent = 200000",
        "web.toml: resource_limits.cpu_max_percent: must be a number > 0 and <= 100000 "
        "(got 200000)",
        id="two-bounds",
    ),
    pytest.param(
        "[resource_limits]\nopen_file = 10",
        'web.toml: resource_limits.open_file: unknown key (did you mean "open_files"?)',
        id="nested-typo",
    ),
    pytest.param(
        "[resource_limits]\nopen_files = 10\nmax_restarts = 5",
        "web.toml: resource_limits.max_restarts: unknown key (max_restarts is a top-level key: "
        "keys after a [resource_limits] header belong to that table, so move it above the header)",
        id="top-level-key-after-a-table-header",
    ),
    pytest.param(
        "open_files = 10",
        "web.toml: open_files: unknown key (it belongs in the [resource_limits] table)",
        id="nested-key-at-top-level",
    ),
    pytest.param(
        "[health_check]\ninterval_seconds = 5",
        "web.toml: health_check: give exactly one of exec, http or tcp",
        id="no-probe",
    ),
    pytest.param(
        '[health_check]\nexec = ["true"]\ntcp = "127.0.0.1:1"',
        "web.toml: health_check: give exactly one of exec, http or tcp (got exec, tcp)",
        id="two-probes",
    ),
    pytest.param(
        '[health_check]\nhttp = "ftp://example.com"',
        "web.toml: health_check.http: must be an http:// or https:// URL "
        "(got a string, value not shown)",
        id="http-scheme",
    ),
    pytest.param(
        '[health_check]\ntcp = "9101"',
        'web.toml: health_check.tcp: must be HOST:PORT, such as "127.0.0.1:9101" (got "9101")',
        id="tcp-address",
    ),
    pytest.param(
        "[health_check]\nexec = []",
        "web.toml: health_check.exec: must be a non-empty list of strings (got [])",
        id="empty-exec",
    ),
    pytest.param(
        '[[health_check]]\nexec = ["true"]',
        "web.toml: health_check: must be a table (got an array of tables; "
        "write [health_check], not [[health_check]])",
        id="array-of-tables",
    ),
    pytest.param(
        "binary_path = 1979-05-27",
        "web.toml: binary_path: must be a string (got 1979-05-27)",
        id="toml-date",
    ),
    pytest.param(
        "max_restarts = 07:32:00",
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got 07:32:00)',
        id="toml-time-in-union",
    ),
    pytest.param(
        'id = "api"',
        'web.toml: id: must be "web", the file name without .toml (got "api")',
        id="id-differs-from-stem",
    ),
    pytest.param(
        'id = "Web"',
        'web.toml: id: must be a lowercase name matching [a-z0-9][a-z0-9_.-]{0,62} (got "Web")',
        id="id-not-an-id",
    ),
]


@pytest.mark.parametrize(("line", "expected"), PROBLEMS)
def test_problem_message(line: str, expected: str) -> None:
    assert problems_of(f'type = "web"\n{line}\n') == expected.split("\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", ["web.toml: type: required key is missing"], id="empty-file"),
        pytest.param(
            'type = "Web"',
            [
                "web.toml: type: must be a lowercase name matching [a-z0-9][a-z0-9_.-]{0,62} "
                '(got "Web")'
            ],
            id="type-pattern",
        ),
        pytest.param(
            "type = procmond",
            [
                "web.toml: line 1, column 8: invalid TOML: invalid value "
                '(a string needs double quotes: "procmond")'
            ],
            id="unquoted-string",
        ),
        pytest.param(
            'type = "web"\nargs = ["a"\nlog = "file"\n',
            ["web.toml: line 3, column 1: invalid TOML: unclosed array"],
            id="unclosed-array",
        ),
        pytest.param(
            'type = "web"\n[env]\nA = "1"\n[env]\n',
            ["web.toml: line 4, column 5: invalid TOML: cannot declare ('env',) twice"],
            id="table-twice",
        ),
        pytest.param(
            'type = "web"\nargs = [\n',
            ["web.toml: end of file: invalid TOML: invalid value (is a [ or a quote left open?)"],
            id="open-at-end",
        ),
        pytest.param(
            'type = "web"\nauto_restart = yes\n',
            [
                "web.toml: line 2, column 16: invalid TOML: invalid value "
                '(a string needs double quotes: "yes")'
            ],
            id="bare-word",
        ),
        pytest.param(
            'type = "web"\nmax_restarts = -\n',
            ["web.toml: line 2, column 16: invalid TOML: invalid value"],
            id="no-quote-hint-for-a-non-word",
        ),
        pytest.param(
            'type = "web"\nstate = "running" "paused"\n',
            [
                "web.toml: line 2, column 19: invalid TOML: "
                "expected newline or end of document after a statement"
            ],
            id="two-values",
        ),
        pytest.param(
            b'type = "web"\nargs = ["caf\xe9"]\n',
            ["web.toml: line 2, column 13: not UTF-8 text (invalid continuation byte)"],
            id="latin-1",
        ),
    ],
)
def test_whole_file_problems(text: str | bytes, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_every_problem_is_listed_in_file_order() -> None:
    text = """
        max_restarts = -1
        argz = ["--verbose"]
        graceful_timeout_seconds = "ten"
        state = "paused"
        [resource_limits]
        open_files = 0
        processes = -3
    """
    assert problems_of(text) == [
        'web.toml: max_restarts: must be a whole number >= 0 or "unlimited" (got -1)',
        'web.toml: argz: unknown key (did you mean "args"?)',
        'web.toml: graceful_timeout_seconds: must be a number (got "ten")',
        "web.toml: resource_limits.open_files: must be a whole number > 0 (got 0)",
        "web.toml: resource_limits.processes: must be a whole number > 0 (got -3)",
        "web.toml: type: required key is missing",
    ]


def test_the_id_problem_is_listed_with_the_others() -> None:
    assert problems_of('id = "api"\ntype = "web"\nlog = 1') == [
        'web.toml: log: must be one of "file", "inherit" or "null" (got 1)',
        'web.toml: id: must be "web", the file name without .toml (got "api")',
    ]


def test_the_file_name_given_is_the_one_shown() -> None:
    assert problems_of("log = 1\ntype = 'x'", filename="/etc/reconciler/specs/web.toml") == [
        '/etc/reconciler/specs/web.toml: log: must be one of "file", "inherit" or "null" (got 1)'
    ]


def test_a_bad_stem_is_a_problem_of_the_file_name() -> None:
    assert problems_of('type = "x"', filename="Bad Name.toml", collector_id="Bad Name") == [
        'Bad Name.toml: file name: "Bad Name" is not a valid collector id: '
        'must match [a-z0-9][a-z0-9_.-]{0,62} (try "bad-name.toml")'
    ]


# --- File names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ignored", "spec"),
    [
        pytest.param("web.toml", False, True, id="spec"),
        pytest.param("web-2.v1_x.toml", False, True, id="dots-dashes-underscores"),
        pytest.param("0.toml", False, True, id="digit"),
        pytest.param("specs/web.toml", False, True, id="path"),
        pytest.param("a" * 63 + ".toml", False, True, id="longest-id"),
        pytest.param("a" * 64 + ".toml", False, False, id="id-too-long"),
        pytest.param("Web.toml", False, False, id="uppercase"),
        pytest.param("Bad Name.toml", False, False, id="space"),
        pytest.param("-web.toml", False, False, id="leading-dash"),
        pytest.param("_web.toml", False, False, id="leading-underscore"),
        pytest.param(".toml", True, False, id="only-suffix"),
        pytest.param(".web.toml", True, False, id="hidden"),
        pytest.param(".web.toml.swp", True, False, id="vim-swap"),
        pytest.param(".#web.toml", True, False, id="emacs-lock"),
        pytest.param("#web.toml#", True, False, id="emacs-autosave"),
        pytest.param("web.toml~", True, False, id="backup"),
        pytest.param("web.toml.bak", True, False, id="bak"),
        pytest.param("web.TOML", True, False, id="upper-suffix"),
        pytest.param("web.yaml", True, False, id="other-format"),
        pytest.param("..data", True, False, id="configmap-symlink"),
        pytest.param("..2024_01_01_00_00_00.1", True, False, id="configmap-dir"),
    ],
)
def test_which_file_names_are_specs(name: str, ignored: bool, spec: bool) -> None:
    assert is_ignored_filename(name) is ignored
    assert is_spec_filename(name) is spec


def test_collector_id_is_the_stem() -> None:
    assert collector_id_from_filename("web.v2.toml") == "web.v2"
    assert collector_id_from_filename("/etc/reconciler/specs/web.toml") == "web"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param(
            "Bad Name.toml",
            'Bad Name.toml: file name: "Bad Name" is not a valid collector id: '
            'must match [a-z0-9][a-z0-9_.-]{0,62} (try "bad-name.toml")',
            id="suggests-a-name",
        ),
        pytest.param(
            "!!!.toml",
            '!!!.toml: file name: "!!!" is not a valid collector id: '
            "must match [a-z0-9][a-z0-9_.-]{0,62}",
            id="nothing-to-suggest",
        ),
        pytest.param(
            "caf\udcc3.toml",
            'caf\udcc3.toml: file name: "caf\\udcc3" is not a valid collector id: '
            'must match [a-z0-9][a-z0-9_.-]{0,62} (try "caf.toml")',
            id="undecodable-name-shown-escaped",
        ),
        pytest.param(
            "web.toml~",
            "web.toml~: file name: not a spec file "
            '(spec files are named <id>.toml and do not start with ".")',
            id="ignored-name",
        ),
    ],
)
def test_collector_id_from_a_bad_name(name: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        collector_id_from_filename(name)
    assert caught.value.problems == [message]


# --- Manager config --------------------------------------------------------------------------


def test_an_empty_manager_config_is_all_defaults() -> None:
    config = parse_manager_config(b"", filename="reconciler.toml")
    assert config.process_manager.enable_auto_restart is True
    assert config.reconciler.on_exit == "stop"


def test_manager_config_problems() -> None:
    text = b"""
[process_manager]
default_graceful_timeout_seconds = "30"
specs_dir = "/srv/specs"

[process_manager.collector_binaries]
procmond = 1

[reconciler]
on_exit = "kep"
"""
    with pytest.raises(InvalidSpec) as caught:
        parse_manager_config(text, filename="reconciler.toml")
    assert caught.value.problems == [
        "reconciler.toml: process_manager.default_graceful_timeout_seconds: "
        'must be a number (got "30")',
        "reconciler.toml: process_manager.specs_dir: "
        "unknown key (it belongs in the [reconciler] table)",
        "reconciler.toml: process_manager.collector_binaries.procmond: must be a string (got 1)",
        'reconciler.toml: reconciler.on_exit: must be one of "stop" or "keep" (got "kep"; '
        'did you mean "keep"?)',
    ]


def test_manager_config_syntax_error() -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_manager_config(b"[reconciler\n", filename="reconciler.toml")
    assert caught.value.problems == [
        "reconciler.toml: line 1, column 12: invalid TOML: expected ']' at the end of a table "
        "declaration"
    ]


# --- Generated specs ------------------------------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
# NUL cannot reach exec, so the models refuse it: generate everything else.
texts = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\0"), max_size=20)
positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
env_names = st.text(alphabet=string.ascii_letters + string.digits + "_.", min_size=1, max_size=12)

OPTIONAL_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "state": st.sampled_from(["running", "paused", "stopped"]),
    "binary_path": texts,
    "args": st.lists(texts, max_size=4),
    "env": st.dictionaries(env_names, texts, max_size=3),
    "working_dir": texts,
    "user": texts,
    "group": texts,
    "auto_restart": st.booleans(),
    "max_restarts": st.integers(min_value=0, max_value=1000) | st.just("unlimited"),
    "graceful_timeout_seconds": st.floats(min_value=0, max_value=1e6) | st.integers(0, 1000),
    "force_timeout_seconds": positive,
    "stop_signal": st.sampled_from(["SIGTERM", "SIGINT", "SIGQUIT", "hup", "SIGUSR1"]),
    "log": st.sampled_from(["file", "inherit", "null"]),
    # Never empty: an empty table means the same as none (tested on its own below).
    "resource_limits": st.fixed_dictionaries(
        {},
        optional={
            "memory_max_bytes": st.integers(1, 2**40),
            "open_files": st.integers(1, 65536),
            "processes": st.integers(1, 4096),
            "cpu_max_percent": st.floats(min_value=0.5, max_value=800),
        },
    ).filter(bool),
    "health_check": st.builds(
        lambda probe, tuning: {**probe, **tuning},
        st.one_of(
            st.fixed_dictionaries({"exec": st.lists(texts, min_size=1, max_size=3)}),
            st.just({"http": "http://127.0.0.1:9101/healthz"}),
            st.just({"tcp": "[::1]:9101"}),
        ),
        st.fixed_dictionaries(
            {}, optional={"interval_seconds": positive, "failure_threshold": st.integers(1, 10)}
        ),
    ),
    "restart_backoff_initial_seconds": positive,
    "restart_backoff_max_seconds": positive,
    "restart_reset_seconds": positive,
}

spec_documents = st.fixed_dictionaries({"type": ids}, optional=OPTIONAL_KEYS)


def toml(document: dict[str, Any]) -> bytes:
    return tomli_w.dumps(document).encode()


def load(document: dict[str, Any]) -> CollectorSpec:
    return parse_spec(toml(document), filename="web.toml", collector_id="web")


KEY_NAMES = sorted(
    {*CollectorSpec.model_fields, "exec", "http", "tcp", "open_files", "argz", "interval_seconds"}
)
# No spaces, so a key cannot spell out the wording the test looks for.
junk_keys = st.sampled_from(KEY_NAMES) | st.text(alphabet='abz_.-"', max_size=6)
toml_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | texts
    | st.sampled_from(["unlimited", "running", "SIGTERM", "http://x", "a:1"])
    | st.dates()
    | st.datetimes()
    | st.times(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(junk_keys, inner, max_size=3),
    max_leaves=8,
)
junk_documents = st.dictionaries(junk_keys, toml_values, max_size=6)


@given(junk_documents)
def test_any_mistake_reads_as_file_key_reason(document: dict[str, Any]) -> None:
    try:
        load(document)
    except InvalidSpec as exc:
        problems = exc.problems
    else:
        return
    assert problems
    assert len(set(problems)) == len(problems)
    for problem in problems:
        assert re.fullmatch(r"web\.toml: [^\n]+: [^\n]+", problem), problem
        # The operator's own values are echoed in quotes; only our wording is checked.
        wording = re.sub(r'"(?:[^"\\]|\\.)*"', '""', problem)
        assert not re.search(
            r"Input should|Value error|validation error|Field required|Extra inputs|"
            r"a valid value|constrained-|literal\[",
            wording,
        ), problem


@given(spec_documents)
def test_generated_specs_round_trip_through_toml(document: dict[str, Any]) -> None:
    spec = load(document)
    written = spec.model_dump(mode="json", exclude_defaults=True)
    again = load(written)
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    assert process_hash(again) == process_hash(spec)


@given(spec_documents, st.randoms(use_true_random=False))
def test_spec_hash_ignores_key_order_and_formatting(document: dict[str, Any], rng: Any) -> None:
    keys = list(document)
    rng.shuffle(keys)
    shuffled = {key: document[key] for key in keys}
    # Tables written inline instead of as [sections], with a comment and blank lines.
    inline = "# a comment\n\n" + "\n".join(
        f"{key} = {_inline(value)}" for key, value in shuffled.items()
    )
    assert spec_hash(load(shuffled)) == spec_hash(load(document))
    assert spec_hash(parse(inline)) == spec_hash(load(document))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_inline(v)}" for k, v in value.items()) + " }"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


@given(spec_documents)
def test_spec_hash_ignores_written_out_defaults_and_the_id_key(document: dict[str, Any]) -> None:
    explicit = {
        "state": "running",
        "args": [],
        "env": {},
        "max_restarts": 3,
        "stop_signal": "SIGTERM",
        "log": "file",
        "resource_limits": {},
        **document,
        "id": "web",
    }
    assert spec_hash(load(explicit)) == spec_hash(load(document))
    assert process_hash(load(explicit)) == process_hash(load(document))


NOT_IDENTITY_KEYS = {
    "state",
    "auto_restart",
    "max_restarts",
    "graceful_timeout_seconds",
    "force_timeout_seconds",
    "stop_signal",
    "health_check",
    "restart_backoff_initial_seconds",
    "restart_backoff_max_seconds",
    "restart_reset_seconds",
    "ready_check",
    "min_ready_seconds",
    "after",
    "rollout_timeout_seconds",
    "rollback",
}


def test_every_spec_key_is_either_identity_or_not() -> None:
    # A new field must be put on one side: does changing it need a restart?
    fields = set(CollectorSpec.model_fields) - {"id"}
    assert set(PROCESS_IDENTITY_KEYS) | NOT_IDENTITY_KEYS == fields
    assert not set(PROCESS_IDENTITY_KEYS) & NOT_IDENTITY_KEYS


@given(spec_documents, st.sampled_from([*sorted(OPTIONAL_KEYS), "type"]), st.data())
def test_process_hash_changes_exactly_when_an_identity_key_changes(
    document: dict[str, Any], key: str, data: st.DataObject
) -> None:
    before = load(document)
    strategy = ids if key == "type" else OPTIONAL_KEYS[key]
    changed = load({**document, key: data.draw(strategy, label=key)})
    value_changed = getattr(changed, key) != getattr(before, key)
    assert (spec_hash(changed) != spec_hash(before)) == value_changed
    if key in PROCESS_IDENTITY_KEYS:
        assert (process_hash(changed) != process_hash(before)) == value_changed
    else:
        assert process_hash(changed) == process_hash(before)


@given(spec_documents)
def test_both_hashes_from_one_dump_are_the_hashes_of_their_own_dumps(
    document: dict[str, Any],
) -> None:
    # spec_hashes (what the scan uses) takes the process keys out of the whole dump;
    # process_hash dumps only those keys.
    spec = load(document)
    assert spec_hashes(spec) == (spec_hash(spec), process_hash(spec))


def test_an_empty_limits_table_is_no_limits() -> None:
    without = parse('type = "web"')
    empty = parse('type = "web"\n[resource_limits]\n')
    assert process_hash(empty) == process_hash(without)
    assert spec_hash(empty) == spec_hash(without)


# --- Starter spec --------------------------------------------------------------------------


def test_starter_spec_writes_the_useful_defaults() -> None:
    text = starter_spec("web", binary_path="/usr/bin/web", args=["--port", "8080"])
    assert text.startswith('# Collector "web": the file name (web.toml) is its id.\n')
    spec = parse(text)
    assert spec.type == "web"
    assert spec.binary_path == "/usr/bin/web"
    assert spec.args == ("--port", "8080")
    assert spec.model_fields_set >= {
        "state",
        "args",
        "auto_restart",
        "max_restarts",
        "graceful_timeout_seconds",
        "log",
    }
    assert "id" not in spec.model_fields_set


@given(
    ids,
    st.none() | ids,
    st.none() | texts,
    st.lists(texts, max_size=5),
)
def test_starter_specs_always_parse(
    collector_id: str, collector_type: str | None, binary: str | None, args: list[str]
) -> None:
    text = starter_spec(collector_id, collector_type=collector_type, binary_path=binary, args=args)
    spec = parse(text, filename=f"{collector_id}.toml", collector_id=collector_id)
    assert spec.type == (collector_type or collector_id)
    assert spec.args == tuple(args)


@pytest.mark.parametrize(
    ("collector_id", "collector_type", "message"),
    [
        pytest.param(
            "Web",
            None,
            '"Web" is not a valid collector id: must match [a-z0-9][a-z0-9_.-]{0,62} (try "web")',
            id="bad-id",
        ),
        pytest.param(
            "web",
            "Proc Mon",
            '"Proc Mon" is not a valid collector type: must match [a-z0-9][a-z0-9_.-]{0,62} '
            '(try "proc-mon")',
            id="bad-type",
        ),
    ],
)
def test_starter_spec_refuses_bad_names(
    collector_id: str, collector_type: str | None, message: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        starter_spec(collector_id, collector_type=collector_type)
    assert caught.value.problems == [message]


# --- JSON Schema ---------------------------------------------------------------------------


def test_schema_describes_a_spec_file() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "reconciler collector spec"
    assert "file name" in schema["description"]
    assert schema["type"] == "object"
    assert schema["required"] == ["type"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(CollectorSpec.model_fields)
    for name in ("ResourceLimits", "HealthCheck"):
        assert schema["$defs"][name]["additionalProperties"] is False
    assert all("description" in field for field in schema["properties"].values())
    # TOML has no null: an editor must not offer it.
    assert '"null"' not in json.dumps(schema).replace('"null"]', "")


def test_schema_is_a_fresh_copy() -> None:
    json_schema()["properties"].clear()
    assert json_schema()["properties"]


TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
}
VALUE_CHECKS: dict[str, Callable[[Any, Any], bool]] = {
    "enum": lambda value, bound: value in bound,
    "const": lambda value, bound: value == bound,
    "pattern": lambda value, bound: re.search(bound, value) is not None,
    "minimum": operator.ge,
    "exclusiveMinimum": operator.gt,
    "maximum": operator.le,
    "minItems": lambda value, bound: len(value) >= bound,
}


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """A small JSON Schema validator for the keywords pydantic emits (the jsonschema
    package is not a dependency); enough to check that the schema accepts what
    ``parse_spec`` accepts and rejects unknown keys."""
    if "$ref" in schema:
        schema = {**root["$defs"][schema["$ref"].split("/")[-1]], **schema}
        del schema["$ref"]
    if "anyOf" in schema:
        branches = [schema_errors(value, branch, root) for branch in schema["anyOf"]]
        return [] if any(not errors for errors in branches) else ["no anyOf branch matches"]
    kind = schema.get("type")
    if kind is not None and not TYPE_CHECKS[kind](value):
        return [f"{value!r} is not {kind}"]
    errors = [
        f"{value!r} fails {keyword}"
        for keyword, check in VALUE_CHECKS.items()
        if keyword in schema and not check(value, schema[keyword])
    ]
    if kind == "array":
        for item in value:
            errors += schema_errors(item, schema.get("items", {}), root)
    if kind == "object":
        errors += table_errors(value, schema, root)
    return errors


def table_errors(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    errors = [f"{key} is required" for key in schema.get("required", []) if key not in value]
    for key, item in value.items():
        if key in properties:
            errors += schema_errors(item, properties[key], root)
        elif extra is False:
            errors.append(f"{key} is not allowed")
        elif isinstance(extra, dict):
            errors += schema_errors(item, extra, root)
    return errors


@given(spec_documents)
def test_the_schema_accepts_valid_specs(document: dict[str, Any]) -> None:
    schema = json_schema()
    assert schema_errors(document, schema, schema) == []


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"type": "web", "argz": []}, id="unknown-key"),
        pytest.param({"type": "web", "resource_limits": {"open_file": 1}}, id="nested-unknown"),
        pytest.param({"args": []}, id="no-type"),
        pytest.param({"type": "web", "max_restarts": -1}, id="bad-union"),
        pytest.param({"type": "web", "log": "syslog"}, id="bad-enum"),
    ],
)
def test_the_schema_rejects_what_parse_spec_rejects(document: dict[str, Any]) -> None:
    schema = json_schema()
    assert schema_errors(document, schema, schema)
    with pytest.raises(InvalidSpec):
        load(document)


def test_the_schema_with_the_jsonschema_package() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"type": "web", "args": ["-v"], "max_restarts": "unlimited"})
    assert not validator.is_valid({"type": "web", "argz": []})


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            'type = "a"\nenv = { TOKEN = 123456 }',
            "a.toml: env.TOKEN: must be a string (got a number, value not shown)",
            id="env-value-wrong-type",
        ),
        pytest.param(
            'type = "a"\nenv = "TOKEN=s3cret"',
            "a.toml: env: must be a table of strings (got a string, value not shown)",
            id="env-not-a-table",
        ),
        pytest.param(
            'type = "a"\n[health_check]\nhttp = "ftp://user:s3cret@host/"',
            "a.toml: health_check.http: must be an http:// or https:// URL "
            "(got a string, value not shown)",
            id="probe-url-with-credentials",
        ),
        pytest.param(
            'type = "a"\nenv = { TOKEN = s3cret }',
            "a.toml: line 2, column 17: invalid TOML: invalid value (a string needs double quotes)",
            id="unquoted-env-value-inline",
        ),
        pytest.param(
            'type = "a"\n[env]\nTOKEN = s3cret',
            "a.toml: line 3, column 9: invalid TOML: invalid value (a string needs double quotes)",
            id="unquoted-env-value-in-table",
        ),
    ],
)
def test_secrets_are_never_echoed(document: str, expected: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(document.encode(), filename="a.toml", collector_id="a")
    assert exc.value.problems == [expected]
    assert "s3cret" not in exc.value.message and "123456" not in exc.value.message
