"""deploy/kubernetes/ against the schemas the cluster will check it with, offline.

- Every Kubernetes object (Namespace, ConfigMaps, DaemonSet, Service) is
  validated with ``kubernetes-validate`` against the OpenAPI schemas it bundles,
  for the newest Kubernetes releases it ships (the last three minors), in
  strict mode: an unknown field (a typo such as ``livenessProbe.httpGet.paht``)
  is an error, as ``kubectl apply --validate=strict`` makes it, instead of
  being dropped silently by the API server.
- The ServiceMonitor is a prometheus-operator CRD (``monitoring.coreos.com/v1``)
  that no Kubernetes schema covers. It is validated against a committed JSON
  Schema, ``deploy/kubernetes/schemas/servicemonitor-monitoring.coreos.com-v1.json``,
  written from the operator's ServiceMonitor API reference: its required fields
  (``spec``, ``spec.selector``, ``spec.endpoints``), the types, enums and
  patterns (durations, label names) of its fields, and no unknown field at any
  level. What a schema cannot say is checked here explicitly: ``scrapeTimeout``
  not above ``interval`` (the operator rejects the object otherwise), and that
  the monitor really selects the Service, which selects the DaemonSet's pods,
  whose container serves the named port.
- ``kustomization.yaml`` is no API object (kustomize reads it, rejecting
  unknown fields): it is built with ``kustomize build`` or ``kubectl kustomize``
  where one is installed (skipped otherwise, saying so), with and without the
  ServiceMonitor, and what it builds is schema-validated like the files.
  The schema checks above never skip.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SERVICEMONITOR_SCHEMA = KUBERNETES / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json"
CRD_KINDS = {"ServiceMonitor"}
OLDEST_ACCEPTABLE_NEWEST = (1, 33)
"""A kubernetes-validate whose newest schemas are older than this is too old to vouch for a
current cluster: fail, asking for an upgrade, rather than validate against stale schemas."""


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _bundled_versions() -> list[str]:
    """The last three minor releases kubernetes-validate bundles schemas for, newest last."""
    minors = sorted(
        {kubernetes_validate.major_minor(v) for v in kubernetes_validate.all_versions()},
        key=_release,
    )
    return minors[-3:]


KUBERNETES_VERSIONS = _bundled_versions()


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in _documents(path):
            yield path.name, document


def _object_id(item: tuple[str, dict[str, Any]]) -> str:
    name, obj = item
    return f"{name}:{obj['kind']}/{obj['metadata']['name']}"


CORE_OBJECTS = [item for item in _objects() if item[1]["kind"] not in CRD_KINDS]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [obj for _, obj in _objects() if obj["kind"] == kind]
    return found


def _validate_core(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def _servicemonitor_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SERVICEMONITOR_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _duration_seconds(text: str) -> float:
    """A Prometheus duration (``1m30s``, ``500ms``) in seconds; the schema checked its form."""
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total, number = 0.0, ""
    rest = text
    while rest:
        if rest[0].isdigit():
            number, rest = number + rest[0], rest[1:]
            continue
        unit = "ms" if rest.startswith("ms") else rest[0]
        total += int(number) * units[unit]
        number, rest = "", rest[len(unit) :]
    return total


def _validate_servicemonitor(obj: dict[str, Any]) -> None:
    _servicemonitor_validator().validate(obj)
    for endpoint in obj["spec"]["endpoints"]:
        if "interval" in endpoint and "scrapeTimeout" in endpoint:
            interval = _duration_seconds(endpoint["interval"])
            timeout = _duration_seconds(endpoint["scrapeTimeout"])
            if timeout > interval:
                raise jsonschema.ValidationError(
                    f"scrapeTimeout {endpoint['scrapeTimeout']} is longer than "
                    f"interval {endpoint['interval']}: the operator rejects this"
                )


def _validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "ServiceMonitor":
        _validate_servicemonitor(obj)
    else:
        for version in KUBERNETES_VERSIONS:
            _validate_core(obj, version)


# --- the Kubernetes objects ---------------------------------------------------------------


def test_schemas_are_recent() -> None:
    newest = KUBERNETES_VERSIONS[-1]
    assert _release(newest) >= OLDEST_ACCEPTABLE_NEWEST, (
        f"kubernetes-validate bundles schemas up to Kubernetes {newest} only; upgrade it"
    )


def test_every_kind_in_the_directory_is_checked() -> None:
    kinds = {obj["kind"] for _, obj in _objects()}
    assert kinds == {"Namespace", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor"}
    assert len(CORE_OBJECTS) == 5


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", CORE_OBJECTS, ids=_object_id)
def test_object_validates_strictly(item: tuple[str, dict[str, Any]], version: str) -> None:
    _, obj = item
    try:
        _validate_core(obj, version)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path)
        pytest.fail(f"{_object_id(item)} against Kubernetes {version}: {where}: {exc.message}")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets the dotted ``path`` (list indexes as numbers) to ``value``."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = obj
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = obj
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


POD = "spec.template.spec"
CONTAINER = f"{POD}.containers.0"


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        pytest.param("DaemonSet", _set(f"{CONTAINER}.livenessProbe.httpGet.paht", "/x"), id="typo"),
        pytest.param("DaemonSet", _set(f"{CONTAINER}.ports.0.containerPort", "9184"), id="type"),
        pytest.param("DaemonSet", _delete("spec.selector"), id="required"),
        pytest.param(
            "DaemonSet",
            _set("spec.updateStrategy.rollingUpdate.maxUnavailable", [1]),
            id="int-or-string",
        ),
        pytest.param("Service", _set("spec.ports.0.port", "9184"), id="service-port"),
        pytest.param("Namespace", _set("metadata.labels.enforce", True), id="label-not-a-string"),
        pytest.param("ConfigMap", _set("data.extra", 1), id="configmap-not-a-string"),
    ],
)
def test_strict_validation_catches_broken_objects(
    kind: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    """The check can fail: each of these mistakes is refused by the Kubernetes schema."""
    obj = copy.deepcopy(next(obj for _, obj in CORE_OBJECTS if obj["kind"] == kind))
    mutate(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(obj, KUBERNETES_VERSIONS[-1])


def test_reconciler_stays_pid_1_of_its_container() -> None:
    """What tests/e2e/test_pid1.py proves holds in the pod only if the pod keeps it so."""
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # `command` would replace the image's ENTRYPOINT (`reconciler run`, PID 1).
    assert "command" not in container and container["args"]
    # A shared process namespace makes the pause container PID 1 instead.
    assert not pod.get("shareProcessNamespace", False)
    assert not pod.get("hostPID", False)


# --- the ServiceMonitor (a CRD) -------------------------------------------------------------


def test_servicemonitor_validates_against_its_crd_schema() -> None:
    obj = _one("ServiceMonitor")
    errors = sorted(_servicemonitor_validator().iter_errors(obj), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    _validate_servicemonitor(obj)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_delete("spec.selector"), id="no-selector"),
        pytest.param(_delete("spec.endpoints"), id="no-endpoints"),
        pytest.param(_set("spec.endpoints.0.intervall", "30s"), id="typo"),
        pytest.param(_set("spec.endpoints.0.interval", "30 s"), id="bad-duration"),
        pytest.param(_set("spec.endpoints.0.scrapeTimeout", "1m"), id="timeout-over-interval"),
        pytest.param(_set("spec.endpoints.0.scheme", "ftp"), id="scheme"),
        pytest.param(
            _set("spec.endpoints.0.relabelings.0.sourceLabels", ["pod-name"]), id="label-name"
        ),
        pytest.param(_set("spec.namespaceSelector.matchNames", "reconciler"), id="not-a-list"),
        pytest.param(_set("apiVersion", "monitoring.coreos.com/v1alpha1"), id="api-version"),
        pytest.param(_set("metadata.name", "Reconciler"), id="metadata-name"),
    ],
)
def test_servicemonitor_schema_catches_broken_objects(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    obj = copy.deepcopy(_one("ServiceMonitor"))
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        _validate_servicemonitor(obj)


def test_duration_parsing() -> None:
    assert _duration_seconds("30s") == 30
    assert _duration_seconds("1m30s") == 90
    assert _duration_seconds("1h500ms") == 3600.5
    assert _duration_seconds("0") == 0


def test_metrics_are_wired_from_monitor_to_container() -> None:
    """ServiceMonitor -> Service -> DaemonSet pods -> the container's metrics port."""
    monitor, service, daemonset = _one("ServiceMonitor"), _one("Service"), _one("DaemonSet")
    service_meta = service["metadata"]
    assert service_meta["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    assert wanted <= service_meta["labels"].items(), "the monitor selects no Service"
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, endpoint["port"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no pod"
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    container_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values(), target


# --- kustomize --------------------------------------------------------------------------------


def _kustomize() -> list[str]:
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    pytest.skip(
        "neither kustomize nor kubectl is installed: kustomization.yaml was not built "
        "(the manifests themselves were still schema-validated)"
    )


def _build(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*_kustomize(), str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomization_builds_objects_that_validate() -> None:
    built = _build(KUBERNETES)
    assert sorted(obj["kind"] for obj in built) == [
        "ConfigMap",
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Service",
    ]
    for obj in built:
        _validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "reconciler", obj["kind"]
    (daemonset,) = [obj for obj in built if obj["kind"] == "DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reconciler:0.1.0"


def test_kustomization_with_the_servicemonitor_builds(tmp_path: Path) -> None:
    """What the comment in kustomization.yaml tells prometheus-operator users to do."""
    shutil.copy(KUBERNETES / "servicemonitor.yaml", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes other kustomizations by relative path only.
                "resources": [os.path.relpath(KUBERNETES, tmp_path), "servicemonitor.yaml"],
            }
        ),
        encoding="utf-8",
    )
    built = _build(tmp_path)
    assert "ServiceMonitor" in {obj["kind"] for obj in built}
    for obj in built:
        _validate(obj)
