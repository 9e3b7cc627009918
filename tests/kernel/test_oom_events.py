"""Real OOMs in pod-shaped cgroups, traced by `oomtrace run`, checked against /dev/kmsg."""

import time
from typing import Any

import pytest

from tests.kernel.conftest import KernelLog, Tracer
from tracer.cli.sandbox import PodSandbox
from tracer.sources.kmsg import KILLED_LINE_FIELDS

MIB = 1 << 20
# The kernel's report and our event describe the same kill: these must agree exactly.
VICTIM_FIELDS = (*KILLED_LINE_FIELDS, "task_memcg")


def _kills(tracer: Tracer, pid: int) -> list[dict[str, Any]]:
    return [e for e in tracer.events if e["event"] == "oom_kill" and e["victim_pid"] == pid]


def _oom(sandbox: PodSandbox, name: str = "oomtrace-alloc") -> int:
    """Runs an allocator past the limit; returns its pid once the kernel has killed it."""
    process = sandbox.spawn(name, total_mib=4 * sandbox.limit_bytes // MIB)
    assert process.wait(timeout=60) == -9, "the allocator was not OOM-killed"
    return process.pid


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_oom_in_pod_cgroup_is_one_oom_kill_tagged_with_the_pod_and_agreeing_with_the_kernel(
    tracer: Tracer, kernel_log: KernelLog, driver: str
) -> None:
    with PodSandbox(limit_bytes=64 * MIB, driver=driver) as pod:
        pid = _oom(pod)
        ours = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
        kernels = kernel_log.kill_of(pid)
        time.sleep(1)  # a duplicate would have arrived by now

    assert len(_kills(tracer, pid)) == 1
    assert ours["pod_uid"] == pod.pod_uid
    assert ours["container_id"] == pod.container_id
    assert ours["qos"] == "burstable"
    assert ours["runtime"] == ("containerd" if driver == "systemd" else None)
    assert ours["task_memcg"] == pod.container_path
    assert ours["victim_comm"] == "oomtrace-alloc"
    assert {f: ours[f] for f in VICTIM_FIELDS} == {f: kernels[f] for f in VICTIM_FIELDS}
    assert ours["anon_rss_bytes"] > 32 * MIB  # the allocator really held its memory


def test_near_oom_for_the_cgroup_precedes_its_oom_kill(tracer: Tracer) -> None:
    with PodSandbox(limit_bytes=64 * MIB) as pod:
        pid = _oom(pod)
        tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
        summary = tracer.wait_for(
            lambda e: (
                e["event"] == "near_oom" and e["phase"] == "summary" and e["memcg"] == pod.container_path
            )
        )

    stream = [e for e in tracer.events if e.get("memcg") == pod.container_path or e.get("victim_pid") == pid]
    kinds = [(e["event"], e.get("phase")) for e in stream]
    first_near = kinds.index(("near_oom", "first"))
    assert first_near < kinds.index(("oom_kill", None))
    first = stream[first_near]
    assert first["pod_uid"] == pod.pod_uid
    assert first["limit_bytes"] == 64 * MIB
    assert first["usage_bytes"] > 60 * MIB
    assert summary["reclaim_calls"] > 0
    assert summary["reclaim_time_ns"] > 0


def test_two_processes_killed_one_after_the_other_are_two_oom_kill_events(
    tracer: Tracer, kernel_log: KernelLog
) -> None:
    with PodSandbox(limit_bytes=48 * MIB) as pod:
        first = _oom(pod, "oomtrace-first")
        second = _oom(pod, "oomtrace-second")
        ours = [
            tracer.wait_for(lambda e, p=p: e["event"] == "oom_kill" and e["victim_pid"] == p)
            for p in (first, second)
        ]
        kernels = [kernel_log.kill_of(p) for p in (first, second)]
        time.sleep(1)

    assert [len(_kills(tracer, p)) for p in (first, second)] == [1, 1]
    assert [e["victim_comm"] for e in ours] == ["oomtrace-first", "oomtrace-second"]
    for mine, kernel in zip(ours, kernels, strict=True):
        assert {f: mine[f] for f in VICTIM_FIELDS} == {f: kernel[f] for f in VICTIM_FIELDS}


def test_pod_level_limit_names_the_container_as_task_memcg(tracer: Tracer, kernel_log: KernelLog) -> None:
    with PodSandbox(limit_bytes=64 * MIB, limit_at="pod") as pod:
        pid = _oom(pod)
        ours = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
        kernel = kernel_log.kill_of(pid)

    assert kernel["oom_memcg"] == pod.pod_path  # the kernel's word: the pod hit its limit
    assert ours["task_memcg"] == kernel["task_memcg"] == pod.container_path
    assert ours["container_id"] == pod.container_id
    # The tracepoint tier cannot see which cgroup OOMed: null, never guessed.
    if ours["tier"] == "tracepoint":
        assert ours["oom_memcg"] is None and ours["constraint"] is None
    else:
        assert ours["oom_memcg"] == pod.pod_path and ours["constraint"] == "memcg"


def test_cgroup_below_its_limit_produces_no_events(tracer: Tracer) -> None:
    with PodSandbox(limit_bytes=128 * MIB) as pod:
        process = pod.spawn("oomtrace-calm", total_mib=16, hold_s=0)
        assert process.wait(timeout=30) == 0
        time.sleep(1.5)  # three summary intervals

    mentions = [
        e
        for e in tracer.events
        if pod.container_path in (e.get("memcg"), e.get("task_memcg"), e.get("cgroup"))
    ]
    assert mentions == []
