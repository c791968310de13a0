"""Pure parts of spawning: environment composition, binary resolution order, rlimits."""

from __future__ import annotations

import os
import resource

import pytest

from reconciler.errors import SpawnFailed
from reconciler.process.binary import resolve_binary
from reconciler.process.spawn import Identity, build_env, rlimits_for
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
