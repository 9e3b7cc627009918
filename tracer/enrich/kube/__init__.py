"""Kubernetes metadata for events of pod cgroups: namespace, pod and container names, labels, owner.

Two sources fill one cache (`cache`), keyed by pod UID and by container ID:

- `KubeletSource` (`kubelet`): the kubelet's `/pods` on this node, polled every `resync_s`
  and on a miss.
- `ApiServerSource` (`apiserver`): a list, then a watch, of this node's pods through the
  official `kubernetes` client, which only that module imports, and only when it is used.

The event path (`KubeStage`, `stage`) never waits for the network longer than `timeout_s`.
A deleted pod stays named for `grace_s`, so a kill just before the pod went is still
attributed. Pods are parsed in `pods`; what both sources share is in `source`.
"""

from tracer.enrich.kube.apiserver import ApiServerSource, api_client
from tracer.enrich.kube.cache import DEFAULT_GRACE_S, PodCache
from tracer.enrich.kube.kubelet import DEFAULT_KUBELET_URL, KubeletSource
from tracer.enrich.kube.pods import DEFAULT_ALLOWLIST, Allowlist, PodMeta, parse_pod, parse_pod_list
from tracer.enrich.kube.source import Flight, KubeError, Source, SourceFailure
from tracer.enrich.kube.stage import DEFAULT_TIMEOUT_S, KubeStage

__all__ = [
    "DEFAULT_ALLOWLIST",
    "DEFAULT_GRACE_S",
    "DEFAULT_KUBELET_URL",
    "DEFAULT_TIMEOUT_S",
    "Allowlist",
    "ApiServerSource",
    "Flight",
    "KubeError",
    "KubeStage",
    "KubeletSource",
    "PodCache",
    "PodMeta",
    "Source",
    "SourceFailure",
    "api_client",
    "parse_pod",
    "parse_pod_list",
]
