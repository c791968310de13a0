"""The deployment artefacts of ``deploy/`` agree with the code they deploy.

What an operator copies from ``deploy/`` must work with this version: the
example config names every config key (so a new key cannot go undocumented),
example specs parse, every command line in the files is one the CLI accepts,
the DaemonSet probes the paths and port DESIGN §8 names, the systemd unit has
the settings the supervisor's design depends on, and the Ansible role uses no
variable it does not define. Pure file checks, plus ``systemd-analyze verify``
and ``kubectl kustomize`` where those tools are installed.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from pydantic import BaseModel

from reconciler.cli import SUBCOMMANDS, main, parse_args
from reconciler.spec import parse_manager_config, parse_spec
from reconciler.spec.models import (
    ManagerConfigFile,
    ProcessManagerConfig,
    ReconcilerSettings,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ROLE = DEPLOY / "ansible" / "roles" / "reconciler"
UNIT = DEPLOY / "systemd" / "reconciler.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
EXAMPLE_CONFIG = DEPLOY / "reconciler.toml"

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
TEXT_FILES = sorted(
    path
    for path in DEPLOY.rglob("*")
    if path.is_file() and path.suffix not in {".pyc"} and "__pycache__" not in path.parts
)
SUBCOMMAND_NAMES = [subcommand.name for subcommand in SUBCOMMANDS]
CONFIG_TABLES: dict[str, type[BaseModel]] = {
    "process_manager": ProcessManagerConfig,
    "reconciler": ReconcilerSettings,
}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _kubernetes_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in _documents(path):
            yield path, document


def _object(kind: str, name: str) -> dict[str, Any]:
    found = [
        obj
        for _, obj in _kubernetes_objects()
        if obj["kind"] == kind and obj["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _daemonset_container() -> dict[str, Any]:
    pod = _object("DaemonSet", "reconciler")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "reconciler"]
    assert isinstance(container, dict)
    return container


def _pod_config() -> ManagerConfigFile:
    data = _object("ConfigMap", "reconciler-config")["data"]["reconciler.toml"]
    return parse_manager_config(data.encode(), filename="reconciler-config/reconciler.toml")


def _containerfile_instruction(name: str) -> list[str]:
    """The JSON (exec) form of a top-level Containerfile instruction, e.g. ENTRYPOINT."""
    logical = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    (line,) = [line for line in logical.splitlines() if line.startswith(f"{name} ")]
    value: list[str] = json.loads(line.removeprefix(f"{name} "))
    return value


def _accepts(argv: list[str]) -> None:
    """Fail unless the real CLI parser takes ``argv`` (``reconciler`` left out)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_args(argv)
    except SystemExit:
        pytest.fail(f"`reconciler {shlex.join(argv)}` is not accepted: {stderr.getvalue()}")


def _help_flags(subcommand: str) -> set[str]:
    """The long options ``reconciler SUBCOMMAND --help`` lists."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([subcommand, "--help"]) == 0
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", stdout.getvalue()))


# --- every file ------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_files_parse(path: Path) -> None:
    assert _documents(path), f"{_rel(path)} has no YAML document"


def test_the_artefacts_exist() -> None:
    for path in (
        UNIT,
        EXAMPLE_CONFIG,
        CONTAINERFILE,
        DEPLOY / "README.md",
        KUBERNETES / "kustomization.yaml",
        KUBERNETES / "servicemonitor.yaml",
        DEPLOY / "ansible" / "playbook.yml",
        *(ROLE / part / "main.yml" for part in ("tasks", "defaults", "handlers", "meta")),
    ):
        assert path.is_file(), _rel(path)


def test_every_long_option_in_the_files_is_one_the_cli_has() -> None:
    """`reconciler SUB ... --flag` anywhere in deploy/: SUB exists and has --flag."""
    usage = re.compile(r"\breconciler\s+(" + "|".join(SUBCOMMAND_NAMES) + r")\b([^\n`#;&|]*)")
    seen = 0
    for path in TEXT_FILES:
        for match in usage.finditer(path.read_text(encoding="utf-8")):
            subcommand, rest = match.groups()
            flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest.split(" -- ")[0]))
            unknown = flags - _help_flags(subcommand)
            assert not unknown, f"{_rel(path)}: `reconciler {subcommand}` has no {unknown}"
            seen += 1
    assert seen > 10  # the pattern still finds the command lines


# --- the manager config ------------------------------------------------------------------


def test_example_config_is_valid_and_shows_the_defaults() -> None:
    config = parse_manager_config(EXAMPLE_CONFIG.read_bytes(), filename=str(EXAMPLE_CONFIG))
    assert config == ManagerConfigFile()


def test_example_config_names_every_key() -> None:
    """A key added to the config models must be documented in deploy/reconciler.toml."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    assert set(raw) == set(ManagerConfigFile.model_fields)
    for table, model in CONFIG_TABLES.items():
        # A key whose default is "not set" cannot be written in TOML: it is shown commented out.
        optional = {key for key, field in model.model_fields.items() if field.default is None}
        assert set(raw[table]) == set(model.model_fields) - optional, table
        for key in optional:
            assert re.search(rf"^# {key} = ", text, re.M), f"{table}.{key} is not documented"


