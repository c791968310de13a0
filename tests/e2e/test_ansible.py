"""The Ansible role of ``deploy/ansible``, applied for real to this machine.

``ansible-playbook`` (this venv's) runs the role with ``connection: local``
into a temporary root: every path the role writes is a role variable pointing
there. It builds the project's wheel on the "controller", creates the
virtualenv, installs the wheel, writes the config and the specs (each checked
by ``reconciler validate`` before it lands), starts the daemon as a plain
background process with a pid file (``reconciler_service_manager:
background``: no systemd here) and ends with ``reconciler wait``. Then, as
molecule would: a second run changes nothing, ``--check`` names what a change
would do and does nothing, a run that changes one spec restarts only that
collector, a run with an invalid spec fails at the
validate step and leaves the collector running, and a changed config reloads
the daemon (SIGHUP) without restarting it. ``ansible-lint`` passes on the role
with the production profile.

Frugal with time and the network: the virtualenv's dependencies are those of
this test environment, put on ``PYTHONPATH`` (pip then takes them as installed
and only installs the project's wheel), and the runs after the first two push
the wheel the role built rather than building it again. Everything Ansible,
pip and the daemon write is under the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import pytest
from packaging.requirements import Requirement

from tests.support import (
    DAEMON_TREES,
    MARK_ENV,
    SESSION_MARK,
    alive,
    cmdline,
    daemon_tree_name,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "deploy" / "ansible" / "roles"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"
SLEEP = shutil.which("sleep") or "/bin/sleep"
PLAY_TIMEOUT_SECONDS = 120


def sleeper(seconds: int = 3600) -> dict[str, Any]:
    """A collector that does nothing for a while; marked for the session's leak check."""
    return {
        "type": "sleeper",
        "binary_path": SLEEP,
        "args": [str(seconds)],
        "env": {MARK_ENV: SESSION_MARK},
        "log": "null",
        "graceful_timeout_seconds": 5,
    }


BASE_SPECS = {"alpha": sleeper(), "beta": sleeper()}
"""reconciler_specs; gamma comes from a file of reconciler_spec_files."""
GAMMA_FILE = f"""# A spec file the role copies as it is, this comment with it. Its id key is
# checked against the file's name: validated under any other name, it fails.
id = "gamma"
type = "sleeper"
binary_path = "{SLEEP}"
args = ["3600"]
log = "null"
graceful_timeout_seconds = 5
env = {{ {MARK_ENV} = "{SESSION_MARK}" }}
"""


# --- what the role is given ---------------------------------------------------------------


def _snapshot_sources(destination: Path) -> Path:
    """The files a wheel is built from, copied: the build writes nothing into the
    checkout, and edits made to it while the tests run do not change the wheel."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    shutil.copytree(
        REPO / "reconciler",
        destination / "reconciler",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return destination


def _dependency_closure(name: str) -> list[metadata.Distribution]:
    """The installed distributions ``name`` needs at run time, itself excluded."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [Requirement(text) for text in metadata.requires(name) or []]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if key in seen:
            continue
        seen[key] = metadata.distribution(requirement.name)
        pending += [Requirement(text) for text in seen[key].requires or []]
    return list(seen.values())


def _dependencies_path(destination: Path) -> Path:
    """A directory of links to the project's installed dependencies (not to the
    project itself, which the role must install): for ``PYTHONPATH``."""
    destination.mkdir()
    for distribution in _dependency_closure("reconciler"):
        site = Path(str(distribution.locate_file("")))
        tops = {Path(str(file)).parts[0] for file in distribution.files or []}
        for top in sorted(tops):
            source = site / top
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and source.exists():
                with contextlib.suppress(FileExistsError):
                    (destination / top).symlink_to(source)
    return destination


