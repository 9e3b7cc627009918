"""Kubernetes metadata: parsing, the cache, both sources and the bounded-wait stage.

The API server and the kubelet cannot run here: tests/fake_kube.py is a local server that
speaks their documented shapes (PodList, the line-delimited watch stream with ADDED /
MODIFIED / DELETED and the 410 Expired ERROR event, v1 Status bodies for 401 and 403, the
kubelet's /pods), over HTTP and, with a self-signed CA, HTTPS.
"""

import io
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_kube import FakeKube, kubeconfig, pod, running
from tests.fake_node import KUBEVIRT_CMDLINE, FakeNode, argv
from tracer import schema
from tracer.cli.flags import build_parser
from tracer.cli.run import build_daemon
from tracer.daemon import Daemon, RunConfig
from tracer.enrich import kube
from tracer.enrich.failures import (
    FORBIDDEN,
    NOT_FOUND,
    REASONS,
    TIMEOUT,
    UNAUTHORIZED,
    UNAVAILABLE,
    enrichment_failures,
)
from tracer.enrich.kube import (
    Allowlist,
    ApiServerSource,
    KubeError,
    KubeletSource,
    KubeStage,
    PodCache,
    api_client,
    parse_pod,
    parse_pod_list,
)
from tracer.enrich.kube.pods import MAX_KEYS
from tracer.errors import UsageError

ALLOW = Allowlist(kube.DEFAULT_ALLOWLIST)
NODE = "node-1"
CID = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d"


def new_uid() -> str:
    return str(uuid.uuid4())


def virt_launcher(uid: str, cid: str = CID, node: str = NODE) -> dict[str, Any]:
    return pod(
        uid,
        "virt-launcher-vm2-x7k2p",
        node=node,
        containers={"compute": cid, "guest-console-log": "e" * 64},
        labels={
            "kubevirt.io": "virt-launcher",
            "kubevirt.io/created-by": "2ce151aa",
            "vm.kubevirt.io/name": "vm2",
            "harvesterhci.io/vmName": "vm2",
            "app.kubernetes.io/name": "vm",
            "team": "payments",
        },
        annotations={"kubevirt.io/domain": "vm2", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
        owner=("VirtualMachineInstance", "vm2"),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Logs:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, message: str, fields: dict[str, Any]) -> None:
        self.records.append((level, message, fields))

    def messages(self, level: str = "error") -> list[str]:
        return [m for lvl, m, _ in self.records if lvl == level]


def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def api() -> Iterator[FakeKube]:
    with running() as fake:
        yield fake


def apiserver_source(
    api: FakeKube, tmp_path: Path, cache: PodCache, logs: Logs | None = None, token: str | None = None
) -> ApiServerSource:
    client = api_client(kubeconfig(tmp_path / "kubeconfig", api.url, token or api.token))
    return ApiServerSource(cache, ALLOW, client, NODE, log=logs)


# --- parsing ------------------------------------------------------------------------------


def test_a_virt_launcher_pod_gives_names_allowed_labels_owner_and_container_ids() -> None:
    uid = new_uid()
    meta = parse_pod(virt_launcher(uid), ALLOW)
    assert meta is not None
    assert (meta.uid, meta.namespace, meta.name, meta.node, meta.qos) == (
        uid,
        "default",
        "virt-launcher-vm2-x7k2p",
        NODE,
        "burstable",
    )
    assert meta.containers == {CID: "compute", "e" * 64: "guest-console-log"}
    assert meta.owner == {"kind": "VirtualMachineInstance", "name": "vm2"}
    assert meta.labels == {
        "app.kubernetes.io/name": "vm",
        "harvesterhci.io/vmName": "vm2",
        "kubevirt.io/created-by": "2ce151aa",
        "vm.kubevirt.io/name": "vm2",
    }
    assert meta.annotations == {"kubevirt.io/domain": "vm2"}
    assert (meta.virt_launcher, meta.vmi) == (True, "vm2")


@pytest.mark.parametrize(
    "runtime_id",
    [f"containerd://{CID}", f"cri-o://{CID}", f"docker://{CID}", CID],
    ids=lambda s: s.split(":")[0],
)
def test_container_ids_of_every_runtime_are_keyed_by_their_hex_id(runtime_id: str) -> None:
    obj = pod(new_uid(), "p", containers={"app": CID})
    obj["status"]["containerStatuses"][0]["containerID"] = runtime_id
    meta = parse_pod(obj, ALLOW)
    assert meta is not None and meta.containers == {CID: "app"}


def test_init_containers_and_the_previous_instance_of_a_restarted_container_are_named() -> None:
    obj = pod(new_uid(), "p", containers={"app": CID})
    obj["status"]["initContainerStatuses"] = [{"name": "setup", "containerID": "containerd://" + "1" * 64}]
    obj["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": "containerd://" + "2" * 64}
    }
    meta = parse_pod(obj, ALLOW)
    assert meta is not None
    assert meta.containers == {CID: "app", "1" * 64: "setup", "2" * 64: "app"}


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "pod",
        {},
        {"metadata": "x"},
        {"metadata": {"uid": "u", "name": "n"}},  # no namespace
        {"metadata": {"uid": 5, "name": "n", "namespace": "d"}},
    ],
    ids=repr,
)
def test_objects_that_name_no_pod_are_ignored(obj: object) -> None:
    assert parse_pod(obj, ALLOW) is None


