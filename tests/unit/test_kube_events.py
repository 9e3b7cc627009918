"""Kubernetes Events (tracer/sinks/kube_events): what is posted, how repeats aggregate, and that a
slow or refusing API server delays nothing and is counted.

No API server can run here: tests/fake_kube.py speaks the events.k8s.io/v1 shapes (create,
merge-patch of the series, 403 from RBAC, a server that hangs), and the real `kubernetes`
client talks to it.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_kube import kubeconfig, running
from tracer import schema
from tracer.enrich.kube import api_client
from tracer.sinks.kube_events import ApiEventWriter, EventPlanner, EventWriteError, KubeEventsSink, kill_note
from tracer.sinks.kube_events.series import KILL_SERIES_S, NEAR_OOM_PATCH_EVERY_S, SERIES_IDLE_S, SUSTAINED_S

MIB = 1 << 20
UID = "7d52b801-b54f-4046-9dcc-c7740e065385"
WALL = "2026-12-06T20:00:00.000000Z"


def kill(**fields: Any) -> dict[str, Any]:
    e = schema.blank_event(schema.OOM_KILL)
    e.update(
        ts="2026-12-06T19:59:59.123456Z", namespace="default", pod="web-1", pod_uid=UID, container="app",
        victim_comm="python3", victim_pid=4242, anon_rss_bytes=60 * MIB,
        memory_snapshot={"usage_bytes": 64 * MIB, "limit_bytes": 64 * MIB},
    )  # fmt: skip
    e.update(fields)
    return e


def vm_kill() -> dict[str, Any]:
    overhead = {
        "limit_bytes": 2_412_421_120, "usage_bytes": 2_412_421_120, "guest_memory_bytes": 2_042_626_048,
        "overhead_budget_bytes": 369_795_072, "non_guest_usage_bytes": 369_795_072,
        "recommendation": {"budget_sufficient": False, "reserved_memory": "135Mi",
                           "additional_guest_memory_overhead_ratio": "1.6"},
    }  # fmt: skip
    return kill(
        pod="virt-launcher-vm2-x7k2p", container="compute", victim_comm="qemu-system-x86", vm="default/vm2",
        owner={"kind": "VirtualMachineInstance", "name": "vm2"}, overhead=overhead,
    )  # fmt: skip


def summary(**fields: Any) -> dict[str, Any]:
    e = schema.blank_event(schema.NEAR_OOM)
    e.update(
        namespace="default", pod="web-1", pod_uid=UID, container="app", phase=schema.SUMMARY, interval_s=10.0,
        charge_failures=120, usage_bytes=64 * MIB, limit_bytes=64 * MIB,
    )  # fmt: skip
    e.update(fields)
    return e


# --- what is posted -----------------------------------------------------------------------------


def test_a_kill_is_one_warning_event_on_the_pod_in_the_events_api_shape() -> None:
    [action] = EventPlanner("node-1").plan(kill(), 100.0, WALL)
    body = action.body
    assert (action.verb, action.namespace) == ("create", "default")
    assert body["apiVersion"] == "events.k8s.io/v1" and body["kind"] == "Event"
    assert body["metadata"]["namespace"] == "default" and body["metadata"]["name"].startswith("web-1.")
    assert (body["reportingController"], body["reportingInstance"]) == ("oomtrace", "node-1")
    assert (body["type"], body["reason"], body["action"]) == ("Warning", "OOMKilled", "Kill")
    assert body["eventTime"] == "2026-12-06T19:59:59.123456Z"  # the kill's own time, not the post's
    assert body["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "default",
        "name": "web-1",
        "uid": UID,
    }
    assert body["note"] == (
        "OOM-killed python3 (pid 4242, 60 MiB resident) in container app:"
        " its cgroup was at 64 MiB of its 64 MiB limit"
    )


def test_a_vm_kill_is_posted_on_the_pod_and_its_virtual_machine_instance_with_the_advice() -> None:
    actions = EventPlanner("node-1").plan(vm_kill(), 100.0, WALL)
    kinds = [(a.body["regarding"]["kind"], a.body["regarding"]["name"]) for a in actions]
    assert kinds == [("Pod", "virt-launcher-vm2-x7k2p"), ("VirtualMachineInstance", "vm2")]
    assert actions[1].body["regarding"]["apiVersion"] == "kubevirt.io/v1"
    note = actions[0].body["note"]
    assert note == actions[1].body["note"]
    assert "VM default/vm2: guest 1948 MiB, overhead budget 353 MiB, non-guest used 353 MiB" in note
    assert "harvesterhci.io/reservedMemory: 135Mi or additional-guest-memory-overhead-ratio: 1.6" in note
    assert len(note.encode()) <= 1024


def test_a_note_never_exceeds_the_apis_one_kilobyte() -> None:
    assert len(kill_note(kill(container="c" * 5000)).encode()) <= 1024


@pytest.mark.parametrize("missing", ["namespace", "pod"])
def test_an_event_with_no_pod_name_posts_nothing(missing: str) -> None:
    assert EventPlanner("node-1").plan(kill(**{missing: None}), 100.0, WALL) == []


def test_kills_close_together_are_one_event_with_a_series_count() -> None:
    planner = EventPlanner("node-1")
    [first] = planner.plan(kill(), 100.0, WALL)
    [second] = planner.plan(kill(ts="2026-12-06T20:00:01.000000Z"), 101.0, WALL)
    [third] = planner.plan(kill(), 101.0 + KILL_SERIES_S - 0.5, WALL)
    assert (second.verb, second.name) == ("patch", first.name)
    assert second.body == {"series": {"count": 2, "lastObservedTime": "2026-12-06T20:00:01.000000Z"}}
    assert third.body["series"]["count"] == 3
    [later] = planner.plan(kill(), 101.0 + 2 * KILL_SERIES_S + 1, WALL)
    assert later.verb == "create" and later.name != first.name


def test_near_oom_is_posted_only_when_sustained_and_then_aggregated_not_repeated() -> None:
    planner = EventPlanner("node-1")
    posted = []
    for t in range(0, 200, 10):  # a summary every 10 s interval, for 190 s
        posted += [(t, a) for a in planner.plan(summary(), float(t), WALL)]
    creates = [(t, a) for t, a in posted if a.verb == "create"]
    patches = [(t, a) for t, a in posted if a.verb == "patch"]
    assert [t for t, _ in creates] == [SUSTAINED_S]
    body = creates[0][1].body
    assert (body["reason"], body["type"], body["action"]) == ("NearOOM", "Warning", "Reclaim")
    assert "reclaiming at its memory limit for 30 s (4 intervals)" in body["note"]
    assert "120 charge failures in the last 10 s" in body["note"]
    # At most one series update a minute, each carrying every summary counted since.
    times = [t for t, _ in patches]
    assert all(b - a >= NEAR_OOM_PATCH_EVERY_S for a, b in itertools.pairwise(times))
    assert [a.body["series"]["count"] for _, a in patches] == [(t - SUSTAINED_S) // 10 + 1 for t in times]


def test_near_oom_that_stops_is_not_sustained() -> None:
    planner = EventPlanner("node-1")
    assert [a for t in (0, 10, 20) for a in planner.plan(summary(), float(t), WALL)] == []
    # A gap of more than 2.5 intervals ends the run: 60 s later it starts from the beginning.
    assert [a for t in (80, 90, 100) for a in planner.plan(summary(), float(t), WALL)] == []


def test_a_near_oom_after_its_series_went_idle_is_a_new_event() -> None:
    planner = EventPlanner("node-1")
    first = [a for t in range(0, 40, 10) for a in planner.plan(summary(), float(t), WALL)]
    start = 30 + SERIES_IDLE_S + 10
    again = [a for t in range(0, 40, 10) for a in planner.plan(summary(), float(start + t), WALL)]
    assert [a.verb for a in first] == [a.verb for a in again] == ["create"]
    assert first[0].name != again[0].name


def test_only_kills_and_near_oom_summaries_are_events() -> None:
    first = summary(phase=schema.FIRST)
    oom = schema.blank_event(schema.MEMCG_OOM)
    oom.update(namespace="default", pod="web-1")
    planner = EventPlanner("node-1")
    assert planner.plan(first, 0.0, WALL) == [] and planner.plan(oom, 0.0, WALL) == []


# --- the sink: nothing waits for the API server -------------------------------------------------


class GateWriter:
    """A writer whose requests wait until released: an API server that hangs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sent: list[tuple[str, str, str, dict[str, Any]]] = []

    def send(self, verb: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.sent.append((verb, namespace, name, body))


def counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "oomtrace_kube_events_total":
                out[(s.labels["reason"], s.labels["result"])] = s.value
    return out


def test_a_hung_api_server_never_blocks_write_and_what_does_not_fit_is_counted() -> None:
    registry = CollectorRegistry()
    writer = GateWriter()
    sink = KubeEventsSink(EventPlanner("node-1"), writer, registry, queue_size=3)
    sink.start()
    sink.write(kill(pod="p0"))
    assert writer.entered.wait(5)  # the sender is stuck in its first request
    for i in range(1, 8):  # every write returns while that request hangs
        sink.write(kill(pod=f"p{i}"))
    assert counts(registry)[("OOMKilled", "dropped")] == 4  # 3 queued, 4 did not fit
    writer.gate.set()
    sink.close()
    assert counts(registry)[("OOMKilled", "created")] == 4
    assert len(writer.sent) == 4


def test_a_waiting_series_update_is_replaced_by_the_newer_one() -> None:
    registry = CollectorRegistry()
    writer = GateWriter()
    sink = KubeEventsSink(EventPlanner("node-1"), writer, registry, clock=lambda: 100.0)
    sink.start()
    sink.write(kill(pod="busy"))
    assert writer.entered.wait(5)
    for _ in range(5):  # kills in one series while the create is on the wire: one patch waits
        sink.write(kill(pod="busy"))
    writer.gate.set()
    sink.close()
    assert [(verb, body.get("series", {}).get("count")) for verb, _, _, body in writer.sent] == [
        ("create", None),
        ("patch", 6),
    ]


# --- against the API server's documented shapes ------------------------------------------------


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def writer_for(tmp_path: Path, api: Any, timeout_s: float = 5.0) -> ApiEventWriter:
    return ApiEventWriter(api_client(kubeconfig(tmp_path / "kubeconfig", api.url, api.token)), timeout_s)


def test_events_are_created_and_their_series_patched_on_the_api_server(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with running() as api:
        sink = KubeEventsSink(
            EventPlanner("node-1"), writer_for(tmp_path, api), registry, clock=lambda: 100.0
        )
        sink.start()
        sink.write(vm_kill())
        sink.write(vm_kill())
        sink.close()
        [pod_event] = api.events_about("Pod", "virt-launcher-vm2-x7k2p")
        [vmi_event] = api.events_about("VirtualMachineInstance", "vm2")
    assert pod_event["reason"] == vmi_event["reason"] == "OOMKilled"
    assert pod_event["series"]["count"] == vmi_event["series"]["count"] == 2
    assert counts(registry) == {("OOMKilled", "created"): 2, ("OOMKilled", "patched"): 2}


def test_403_from_rbac_is_one_clear_line_counted_as_failed_and_the_next_kill_tries_again(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    logged: list[str] = []
    with running() as api:
        writer = writer_for(tmp_path, api)
        with pytest.raises(EventWriteError) as refused:
            api.forbid_events()
            writer.send("create", "default", "x.0", EventPlanner("n").plan(kill(), 0, WALL)[0].body)
        assert refused.value.status == 403
        assert "needs create and patch on events.k8s.io events" in str(refused.value)
        sink = KubeEventsSink(
            EventPlanner("node-1"), writer, registry, lambda level, msg, fields: logged.append(msg),
            clock=lambda: 100.0,
        )  # fmt: skip
        sink.start()
        sink.write(kill())
        wait_for(lambda: counts(registry).get(("OOMKilled", "failed")) == 1)
        api.events_forbidden = False
        sink.write(kill())  # same series, but its Event was never created: a new one
        sink.close()
        assert len(api.events_about("Pod", "web-1")) == 1
        assert counts(registry)[("OOMKilled", "created")] == 1
    assert counts(registry)[("OOMKilled", "failed")] == 1
    assert len(logged) == 1 and "\n" not in logged[0] and "403" in logged[0]


def test_a_server_that_never_answers_is_a_failure_after_the_timeout_not_a_hang(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with running() as api:
        api.events_delay_s = 5.0
        sink = KubeEventsSink(
            EventPlanner("node-1"), writer_for(tmp_path, api, 0.3), registry, clock=lambda: 100.0
        )
        sink.start()
        sink.write(kill())
        # The failure is counted once the request timed out, without anyone waiting on it.
        wait_for(lambda: counts(registry).get(("OOMKilled", "failed")) == 1)
        sink.close()
