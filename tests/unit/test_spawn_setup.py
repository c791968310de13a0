"""Pure parts of spawning: environment composition, binary resolution order, rlimits."""

from __future__ import annotations

import os
import resource

import pytest

from reconciler.errors import SpawnFailed
from reconciler.process.binary import resolve_binary
from reconciler.process.spawn import JOIN_CGROUP, Identity, build_env, exec_chain, rlimits_for
from reconciler.spec import ResourceLimits

PARENT = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "HOME": "/root",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "PYTHONPATH": "/x",
}


@pytest.mark.parametrize(
    ("spec_env", "identity", "expected_subset", "absent"),
    [
        pytest.param(
            {},
            None,
            {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C"},
            {"AWS_SECRET_ACCESS_KEY", "PYTHONPATH"},
            id="minimal-base",
        ),
        pytest.param({"PATH": "/opt/bin"}, None, {"PATH": "/opt/bin"}, set(), id="spec-wins"),
        pytest.param(
            {},
            Identity(65534, 65534, (65534,), "nobody", "/nonexistent", "/bin/false"),
            {"HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody"},
            set(),
            id="run-as-user-identity",
        ),
    ],
)
def test_build_env(spec_env, identity, expected_subset, absent) -> None:
    env = build_env(collector_id="web", spec_env=spec_env, identity=identity, parent_env=PARENT)
    assert expected_subset.items() <= env.items()
    assert env["RECONCILER_COLLECTOR_ID"] == "web"
    assert not absent & env.keys()


def test_path_defaults_when_the_parent_has_none() -> None:
    env = build_env(collector_id="a", spec_env={}, identity=None, parent_env={})
    assert "/usr/bin" in env["PATH"]


def _executable(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_spec_binary_path_comes_first(tmp_path) -> None:
    own = _executable(tmp_path, "own")
    configured = _executable(tmp_path, "configured")
    assert (
        resolve_binary(collector_type="t", binary_path=own, collector_binaries={"t": configured})
        == own
    )


def test_configured_binary_comes_second(tmp_path) -> None:
    configured = _executable(tmp_path, "configured")
    assert (
        resolve_binary(collector_type="t", binary_path=None, collector_binaries={"t": configured})
        == configured
    )


def test_bare_name_is_looked_up_on_path(tmp_path) -> None:
    _executable(tmp_path, "mycollector")
    found = resolve_binary(
        collector_type="t",
        binary_path="mycollector",
        collector_binaries={},
        search_path=str(tmp_path),
    )
    assert found == str(tmp_path / "mycollector")


def test_fallback_dirs_are_named_when_nothing_is_found() -> None:
    with pytest.raises(SpawnFailed) as exc:
        resolve_binary(collector_type="no-such-type-xyz", binary_path=None, collector_binaries={})
    message = exc.value.message
    assert "/usr/local/bin/no-such-type-xyz (not found)" in message
    assert "/usr/bin/no-such-type-xyz (not found)" in message
    assert os.path.abspath("./target/release/no-such-type-xyz") in message


def test_target_release_is_the_last_fallback(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "target" / "release").mkdir(parents=True)
    built = _executable(tmp_path / "target" / "release", "procmond-test-only")
    monkeypatch.chdir(tmp_path)
    assert (
        resolve_binary(collector_type="procmond-test-only", binary_path=None, collector_binaries={})
        == built
    )


def test_rlimits_skip_what_the_cgroup_enforces() -> None:
    limits = ResourceLimits(open_files=10, memory_max_bytes=1 << 30, processes=5)
    assert rlimits_for(limits, enforced_by_cgroup=set()) == [
        (resource.RLIMIT_NOFILE, 10),
        (resource.RLIMIT_AS, 1 << 30),
        (resource.RLIMIT_NPROC, 5),
    ]
    assert rlimits_for(limits, enforced_by_cgroup={"memory_max_bytes", "processes"}) == [
        (resource.RLIMIT_NOFILE, 10),
    ]
    assert rlimits_for(None, enforced_by_cgroup=set()) == []


NOBODY = Identity(65534, 65534, (65534, 100), "nobody", "/nonexistent", "/bin/false")
PROCS = "/sys/fs/cgroup/r/a/cgroup.procs"


@pytest.mark.parametrize(
    ("cgroup_procs", "rlimits", "identity", "steps", "popen_user"),
    [
        pytest.param(None, [], None, [], None, id="nothing-to-set-up-execs-directly"),
        pytest.param(None, [], NOBODY, [], 65534, id="user-alone-is-popens-own"),
        pytest.param(PROCS, [], None, ["sh"], None, id="cgroup"),
        pytest.param(None, [(resource.RLIMIT_NOFILE, 9)], None, ["prlimit"], None, id="rlimits"),
        pytest.param(
            PROCS,
            [(resource.RLIMIT_NOFILE, 9)],
            NOBODY,
            ["sh", "prlimit", "setpriv"],
            None,
            id="all-three-user-last",
        ),
    ],
)
def test_exec_chain_orders_the_steps(cgroup_procs, rlimits, identity, steps, popen_user) -> None:
    argv = ["/usr/bin/collector", "--flag", "; rm -rf /"]
    plan = exec_chain(argv, cgroup_procs=cgroup_procs, rlimits=rlimits, identity=identity)
    assert plan.argv[-len(argv) :] == argv, "the collector's argv ends the chain, untouched"
    assert plan.user == popen_user
    names = [os.path.basename(part) for part in plan.argv[: -len(argv)]]
    assert [n for n in names if n in ("sh", "prlimit", "setpriv")] == steps
    if cgroup_procs is not None:
        # The spec's values are arguments, never part of the shell program.
        assert plan.argv[1:3] == ["-c", JOIN_CGROUP] and PROCS in plan.argv
    if identity is not None and steps:
        assert "--reuid=65534" in plan.argv and "--groups=65534,100" in plan.argv


def test_exec_chain_sets_core_unlimited() -> None:
    limits = rlimits_for(ResourceLimits(core_dump=True), enforced_by_cgroup=set())
    plan = exec_chain(["/bin/true"], cgroup_procs=None, rlimits=limits, identity=None)
    assert "--core=unlimited:unlimited" in plan.argv
