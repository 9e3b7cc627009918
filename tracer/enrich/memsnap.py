"""What was using the memory: a snapshot of the OOMing memory cgroup, read from cgroupfs and /proc.

The kernel prints a task table with its OOM report, but rate-limited (10 reports per 5 s)
and as text. This takes the same facts, structured, for every OOM: the cgroup's
`memory.stat` essentials and its top tasks by RSS, each with its role in a VM pod.

It is best effort by nature: the snapshot is read after the kernel event, and the event
says how long after (`delay_ms`). Taken on `memcg_oom` (before the kill, where a probe tier
provides that event) and attached to the `oom_kill`s that follow for the same cgroup; on
tiers without `memcg_oom` it is taken on the `oom_kill`, when the victim may already be
gone from the table (its own numbers are in the event).

Also here, because the overhead analysis needs them too: the cgroup a limit comes from (the
nearest ancestor with one) and its usage and peak, on cgroup v1 and v2.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from tracer.enrich.vm.procfs import cgroup_dir, pids_in, read_bytes
from tracer.enrich.vm.roles import role_of

# A v1 limit at or above this is "no limit" (PAGE_COUNTER_MAX pages: 9223372036854771712 bytes).
_V1_UNLIMITED: Final = 1 << 62
# Tasks read per snapshot, at most; the table lists the largest TOP of them.
MAX_TASKS: Final = 4096
DEFAULT_TOP: Final = 10
# A memcg_oom snapshot is attached to the kills that follow within this time.
ATTACH_WINDOW_NS: Final = 10 * 1_000_000_000
# Kills of one cgroup within this time of a kill's snapshot share it, as the kills of one OOM
# (memory.oom.group) share the cgroup they died in: a snapshot reads half a dozen files and every
# task's status, and one per kill capped `oomtrace run` at ~3,000 kills/s. Two OOMs of one
# cgroup are rarely this close (each waits for the last victim's exit and a reclaim retry).
SHARE_WINDOW_NS: Final = 100 * 1_000_000
_MAX_KEPT: Final = 1024

# memory.stat essentials: (our key, v2 name, v1 name). v1 names are the hierarchical totals,
# since the OOMing cgroup's usage includes its children's.
_STAT: Final = (
    ("anon_bytes", "anon", "total_rss"),
    ("file_bytes", "file", "total_cache"),
    ("kernel_bytes", "kernel", None),
    ("slab_bytes", "slab", None),
    ("shmem_bytes", "shmem", "total_shmem"),
    ("sock_bytes", "sock", None),
    ("pagetables_bytes", "pagetables", None),
)
# v1 keeps kernel and socket memory in files of their own.
_V1_FILES: Final = (
    ("kernel_bytes", "memory.kmem.usage_in_bytes"),
    ("sock_bytes", "memory.kmem.tcp.usage_in_bytes"),
)


def _read_text(path: str | Path, limit: int = 1 << 16) -> str | None:
    data = read_bytes(path, limit)
    return None if data is None else data.decode("ascii", errors="replace")


def _read_int(path: str | Path) -> int | None:
    text = _read_text(path, 64)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _count(word: str | None) -> int | None:
    return int(word) if word is not None and word.isdigit() else None


def is_v2(memory_root: Path) -> bool:
    return _is_v2(str(memory_root))


@functools.lru_cache(maxsize=16)
def _is_v2(memory_root: str) -> bool:
    """A mounted hierarchy does not change type while it is mounted."""
    return os.path.isfile(f"{memory_root}/cgroup.controllers")


def read_limit(memory_root: Path, cgroup: str) -> int | None:
    """The cgroup's own memory limit in bytes; None for no limit or an unreadable cgroup."""
    directory = cgroup_dir(memory_root, cgroup)
    if is_v2(memory_root):
        return _read_int(f"{directory}/memory.max")  # "max" is not a number: None
    limit = _read_int(f"{directory}/memory.limit_in_bytes")
    return None if limit is None or limit >= _V1_UNLIMITED else limit


def read_usage(memory_root: Path, cgroup: str) -> int | None:
    name = "memory.current" if is_v2(memory_root) else "memory.usage_in_bytes"
    return _read_int(f"{cgroup_dir(memory_root, cgroup)}/{name}")


def read_peak(memory_root: Path, cgroup: str) -> int | None:
    """The highest usage the cgroup reached (v1 max_usage_in_bytes; v2 memory.peak, 5.19+)."""
    name = "memory.peak" if is_v2(memory_root) else "memory.max_usage_in_bytes"
    return _read_int(f"{cgroup_dir(memory_root, cgroup)}/{name}")


