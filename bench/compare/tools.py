"""The supervisors compared: one config for the same programs, the command, and "stop one".

Used by ``bench/compare_bench.py`` and ``bench/scaling.py``. supervisord and circus come from a
venv of their own that ``tools_venv`` (or ``bench/compare/setup-peers.sh``) creates in
``.bench/peers-venv`` (git-ignored; pinned versions, never a project dependency). The reconciler
is the ``reconciler`` command of ``.bench/reconciler-venv``, where ``reconciler_venv`` installs
the working tree as users install it: ``pip install`` of the project (a wheel built from a copy
of the tree), not the developer's editable install, whose import finder alone costs every
interpreter start ~10 ms (``bench/status_cost.py``). ``compare_bench.py --reconciler-install dev``
measures the venv running the benchmark instead.

Besides a config and a command, each tool says how an operator runs a no-op control command
(``control_command``: each tool's ``status``) and adds one program to a running fleet
(``add_program``: the file changed, then whatever the tool needs to act on it).

The settings chosen for comparability (each tool's defaults otherwise):

- restart on any exit, never give up: reconciler ``max_restarts = "unlimited"``; supervisord
  ``autorestart = true`` and a huge ``startretries``; circus ``respawn = true``, ``max_retry = -1``.
- output discarded: reconciler ``log = "null"``; circus ``close_child_stdout/stderr``;
  supervisord ``stdout/stderr_logfile = NONE`` (it still reads a pipe per program: its design).
- ``Policy.group_signals``: supervisord ``stopasgroup``/``killasgroup``, circus ``stop_children``.
  The reconciler has no such switch: it always signals the whole group and kills its cgroup.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import tomli_w

ROOT = Path(__file__).resolve().parents[2]
PEERS_VENV = ROOT / ".bench" / "peers-venv"
RECONCILER_VENV = ROOT / ".bench" / "reconciler-venv"
PACKAGING = ("pyproject.toml", "README.md", "reconciler")
"""What ``pip install`` of the project reads: copied, so that the build writes nothing into the
working tree (setuptools leaves ``build/`` and ``*.egg-info`` beside its input)."""
SUPERVISOR_VERSION = "4.3.0"
CIRCUS_VERSION = "0.19.0"
CTL_TIMEOUT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Program:
    """One supervised program; its argv is unique, which is how the benchmark recognises it."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    graceful_timeout_seconds: float
    group_signals: bool
    env: tuple[tuple[str, str], ...] = ()
    """Added to every program's environment (the test suite's leak mark, when it runs us)."""


class Tool(Protocol):
    name: str

    def write_config(self, workdir: Path, programs: Sequence[Program], policy: Policy) -> None: ...

    def command(self, workdir: Path) -> list[str]: ...

    def stop_program(self, workdir: Path, name: str) -> None:
        """Stop one program the way an operator would, with the tool's own CLI."""
        ...

    def control_command(self, workdir: Path) -> list[str]:
        """The tool's ``status``: a control command that changes nothing."""
        ...

    def add_program(self, workdir: Path, program: Program, policy: Policy) -> None:
        """Add one program to the running tool, as an operator would: config, then CLI."""
        ...

    def cleanup(self, workdir: Path) -> None:
        """Remove what the tool leaves outside ``workdir`` once it has exited."""
        ...