def test_garbage_inside_a_pod_gives_nulls_not_errors() -> None:
    obj: dict[str, Any] = {
        "metadata": {"uid": "u", "name": "n", "namespace": "d", "labels": ["x"], "ownerReferences": "me"},
        "spec": None,
        "status": {
            "qosClass": 7,
            "containerStatuses": [None, {"name": "a", "containerID": "containerd://zz"}, 5],
        },
    }
    meta = parse_pod(obj, ALLOW)
    assert meta is not None
    assert (meta.node, meta.qos, meta.owner, meta.labels, meta.containers) == (None, None, None, {}, {})
    with pytest.raises(ValueError):
        parse_pod_list({"kind": "Status"}, ALLOW)


def test_the_allowlist_takes_exact_keys_and_globs_and_refuses_nonsense() -> None:
    allow = Allowlist.parse("app, kubevirt.io/*")
    assert allow.select({"app": "a", "kubevirt.io/x": "b", "kubevirt.io": "c", "other": "d", 5: "e"}) == {
        "app": "a",
        "kubevirt.io/x": "b",
    }
    assert len(Allowlist.parse("*").select({f"k{i}": "v" for i in range(100)})) == MAX_KEYS
    with pytest.raises(ValueError):
        Allowlist.parse("has space")


# --- the cache ----------------------------------------------------------------------------


def test_a_deleted_pod_is_still_named_until_its_grace_ends() -> None:
    clock = Clock()
    cache = PodCache(grace_s=60, clock=clock)
    uid = new_uid()
    meta = parse_pod(virt_launcher(uid), ALLOW)
    assert meta is not None
    cache.upsert(meta)
    cache.delete(uid)
    clock.now += 1
    assert cache.lookup(uid, CID)[1] == "compute"
    clock.now += 59
    assert cache.lookup(uid, CID) == (None, None)


def test_a_list_begun_before_a_deletion_does_not_bring_the_pod_back() -> None:
    clock = Clock()
    cache = PodCache(grace_s=60, clock=clock)
    uid = new_uid()
    meta = parse_pod(virt_launcher(uid), ALLOW)
    assert meta is not None
    cache.upsert(meta)
    listed_at = clock.now
    clock.now += 0.5
    cache.delete(uid)  # the watch saw it go while the list was in flight
    cache.replace([meta], listed_at)
    assert cache.deleted(uid)


def test_pods_missing_from_a_full_list_are_deleted_with_grace() -> None:
    clock = Clock()
    cache = PodCache(grace_s=10, clock=clock)
    a, b = (parse_pod(pod(new_uid(), name), ALLOW) for name in ("a", "b"))
    assert a is not None and b is not None
    cache.replace([a, b], clock.now)
    cache.replace([a], clock.now)
    assert cache.deleted(b.uid) and not cache.deleted(a.uid)
    clock.now += 10
    assert cache.lookup(b.uid, None)[0] is None and len(cache) == 1


# --- the API server source ----------------------------------------------------------------


