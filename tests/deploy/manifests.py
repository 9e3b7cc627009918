"""The deploy/ manifests as plain data, for the policy tests and the rootfs kernel test."""

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DAEMONSET = DEPLOY / "daemonset.yaml"
PRIVILEGED = DEPLOY / "daemonset-privileged.yaml"
SERVICEMONITOR = DEPLOY / "servicemonitor.yaml"
PROMETHEUS_ACCESS = DEPLOY / "prometheus-access.yaml"
NETWORKPOLICY = DEPLOY / "networkpolicy.yaml"
# The two ways to deploy oomtrace (the PrometheusRule and shipper configs have their own tests).
KUBERNETES_MANIFESTS = (DAEMONSET, PRIVILEGED)
# Applied beside either, edited to the cluster: who may read, and who may connect.
EXAMPLES = (PROMETHEUS_ACCESS, NETWORKPOLICY)


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def one(path: Path, kind: str) -> dict[str, Any]:
    (found,) = (d for d in documents(path) if d["kind"] == kind)
    return found


def named(path: Path, kind: str, name: str) -> dict[str, Any]:
    (found,) = (d for d in documents(path) if d["kind"] == kind and d["metadata"]["name"] == name)
    return found


def pod_spec(path: Path = DAEMONSET) -> dict[str, Any]:
    spec: dict[str, Any] = one(path, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def container(path: Path = DAEMONSET) -> dict[str, Any]:
    (only,) = pod_spec(path)["containers"]
    return dict(only)


def added_capabilities(path: Path = DAEMONSET) -> list[str]:
    return list(container(path)["securityContext"]["capabilities"]["add"])


@dataclass(frozen=True)
class Mount:
    name: str
    path: str  # inside the container
    read_only: bool
    recursive_read_only: str | None
    host_path: str | None  # None: an emptyDir
    size_limit: str | None


def mounts(path: Path = DAEMONSET) -> list[Mount]:
    volumes = {v["name"]: v for v in pod_spec(path)["volumes"]}
    found = []
    for m in container(path).get("volumeMounts", []):
        volume = volumes[m["name"]]
        found.append(
            Mount(
                name=m["name"],
                path=m["mountPath"],
                read_only=bool(m.get("readOnly")),
                recursive_read_only=m.get("recursiveReadOnly"),
                host_path=volume["hostPath"]["path"] if "hostPath" in volume else None,
                size_limit=volume.get("emptyDir", {}).get("sizeLimit") if "emptyDir" in volume else None,
            )
        )
    return found


def env(path: Path = DAEMONSET) -> dict[str, Any]:
    """Name -> value, or the valueFrom mapping for values the cluster fills in."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(path).get("env", [])}
