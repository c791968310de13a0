"""Hostile input, fuzzed: any bytes or TOML document as a spec file, a manager config or a
state file gives a valid model or one clear error naming the file — never another
exception, never a hang."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import InvalidSpec
from reconciler.spec import CollectorSpec, ManagerConfigFile, parse_manager_config, parse_spec
from reconciler.statefile import SavedState, load_state, loads

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

SPEC_KEYS = [*sorted(CollectorSpec.model_fields), "typo"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(string.ascii_letters + "_", min_size=1, max_size=12), children, max_size=4
        )
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=10), values, max_size=8)


def _toml(document: dict[str, Any]) -> bytes | None:
    try:
        return tomli_w.dumps(_drop_none(document)).encode()
    except (TypeError, ValueError):
        return None


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def _check_spec(data: bytes) -> None:
    try:
        spec = parse_spec(data, filename="web.toml", collector_id="web")
    except InvalidSpec as exc:
        assert exc.code == "INVALID_SPEC" and exc.problems
        for problem in exc.problems:
            assert problem.startswith("web.toml: "), problem
            assert "\n" not in problem and "Traceback" not in problem, problem
        return
    assert isinstance(spec, CollectorSpec)


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_as_a_spec_file(data: bytes) -> None:
    _check_spec(data)


@FUZZ
@given(documents)
def test_any_toml_document_as_a_spec_file(document: dict[str, Any]) -> None:
    data = _toml(document)
    if data is not None:
        _check_spec(data)


@FUZZ
@given(st.binary(max_size=2000) | documents.map(lambda d: _toml(d) or b""))
def test_any_input_as_a_manager_config(data: bytes) -> None:
    try:
        config = parse_manager_config(data, filename="reconciler.toml")
    except InvalidSpec as exc:
        assert all(p.startswith("reconciler.toml: ") for p in exc.problems), exc.problems
        return
    assert isinstance(config, ManagerConfigFile)


@FUZZ
@given(st.text(max_size=2000))
def test_any_text_as_a_state_file(text: str) -> None:
    try:
        state = loads(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(state, SavedState)


@FUZZ
@given(st.binary(max_size=500))
def test_any_bytes_in_state_toml_are_moved_aside(tmp_path_factory: Any, data: bytes) -> None:
    directory: Path = tmp_path_factory.mktemp("state")
    path = directory / "state.toml"
    path.write_bytes(data)
    state = load_state(path)
    assert isinstance(state, SavedState)
    aside = directory / "state.toml.corrupt"
    assert path.exists() != aside.exists(), "either it loaded, or it was moved aside"