def test_the_apiserver_source_lists_then_follows_adds_changes_and_deletions(
    api: FakeKube, tmp_path: Path
) -> None:
    uid = new_uid()
    api.add(virt_launcher(uid))
    api.add(virt_launcher(new_uid(), cid="f" * 64, node="other-node"))
    cache = PodCache()
    source = apiserver_source(api, tmp_path, cache)
    source.start()
    try:
        assert source.synced.wait(5)
        assert len(cache) == 1  # only this node's pods (fieldSelector)
        assert api.requests[0]["query"]["fieldSelector"] == f"spec.nodeName={NODE}"
        late = new_uid()
        api.add(pod(late, "late", containers={"app": "a" * 64}))
        wait_until(lambda: cache.lookup(None, "a" * 64)[1] == "app")
        changed = virt_launcher(uid)
        changed["metadata"]["labels"]["app.kubernetes.io/name"] = "renamed"
        api.modify(changed)
        wait_until(lambda: cache.lookup(uid, None)[0].labels["app.kubernetes.io/name"] == "renamed")  # type: ignore[union-attr]
        api.delete(late)
        wait_until(lambda: cache.deleted(late))
        watches = [r for r in api.requests if r["watch"]]
        assert watches[0]["query"]["resourceVersion"] == "102"  # from the list, not from scratch
        assert api.lists() == 1
    finally:
        source.close()


def test_a_410_gone_makes_the_apiserver_source_list_again(api: FakeKube, tmp_path: Path) -> None:
    cache = PodCache()
    source = apiserver_source(api, tmp_path, cache)
    source.start()
    try:
        assert source.synced.wait(5)
        api.expire_watches()  # the open watch ends with an ERROR 410 event; resuming is refused too
        uid = new_uid()
        api.add(pod(uid, "after-compaction"))
        wait_until(lambda: cache.lookup(uid, None)[0] is not None)
        assert source.lists >= 2 and api.lists() >= 2
    finally:
        source.close()


@pytest.mark.parametrize(
    ("forbid", "reason", "says"),
    [
        (False, UNAUTHORIZED, "401 Unauthorized"),
        (True, FORBIDDEN, "(403 Forbidden): grant its service account get, list and watch on pods"),
    ],
    ids=["401", "403"],
)
def test_rejected_credentials_are_a_clear_error_and_a_reason(
    api: FakeKube, tmp_path: Path, forbid: bool, reason: str, says: str
) -> None:
    api.forbidden = forbid
    logs = Logs()
    source = apiserver_source(api, tmp_path, PodCache(), logs, token=None if forbid else "a-wrong-token")
    source.start()
    try:
        flight = source.request_refresh()
        assert flight.done.wait(5)
        assert flight.error == reason
        assert any(says in m for m in logs.messages()), logs.records
        assert len(set(logs.messages())) == len(logs.messages())  # each problem once, not per retry
    finally:
        source.close()


def test_in_cluster_the_service_account_token_and_ca_are_used_over_https(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("in-cluster-token")
    with running(token="in-cluster-token", tls_dir=tmp_path) as api:
        assert api.ca_file is not None
        (account / "ca.crt").write_bytes(api.ca_file.read_bytes())
        api.add(virt_launcher(new_uid()))
        environ = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api.server.server_address[1]),
        }
        cache = PodCache()
        source = ApiServerSource(cache, ALLOW, api_client(None, account, environ), NODE)
        source.start()
        try:
            assert source.synced.wait(5)
            assert cache.lookup(None, CID)[1] == "compute"
            assert api.requests[0]["auth"].lower() == "bearer in-cluster-token"
        finally:
            source.close()


