"""The state file: round trip, atomic writes, and what happens to a bad one."""

from __future__ import annotations

import dataclasses
import stat

import tomli_w

from reconciler.plan.planner import Override
from reconciler.plan.rollout import Rejected
from reconciler.state import DesiredState
from reconciler.statefile import (
    STATE_VERSION,
    AdoptionRecord,
    SavedState,
    StateRenderer,
    _record_to_toml,
    load_state,
    save_state,
)

STATE = SavedState(
    overrides={"web": Override(DesiredState.PAUSED, "abc", "paused by operator")},
    collectors={
        "web": AdoptionRecord(
            collector_type="procmond",
            pid=42,
            start_ticks=1234,
            started_wall=1.5,
            cgroup_path="/sys/fs/cgroup/x/web-1",
            spec={"type": "procmond", "args": ["-v"]},
            spec_hash="abc",
            process_hash="def",
            ready_spec=True,
            rejected=Rejected("bad", "rollout not ready within 120 s", 3.25),
        ),
        "db": AdoptionRecord(
            collector_type="x",
            pid=7,
            start_ticks=9,
            started_wall=2.0,
            cgroup_path=None,
            spec={"type": "x"},
            spec_hash="1",
            process_hash="2",
        ),
    },
)


def test_round_trip(tmp_path) -> None:
    path = tmp_path / "state.toml"
    save_state(path, STATE)
    assert load_state(path) == STATE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.toml"], "temporary file left behind"


def test_missing_file_is_an_empty_state(tmp_path) -> None:
    assert load_state(tmp_path / "state.toml") == SavedState()


def test_corrupt_file_is_moved_aside(tmp_path) -> None:
    path = tmp_path / "state.toml"
    path.write_text("version = 1\n[collectors.web]\npid = 'not a number'\n")
    assert load_state(path) == SavedState()
    assert (tmp_path / "state.toml.corrupt").exists() and not path.exists()


def test_unknown_version_is_not_trusted(tmp_path) -> None:
    path = tmp_path / "state.toml"
    path.write_text("version = 99\n")
    assert load_state(path) == SavedState()


def _whole_document(state: SavedState) -> str:
    """The state file as one ``tomli_w.dumps`` of the whole document."""
    overrides = {
        cid: {"action": str(o.action), "spec_hash": o.spec_hash, "reason": o.reason}
        for cid, o in sorted(state.overrides.items())
    }
    collectors = {cid: _record_to_toml(r) for cid, r in sorted(state.collectors.items())}
    return tomli_w.dumps(
        {"version": STATE_VERSION, "overrides": overrides, "collectors": collectors}
    )


def test_the_renderer_writes_what_one_dump_of_the_document_would() -> None:
    renderer = StateRenderer()
    for state in (SavedState(), STATE, dataclasses.replace(STATE, overrides={})):
        assert renderer.dumps(state) == _whole_document(state)


def test_the_renderer_renders_a_changed_record_again_and_drops_a_gone_one() -> None:
    renderer = StateRenderer()
    renderer.dumps(STATE)
    moved = dict(STATE.collectors)
    moved["web"] = dataclasses.replace(moved["web"], pid=43, start_ticks=1300, rejected=None)
    del moved["db"]
    later = SavedState(overrides=STATE.overrides, collectors=moved)
    text = renderer.dumps(later)
    assert text == _whole_document(later)
    assert "pid = 43" in text and "[collectors.db]" not in text
