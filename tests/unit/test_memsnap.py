"""Memory snapshots of the OOMing cgroup, and limits from the nearest limited ancestor, v1 and v2."""

import os
from pathlib import Path
from typing import Any

import pytest

from tests.fake_node import FakeNode
from tracer import schema
from tracer.enrich import memsnap
from tracer.enrich.memsnap import SnapshotStage, limited_ancestor, read_stat, snapshot

MIB = 1 << 20
UID = "968a06fb-9ab9-4819-8caf-0392ddff3d9b"
POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
CONTAINER = f"{POD}/cri-containerd-{'c' * 64}.scope"
PAUSE = f"{POD}/cri-containerd-{'d' * 64}.scope"

# From the seed's second report (cgroup v2 names) and a v1 memory.stat (hierarchical totals).
V2_STAT = {
    **{"anon": 2390548480, "file": 69632, "kernel": 22372352, "kernel_stack": 1015808, "pagetables": 6619136},
    **{"sock": 0, "shmem": 0, "slab": 2754344, "anon_thp": 1702887424, "pgfault": 382790},
}
V1_STAT = {
    "cache": 0,
    "rss": 0,
    "shmem": 0,
    "total_cache": 2019328,
    "total_rss": 320323584,
    "total_shmem": 0,
    "total_mapped_file": 155648,
    "hierarchical_memory_limit": 2472419328,
}


def vm_pod(node: FakeNode, limit_at: str = "pod") -> None:
    limit = 192 * MIB
    stat = V2_STAT if node.v2 else V1_STAT
    node.cgroup(
        POD,
        limit=limit if limit_at == "pod" else None,
        usage=limit,
        peak=limit,
        stat=stat,
        kmem=143556 * 1024,
    )
    node.cgroup(CONTAINER, limit=limit if limit_at == "container" else None, stat=stat)
    node.cgroup(PAUSE)
    node.process(38886, "pause", PAUSE, rss_kib=(4, 0, 0))
    node.process(38917, "virt-launcher-m", CONTAINER, rss_kib=(20000, 7684, 0))
    node.process(38934, "virt-launcher", CONTAINER, rss_kib=(80000, 20504, 0))
    node.process(38951, "virtqemud", CONTAINER, rss_kib=(25000, 7988, 0))
    node.process(38952, "virtlogd", CONTAINER, rss_kib=(10000, 5760, 0))
    node.process(39079, "qemu-system-x86", CONTAINER, rss_kib=(150000, 20000, 4))
    node.process(2, "kthreadd-ish", CONTAINER, rss_kib=None)  # a kernel thread has no VmRSS


@pytest.mark.parametrize("v2", [False, True], ids=["cgroup v1", "cgroup v2"])
def test_the_limited_ancestor_is_the_cgroup_itself_or_the_nearest_parent_with_a_limit(
    tmp_path: Path, v2: bool
) -> None:
    node = FakeNode(tmp_path, v2=v2)
    vm_pod(node, limit_at="pod")
    assert limited_ancestor(node.memory_root, CONTAINER) == (POD, 192 * MIB)
    assert limited_ancestor(node.memory_root, POD) == (POD, 192 * MIB)
    node.cgroup("/system.slice/unlimited.service")
    assert limited_ancestor(node.memory_root, "/system.slice/unlimited.service") is None
    assert limited_ancestor(node.memory_root, "/no/such/cgroup") is None
    assert limited_ancestor(node.memory_root, None) is None
    assert limited_ancestor(node.memory_root, "relative/path") is None


def test_v2_stat_names_are_kept_and_absent_ones_are_null(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, v2=True)
    vm_pod(node)
    assert read_stat(node.memory_root, POD) == {
        "anon_bytes": 2390548480,
        "file_bytes": 69632,
        "kernel_bytes": 22372352,
        "slab_bytes": 2754344,
        "shmem_bytes": 0,
        "sock_bytes": 0,
        "pagetables_bytes": 6619136,
    }


