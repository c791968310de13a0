"""``reconciler diff``: what applying a set of spec files would do, from the same ``plan()``.

Pure. Two sources of "observed": the running daemon's own (``POST
/api/v1/plan``), or — for reviewing a pull request with no daemon — a host
that runs exactly an older spec tree (``observed_from``). Either way the lines
come from ``plan()``, the one decider, so a review shows what the daemon will
do: ``restart web (spec changed: args)``, ``update netmond in place
(graceful_timeout_seconds)``, ``start new-one (new spec)``, ``stop gone (spec
file removed)``, ``keep failed-one (failed; a spec change restarts it)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.plan.actions import (
    Hold,
    Ready,
    Restart,
    RolloutDone,
    RolloutFailed,
    Wait,
    describe,
    kind,
)
from reconciler.plan.planner import Desired, Observed, Override, plan
from reconciler.plan.rollout import RolloutSettings
from reconciler.spec.models import ProcessManagerConfig
from reconciler.state import CollectorState, DesiredState


@dataclass(frozen=True, slots=True)
class DiffLine:
    collector_id: str
    action: str
    """``start``, ``restart``, ``update``, ``stop``, ``pause``, ``resume``, ``forget``,
    ``wait``, ``giveup`` or ``keep``."""
    reason: str
    line: str
    difference: bool
    """Whether applying the files changes this collector (``wait`` and ``keep`` do not)."""
    wave: int = 0
    """With ``max_unavailable``: the wave of a restart (1: at once); 0 without."""
    held: str | None = None
    """Why it would wait for other collectors (``after``, a held rollout)."""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.collector_id,
            "action": self.action,
            "reason": self.reason,
            "line": self.line,
            "difference": self.difference,
            "wave": self.wave,
            "held": self.held,
        }


KEEP_FAILED = "failed; a spec change restarts it"


def diff(
    desired: Mapping[str, Desired],
    observed: Mapping[str, Observed],
    now: float,
    *,
    overrides: Mapping[str, Override] | None = None,
    defaults: ProcessManagerConfig | None = None,
    settings: RolloutSettings | None = None,
) -> list[DiffLine]:
    """One line per collector the files would change, plus ``keep`` for failed ones left alone.

    With ``max_unavailable`` a restart says its wave (``restart web in wave 2 (...)``).
    """
    lines = []
    acted = set()
    for action in plan(
        desired, observed, now, overrides=overrides, defaults=defaults, settings=settings
    ):
        acted.add(action.collector_id)
        if isinstance(action, Ready | RolloutDone | RolloutFailed) or (
            isinstance(action, Wait) and not action.backoff
        ):
            continue  # bookkeeping of readiness and rollouts: nothing the files change
        if isinstance(action, Hold):
            held = action.held
            wave = action.wave
            lines.append(
                DiffLine(
                    action.collector_id,
                    kind(held),
                    held.reason,
                    describe(action),
                    difference=True,
                    wave=wave,
                    held=None if action.cause == "wave" else action.reason,
                )
            )
            continue
        lines.append(
            DiffLine(
                action.collector_id,
                kind(action),
                action.reason,
                describe(action),
                difference=not isinstance(action, Wait),
                wave=action.wave if isinstance(action, Restart) else 0,
            )
        )
    for collector_id, seen in observed.items():
        if collector_id in desired and collector_id not in acted:
            if seen.state == CollectorState.FAILED:
                line = f"keep {collector_id} ({KEEP_FAILED})"
                lines.append(DiffLine(collector_id, "keep", KEEP_FAILED, line, difference=False))
    return sorted(lines, key=lambda line: line.collector_id)


def observed_from(applied: Mapping[str, Desired]) -> dict[str, Observed]:
    """A host that runs exactly these specs: each applied, each in its spec's state."""
    states = {
        DesiredState.RUNNING: CollectorState.RUNNING,
        DesiredState.PAUSED: CollectorState.PAUSED,
        DesiredState.STOPPED: CollectorState.STOPPED,
    }
    return {
        collector_id: Observed(
            state=states[d.spec.state],
            applied=d.spec,
            applied_spec_hash=d.spec_hash,
            applied_process_hash=d.process_hash,
            ready=d.spec.state != DesiredState.STOPPED,
            good=d,
        )
        for collector_id, d in applied.items()
    }