def test_kubernetes_configuration_problems_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="no such file"):
        api_client(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [this is: not: a kubeconfig\n")
    with pytest.raises(KubeError):
        api_client(garbage)
    with pytest.raises(KubeError, match="not in a cluster"):
        api_client(None, tmp_path, {})
    with pytest.raises(KubeError):
        api_client(None, tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})


# --- the kubelet source -------------------------------------------------------------------


def test_the_kubelet_source_reads_pods_with_the_service_account_token(api: FakeKube, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("test-token\n")
    api.add(virt_launcher(new_uid()))
    cache = PodCache()
    source = KubeletSource(cache, ALLOW, api.url, token_file=tmp_path / "token", resync_s=60)
    source.refresh()
    assert cache.lookup(None, CID)[1] == "compute"
    assert api.requests[-1]["path"] == "/pods" and api.requests[-1]["auth"] == "Bearer test-token"


def test_the_kubelet_over_https_is_verified_against_its_ca_or_not_at_all_if_told(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("test-token")
    with running(tls_dir=tmp_path) as api:
        api.add(virt_launcher(new_uid()))
        for options in ({"ca_file": api.ca_file}, {"insecure": True}):
            cache = PodCache()
            KubeletSource(cache, ALLOW, api.url, token_file=tmp_path / "token", **options).refresh()  # type: ignore[arg-type]
            assert len(cache) == 1
        untrusted = KubeletSource(PodCache(), ALLOW, api.url, token_file=tmp_path / "token")
        with pytest.raises(kube.SourceFailure, match="unreachable"):
            untrusted.refresh()


def test_the_kubelet_refusing_the_token_says_which_permission_is_missing(
    api: FakeKube, tmp_path: Path
) -> None:
    logs = Logs()
    source = KubeletSource(PodCache(), ALLOW, api.url, token_file=None, log=logs)
    with pytest.raises(kube.SourceFailure) as failure:
        source.refresh()
    assert failure.value.reason == UNAUTHORIZED
    api.forbidden = True
    (tmp_path / "token").write_text("test-token")
    source = KubeletSource(PodCache(), ALLOW, api.url, token_file=tmp_path / "token", log=logs)
    with pytest.raises(kube.SourceFailure) as failure:
        source.refresh()
    assert failure.value.reason == FORBIDDEN
    assert any("nodes/proxy" in m for m in logs.messages())


def test_bad_kubelet_addresses_are_refused_up_front() -> None:
    for url in ("127.0.0.1:10250", "ftp://node:10250", "https://"):
        with pytest.raises(KubeError):
            KubeletSource(PodCache(), ALLOW, url)


# --- the stage: bounded waits, single flight, what is emitted -----------------------------


def failures(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "oomtrace_enrichment_failures_total", {"stage": "kube", "reason": reason}
    )
    return value or 0.0


def kill_event(uid: str | None, cid: str | None) -> dict[str, Any]:
    event = schema.blank_event(schema.OOM_KILL)
    event.update(pod_uid=uid, container_id=cid, qos="burstable", cgroup="/kubepods/burstable/pod" + str(uid))
    return event


def test_a_pod_created_after_the_last_list_is_named_by_one_refresh_within_the_deadline(
    api: FakeKube, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("test-token")
    cache = PodCache()
    source = KubeletSource(cache, ALLOW, api.url, token_file=tmp_path / "token", resync_s=3600)
    source.start()
    registry = CollectorRegistry()
    stage = KubeStage(cache, source, 1.0, enrichment_failures(registry))
    try:
        wait_until(lambda: api.lists() == 1)
        uid = new_uid()
        api.add(virt_launcher(uid))
        started = time.monotonic()
        event = stage(kill_event(uid, CID))
        took = time.monotonic() - started
        assert (event["namespace"], event["pod"], event["container"]) == (
            "default",
            "virt-launcher-vm2-x7k2p",
            "compute",
        )
        assert event["owner"] == {"kind": "VirtualMachineInstance", "name": "vm2"}
        assert event["labels"]["vm.kubevirt.io/name"] == "vm2"
        assert took < 1.0 and api.lists() == 2  # answered before the deadline
        assert sum(failures(registry, r) for r in REASONS) == 0
    finally:
        source.close()


def test_an_oom_storm_for_an_unknown_pod_costs_one_list_and_one_deadline(
    api: FakeKube, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("test-token")
    cache = PodCache()
    source = KubeletSource(cache, ALLOW, api.url, token_file=tmp_path / "token", resync_s=3600)
    source.start()
    registry = CollectorRegistry()
    stage = KubeStage(cache, source, 0.1, enrichment_failures(registry))
    try:
        wait_until(lambda: api.lists() == 1)
        uid = new_uid()
        started = time.monotonic()
        events = [stage(kill_event(uid, CID)) for _ in range(200)]
        took = time.monotonic() - started
        assert all(e["pod"] is None and e["pod_uid"] == uid and e["qos"] == "burstable" for e in events)
        assert took < 1.0  # one 0.1 s deadline at most, not 200 of them (20 s)
        assert api.lists() == 2  # one refresh for the whole storm
        assert failures(registry, NOT_FOUND) == 200
    finally:
        source.close()


def test_a_slow_source_delays_an_event_by_the_deadline_at_most_and_nothing_wrong_is_emitted(
    api: FakeKube, tmp_path: Path
) -> None:
    api.list_delay_s = 1.0
    cache = PodCache()
    source = apiserver_source(api, tmp_path, cache)
    registry = CollectorRegistry()
    stage = KubeStage(cache, source, 0.1, enrichment_failures(registry))
    source.start()
    try:
        uid = new_uid()
        api.add(virt_launcher(uid))
        started = time.monotonic()
        event = stage(kill_event(uid, CID))
        took = time.monotonic() - started
        assert 0.09 <= took < 0.5  # the 0.1 s deadline, plus scheduling slack on a busy machine
        assert all(event[k] is None for k in ("namespace", "pod", "container", "labels", "owner"))
        assert failures(registry, TIMEOUT) == 1
    finally:
        source.close()


def test_with_the_api_down_events_flow_with_what_is_known_and_failures_are_counted(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = api_client(kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "t"))
    cache = PodCache()
    logs = Logs()
    source = ApiServerSource(cache, ALLOW, client, NODE, log=logs)
    registry = CollectorRegistry()
    stage = KubeStage(cache, source, 0.1, enrichment_failures(registry))
    source.start()
    try:
        started = time.monotonic()
        events = [stage(kill_event(new_uid(), f"{i:064x}")) for i in range(5)]
        took = time.monotonic() - started
        assert all(e["pod_uid"] is not None and e["pod"] is None for e in events)
        assert took < 5 * 0.1 + 1.0  # at most one deadline per pod, plus slack
        assert failures(registry, UNAVAILABLE) + failures(registry, TIMEOUT) == 5
        assert failures(registry, UNAVAILABLE) >= 1
        assert any("is unreachable" in m for m in logs.messages())
    finally:
        source.close()


def test_a_pod_deleted_a_second_before_its_oom_event_is_still_named(api: FakeKube, tmp_path: Path) -> None:
    clock = Clock()
    cache = PodCache(grace_s=30, clock=clock)
    source = apiserver_source(api, tmp_path, cache)
    registry = CollectorRegistry()
    stage = KubeStage(cache, source, 0.1, enrichment_failures(registry), clock=clock)
    uid = new_uid()
    api.add(virt_launcher(uid))
    source.start()
    try:
        assert source.synced.wait(5)
        api.delete(uid)
        wait_until(lambda: cache.deleted(uid))
        clock.now += 1.0
        assert stage(kill_event(uid, CID))["pod"] == "virt-launcher-vm2-x7k2p"
        clock.now += 30
        assert stage(kill_event(uid, CID))["pod"] is None
    finally:
        source.close()


def test_events_outside_pods_are_not_touched_and_never_wait() -> None:
    class Exploding:
        name = "boom"

        def request_refresh(self) -> kube.Flight:
            raise AssertionError("no refresh for an event outside a pod")

    stage = KubeStage(PodCache(), Exploding(), 0.1)  # type: ignore[arg-type]
    event = schema.blank_event(schema.OOM_KILL)
    assert stage(dict(event)) == event


# --- wired into the daemon, as `oomtrace run` does it (no root, no BPF) -----------------------


def daemon_for(node: FakeNode, tmp_path: Path, *flags: str) -> tuple[Daemon, io.StringIO, Any]:
    out = io.StringIO()
    config = RunConfig(
        node=NODE,
        metrics_address=None,
        interval_s=1.0,
        near_oom_quiet_s=10.0,
        source="bpf",
        use_btf=True,
        cgroup_root=node.cgroup_root,
        headers_cache=tmp_path,
        duration_s=None,
        proc_root=node.proc,
    )
    args = build_parser().parse_args(["run", *flags])
    daemon = build_daemon(config, args, stdout=out)
    daemon.pipeline.start()
    return daemon, out, daemon.pipeline.close


def test_the_daemon_publishes_names_vm_roles_overhead_and_snapshot_from_the_cli_flags(
    api: FakeKube, tmp_path: Path
) -> None:
    uid = new_uid()
    api.add(virt_launcher(uid))
    node = FakeNode(tmp_path / "node")
    pod_path = f"/kubepods/burstable/pod{uid}"
    node.cgroup(pod_path, limit=2_412_421_120, peak=2_412_421_120, stat={"total_rss": 1, "total_cache": 2})
    node.cgroup(f"{pod_path}/{CID}")
    node.process(8542, "virt-launcher-m", f"{pod_path}/{CID}")
    node.process(8823, "qemu-system-x86", f"{pod_path}/{CID}", argv(*KUBEVIRT_CMDLINE))
    config = kubeconfig(tmp_path / "kubeconfig", api.url, api.token)
    daemon, out, close = daemon_for(
        node, tmp_path, "--kube", "apiserver", "--kubeconfig", str(config), "--node-name", NODE
    )
    try:
        event = schema.blank_event(schema.OOM_KILL)
        event.update(
            ktime_ns=time.monotonic_ns(),
            task_memcg=f"{pod_path}/{CID}",
            victim_comm="qemu-system-x86",
            victim_tgid=8823,
            victim_pid=8823,
            trigger_comm="CPU 0/KVM",
            trigger_tgid=8823,
            anon_rss_bytes=2042626048 + (40 << 20),
            shmem_rss_bytes=0,
        )
        daemon.pipeline.publish(event)
    finally:
        close()
    published = json.loads(out.getvalue())
    assert (published["namespace"], published["pod"], published["container"]) == (
        "default",
        "virt-launcher-vm2-x7k2p",
        "compute",
    )
    assert (published["vm"], published["vcpus"], published["trigger_role"], published["victim_role"]) == (
        "default/vm2",
        2,
        "vcpu",
        "qemu",
    )
    assert published["overhead"]["overhead_budget_bytes"] == 369_795_072
    assert published["memory_snapshot"]["memcg"] == pod_path
    assert set(published) == set(schema.blank_event(schema.OOM_KILL))
    kills = daemon.registry.get_sample_value(
        "oomtrace_oom_kills_total",
        {
            "namespace": "default",
            "pod": "virt-launcher-vm2-x7k2p",
            "container": "compute",
            "vm": "default/vm2",
        },
    )
    assert kills == 1.0


def test_without_kubernetes_the_daemon_still_attributes_the_vm_and_counts_no_failures(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "node", v2=True)
    uid = new_uid()
    pod_path = f"/kubepods/burstable/pod{uid}"
    node.cgroup(pod_path, limit=256 << 20, usage=250 << 20, stat={"anon": 1})
    node.cgroup(f"{pod_path}/{CID}")
    node.process(8823, "qemu-system-x86", f"{pod_path}/{CID}", argv(*KUBEVIRT_CMDLINE))
    daemon, out, close = daemon_for(node, tmp_path)
    try:
        event = schema.blank_event(schema.NEAR_OOM)
        event.update(ktime_ns=1, phase="first", memcg=f"{pod_path}/{CID}", usage_bytes=1, limit_bytes=None)
        daemon.pipeline.publish(event)
    finally:
        close()
    published = json.loads(out.getvalue())
    assert published["pod"] is None and published["pod_uid"] == uid
    assert published["vm"] == "default/vm2"
    assert published["overhead"]["usage_source"] == "current"
    assert published["memory_snapshot"] is None
    samples = [
        s for m in daemon.registry.collect() if m.name == "oomtrace_enrichment_failures" for s in m.samples
    ]
    assert samples and all(s.value == 0 for s in samples if s.name.endswith("_total"))


@pytest.mark.parametrize(
    "flags",
    [
        ["--kube", "bogus"],
        ["--kubevirt-version", "0.1"],
        ["--kubevirt-version", "latest"],
        ["--enrich-timeout-ms", "0"],
        ["--enrich-timeout-ms", "60000"],
        ["--label-allowlist", "a b"],
        ["--vm-scan-interval", "-1"],
        ["--kube-deleted-grace", "nan"],
    ],
    ids=" ".join,
)
def test_bad_attribution_flags_exit_2_with_one_line(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("oomtrace: error: ")


def test_a_missing_kubeconfig_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "node")
    with pytest.raises(UsageError, match="no such file"):
        daemon_for(node, tmp_path, "--kube", "apiserver", "--kubeconfig", str(tmp_path / "nope"))


def test_a_bad_kube_source_from_the_environment_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OOMTRACE_KUBE", "kubelets")
    with pytest.raises(UsageError, match="OOMTRACE_KUBE"):
        daemon_for(FakeNode(tmp_path / "node"), tmp_path)
