"""When the spec watch scans and yields: bursts of one spec coalesce, other specs do not wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.source.snapshot import LoadedSpec, SpecSnapshot
from reconciler.source.spec_source import _Pacing
from reconciler.spec.load import parse_spec

INTERVAL = 0.25


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


def _snapshot(generation: int, **args: str) -> SpecSnapshot:
    specs = {}
    for cid, arg in args.items():
        spec = parse_spec(
            f'type = "x"\nbinary_path = "/bin/sleep"\nargs = ["{arg}"]\n'.encode(),
            filename=f"{cid}.toml",
            collector_id=cid,
        )
        specs[cid] = LoadedSpec(cid, Path(f"{cid}.toml"), spec, f"h-{arg}", f"p-{arg}")
    return SpecSnapshot(specs=specs, generation=generation)


def test_the_first_snapshot_and_a_new_spec_soon_after_are_not_held() -> None:
    pace = _Pacing(INTERVAL)
    first = _snapshot(1, a="1")
    assert pace.hold_seconds(first, now=10.0) == 0.0
    pace.yielding(first, now=10.0)
    pace.yielding(_snapshot(2, a="1", b="1"), now=10.01)  # b added
    # c, 0.05 s after b: another spec, so not held (a fixed interval held it 0.2 s).
    assert pace.hold_seconds(_snapshot(3, a="1", b="1", c="1"), now=10.06) == 0.0


def test_the_same_spec_changed_again_within_the_interval_is_held_to_its_end() -> None:
    pace = _Pacing(INTERVAL)
    pace.yielding(_snapshot(1, a="1"), now=10.0)
    pace.yielding(_snapshot(2, a="2"), now=10.5)
    assert pace.hold_seconds(_snapshot(3, a="3"), now=10.6) == approx(0.15)
    # Past the interval, the same spec goes at once.
    assert pace.hold_seconds(_snapshot(3, a="3"), now=10.8) <= 0.0
    # A change of b only, though a changed last time: not held.
    assert pace.hold_seconds(_snapshot(3, a="2", b="1"), now=10.6) == 0.0


def test_scans_are_spaced_by_ten_times_their_cost_at_most_the_interval() -> None:
    pace = _Pacing(INTERVAL)
    pace.scanned(10.0, 10.002, notified=True)  # 2 ms: 20 ms apart
    assert pace.scan_delay(now=10.012) == approx(0.01)
    pace.scanned(11.0, 11.1, notified=True)  # 100 ms: capped at the interval
    assert pace.scan_delay(now=11.1) == approx(INTERVAL)
    pace.scanned(12.0, 12.5, notified=False)  # a timed rescan does not set the pace
    assert pace.scan_delay(now=12.5) == approx(INTERVAL)