def limited_ancestor(memory_root: Path, cgroup: str | None) -> tuple[str, int] | None:
    """The cgroup itself or its nearest ancestor with a memory limit, and that limit.

    This is the cgroup a memcg OOM of a task in `cgroup` happens in (oom_memcg, when no probe
    tier says it). None if nothing up to the root has a limit, or the cgroup is gone.
    """
    if not cgroup or not cgroup.startswith("/") or not os.path.isdir(cgroup_dir(memory_root, cgroup)):
        return None
    path = cgroup.rstrip("/") or "/"
    while path != "/":
        limit = read_limit(memory_root, path)
        if limit is not None:
            return path, limit
        path = path.rsplit("/", 1)[0] or "/"
    return None


def read_stat(memory_root: Path, cgroup: str) -> dict[str, int | None] | None:
    """memory.stat essentials in bytes, under one set of names for v1 and v2; absent ones None."""
    directory = cgroup_dir(memory_root, cgroup)
    text = _read_text(f"{directory}/memory.stat")
    if text is None:
        return None
    words = text.split()  # "name value" per line; split() in C, since this is on a kill's path
    raw = dict(zip(words[::2], words[1::2], strict=False))
    v2 = is_v2(memory_root)
    stat: dict[str, int | None] = {
        ours: _count(raw.get(v2_name if v2 else v1_name or "")) for ours, v2_name, v1_name in _STAT
    }
    if not v2:
        for ours, filename in _V1_FILES:
            stat[ours] = _read_int(f"{directory}/{filename}")
    return stat


def read_task(proc_root: Path, pid: int) -> dict[str, Any] | None:
    """pid, comm, role and RSS (total, anon, file, shmem) from /proc/<pid>/status; None if gone."""
    text = _read_text(f"{proc_root}/{pid}/status", 1 << 14)
    if text is None:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()

    def kib(key: str) -> int | None:
        value = fields.get(key, "").removesuffix(" kB").strip()
        return int(value) * 1024 if value.isdigit() else None

    rss = kib("VmRSS")
    if rss is None:
        return None  # a kernel thread, or a process already past exit_mm
    comm = fields.get("Name")
    return {
        "pid": pid,
        "comm": comm,
        "role": role_of(comm),
        "rss_bytes": rss,
        "anon_bytes": kib("RssAnon"),
        "file_bytes": kib("RssFile"),
        "shmem_bytes": kib("RssShmem"),
    }


def victim_task(event: dict[str, Any]) -> dict[str, Any] | None:
    """An oom_kill victim's row, from the kernel's own numbers at the kill; None if the event
    lacks them (then /proc is read like any other task's)."""
    pid, parts = event.get("victim_pid"), [event.get(f"{k}_rss_bytes") for k in ("anon", "file", "shmem")]
    if not isinstance(pid, int) or any(not isinstance(b, int) for b in parts):
        return None
    comm = event.get("victim_comm")
    anon, file, shmem = parts
    return {
        "pid": pid,
        "comm": comm,
        "role": role_of(comm),
        "rss_bytes": sum(parts),
        "anon_bytes": anon,
        "file_bytes": file,
        "shmem_bytes": shmem,
    }


def top_tasks(
    proc_root: Path, pids: list[int], top: int, known: tuple[dict[str, Any], ...] = ()
) -> list[dict[str, Any]]:
    """The `top` largest tasks by RSS: `known` rows as given, the other pids from /proc."""
    skip = {t["pid"] for t in known}
    read = (read_task(proc_root, pid) for pid in pids[:MAX_TASKS] if pid not in skip)
    tasks = [*known, *(t for t in read if t is not None)]
    tasks.sort(key=lambda t: (-t["rss_bytes"], t["pid"]))
    return tasks[:top]