class Reconciler:
    name = "reconciler"

    def __init__(self, executable: Path) -> None:
        self.executable = executable

    def write_config(self, workdir: Path, programs: Sequence[Program], policy: Policy) -> None:
        specs = workdir / "specs"
        specs.mkdir()
        for program in programs:
            (specs / f"{program.name}.toml").write_text(self._spec(program, policy))

    @staticmethod
    def _spec(program: Program, policy: Policy) -> str:
        spec: dict[str, object] = {
            "type": "bench",
            "binary_path": program.argv[0],
            "args": list(program.argv[1:]),
            "log": "null",
            "max_restarts": "unlimited",
            "graceful_timeout_seconds": policy.graceful_timeout_seconds,
        }
        if policy.env:
            spec["env"] = dict(policy.env)
        return tomli_w.dumps(spec)

    def command(self, workdir: Path) -> list[str]:
        return [
            str(self.executable),
            "run",
            "--specs",
            str(workdir / "specs"),
            "--state-dir",
            str(workdir / "state"),
            "--metrics-address",
            "127.0.0.1:0",
            "--socket",
            str(workdir / "api.sock"),
        ]

    def stop_program(self, workdir: Path, name: str) -> None:
        # Declarative: the operator's "stop" is removing the spec file.
        (workdir / "specs" / f"{name}.toml").unlink()

    def control_command(self, workdir: Path) -> list[str]:
        return [str(self.executable), "status", "--socket", str(workdir / "api.sock")]

    def add_program(self, workdir: Path, program: Program, policy: Policy) -> None:
        # Declarative: adding is writing the file (atomically, as git or Ansible would; the
        # temporary name starts with "." so the reconciler ignores it).
        specs = workdir / "specs"
        temporary = specs / f".{program.name}.toml.tmp"
        temporary.write_text(self._spec(program, policy))
        temporary.rename(specs / f"{program.name}.toml")

    def cleanup(self, workdir: Path) -> None:
        # A daemon that was killed leaves its per-state-dir cgroup tree (named as
        # reconciler.daemon names it) for a successor: there is none, so remove it.
        own = _own_cgroup()
        if own is None:
            return
        digest = hashlib.sha256(str((workdir / "state").resolve()).encode()).hexdigest()[:12]
        tree = own / f"reconciler-{digest}"
        if not tree.is_dir():
            return
        for run in [*(child for child in tree.iterdir() if child.is_dir()), tree]:
            with contextlib.suppress(OSError):
                (run / "cgroup.kill").write_text("1")
            with contextlib.suppress(OSError):
                run.rmdir()


class Supervisord:
    """supervisord; ``one_group`` puts every program in one ``[group:fleet]``.

    supervisord shuts down one group after the other, and each ``[program:]`` is a group of its
    own: the grouped variant shows what an operator can do about the serial stop.
    """

    name = "supervisord"

    def __init__(self, venv: Path, *, one_group: bool = False) -> None:
        self.venv = venv
        self.one_group = one_group

    def write_config(self, workdir: Path, programs: Sequence[Program], policy: Policy) -> None:
        lines = [
            "[unix_http_server]",
            f"file = {workdir}/supervisor.sock",
            "[supervisord]",
            "nodaemon = true",
            f"logfile = {workdir}/supervisord.log",
            f"pidfile = {workdir}/supervisord.pid",
            f"childlogdir = {workdir}",
            # A pipe pair per program: 500 programs need more than the default 1024 fds.
            "minfds = 8192",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl = unix://{workdir}/supervisor.sock",
        ]
        for program in programs:
            lines += self._section(program, policy)
        if self.one_group:
            names = ",".join(program.name for program in programs)
            lines += ["[group:fleet]", f"programs = {names}"]
        (workdir / "supervisord.conf").write_text("\n".join(lines) + "\n")

    @staticmethod
    def _section(program: Program, policy: Policy) -> list[str]:
        group = str(policy.group_signals).lower()
        lines = [
            f"[program:{program.name}]",
            # supervisord splits with shlex and expands %(...)s: escape both.
            f"command = {shlex.join(program.argv).replace('%', '%%')}",
            "autorestart = true",
            "startretries = 1000000",
            f"stopwaitsecs = {policy.graceful_timeout_seconds:g}",
            f"stopasgroup = {group}",
            f"killasgroup = {group}",
            "stdout_logfile = NONE",
            "stderr_logfile = NONE",
        ]
        if policy.env:
            lines.append("environment = " + ",".join(f'{k}="{v}"' for k, v in policy.env))
        return lines

    def command(self, workdir: Path) -> list[str]:
        return [
            str(self.venv / "bin" / "supervisord"),
            "-n",
            "-c",
            str(workdir / "supervisord.conf"),
        ]

    def stop_program(self, workdir: Path, name: str) -> None:
        ctl = self.venv / "bin" / "supervisorctl"
        conf = workdir / "supervisord.conf"
        _run_ctl([str(ctl), "-c", str(conf), "stop", f"fleet:{name}" if self.one_group else name])

    def control_command(self, workdir: Path) -> list[str]:
        ctl = self.venv / "bin" / "supervisorctl"
        return [str(ctl), "-c", str(workdir / "supervisord.conf"), "status"]

    def add_program(self, workdir: Path, program: Program, policy: Policy) -> None:
        if self.one_group:
            raise NotImplementedError("add_program with one [group:]")
        conf = workdir / "supervisord.conf"
        with conf.open("a") as file:
            file.write("\n".join(self._section(program, policy)) + "\n")
        # "update": re-read the config, add what is new and start it (autostart).
        ctl = self.venv / "bin" / "supervisorctl"
        _run_ctl([str(ctl), "-c", str(conf), "update"])

    def cleanup(self, workdir: Path) -> None:
        pass


