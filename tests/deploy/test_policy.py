"""The security properties of deploy/daemonset.yaml, so that no later change widens them silently.

Each property is what docs/deploy.md documents; tests/kernel/test_rootfs.py shows on a real
kernel that the image works with exactly these privileges and that each capability is needed.
"""

import re
from pathlib import Path

import pytest

from tests.deploy import manifests

DOC = manifests.REPO / "docs" / "deploy.md"
# Host paths the least-privilege DaemonSet may mount, all read-only: pseudo-filesystems only,
# nothing of the host's root filesystem (with DAC_READ_SEARCH, open_by_handle_at() on such a
# mount could open any file of that filesystem).
ALLOWED_HOST_PATHS = {"/sys/fs/cgroup", "/sys/kernel/tracing"}


def _security_context() -> dict[str, object]:
    context: dict[str, object] = manifests.container()["securityContext"]
    return context


def _documented_capabilities() -> list[str]:
    """Capability names in the first column of the table under "### Capabilities" in docs/deploy.md."""
    text = DOC.read_text()
    section = text.split("### Capabilities", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE)


def test_no_host_network_host_ipc_or_privileged_mode() -> None:
    spec = manifests.pod_spec()

    assert not spec.get("hostNetwork")
    assert not spec.get("hostIPC")
    assert _security_context()["privileged"] is False
    assert _security_context()["allowPrivilegeEscalation"] is False


def test_host_pid_namespace_is_shared_to_read_other_pods_processes() -> None:
    assert manifests.pod_spec()["hostPID"] is True


def test_capabilities_are_all_dropped_then_exactly_the_documented_ones_added() -> None:
    capabilities = _security_context()["capabilities"]

    assert capabilities == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "DAC_READ_SEARCH"]}
    assert _documented_capabilities() == ["BPF", "PERFMON", "DAC_READ_SEARCH"]


def test_each_added_capability_has_a_comment_naming_the_kernel_operation_it_is_for() -> None:
    lines = manifests.DAEMONSET.read_text().splitlines()
    for cap in manifests.added_capabilities():
        (at,) = [i for i, line in enumerate(lines) if line.strip() == f"- {cap}"]
        comment = []
        for line in reversed(lines[:at]):
            if not line.strip().startswith("#"):
                break
            comment.append(line)
        # A syscall or kernel function, written as name().
        assert re.search(r"\b[a-z_]+\(\)", " ".join(comment)), (
            f"{cap} has no comment naming a kernel operation"
        )


def test_root_filesystem_is_read_only_and_only_emptydirs_are_writable() -> None:
    assert _security_context()["readOnlyRootFilesystem"] is True
    for mount in manifests.mounts():
        if mount.host_path is not None:
            assert mount.read_only, mount
        else:
            assert mount.size_limit is not None, f"{mount.name}: an emptyDir without a size limit"


def test_host_mounts_are_only_cgroupfs_and_tracefs_read_only() -> None:
    host = {m.host_path: m for m in manifests.mounts() if m.host_path is not None}

    assert set(host) == ALLOWED_HOST_PATHS
    assert all(m.read_only and m.path == m.host_path for m in host.values())
    # cgroup v1 hierarchies are mounts below /sys/fs/cgroup: read-only too.
    assert host["/sys/fs/cgroup"].recursive_read_only == "IfPossible"


def test_seccomp_profile_is_the_runtime_default() -> None:
    assert manifests.pod_spec()["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "seccompProfile" not in _security_context()  # no per-container override


def test_runs_as_uid_0_without_claiming_to_be_non_root() -> None:
    assert _security_context()["runAsUser"] == 0
    assert _security_context()["runAsNonRoot"] is False


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_requests_and_limits_are_set_with_limits_above_requests(resource: str) -> None:
    resources = manifests.container()["resources"]
    request = _quantity(resources["requests"][resource])
    limit = _quantity(resources["limits"][resource])

    assert 0 < request <= limit


# Measured (docs/deploy.md, "Resources"): the BPF compile's start-up peak and the steady figure.
STARTUP_PEAK_BYTES = 235 * 2**20
STEADY_BYTES = 74 * 2**20


def test_memory_limit_holds_the_measured_start_up_peak_with_room() -> None:
    assert _quantity(manifests.container()["resources"]["limits"]["memory"]) >= 1.5 * STARTUP_PEAK_BYTES


def test_memory_request_covers_the_measured_steady_figure() -> None:
    assert _quantity(manifests.container()["resources"]["requests"]["memory"]) >= 1.5 * STEADY_BYTES


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_health_probes_ask_healthz_on_the_metrics_port(probe: str) -> None:
    container = manifests.container()
    (port,) = container["ports"]

    assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}