def snapshot(
    memory_root: Path,
    proc_root: Path,
    cgroup: str,
    event_ktime_ns: int | None,
    source_event: str,
    top: int = DEFAULT_TOP,
    now_ns: Callable[[], int] = time.monotonic_ns,
    victim: dict[str, Any] | None = None,
    limit_bytes: int | None = None,
) -> dict[str, Any] | None:
    """The snapshot of `cgroup` now; None if the cgroup is gone. A `victim` row (victim_task())
    is listed as given instead of read from /proc: a dying process's /proc numbers race its
    exit, and reading them waits for the kill to finish (on a serial console, for its line).
    `limit_bytes`, when the caller has just read it (limited_ancestor), is not read again."""
    started = now_ns()
    stat = read_stat(memory_root, cgroup)
    if stat is None:
        return None
    pids = pids_in(memory_root, cgroup, MAX_TASKS)
    known = (victim,) if victim is not None else ()
    return {
        "memcg": cgroup,
        "source_event": source_event,
        # CLOCK_MONOTONIC on both sides: bpf_ktime_get_ns() and time.monotonic_ns().
        "delay_ms": None if event_ktime_ns is None else round((started - event_ktime_ns) / 1e6, 3),
        "usage_bytes": read_usage(memory_root, cgroup),
        "limit_bytes": limit_bytes if limit_bytes is not None else read_limit(memory_root, cgroup),
        "stat": stat,
        "tasks_total": len(set(pids) | {t["pid"] for t in known}),
        "tasks": top_tasks(proc_root, pids, top, known),
    }


class SnapshotStage:
    """Adds `memory_snapshot` to memcg_oom and oom_kill events (None where nothing is known)."""

    def __init__(
        self,
        memory_root: Path,
        proc_root: Path = Path("/proc"),
        top: int = DEFAULT_TOP,
        on_error: Callable[[str], None] | None = None,
        now_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._root = memory_root
        self._proc = proc_root
        self._top = top
        self._on_error = on_error
        self._now_ns = now_ns
        # memcg path → (its memcg_oom's ktime_ns, the snapshot taken then)
        self._recent: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        # the kill's oom_memcg, else its task_memcg → (that kill's ktime_ns, its snapshot)
        self._shared: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()

    def start(self) -> None:
        """Nothing runs in the background: the stage reads cgroupfs and /proc per event."""

    def close(self) -> None:
        """Nothing to release."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            kind = event.get("event")
            if kind == "memcg_oom":
                self._on_memcg_oom(event)
            elif kind == "oom_kill":
                self._on_oom_kill(event)
        except Exception as err:  # a snapshot must never stop the event
            if self._on_error is not None:
                self._on_error(f"memory snapshot failed: {err}")
        return event

    def _take(
        self,
        cgroup: str,
        event: dict[str, Any],
        victim: dict[str, Any] | None = None,
        limit_bytes: int | None = None,
    ) -> dict[str, Any] | None:
        return snapshot(
            self._root,
            self._proc,
            cgroup,
            event.get("ktime_ns"),
            event["event"],
            self._top,
            self._now_ns,
            victim,
            limit_bytes,
        )

    def _on_memcg_oom(self, event: dict[str, Any]) -> None:
        cgroup = event.get("oom_memcg")
        if not cgroup:
            return
        taken = self._take(cgroup, event)
        event["memory_snapshot"] = taken
        if taken is not None and isinstance(event.get("ktime_ns"), int):
            _keep(self._recent, cgroup, event["ktime_ns"], taken)

    def _on_oom_kill(self, event: dict[str, Any]) -> None:
        ktime = event.get("ktime_ns")
        key = event.get("oom_memcg") or event.get("task_memcg")
        shared = self._shared.get(key) if isinstance(key, str) else None
        if shared is not None and isinstance(ktime, int) and 0 <= ktime - shared[0] <= SHARE_WINDOW_NS:
            event["memory_snapshot"] = shared[1]
            return
        cgroup, limit = event.get("oom_memcg"), None
        if not cgroup:
            limited = limited_ancestor(self._root, event.get("task_memcg"))
            if limited is None:
                return  # no limit above the victim: a global OOM, not one cgroup's
            cgroup, limit = limited
        kept = self._recent.get(cgroup)
        if kept is not None and isinstance(ktime, int) and 0 <= ktime - kept[0] <= ATTACH_WINDOW_NS:
            event["memory_snapshot"] = kept[1]
            return
        taken = self._take(cgroup, event, victim_task(event), limit)
        event["memory_snapshot"] = taken
        if taken is not None and isinstance(key, str) and isinstance(ktime, int):
            _keep(self._shared, key, ktime, taken)


def _keep(
    kept: OrderedDict[str, tuple[int, dict[str, Any]]], key: str, ktime_ns: int, taken: dict[str, Any]
) -> None:
    kept[key] = (ktime_ns, taken)
    kept.move_to_end(key)
    while len(kept) > _MAX_KEPT:
        kept.popitem(last=False)