class Circus:
    name = "circus"

    def __init__(self, venv: Path) -> None:
        self.venv = venv

    @staticmethod
    def _endpoint(workdir: Path) -> str:
        # ipc, not the default tcp://127.0.0.1:5555 that a concurrent run would collide on.
        return f"ipc://{workdir}/circus-control.sock"

    def write_config(self, workdir: Path, programs: Sequence[Program], policy: Policy) -> None:
        lines = [
            "[circus]",
            f"endpoint = {self._endpoint(workdir)}",
            f"pubsub_endpoint = ipc://{workdir}/circus-pubsub.sock",
            # Setting stats_endpoint would start circusd-stats, an extra child: leave it unset.
            "statsd = false",
            "check_delay = 1",  # the default, stated: how often circus looks for dead processes
        ]
        for program in programs:
            lines += self._section(program, policy)
        (workdir / "circus.ini").write_text("\n".join(lines) + "\n")

    @staticmethod
    def _section(program: Program, policy: Policy) -> list[str]:
        lines = [
            f"[watcher:{program.name}]",
            f"cmd = {program.argv[0]}",
            f"args = {shlex.join(program.argv[1:])}",
            "numprocesses = 1",
            "respawn = true",
            "max_retry = -1",
            "copy_env = true",  # as the others pass PATH, which the sh programs need
            f"graceful_timeout = {policy.graceful_timeout_seconds:g}",
            f"stop_children = {str(policy.group_signals).lower()}",
            "close_child_stdout = true",
            "close_child_stderr = true",
        ]
        if policy.env:
            lines += [f"[env:{program.name}]", *(f"{k} = {v}" for k, v in policy.env)]
        return lines

    def command(self, workdir: Path) -> list[str]:
        return [
            str(self.venv / "bin" / "circusd"),
            "--log-level",
            "info",
            str(workdir / "circus.ini"),
        ]

    def stop_program(self, workdir: Path, name: str) -> None:
        ctl = self.venv / "bin" / "circusctl"
        endpoint = self._endpoint(workdir)
        timeout = str(CTL_TIMEOUT_SECONDS)
        _run_ctl(
            [str(ctl), "--endpoint", endpoint, "--timeout", timeout, "stop", name, "--waiting"]
        )

    def _ctl(self, workdir: Path, *command: str) -> list[str]:
        ctl = self.venv / "bin" / "circusctl"
        endpoint = self._endpoint(workdir)
        return [str(ctl), "--endpoint", endpoint, "--timeout", str(CTL_TIMEOUT_SECONDS), *command]

    def control_command(self, workdir: Path) -> list[str]:
        return self._ctl(workdir, "status")

    def add_program(self, workdir: Path, program: Program, policy: Policy) -> None:
        conf = workdir / "circus.ini"
        with conf.open("a") as file:
            file.write("\n".join(self._section(program, policy)) + "\n")
        # "reloadconfig": re-read the file; new watchers are added and started.
        _run_ctl(self._ctl(workdir, "reloadconfig"))

    def cleanup(self, workdir: Path) -> None:
        pass