def test_node_name_comes_from_the_downward_api() -> None:
    assert manifests.env()["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_runs_on_every_node_whatever_its_taints() -> None:
    assert {"operator": "Exists"} in manifests.pod_spec()["tolerations"]


def test_priority_class_is_system_node_critical() -> None:
    assert manifests.pod_spec()["priorityClassName"] == "system-node-critical"


def test_rolling_update_bounds_unavailable_nodes_and_grace_period_allows_a_clean_detach() -> None:
    daemonset = manifests.one(manifests.DAEMONSET, "DaemonSet")

    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]
    assert manifests.pod_spec()["terminationGracePeriodSeconds"] >= 10


def test_cluster_role_only_reads_pods_posts_events_and_asks_who_a_token_is() -> None:
    role = manifests.named(manifests.DAEMONSET, "ClusterRole", "oomtrace")

    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    assert manifests.env()["OOMTRACE_KUBE_EVENTS"] == "1"  # the sink that needs the second rule
    assert manifests.env()["OOMTRACE_HTTP_AUTH"] == "kubernetes"  # the check that needs the last two


@pytest.mark.parametrize("path", manifests.KUBERNETES_MANIFESTS, ids=lambda p: p.name)
def test_metrics_and_events_are_served_only_to_tokens_the_api_server_allows(path: Path) -> None:
    assert manifests.env(path)["OOMTRACE_HTTP_AUTH"] == "kubernetes"
    reader = manifests.named(path, "ClusterRole", "oomtrace-reader")
    # The paths the server guards (tracer/http/server.py), and nothing that would reach further.
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics", "/events"], "verbs": ["get"]}]


def test_prometheus_is_given_the_reader_role_and_scrapes_with_its_token() -> None:
    (binding,) = manifests.documents(manifests.PROMETHEUS_ACCESS)
    (monitor,) = manifests.documents(manifests.SERVICEMONITOR)

    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["roleRef"]["name"] == "oomtrace-reader"
    assert [s["kind"] for s in binding["subjects"]] == ["ServiceAccount"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_network_policy_admits_only_the_monitoring_namespace_to_the_http_port() -> None:
    (policy,) = manifests.documents(manifests.NETWORKPOLICY)
    daemonset = manifests.one(manifests.DAEMONSET, "DaemonSet")
    (port,) = manifests.container()["ports"]

    assert policy["metadata"]["namespace"] == daemonset["metadata"]["namespace"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": port["name"], "protocol": "TCP"}]
    (source,) = rule["from"]
    assert source == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_the_binding_gives_that_role_to_the_daemonsets_service_account() -> None:
    binding = manifests.named(manifests.DAEMONSET, "ClusterRoleBinding", "oomtrace")
    account = manifests.one(manifests.DAEMONSET, "ServiceAccount")

    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "oomtrace",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert manifests.pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert manifests.env()["OOMTRACE_KUBE"] == "apiserver"  # the source that needs exactly these verbs


def test_privileged_fallback_is_privileged_unconfined_and_still_read_only() -> None:
    context = manifests.container(manifests.PRIVILEGED)["securityContext"]
    spec = manifests.pod_spec(manifests.PRIVILEGED)

    assert context["privileged"] is True
    assert "capabilities" not in context  # privileged has them all; a list would mislead
    assert spec["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert context["readOnlyRootFilesystem"] is True
    assert all(m.read_only for m in manifests.mounts(manifests.PRIVILEGED) if m.host_path is not None)
    assert not spec.get("hostNetwork")