def test_pod_config_listens_for_the_kubelet_and_stops_collectors() -> None:
    settings = _pod_config().reconciler
    host, _, port = settings.metrics_address.rpartition(":")
    assert host == "0.0.0.0", "probes and Prometheus reach the pod's IP, not its loopback"
    assert int(port) == 9184
    # Collectors die with the container: there is never anything to adopt.
    assert settings.on_exit == "stop"


# --- the systemd unit --------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_unit_runs_and_reloads_the_daemon() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify", "the daemon reports READY=1 after its first reconcile"
    assert service["NotifyAccess"] == "main", "only the daemon itself, never a collector"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/reconciler"
    _accepts(argv[1:])
    assert argv[1] == "run"
    assert argv[argv.index("--config") + 1] == "/etc/reconciler/reconciler.toml"
    assert "-HUP" in service["ExecReload"] and "$MAINPID" in service["ExecReload"]
    # A bad spec must never keep the reconciler from starting.
    assert "ExecStartPre" not in service


def test_unit_leaves_collectors_to_the_reconciler() -> None:
    service = _unit()["Service"]
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"
    assert service["OOMPolicy"] == "continue"
    assert service["Restart"] == "always"
    defaults = ProcessManagerConfig()
    slowest_stop = (
        defaults.default_graceful_timeout_seconds + defaults.default_force_timeout_seconds
    )
    assert float(service["TimeoutStopSec"]) > slowest_stop
    # Settings that would break collectors or the per-collector cgroups.
    for setting in ("NoNewPrivileges", "ProtectControlGroups", "ProtectSystem", "User"):
        assert setting not in service, setting


def test_unit_directories_are_the_default_paths() -> None:
    service = _unit()["Service"]
    settings = ReconcilerSettings()
    assert Path("/run", service["RuntimeDirectory"]) == settings.socket_path.parent
    assert Path("/var/lib", service["StateDirectory"]) == settings.state_dir
    assert Path("/etc", service["ConfigurationDirectory"]) == settings.specs_dir.parent


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit was only parsed")
    # verify insists that ExecStart's binary exists: point it at this checkout's.
    installed = Path(sys.executable).with_name("reconciler")
    if not installed.exists():
        pytest.skip(f"no `reconciler` next to {sys.executable} to stand in for ExecStart")
    copy = tmp_path / UNIT.name
    copy.write_text(
        UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/reconciler", str(installed)),
        encoding="utf-8",
    )
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=30, check=False
    )
    # Other units on this machine may draw warnings too; only this file's count.
    ours = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not ours, result.stderr


# --- the container image -----------------------------------------------------------------


def test_image_command_is_one_the_cli_accepts() -> None:
    entrypoint = _containerfile_instruction("ENTRYPOINT")
    command = _containerfile_instruction("CMD")
    assert entrypoint == ["reconciler", "run"]
    _accepts([*entrypoint[1:], *command])
    flags = dict(zip(command[::2], command[1::2], strict=True))
    assert flags["--log-format"] == "json"
    assert flags["--socket"] == str(ReconcilerSettings().socket_path)
    port = flags["--metrics-address"].rpartition(":")[2]
    text = CONTAINERFILE.read_text(encoding="utf-8")
    assert re.search(rf"^EXPOSE {port}$", text, re.M)
    assert f"http://127.0.0.1:{port}/healthz" in text
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M)


