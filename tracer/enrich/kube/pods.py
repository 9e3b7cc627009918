"""A v1 Pod, as the API server and the kubelet send it, reduced to what an event carries."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

DEFAULT_ALLOWLIST: Final = (
    "app.kubernetes.io/name",
    "kubevirt.io/*",
    "vm.kubevirt.io/name",
    "harvesterhci.io/vmName",
)
# Bounds on what one pod may put into an event.
MAX_KEYS: Final = 32
MAX_VALUE_CHARS: Final = 1024

_CONTAINER_ID: Final = re.compile(r"(?:[a-z0-9.+-]{1,32}://)?([0-9a-f]{64})", re.ASCII)
_QOS: Final = {"Guaranteed": "guaranteed", "Burstable": "burstable", "BestEffort": "besteffort"}


class Allowlist:
    """Label/annotation keys to copy into events: exact keys or shell-style globs (`kubevirt.io/*`)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p.strip() for p in patterns if p.strip())
        for pattern in self.patterns:
            if len(pattern) > 317 or any(c.isspace() or not c.isprintable() for c in pattern):
                raise ValueError(f"not a label key pattern: {pattern!r}")

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        return cls(text.split(","))

    def matches(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.patterns)

    def select(self, mapping: object) -> dict[str, str]:
        if not isinstance(mapping, Mapping):
            return {}
        chosen: dict[str, str] = {}
        for key in sorted(k for k in mapping if isinstance(k, str)):
            value = mapping[key]
            if isinstance(value, str) and self.matches(key):
                chosen[key] = value[:MAX_VALUE_CHARS]
                if len(chosen) >= MAX_KEYS:
                    break
        return chosen


@dataclass(frozen=True)
class PodMeta:
    uid: str
    namespace: str
    name: str
    node: str | None
    qos: str | None
    owner: dict[str, str] | None
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: dict[str, str]  # container ID (64 hex) → container name
    virt_launcher: bool = False
    vmi: str | None = None  # the VMI a virt-launcher pod runs (annotation kubevirt.io/domain)
    resource_version: str | None = field(default=None, compare=False)


def optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_pod(obj: object, allow: Allowlist) -> PodMeta | None:
    """A v1 Pod (JSON as the API and the kubelet send it) → PodMeta; None if it names no pod."""
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid, namespace, name = (optional_str(meta.get(key)) for key in ("uid", "namespace", "name"))
    if uid is None or namespace is None or name is None:
        return None
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    assert isinstance(spec, Mapping) and isinstance(status, Mapping)
    containers: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        statuses = status.get(key)
        if not isinstance(statuses, list):
            continue
        for cs in statuses:
            if not isinstance(cs, Mapping) or optional_str(cs.get("name")) is None:
                continue
            for ids in (
                cs,
                cs.get("lastState", {}).get("terminated")
                if isinstance(cs.get("lastState"), Mapping)
                else None,
            ):
                cid = optional_str(ids.get("containerID")) if isinstance(ids, Mapping) else None
                m = _CONTAINER_ID.fullmatch(cid) if cid else None
                if m is not None:
                    containers.setdefault(m.group(1), cs["name"])
    owner = None
    refs = meta.get("ownerReferences")
    if isinstance(refs, list):
        for ref in refs:
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                kind, ref_name = optional_str(ref.get("kind")), optional_str(ref.get("name"))
                if kind and ref_name:
                    owner = {"kind": kind, "name": ref_name}
                break
    raw_labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    raw_annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    assert isinstance(raw_labels, Mapping) and isinstance(raw_annotations, Mapping)
    virt_launcher = raw_labels.get("kubevirt.io") == "virt-launcher"
    vmi = optional_str(raw_annotations.get("kubevirt.io/domain")) if virt_launcher else None
    qos = status.get("qosClass")
    return PodMeta(
        uid=uid,
        namespace=namespace,
        name=name,
        node=optional_str(spec.get("nodeName")),
        qos=_QOS.get(qos) if isinstance(qos, str) else None,
        owner=owner,
        labels=allow.select(raw_labels),
        annotations=allow.select(raw_annotations),
        containers=containers,
        virt_launcher=virt_launcher,
        vmi=vmi,
        resource_version=optional_str(meta.get("resourceVersion")),
    )


def parse_pod_list(obj: object, allow: Allowlist) -> tuple[list[PodMeta], str | None]:
    """A v1 PodList → its pods and its resourceVersion. ValueError if it is not a PodList."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("items"), list):
        raise ValueError("not a PodList (no items)")
    meta = obj.get("metadata")
    version = optional_str(meta.get("resourceVersion")) if isinstance(meta, Mapping) else None
    pods = [p for p in (parse_pod(item, allow) for item in obj["items"]) if p is not None]
    return pods, version