def _ansible_environment(base: Path, dependencies: Path) -> dict[str, str]:
    """Ansible, pip and the daemon write only under ``base``."""
    for name in ("home", "ansible-home", "ansible-local-tmp", "ansible-remote-tmp", "tmp"):
        (base / name).mkdir(mode=0o700)
    config = base / "ansible.cfg"
    config.write_text("[defaults]\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(base / "home"),
        "TMPDIR": str(base / "tmp"),
        "PYTHONPATH": str(dependencies),
        "PIP_CACHE_DIR": str(base / "pip-cache"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-local-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(base / "ansible-remote-tmp"),
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_NOCOWS": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PIPELINING": "1",
        # The daemon inherits this: were it to outlive the tests, the session's
        # leak check would find it (its collectors have the mark in their specs).
        MARK_ENV: SESSION_MARK,
    }


# --- a deployment -------------------------------------------------------------------------

_RECAP = re.compile(r"^localhost\s+:\s+(.*)$", re.M)
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*?)\]", re.M)
_RESULT = {
    "changed": re.compile(r"^changed: \[localhost\]", re.M),
    "failed": re.compile(r"^(?:fatal|failed): \[localhost\]", re.M),
}


@dataclass(repr=False)
class Play:
    """One ``ansible-playbook`` run: its exit code, output and recap counts."""

    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        (line,) = _RECAP.findall(self.output)
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}

    def tasks(self, result: str) -> list[str]:
        """The tasks (and handlers) with this result ("changed", "failed"), as "role : name"."""
        found: list[str] = []
        for match in _RESULT[result].finditer(self.output):
            headers = _TASK.findall(self.output, 0, match.start())
            task = headers[-1] if headers else "?"
            if task not in found:
                found.append(task)
        return found

    def succeeded(self) -> Play:
        if self.returncode != 0:
            pytest.fail(repr(self), pytrace=False)
        return self

    def __repr__(self) -> str:
        return f"ansible-playbook exit {self.returncode}:\n{self.output[-8000:]}"