def test_image_build_inputs_exist_and_pass_the_ignore_file() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    sources = [
        source
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert sources, "no COPY from the build context"
    ignore = (CONTAINERFILE.parent / "Containerfile.dockerignore").read_text(encoding="utf-8")
    for source in sources:
        assert (ROOT / source).exists(), source
        assert f"!{source.rstrip('/')}" in ignore.replace("/\n", "\n"), source


# --- Kubernetes ----------------------------------------------------------------------------


def test_kubernetes_objects_have_identity() -> None:
    objects = list(_kubernetes_objects())
    assert {obj["kind"] for _, obj in objects} >= {
        "Namespace",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
    }
    for path, obj in objects:
        where = f"{_rel(path)}: {obj.get('kind')}"
        assert obj.get("apiVersion") and obj.get("kind"), where
        assert obj.get("metadata", {}).get("name"), where
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "reconciler", where


def test_kustomization_names_existing_files() -> None:
    (kustomization,) = _documents(KUBERNETES / "kustomization.yaml")
    assert kustomization["namespace"] == "reconciler"
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).is_file(), resource
    # Needs the prometheus-operator CRDs: opt-in.
    assert "servicemonitor.yaml" not in kustomization["resources"]


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; kustomization.yaml was only parsed")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(kinds) == ["ConfigMap", "ConfigMap", "DaemonSet", "Namespace", "Service"]


def test_daemonset_probes_what_design_section_8_names() -> None:
    container = _daemonset_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    metrics_port = int(_pod_config().reconciler.metrics_address.rpartition(":")[2])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == metrics_port, probe
    annotations = _object("DaemonSet", "reconciler")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_daemonset_runs_the_image_command_with_its_config() -> None:
    container = _daemonset_container()
    args = container["args"]
    _accepts(["run", *args])
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    config_path = Path(args[args.index("--config") + 1])
    assert mounts["config"]["mountPath"] == str(config_path.parent)
    assert config_path.name in _object("ConfigMap", "reconciler-config")["data"]
    settings = _pod_config().reconciler
    assert mounts["specs"]["mountPath"] == str(settings.specs_dir)
    assert mounts["state"]["mountPath"] == str(settings.state_dir)
    assert mounts["run"]["mountPath"] == str(settings.socket_path.parent)
    # A subPath mount never sees ConfigMap updates (no ..data swap).
    assert all("subPath" not in mount for mount in mounts.values())


def test_daemonset_grace_period_covers_the_slowest_stop() -> None:
    pod = _object("DaemonSet", "reconciler")["spec"]["template"]["spec"]
    manager = _pod_config().process_manager
    slowest = manager.default_graceful_timeout_seconds + manager.default_force_timeout_seconds
    for _, spec in _configmap_specs():
        graceful = spec.graceful_timeout_seconds
        force = spec.force_timeout_seconds
        slowest = max(
            slowest,
            (manager.default_graceful_timeout_seconds if graceful is None else graceful)
            + (manager.default_force_timeout_seconds if force is None else force),
        )
    assert pod["terminationGracePeriodSeconds"] > slowest


def test_daemonset_is_unprivileged() -> None:
    pod = _object("DaemonSet", "reconciler")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = _daemonset_container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def _configmap_specs() -> list[tuple[str, Any]]:
    data = _object("ConfigMap", "reconciler-specs")["data"]
    return [
        (key, parse_spec(text.encode(), filename=key, collector_id=key.removesuffix(".toml")))
        for key, text in sorted(data.items())
    ]


def test_configmap_example_specs_parse_and_use_shipped_binaries() -> None:
    specs = _configmap_specs()
    assert specs
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    for key, spec in specs:
        assert key.endswith(".toml")
        assert spec.binary_path in scripts, f"{key}: the image has no {spec.binary_path}"
        assert spec.log == "inherit", f"{key}: in a container, log to the container's output"


# --- Ansible ---------------------------------------------------------------------------------

_JINJA = re.compile(r"\{\{(.*?)\}\}|\{%-?(.*?)-?%\}", re.S)
_BARE_EXPRESSION_KEYS = {"when", "changed_when", "failed_when", "until", "that"}
_JINJA_WORDS = {
    "and", "or", "not", "in", "is", "if", "else", "elif", "endif", "for", "endfor",
    "macro", "endmacro", "set", "endset", "true", "false", "none", "True", "False", "None",
    "loop", "range", "lookup", "query", "omit",
}  # fmt: skip
_MAGIC_VARIABLES = {
    "item",
    "role_path",
    "ansible_facts",
    "ansible_managed",
    "ansible_playbook_python",
    "ansible_check_mode",
    "inventory_hostname",
}