def test_v1_stat_uses_hierarchical_totals_and_kmem_for_kernel_memory(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    assert read_stat(node.memory_root, POD) == {
        "anon_bytes": 320323584,  # total_rss, not the pod's own (0) rss
        "file_bytes": 2019328,
        "kernel_bytes": 143556 * 1024,
        "slab_bytes": None,
        "shmem_bytes": 0,
        "sock_bytes": None,
        "pagetables_bytes": None,
    }


def test_a_snapshot_lists_the_top_tasks_by_rss_with_roles_and_states_its_delay(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    taken = snapshot(
        node.memory_root, node.proc, POD, 1_000_000_000, "memcg_oom", top=4, now_ns=lambda: 1_003_500_000
    )
    assert taken is not None
    assert taken["delay_ms"] == 3.5
    assert (taken["memcg"], taken["source_event"], taken["limit_bytes"]) == (POD, "memcg_oom", 192 * MIB)
    assert taken["tasks_total"] == 7
    assert [(t["comm"], t["role"]) for t in taken["tasks"]] == [
        ("qemu-system-x86", "qemu"),
        ("virt-launcher", "virt-launcher"),
        ("virtqemud", "virtqemud"),
        ("virt-launcher-m", "virt-launcher-monitor"),
    ]
    first = taken["tasks"][0]
    assert first == {
        "pid": 39079,
        "comm": "qemu-system-x86",
        "role": "qemu",
        "rss_bytes": 170004 * 1024,
        "anon_bytes": 150000 * 1024,
        "file_bytes": 20000 * 1024,
        "shmem_bytes": 4 * 1024,
    }


def test_a_snapshot_of_a_removed_cgroup_is_null(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    assert snapshot(node.memory_root, node.proc, POD, 0, "oom_kill") is None


def test_processes_that_exited_before_the_snapshot_are_left_out(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    node.exit(39079)  # QEMU, killed
    taken = snapshot(node.memory_root, node.proc, POD, 0, "oom_kill")
    assert taken is not None
    assert "qemu-system-x86" not in [t["comm"] for t in taken["tasks"]]
    assert taken["tasks"][0]["comm"] == "virt-launcher"


def test_our_own_process_reads_as_a_task_from_the_real_proc() -> None:
    task = memsnap.read_task(Path("/proc"), os.getpid())
    assert task is not None and task["rss_bytes"] > 0 and task["anon_bytes"] is not None


def event(kind: str, ktime_ns: int, **fields: Any) -> dict[str, Any]:
    e = schema.blank_event(kind)
    e.update(ktime_ns=ktime_ns, pod_uid=UID)
    e.update(fields)
    return e


def test_the_memcg_oom_snapshot_is_attached_to_the_kills_that_follow(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 2_000_000_000)
    oom = stage(event(schema.MEMCG_OOM, 1_999_000_000, oom_memcg=POD))
    assert oom["memory_snapshot"]["source_event"] == "memcg_oom"
    assert oom["memory_snapshot"]["delay_ms"] == 1.0
    node.exit(39079)
    kill = stage(event(schema.OOM_KILL, 1_999_500_000, oom_memcg=POD, task_memcg=CONTAINER))
    assert kill["memory_snapshot"] is oom["memory_snapshot"]
    assert "qemu-system-x86" in [t["comm"] for t in kill["memory_snapshot"]["tasks"]]  # taken before the kill


def test_a_kill_without_a_recent_memcg_oom_takes_its_own_snapshot_of_the_limited_cgroup(
    tmp_path: Path,
) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 100 * 10**9)
    stage(event(schema.MEMCG_OOM, 10**9, oom_memcg=POD))
    kill = stage(event(schema.OOM_KILL, 99 * 10**9, task_memcg=CONTAINER))  # tracepoint tier: no oom_memcg
    snap = kill["memory_snapshot"]
    assert (snap["memcg"], snap["source_event"], snap["delay_ms"]) == (POD, "oom_kill", 1000.0)
    assert snap["limit_bytes"] == 192 * MIB  # the one limited_ancestor found


def test_kills_of_one_cgroup_close_together_share_the_first_kills_snapshot(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 100 * 10**9)
    first = stage(event(schema.OOM_KILL, 10**9, task_memcg=CONTAINER))["memory_snapshot"]
    node.exit(39079)  # a fresh snapshot would no longer list it
    within = memsnap.SHARE_WINDOW_NS
    second = stage(event(schema.OOM_KILL, 10**9 + within, task_memcg=CONTAINER))["memory_snapshot"]
    assert second is first and "qemu-system-x86" in [t["comm"] for t in second["tasks"]]
    later = stage(event(schema.OOM_KILL, 10**9 + within + 1, task_memcg=CONTAINER))["memory_snapshot"]
    assert later is not first and "qemu-system-x86" not in [t["comm"] for t in later["tasks"]]


def test_kills_of_other_cgroups_never_share_a_snapshot(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    other = f"{POD}/cri-containerd-{'e' * 64}.scope"
    node.cgroup(other, limit=64 * MIB, stat=V2_STAT)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 100 * 10**9)
    first = stage(event(schema.OOM_KILL, 10**9, task_memcg=CONTAINER))["memory_snapshot"]
    second = stage(event(schema.OOM_KILL, 10**9 + 1, task_memcg=other))["memory_snapshot"]
    assert (first["memcg"], second["memcg"]) == (POD, other)


def test_a_kill_with_no_limit_above_the_victim_is_a_global_oom_and_gets_no_snapshot(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    node.cgroup("/system.slice/big.service")
    kill = SnapshotStage(node.memory_root, node.proc)(
        event(schema.OOM_KILL, 1, task_memcg="/system.slice/big.service")
    )
    assert kill["memory_snapshot"] is None


def test_near_oom_events_are_not_snapshotted(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    near = SnapshotStage(node.memory_root, node.proc)(event(schema.NEAR_OOM, 1, memcg=POD))
    assert near["memory_snapshot"] is None


def test_an_unreadable_memory_stat_gives_no_snapshot_and_no_error(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    (node.memory_root / POD.lstrip("/") / "memory.stat").unlink()
    (node.memory_root / POD.lstrip("/") / "memory.stat").mkdir()  # unreadable as a file
    errors: list[str] = []
    stage = SnapshotStage(node.memory_root, node.proc, on_error=errors.append)
    out = stage(event(schema.MEMCG_OOM, 1, oom_memcg=POD))
    assert out["memory_snapshot"] is None
    assert errors == []  # an unreadable file is "unknown", not a failure of ours
    assert memsnap.read_usage(node.memory_root, POD) == 192 * MIB


def test_a_failing_snapshot_is_reported_and_the_event_still_goes_out(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    errors: list[str] = []
    out = SnapshotStage(node.memory_root, node.proc, on_error=errors.append)(
        {"event": "oom_kill", "oom_memcg": POD, "ktime_ns": "not a number"}
    )
    assert out["event"] == "oom_kill" and len(errors) == 1


def _qemu_kill(ktime_ns: int, **fields: Any) -> dict[str, Any]:
    # The kernel's numbers at the kill, as the seed's "Killed process" line gives them.
    numbers = {"anon_rss_bytes": 1_530_000 * 1024, "file_rss_bytes": 9_000 * 1024, "shmem_rss_bytes": 4096}
    return event(
        schema.OOM_KILL,
        ktime_ns,
        task_memcg=CONTAINER,
        victim_pid=39079,
        victim_comm="qemu-system-x86",
        **{**numbers, **fields},
    )


@pytest.mark.parametrize("victim_in_proc", [True, False], ids=["still-in-proc", "already-gone"])
def test_a_kills_own_snapshot_lists_the_victim_with_the_kernels_numbers_not_procs(
    tmp_path: Path, victim_in_proc: bool
) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    if not victim_in_proc:
        node.exit(39079)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 2 * 10**9)
    snap = stage(_qemu_kill(10**9))["memory_snapshot"]
    victim = snap["tasks"][0]
    assert victim == {
        "pid": 39079,
        "comm": "qemu-system-x86",
        "role": "qemu",
        "rss_bytes": (1_530_000 + 9_000) * 1024 + 4096,
        "anon_bytes": 1_530_000 * 1024,
        "file_bytes": 9_000 * 1024,
        "shmem_bytes": 4096,
    }
    assert [t["pid"] for t in snap["tasks"]].count(39079) == 1
    assert snap["tasks_total"] == 7  # the victim counted once either way


def test_a_kill_without_the_victims_memory_numbers_reads_it_from_proc(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    vm_pod(node)
    stage = SnapshotStage(node.memory_root, node.proc, now_ns=lambda: 2 * 10**9)
    kill = _qemu_kill(10**9, anon_rss_bytes=None)  # e.g. a mark_victim format without rss fields
    victim = next(t for t in stage(kill)["memory_snapshot"]["tasks"] if t["pid"] == 39079)
    assert victim["anon_bytes"] == 150000 * 1024  # /proc's VmRSS split, not the event's