def _run_ctl(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CTL_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {result.stdout}{result.stderr}")


def _own_cgroup() -> Path | None:
    """Our cgroup v2 directory (a daemon we start creates its tree there), if any."""
    with contextlib.suppress(OSError):
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        unified = next((Path(f[1]) for f in mounts if len(f) > 2 and f[2] == "cgroup2"), None)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if unified is not None and line.startswith("0::"):
                return unified / line[3:].strip().lstrip("/")
    return None


def tools_venv(path: Path = PEERS_VENV) -> Path:
    """Create (once, then reuse) a venv with supervisor and circus at pinned versions.

    Separate from the project's venv on purpose: the tools compared against must never become
    dependencies of the project, nor share its packages (circus pins its own psutil/tornado).
    """
    wanted = f"supervisor=={SUPERVISOR_VERSION}\ncircus=={CIRCUS_VERSION}\n"
    marker = path / "bench-tools.txt"
    if marker.exists() and marker.read_text() == wanted:
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if path.parent.name == ".bench" and not ignore.exists():
        ignore.write_text("*\n")  # nothing in .bench/ is ever committed
    print(f"creating {path} with {' '.join(wanted.split())} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", *wanted.split()], check=True, timeout=900)
    marker.write_text(wanted)
    return path


def _ensure_venv(path: Path) -> list[str]:
    """A venv at ``path`` (made if missing, under a git-ignored ``.bench/``); its pip command."""
    if not (path / "bin" / "python").exists():
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = path.parent / ".gitignore"
        if path.parent.name == ".bench" and not ignore.exists():
            ignore.write_text("*\n")  # nothing in .bench/ is ever committed
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]


def reconciler_venv(path: Path = RECONCILER_VENV, source: Path = ROOT) -> Path:
    """A venv holding the working tree's reconciler as a regular (non-editable) install.

    Re-installed at every call, so that it is the code under test (``code_under_test`` in the
    results names the commit and any uncommitted change): the first call also installs the
    dependencies (~20 s); later ones rebuild only the project (a few seconds).
    """
    pip = _ensure_venv(path)
    print(f"installing {source} into {path} (pip install, not editable) ...", file=sys.stderr,
          flush=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-build-") as scratch:
        tree = Path(scratch) / "reconciler-src"
        tree.mkdir()
        for name in PACKAGING:
            if (source / name).is_dir():
                shutil.copytree(source / name, tree / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source / name, tree / name)
        # Dependencies once (only if missing), then the project itself, always: pip would call
        # the same version "already satisfied" and keep the previous build.
        subprocess.run([*pip, "install", str(tree)], check=True, timeout=900)
        subprocess.run([*pip, "install", "--no-deps", "--force-reinstall", str(tree)],
                       check=True, timeout=900)
    # As the README's install does: the -OO bytecode `reconciler run` starts again under.
    subprocess.run([str(path / "bin" / "python"), "-OO", "-m", "compileall", "-q", "-j0",
                    str(path / "lib")], check=True, timeout=900, stdout=subprocess.DEVNULL)
    return path


def _pip_versions(venv: Path) -> dict[str, str]:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    listed = subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, check=True, timeout=120
    )
    return {entry["name"].lower(): entry["version"] for entry in json.loads(listed.stdout)}


def versions(venv: Path | None, reconciler_venv: Path | None = None) -> dict[str, str]:
    """Versions of the tools (and what they run on) for the results file; ``reconciler_venv``:
    where the reconciler measured is installed (None: the venv running the benchmark)."""
    if reconciler_venv is None:
        found = {
            "reconciler": importlib.metadata.version("reconciler"),
            "psutil (reconciler venv)": importlib.metadata.version("psutil"),
        }
    else:
        own = _pip_versions(reconciler_venv)
        found = {"reconciler": own["reconciler"], "psutil (reconciler venv)": own["psutil"]}
    if venv is None:
        return found
    installed = _pip_versions(venv)
    for name in ("supervisor", "circus", "tornado", "pyzmq", "psutil"):
        if name in installed:
            found[name if name != "psutil" else "psutil (tools venv)"] = installed[name]
    return found
