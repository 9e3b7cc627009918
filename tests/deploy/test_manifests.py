"""deploy/ manifests against the Kubernetes OpenAPI schemas, offline, and against each other.

Schemas: the `kubernetes-validate` package (PyPI), which ships the JSON schemas of every
Kubernetes release; strict mode rejects unknown fields. The oldest release checked is 1.30
(Harvester 1.4's RKE2; `recursiveReadOnly` is new in 1.30), the newest whatever the package
ships. The ServiceMonitor is checked against prometheus-operator's CRD schema, vendored in
schemas/servicemonitor-v1.json (refresh it from the operator's
example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml).
"""

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy import manifests

OLDEST = "1.30.0"
VERSIONS = sorted({OLDEST, kubernetes_validate.latest_version()})
SERVICEMONITOR_SCHEMA = Path(__file__).with_name("schemas") / "servicemonitor-v1.json"


def _cases() -> list[Any]:
    return [
        pytest.param(path, i, version, id=f"{path.name}-{doc['kind']}-{version}")
        for path in (*manifests.KUBERNETES_MANIFESTS, *manifests.EXAMPLES)
        for i, doc in enumerate(manifests.documents(path))
        for version in VERSIONS
    ]


@pytest.mark.parametrize(("path", "index", "version"), _cases())
def test_every_object_validates_strictly_against_the_kubernetes_schema(
    path: Path, index: int, version: str
) -> None:
    kubernetes_validate.validate(manifests.documents(path)[index], version, strict=True)


def test_the_validator_rejects_a_misspelled_field() -> None:
    daemonset = copy.deepcopy(manifests.one(manifests.DAEMONSET, "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True

    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden (the API server would drop them silently)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _servicemonitor_validator() -> jsonschema.Draft7Validator:
    schema = _closed(json.loads(SERVICEMONITOR_SCHEMA.read_text())["schema"])
    return jsonschema.Draft7Validator(schema)


def test_servicemonitor_validates_against_the_prometheus_operator_crd() -> None:
    (monitor,) = manifests.documents(manifests.SERVICEMONITOR)

    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    errors = [e.message for e in _servicemonitor_validator().iter_errors(monitor)]
    assert errors == []


def test_the_crd_check_rejects_a_misspelled_servicemonitor_field() -> None:
    (monitor,) = copy.deepcopy(manifests.documents(manifests.SERVICEMONITOR))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"

    assert any("intervall" in e.message for e in _servicemonitor_validator().iter_errors(monitor))


@pytest.mark.parametrize("path", manifests.KUBERNETES_MANIFESTS, ids=lambda p: p.name)
def test_one_apply_creates_the_namespace_first_and_puts_everything_in_it(path: Path) -> None:
    docs = manifests.documents(path)
    kinds = [d["kind"] for d in docs]

    assert kinds[0] == "Namespace"
    assert sorted(kinds) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service",
        ]
    )
    namespace = docs[0]["metadata"]["name"]
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def test_service_is_headless_and_reaches_the_daemonset_pods_on_the_metrics_port() -> None:
    service = manifests.one(manifests.DAEMONSET, "Service")
    daemonset = manifests.one(manifests.DAEMONSET, "DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    (port,) = service["spec"]["ports"]
    (container_port,) = manifests.container()["ports"]

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert port["targetPort"] == container_port["name"]
    assert port["port"] == container_port["containerPort"] == 9700
    assert manifests.env()["OOMTRACE_METRICS_ADDRESS"] == f":{container_port['containerPort']}"


def test_servicemonitor_scrapes_that_service_as_the_job_the_alert_rules_watch() -> None:
    (monitor,) = manifests.documents(manifests.SERVICEMONITOR)
    service = manifests.one(manifests.DAEMONSET, "Service")
    rules = (manifests.DEPLOY / "prometheus-rules.yaml").read_text()

    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service["spec"]["ports"][0]["name"]]
    # prometheus-operator names the job after the Service; the absence/down alerts use it.
    assert f'job="{service["metadata"]["name"]}"' in rules


def test_privileged_variant_differs_from_the_minimal_one_only_in_its_daemonset() -> None:
    minimal = {(d["kind"], d["metadata"]["name"]): d for d in manifests.documents(manifests.DAEMONSET)}
    privileged = {(d["kind"], d["metadata"]["name"]): d for d in manifests.documents(manifests.PRIVILEGED)}

    assert minimal.keys() == privileged.keys()
    daemonset = ("DaemonSet", "oomtrace")
    for key in minimal.keys() - {daemonset}:
        assert minimal[key] == privileged[key], key
    assert minimal[daemonset]["metadata"] == privileged[daemonset]["metadata"]