def _names(expression: str) -> set[str]:
    """Variables an expression reads: not attributes, filters, tests, keywords or kwargs."""
    expression = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)
    names = set()
    for match in re.finditer(r"[A-Za-z_]\w*", expression):
        before = expression[: match.start()].rstrip()
        after = expression[match.end() :].lstrip()
        if before.endswith((".", "|")) or re.search(r"\bis(\s+not)?$", before):
            continue
        if after.startswith("=") and not after.startswith("=="):
            continue
        if match.group() not in _JINJA_WORDS:
            names.add(match.group())
    return names


def _bound_in_template(text: str) -> set[str]:
    """Names a template binds itself: for-loop targets, macro names and parameters, set."""
    bound = set()
    for statement in re.findall(r"\{%-?(.*?)-?%\}", text, re.S):
        if match := re.match(r"\s*for\s+(.*?)\s+in\s", statement):
            bound |= set(re.findall(r"\w+", match.group(1)))
        elif match := re.match(r"\s*macro\s+(\w+)\s*\((.*?)\)", statement):
            bound |= {match.group(1), *re.findall(r"\w+", match.group(2))}
        elif match := re.match(r"\s*set\s+(\w+)", statement):
            bound.add(match.group(1))
    return bound


def _expressions(node: Any, key: str | None = None) -> Iterator[str]:
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _expressions(child, str(child_key))
    elif isinstance(node, list):
        for child in node:
            yield from _expressions(child, key)
    elif isinstance(node, str):
        if key in _BARE_EXPRESSION_KEYS:
            yield node
        else:
            yield from ("".join(parts) for parts in _JINJA.findall(node))


