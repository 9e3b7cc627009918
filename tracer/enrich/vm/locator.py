"""Which QEMU process (so which VM) runs in each pod or host machine: a background /proc scan, a cache."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tracer.enrich.vm import procfs
from tracer.enrich.vm.qemu import MAX_CMDLINE_BYTES, QemuInfo, parse_qemu_cmdline
from tracer.enrich.vm.roles import is_qemu_comm
from tracer.resolve.cgroups import path_of_pid
from tracer.resolve.tags import tags_for_path

# How many pods' VM facts are kept (a node runs at most a few hundred pods).
MAX_PODS: Final = 4096
# An event for a pod not known to hold QEMU scans that pod again at most this often.
POD_RESCAN_S: Final = 5.0
# How long a new process's comm is re-read by the scan, in case it execs QEMU late.
YOUNG_S: Final = 10.0
# While events arrive the background scan waits, up to this long since its last pass: its file
# reads hand the GIL back and forth with the event thread, and in an OOM storm every hand-back
# waits for a CPU behind the reclaiming tasks (storm kill lines p50 49 ms, 31 ms with the scan
# off, interleaved A/B).
# Events meanwhile look their pod up themselves (for_vm).
MAX_SCAN_DEFERRAL_S: Final = 10.0


@dataclass(frozen=True)
class FoundVm:
    key: str  # procfs.vm_key: the pod UID, or machine/<name> for a plain-host VM
    info: QemuInfo


class VmLocator:
    """Finds the QEMU process of each VM pod or host machine and keeps what its command line says.

    `scan()` (run by `start()` every `scan_interval_s` in a thread) reads the comm of
    processes younger than YOUNG_S (a fork is named after its parent until it execs; the
    processes already there at the first scan are read once), and the cgroup and command
    line of each new QEMU process once. `for_vm()` is
    the event path: cache first; on a miss at most one scan of that VM's cgroup per
    POD_RESCAN_S. Thread-safe. VMs are known by `procfs.vm_key`.
    """

    def __init__(
        self,
        memory_root: Path,
        proc_root: Path = Path("/proc"),
        scan_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_found: Callable[[FoundVm], None] | None = None,
    ) -> None:
        self._memory_root = memory_root
        self._proc = proc_root
        self._interval = scan_interval_s
        self._clock = clock
        self._on_found = on_found
        self._lock = threading.Lock()
        self._learning = threading.Lock()  # taken before _lock, never inside it
        self._pods: OrderedDict[str, QemuInfo] = OrderedDict()
        # A new process is named after its parent until it execs, so its comm is read on every
        # scan while it is young; after that (or at the first scan) it is settled: never read again.
        self._first_seen: dict[int, float] = {}
        self._settled: set[int] = set()
        self._parsed: set[int] = set()  # QEMU pids whose command line was read
        self._pod_scanned: dict[str, float] = {}
        self._last_event: float | None = None  # when the event thread last asked (note_event)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cmdline_reads = 0  # for tests: a command line is read once per QEMU process

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="oomtrace-vm-scan", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def note_event(self) -> None:
        """Called by the event thread for each event: the background scan waits while they come."""
        self._last_event = self._clock()

    def _scan_due(self, last_scan: float) -> bool:
        now, last_event = self._clock(), self._last_event
        busy = last_event is not None and now - last_event < self._interval
        return not busy or now - last_scan >= MAX_SCAN_DEFERRAL_S

    def _run(self) -> None:
        last_scan: float | None = None
        while True:
            if last_scan is None or self._scan_due(last_scan):
                last_scan = self._clock()
                with contextlib.suppress(Exception):  # a failed scan must not end the thread
                    self.scan()
            if self._stop.wait(self._interval):
                return

    def scan(self) -> int:
        """One pass over /proc; returns how many QEMU processes were newly learnt."""
        try:
            names = os.listdir(self._proc)
        except OSError:
            return 0
        alive = {int(n) for n in names if n.isdigit()}
        now = self._clock()
        first_scan = not self._first_seen
        learnt = 0
        for pid in alive - self._settled:
            seen = self._first_seen.setdefault(pid, now)
            if is_qemu_comm(procfs.read_comm(self._proc, pid)):
                self._settled.add(pid)
                learnt += self._learn(pid, None)
            elif first_scan or now - seen >= YOUNG_S:
                self._settled.add(pid)
        for pid in self._first_seen.keys() - alive:
            del self._first_seen[pid]
        self._settled &= alive
        with self._lock:
            self._parsed &= alive | {i.pid for i in self._pods.values() if i.pid is not None}
        return learnt

    def _learn(self, pid: int, key: str | None) -> bool:
        # One learner at a time, start to end: an event that finds the scan thread reading
        # this QEMU's command line waits for it instead of seeing "parsed" and no answer yet.
        with self._learning:
            with self._lock:
                if pid in self._parsed:
                    return False
                self._parsed.add(pid)
            if key is None:
                key = procfs.vm_key(tags_for_path(path_of_pid(pid, self._proc)))
                if key is None:
                    return False  # QEMU in no pod and no hypervisor's machine: nothing to name it by
            raw = procfs.read_bytes(self._proc / str(pid) / "cmdline", MAX_CMDLINE_BYTES)
            self.cmdline_reads += 1
            if not raw:
                return False  # exited, or a kernel thread
            info = parse_qemu_cmdline(raw, pid)
            if info.guest_name is None and info.guest_memory_bytes is None:
                # Runs no guest: libvirt's capability probe (`-machine none`), which virtqemud
                # starts in the virt-launcher pod before the VM's QEMU. Not the pod's VM.
                return False
            with self._lock:
                self._pods[key] = info
                self._pods.move_to_end(key)
                while len(self._pods) > MAX_PODS:
                    self._pods.popitem(last=False)
        if self._on_found is not None:
            self._on_found(FoundVm(key, info))
        return True

    def for_vm(self, key: str | None, cgroup: str | None) -> QemuInfo | None:
        """What is known of VM `key` (whose cgroup `cgroup` is, or is inside)."""
        if key is None:
            return None
        with self._lock:
            info = self._pods.get(key)
            if info is not None:
                return info
            now = self._clock()
            last = self._pod_scanned.get(key)
            if last is not None and now - last < POD_RESCAN_S:
                return None
            self._pod_scanned[key] = now
            if len(self._pod_scanned) > MAX_PODS:
                oldest = min(self._pod_scanned, key=self._pod_scanned.__getitem__)
                del self._pod_scanned[oldest]
        top = procfs.vm_cgroup(cgroup)
        if top is None:
            return None
        for pid in procfs.pids_in(self._memory_root, top):
            if is_qemu_comm(procfs.read_comm(self._proc, pid)):
                self._learn(pid, key)
        with self._lock:
            return self._pods.get(key)

    def known(self, key: str) -> QemuInfo | None:
        with self._lock:
            return self._pods.get(key)