class Deployment:
    """The role installed under ``root``, run again with other variables on demand."""

    def __init__(self, base: Path, *, sources: Path, dependencies: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.env = _ansible_environment(base, dependencies)
        self.playbook = base / "playbook.yml"
        self.playbook.write_text(
            "- name: The reconciler role, on this machine\n"
            "  hosts: localhost\n"
            "  connection: local\n"
            "  gather_facts: false\n"
            "  roles:\n"
            "    - reconciler\n"
        )
        self.inventory = base / "inventory.ini"
        self.inventory.write_text(f"localhost ansible_python_interpreter={sys.executable}\n")
        root = self.root
        self.venv = root / "opt" / "reconciler"
        self.config_path = root / "etc" / "reconciler" / "reconciler.toml"
        self.specs_dir = root / "etc" / "reconciler" / "specs"
        self.state_dir = root / "var" / "lib" / "reconciler"
        self.socket = root / "run" / "reconciler" / "api.sock"
        self.pid_file = root / "run" / "reconciler" / "reconciler.pid"
        self.log_file = root / "var" / "log" / "reconciler" / "reconciler.log"
        self.bin_dir = root / "usr" / "local" / "bin"
        gamma = base / "files" / "gamma.toml"
        gamma.parent.mkdir()
        gamma.write_text(GAMMA_FILE)
        self.variables: dict[str, Any] = {
            "reconciler_service_manager": "background",
            "reconciler_owner": pwd.getpwuid(os.getuid()).pw_name,
            "reconciler_group": grp.getgrgid(os.getgid()).gr_name,
            "reconciler_python": sys.executable,
            "reconciler_os_packages": [],
            "reconciler_source_dir": str(sources),
            "reconciler_venv": str(self.venv),
            "reconciler_bin_dir": str(self.bin_dir),
            # One link is enough to see them made (and each costs a task run).
            "reconciler_bin_links": ["reconciler"],
            "reconciler_config_path": str(self.config_path),
            "reconciler_unit_dir": str(root / "etc" / "systemd" / "system"),
            "reconciler_specs_dir": str(self.specs_dir),
            "reconciler_state_dir": str(self.state_dir),
            "reconciler_socket_path": str(self.socket),
            "reconciler_pid_file": str(self.pid_file),
            "reconciler_log_file": str(self.log_file),
            "reconciler_metrics_address": "127.0.0.1:0",
            "reconciler_default_graceful_timeout_seconds": 5,
            "reconciler_stop_timeout_seconds": 30,
            "reconciler_wait_timeout_seconds": 30,
            "reconciler_spec_files": [str(gamma)],
        }
        self.runs = 0
        self.first: Play | None = None
        self.applied_specs: dict[str, Any] = {}
        """The specs of the last run that succeeded: what the daemon should run."""
        DAEMON_TREES.add(daemon_tree_name(self.state_dir))

    def play(self, specs: dict[str, Any], *options: str, **overrides: Any) -> Play:
        """Run the role with these specs, and these variables changed from the last
        successful run's (which they then replace, unless it was ``--check``)."""
        self.runs += 1
        merged = {**self.variables, **overrides}
        variables = self.base / f"vars-{self.runs}.json"
        variables.write_text(json.dumps({**merged, "reconciler_specs": specs}, indent=2))
        completed = subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                *options,
                "-i",
                str(self.inventory),
                "-e",
                f"@{variables}",
                str(self.playbook),
            ],
            cwd=self.base,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=PLAY_TIMEOUT_SECONDS,
            check=False,
        )
        if completed.returncode == 0 and "--check" not in options:
            self.variables, self.applied_specs = merged, specs
        return Play(completed.returncode, completed.stdout)

    def reconciler(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed ``reconciler`` command, against the installed daemon's socket."""
        return subprocess.run(
            [str(self.venv / "bin" / "reconciler"), *args, "--socket", str(self.socket)],
            cwd=self.base,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def daemon_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text())
        return None

    def collector_pids(self) -> dict[str, int | None]:
        status = self.reconciler("status", "--json")
        assert status.returncode == 0, status.stderr
        return {c["id"]: c["pid"] for c in json.loads(status.stdout)["collectors"]}

    def stop(self) -> None:
        """SIGTERM to the pid in the pid file; wait until it and its collectors are gone."""
        pid = self.daemon_pid()
        if pid is None or not alive(pid):
            return
        try:
            children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            children = []
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(
                lambda: not any(alive(p) for p in [pid, *children]),
                timeout=30,
                message="the daemon and its collectors exit after SIGTERM",
            )
        finally:
            for leftover in [pid, *children]:
                if alive(leftover):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(leftover, signal.SIGKILL)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("ansible")
    deployed = Deployment(
        base,
        sources=_snapshot_sources(base / "sources"),
        dependencies=_dependencies_path(base / "dependencies"),
    )
    # A host has a bin directory: the role links its commands there.
    deployed.bin_dir.mkdir(parents=True)
    try:
        deployed.first = deployed.play(BASE_SPECS)
        yield deployed
    finally:
        deployed.stop()


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_first_run_installs_starts_and_converges(deployment: Deployment) -> None:
    assert deployment.first is not None
    first = deployment.first.succeeded()
    assert "reconciler : Install the package into the virtualenv" in first.tasks("changed")
    assert "reconciler : Restart the background reconciler" in first.tasks("changed")
    # The wheel is installed into the virtualenv, not found elsewhere.
    where = subprocess.run(
        [
            str(deployment.venv / "bin" / "python"),
            "-c",
            "import reconciler; print(reconciler.__file__)",
        ],
        cwd=deployment.base,  # not the checkout, whose reconciler/ a -c script would import
        env=deployment.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(deployment.venv), where.stdout
    assert (deployment.bin_dir / "reconciler").resolve() == deployment.venv / "bin" / "reconciler"
    config = tomllib.loads(deployment.config_path.read_text())
    assert config["reconciler"]["specs_dir"] == str(deployment.specs_dir)
    assert sorted(p.name for p in deployment.specs_dir.iterdir()) == [
        "alpha.toml",
        "beta.toml",
        "gamma.toml",
    ]
    assert (deployment.specs_dir / "gamma.toml").read_text() == GAMMA_FILE
    # A background daemon, by its pid file, running this venv's reconciler on this config.
    pid = deployment.daemon_pid()
    assert pid is not None and alive(pid)
    argv = cmdline(pid)
    assert str(deployment.venv / "bin" / "reconciler") in argv, argv
    assert argv[-3:] == ["run", "--config", str(deployment.config_path)], argv
    assert "watching" in deployment.log_file.read_text()
    assert f"{MARK_ENV}={SESSION_MARK}".encode() in _environ(pid)  # for the leak check
    # Every collector runs (the play ended with `reconciler wait`), with the mark.
    pids = deployment.collector_pids()
    assert sorted(pids) == ["alpha", "beta", "gamma"]
    for collector_id, collector_pid in pids.items():
        assert collector_pid is not None and alive(collector_pid), collector_id
        assert f"{MARK_ENV}={SESSION_MARK}".encode() in _environ(collector_pid)
    assert deployment.reconciler("wait", "--timeout", "10").returncode == 0


@pytest.mark.timeout(90)
def test_a_second_run_changes_nothing(deployment: Deployment) -> None:
    daemon = deployment.daemon_pid()
    before = deployment.collector_pids()
    second = deployment.play(deployment.applied_specs).succeeded()
    assert second.tasks("changed") == []
    assert second.recap["changed"] == 0
    assert deployment.daemon_pid() == daemon
    assert deployment.collector_pids() == before


def _push_the_built_wheel(deployment: Deployment) -> dict[str, str]:
    """Later runs push the wheel the role built, instead of building it again."""
    (wheel,) = (deployment.venv / "wheels").glob("reconciler-*.whl")
    return {"reconciler_wheel": str(wheel)}


@pytest.mark.timeout(90)
def test_a_changed_spec_restarts_only_its_collector_and_a_changed_config_reloads(
    deployment: Deployment,
) -> None:
    daemon = deployment.daemon_pid()
    before = deployment.collector_pids()
    reloads = deployment.log_file.read_text().count("config reloaded")
    seconds = 1801 if deployment.applied_specs["beta"]["args"] == ["1800"] else 1800
    timeout = deployment.variables["reconciler_default_graceful_timeout_seconds"] + 1
    specs = {**deployment.applied_specs, "beta": sleeper(seconds)}
    changes = {"reconciler_default_graceful_timeout_seconds": timeout}
    changes |= _push_the_built_wheel(deployment)
    files = {
        path: path.read_bytes()
        for path in [*deployment.specs_dir.iterdir(), deployment.config_path]
    }
    # --check first: it names what would change, and changes nothing.
    preview = deployment.play(specs, "--check", **changes).succeeded()
    assert preview.tasks("changed") == [
        "reconciler : Write reconciler.toml",
        "reconciler : Write the specs of reconciler_specs",
    ]
    assert {path: path.read_bytes() for path in files} == files
    assert deployment.collector_pids() == before
    result = deployment.play(specs, **changes).succeeded()
    assert result.tasks("changed") == [
        "reconciler : Write reconciler.toml",
        "reconciler : Write the specs of reconciler_specs",
        "reconciler : Reload the background reconciler",
    ]
    assert "changed: [localhost] => (item=beta)" in result.output
    assert "changed: [localhost] => (item=alpha)" not in result.output
    # The spec change restarted beta alone; the config change reloaded the
    # daemon (SIGHUP), which neither restarted it nor touched a collector.
    after = deployment.collector_pids()
    assert after["beta"] != before["beta"]
    assert cmdline(after["beta"]) == [SLEEP, str(seconds)]  # type: ignore[arg-type]
    assert {k: after[k] for k in ("alpha", "gamma")} == {k: before[k] for k in ("alpha", "gamma")}
    assert deployment.daemon_pid() == daemon
    wait_for(
        lambda: deployment.log_file.read_text().count("config reloaded") > reloads,
        timeout=10,
        message="the daemon logs the reload",
    )
    assert deployment.reconciler("wait", "--timeout", "10").returncode == 0
    assert deployment.collector_pids() == after


@pytest.mark.timeout(90)
def test_an_invalid_spec_fails_at_validate_and_its_collector_runs_on(
    deployment: Deployment,
) -> None:
    before = deployment.collector_pids()
    spec_file = deployment.specs_dir / "beta.toml"
    on_disk = spec_file.read_bytes()
    typo = {**sleeper(900), "auto_restrat": True}
    result = deployment.play(
        {**deployment.applied_specs, "beta": typo}, **_push_the_built_wheel(deployment)
    )
    assert result.returncode != 0, result
    assert result.tasks("failed") == ["reconciler : Write the specs of reconciler_specs"]
    assert result.tasks("changed") == []
    # The validator's own message, naming the file by its real name, and the key.
    assert re.search(r"/beta\.toml: auto_restrat: unknown key", result.output), result
    assert spec_file.read_bytes() == on_disk
    assert deployment.collector_pids() == before
    assert deployment.reconciler("wait", "--timeout", "10").returncode == 0


@pytest.mark.timeout(60)
def test_ansible_lint_passes_with_the_production_profile(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local-tmp"),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [str(ANSIBLE_LINT), "--offline", "--profile", "production", "deploy/ansible"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