def _tasks(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for child in node:
            yield from _tasks(child)
    elif isinstance(node, dict):
        yield node
        for section in ("block", "rescue", "always"):
            yield from _tasks(node.get(section, []))


def _role_files(part: str) -> list[Path]:
    return sorted((ROLE / part).glob("*.yml"))


def test_ansible_role_uses_only_variables_it_defines() -> None:
    (defaults,) = _documents(ROLE / "defaults" / "main.yml")
    (internal,) = _documents(ROLE / "vars" / "main.yml")
    task_files = [*_role_files("tasks"), *_role_files("handlers")]
    defined = set(defaults) | set(internal) | _MAGIC_VARIABLES
    for path in task_files:
        for task in _tasks(_documents(path)[0]):
            if "register" in task:
                defined.add(task["register"])
            defined |= set(task.get("vars", {}))
            defined |= set(task.get("ansible.builtin.set_fact", {}))
            defined.add(task.get("loop_control", {}).get("loop_var", "item"))
    used: dict[str, set[str]] = {}
    for path in [ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml", *task_files]:
        for expression in _expressions(_documents(path)):
            used.setdefault(_rel(path), set()).update(_names(expression))
    for path in sorted((ROLE / "templates").glob("*.j2")):
        text = path.read_text(encoding="utf-8")
        names = set().union(*(_names("".join(parts)) for parts in _JINJA.findall(text)))
        used[_rel(path)] = names - _bound_in_template(text)
    for where, names in used.items():
        assert not names - defined, f"{where}: undefined {sorted(names - defined)}"
    # ... and every default is used somewhere (no dead knobs).
    everything = set().union(*used.values())
    assert not set(defaults) - everything, sorted(set(defaults) - everything)


def test_ansible_defaults_are_the_config_defaults() -> None:
    """reconciler_<key> exists for every config key, defaults to DESIGN's value and is
    written by the config template."""
    (defaults,) = _documents(ROLE / "defaults" / "main.yml")
    template = (ROLE / "templates" / "reconciler.toml.j2").read_text(encoding="utf-8")
    expected = ManagerConfigFile().model_dump(mode="json")
    for table, model in CONFIG_TABLES.items():
        for key in model.model_fields:
            variable = f"reconciler_{key}"
            assert variable in defaults, variable
            assert defaults[variable] == expected[table][key], variable
            if isinstance(expected[table][key], dict):
                # A table of its own, filled by a loop over the variable.
                assert f"[{table}.{key}]" in template and variable in template, key
            else:
                assert re.search(rf"^{key} = .*\b{variable}\b", template, re.M), key


_SERVICE_MANAGERS = ("systemd", "background")


def _service_manager_condition(task: dict[str, Any]) -> str | None:
    """The service manager a task or handler is for ("when: reconciler_service_manager == ...")."""
    conditions = task.get("when", [])
    for condition in [conditions] if isinstance(conditions, str) else conditions:
        if match := re.fullmatch(r"reconciler_service_manager == '(\w+)'", condition.strip()):
            return match.group(1)
    return None


def test_ansible_handlers_and_templates_exist() -> None:
    handlers = _documents(ROLE / "handlers" / "main.yml")[0]
    topics = {handler.get("listen", handler["name"]) for handler in handlers}
    for path in [*_role_files("tasks"), *_role_files("handlers")]:
        for task in _tasks(_documents(path)[0]):
            for notified in [task["notify"]] if "notify" in task else []:
                assert notified in topics, f"{_rel(path)}: no handler {notified!r}"
            for module in ("ansible.builtin.template",):
                if module in task:
                    assert (ROLE / "templates" / task[module]["src"]).is_file()
            if "ansible.builtin.import_tasks" in task:
                assert (ROLE / "tasks" / task["ansible.builtin.import_tasks"]).is_file()
    (internal,) = _documents(ROLE / "vars" / "main.yml")
    script = internal["reconciler_background_command"].split()[0]
    assert (ROLE / "files" / script).is_file(), script


def test_ansible_every_notification_has_a_handler_for_each_service_manager() -> None:
    """A restart or a reload is never silently dropped on a host, whichever way
    the daemon runs there; and no handler of one manager runs on a host of the other."""
    handlers = _documents(ROLE / "handlers" / "main.yml")[0]
    by_topic: dict[str, list[str | None]] = {}
    for handler in handlers:
        by_topic.setdefault(handler.get("listen", handler["name"]), []).append(
            _service_manager_condition(handler)
        )
    assert by_topic == {topic: list(_SERVICE_MANAGERS) for topic in by_topic}, by_topic
    assert set(by_topic) == {"Restart reconciler", "Reload reconciler"}


def test_ansible_systemd_and_background_steps_are_each_conditional() -> None:
    """systemd modules run only under systemd, the background helper only without it."""
    checked = 0
    for path in [*_role_files("tasks"), *_role_files("handlers")]:
        for task in _tasks(_documents(path)[0]):
            if "ansible.builtin.systemd_service" in task:
                assert _service_manager_condition(task) == "systemd", task["name"]
                checked += 1
            if "reconciler_background_command" in str(task.get("ansible.builtin.script")):
                assert _service_manager_condition(task) == "background", task["name"]
                checked += 1
    assert checked == 6  # start, restart and reload, for each


def test_ansible_default_paths_point_into_this_checkout() -> None:
    (defaults,) = _documents(ROLE / "defaults" / "main.yml")

    def resolve(value: str) -> Path:
        return Path(value.replace("{{ role_path }}", str(ROLE))).resolve()

    assert resolve(defaults["reconciler_unit_file"]) == UNIT
    assert (resolve(defaults["reconciler_source_dir"]) / "pyproject.toml").is_file()


def test_ansible_command_lines_are_ones_the_cli_accepts() -> None:
    """Every command line the role runs with the reconciler binary, values filled in:
    argv of a command, and `validate:` of a file it writes."""
    checked = 0
    for path in _role_files("tasks"):
        for task in _tasks(_documents(path)[0]):
            argv = task.get("ansible.builtin.command", {}).get("argv", [])
            for module in ("ansible.builtin.template", "ansible.builtin.copy"):
                if "validate" in task.get(module, {}):
                    line = re.sub(r"\{\{.*?\}\}", "120", task[module]["validate"])
                    argv = shlex.split(line.replace("%s", "FILE"))
            if not argv or not str(argv[0]).endswith("/bin/reconciler"):
                continue
            filled = [re.sub(r"\{\{.*?\}\}", "120", str(arg)) for arg in argv[1:]]
            _accepts(filled)
            checked += 1
    assert checked >= 2  # validate --config, wait


def test_ansible_final_step_is_reconciler_wait() -> None:
    tasks = list(_tasks(_documents(ROLE / "tasks" / "service.yml")[0]))
    argv = tasks[-1]["ansible.builtin.command"]["argv"]
    assert argv[1] == "wait" and "--timeout" in argv


def test_ansible_example_specs_are_valid() -> None:
    (plays,) = _documents(DEPLOY / "ansible" / "playbook.yml")
    specs = plays[0]["vars"]["reconciler_specs"]
    assert specs
    for collector_id, spec in specs.items():
        parse_spec(
            tomli_w.dumps(spec).encode(),
            filename=f"playbook.yml: reconciler_specs.{collector_id}",
            collector_id=collector_id,
        )
