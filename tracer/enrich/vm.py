"""VM attribution without the KubeVirt API: QEMU's command line, task roles, a per-pod cache.

A KubeVirt VM runs as one virt-launcher pod whose compute container holds
virt-launcher-monitor, virt-launcher, virtqemud (libvirtd before KubeVirt 0.59), virtlogd
and QEMU. QEMU's command line says which VM it is and how big:

    -name guest=<namespace>_<vmi>,debug-threads=on
    -m <MiB> | -m size=<KiB>k | -object {"qom-type":"memory-backend-ram","id":"pc.ram","size":<bytes>}
    -smp <n>[,sockets=..,cores=..,threads=..]

Only what is parsed out of it (vm, guest memory, vCPUs, a few device flags the overhead
formula needs) is kept: the command line itself, like the environment, can carry secrets
and never goes into an event or a log.

Command lines are read once per QEMU process, by a background scan of /proc that reads
the comm of new processes only, and on an event for a pod not seen yet (one scan of that
pod's cgroup). The OOM killer usually kills QEMU itself, after which /proc/<pid>/cmdline
is empty: what was learnt while it ran is what names the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tracer.resolve.cgroups import path_of_pid
from tracer.resolve.tags import tags_for_path

# Roles of the tasks in a virt-launcher pod, as `trigger_role` / `victim_role` say them.
QEMU: Final = "qemu"
VCPU: Final = "vcpu"
VIRT_LAUNCHER: Final = "virt-launcher"
VIRT_LAUNCHER_MONITOR: Final = "virt-launcher-monitor"
VIRTQEMUD: Final = "virtqemud"
LIBVIRTD: Final = "libvirtd"
VIRTLOGD: Final = "virtlogd"
OTHER: Final = "other"

# The kernel keeps 15 characters of a task's name (TASK_COMM_LEN 16 with the NUL), so
# "virt-launcher-monitor" is "virt-launcher-m" and "qemu-system-x86_64" is "qemu-system-x86".
_COMM_ROLES: Final[dict[str, str]] = {
    "virt-launcher": VIRT_LAUNCHER,
    "virt-launcher-m": VIRT_LAUNCHER_MONITOR,
    "virt-launcher-monitor": VIRT_LAUNCHER_MONITOR,
    "virtqemud": VIRTQEMUD,
    "libvirtd": LIBVIRTD,
    "virtlogd": VIRTLOGD,
}
# vCPU threads when QEMU runs with debug-threads=on (KubeVirt always sets it).
_VCPU_COMM: Final = re.compile(r"CPU [0-9]{1,5}/KVM")

# Bounds that no real command line reaches; past them a value is garbage, not a VM.
MAX_CMDLINE_BYTES: Final = 1 << 20
MAX_GUEST_MEMORY_BYTES: Final = 1 << 52  # 4 PiB
MAX_VCPUS: Final = 16384

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII
)

# Options whose value we read; every other option is skipped without looking at its value.
_WANTED: Final = frozenset(
    ("-name", "-m", "-smp", "-object", "-machine", "-M", "-numa", "-device", "-vga", "-tpmdev")
)
# -device drivers that give the guest a display: KubeVirt counts video RAM for them.
_VIDEO_DRIVERS: Final = frozenset(
    ("VGA", "virtio-vga", "virtio-gpu-pci", "bochs-display", "qxl-vga", "cirrus-vga", "ramfb", "virtio-gpu")
)
_MEMORY_BACKENDS: Final = frozenset(("memory-backend-ram", "memory-backend-file", "memory-backend-memfd"))
_SIZE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([bBkKmMgGtTpPeE]?)", re.ASCII)
_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "e": 1 << 60,
}


def is_qemu_comm(comm: str | None) -> bool:
    """QEMU's main thread: `qemu-system-x86` (truncated from qemu-system-x86_64) or `qemu-kvm`."""
    return comm is not None and (comm == "qemu-kvm" or comm.startswith("qemu-system-"))


def role_of(comm: str | None, process_comm: str | None = None) -> str | None:
    """The role of a task from its own comm and, for threads, its process's comm.

    A QEMU thread that is not a vCPU (`IO iothread1`, `vnc_worker`, ...) is `qemu`, as is a
    virtqemud worker thread `virtqemud`. None when nothing is known about the task.
    """
    if comm is None and process_comm is None:
        return None
    for name in (comm, process_comm):
        if name is None:
            continue
        if _VCPU_COMM.fullmatch(name):
            return VCPU
        if is_qemu_comm(name):
            return QEMU
        role = _COMM_ROLES.get(name)
        if role is not None:
            return role
    return OTHER


@dataclass(frozen=True)
class QemuInfo:
    """What a QEMU command line says about its VM. Unknown values are None."""

    vm: str | None  # "<namespace>/<vmi>"
    guest_memory_bytes: int | None
    vcpus: int | None
    video: bool = False  # a display device: KubeVirt adds video RAM to the overhead
    vfio: bool = False  # a passed-through PCI device: KubeVirt adds 1 GiB
    tpm: bool = False  # a TPM (swtpm process): KubeVirt adds 53 MiB
    sev: bool = False  # an SEV guest: KubeVirt adds 256 MiB
    pid: int | None = None  # the QEMU process it came from


def _split_args(raw: bytes) -> list[str | None]:
    """NUL-separated argv; an argument that is not UTF-8 is None (it names nothing we use)."""
    truncated = not raw.endswith(b"\0")
    parts = raw.split(b"\0")
    if raw.endswith(b"\0"):
        parts.pop()
    elif truncated and len(raw) >= MAX_CMDLINE_BYTES:
        parts.pop()  # cut off mid-argument by the read limit: not a whole value
    args: list[str | None] = []
    for part in parts:
        try:
            args.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            args.append(None)
    return args


def split_opts(value: str, implied: str) -> dict[str, str]:
    """QEMU's `key=value,key=value` option syntax (`,,` is a literal comma).

    The first item may omit its key: it is then `implied` (e.g. `-m 2048` is size=2048).
    """
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    items.append("".join(current))
    opts: dict[str, str] = {}
    for n, item in enumerate(items):
        key, sep, val = item.partition("=")
        if not sep:
            if n == 0 and item:
                opts[implied] = item
            continue
        opts.setdefault(key, val)
    return opts


def _opts(value: str, implied: str) -> dict[str, Any]:
    """An option value in either syntax QEMU takes: JSON (`{"qom-type": ...}`) or key=value."""
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return split_opts(value, implied)


def parse_size(value: object, default_unit: str = "b") -> int | None:
    """A QEMU size (`2048`, `2G`, `1994752k`, `1.5G`, or a JSON integer) in bytes; None if garbage.

    Suffixes are binary (k = KiB). A bare number is in `default_unit` (MiB for -m).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number, unit = float(value), default_unit
        whole = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is None or len(value) > 40:
            return None
        unit = m.group(2).lower() or default_unit
        if "." in m.group(1):
            number = float(m.group(1))
            whole = None
        else:
            whole = int(m.group(1))
            number = float(whole)
    else:
        return None
    scale = _UNITS[unit]
    size = whole * scale if whole is not None else int(number * scale)
    if not 0 < size <= MAX_GUEST_MEMORY_BYTES:
        return None
    return size


def _vm_name(guest: str | None) -> str | None:
    """`<namespace>_<vmi>` → `<namespace>/<vmi>`; None for any other guest name.

    Neither a namespace (DNS label) nor a VMI name (DNS subdomain) can hold "_", so the first
    one splits them unambiguously.
    """
    if not guest:
        return None
    namespace, sep, name = guest.partition("_")
    if (
        not sep
        or not _DNS_LABEL.fullmatch(namespace)
        or len(name) > 253
        or not _DNS_SUBDOMAIN.fullmatch(name)
    ):
        return None
    return f"{namespace}/{name}"


def _smp(value: str) -> int | None:
    opts = split_opts(value, "cpus")
    try:
        if "cpus" in opts:
            cpus = int(opts["cpus"])
        elif "maxcpus" in opts:
            cpus = int(opts["maxcpus"])
        else:
            topology = [int(opts.get(k, "1")) for k in ("sockets", "dies", "clusters", "cores", "threads")]
            if not any(k in opts for k in ("sockets", "dies", "clusters", "cores", "threads")):
                return None
            cpus = 1
            for n in topology:
                if not 0 < n <= MAX_VCPUS:
                    return None
                cpus *= n
    except ValueError:
        return None
    return cpus if 0 < cpus <= MAX_VCPUS else None


def parse_qemu_cmdline(raw: bytes, pid: int | None = None) -> QemuInfo:
    """Parse /proc/<pid>/cmdline of a QEMU process. Never raises; unknown fields are None."""
    args = _split_args(raw[:MAX_CMDLINE_BYTES])
    values: dict[str, list[str | None]] = {}
    i = 1
    while i < len(args):
        arg = args[i]
        if arg is not None and arg.startswith("--"):
            arg = arg[1:]  # QEMU takes --opt as -opt
        if arg in _WANTED:
            values.setdefault(arg, []).append(args[i + 1] if i + 1 < len(args) else None)
            i += 2
        else:
            i += 1

    guest: str | None = None
    for value in values.get("-name", []):
        if value is not None:
            guest = split_opts(value, "guest").get("guest")
    memory: int | None = None
    for value in values.get("-m", []):
        memory = None if value is None else parse_size(split_opts(value, "size").get("size"), "m")
    vcpus: int | None = None
    for value in values.get("-smp", []):
        vcpus = None if value is None else _smp(value)

    backends: dict[str, int | None] = {}
    sev = False
    for value in values.get("-object", []):
        obj = _opts(value, "qom-type") if value is not None else {}
        qom_type = obj.get("qom-type")
        if qom_type in _MEMORY_BACKENDS and isinstance(obj.get("id"), str):
            backends[obj["id"]] = parse_size(obj.get("size"))
        elif isinstance(qom_type, str) and qom_type.startswith("sev"):
            sev = True
    if memory is None and backends:
        memory = _backend_memory(values, backends)

    video = vfio = False
    for value in values.get("-device", []):
        driver = _opts(value, "driver").get("driver") if value is not None else None
        video = video or driver in _VIDEO_DRIVERS
        vfio = vfio or driver == "vfio-pci"
    for value in values.get("-vga", []):
        video = video or (value is not None and value != "none")
    return QemuInfo(
        vm=_vm_name(guest),
        guest_memory_bytes=memory,
        vcpus=vcpus,
        video=video,
        vfio=vfio,
        tpm=bool(values.get("-tpmdev")),
        sev=sev,
        pid=pid,
    )


def _backend_memory(values: Mapping[str, list[str | None]], backends: Mapping[str, int | None]) -> int | None:
    """Guest RAM from memory-backend objects, when -m did not say it.

    The machine's `memory-backend=<id>` first, then the conventional `pc.ram`, then the sum of
    the NUMA nodes' `memdev=` backends.
    """
    for value in values.get("-machine", []) + values.get("-M", []):
        if value is not None:
            chosen = _opts(value, "type").get("memory-backend")
            if isinstance(chosen, str) and chosen in backends:
                return backends[chosen]
    if "pc.ram" in backends:
        return backends["pc.ram"]
    total = 0
    for value in values.get("-numa", []):
        memdev = _opts(value, "type").get("memdev") if value is not None else None
        if isinstance(memdev, str) and memdev in backends:
            size = backends[memdev]
            if size is None:
                return None
            total += size
    return total if 0 < total <= MAX_GUEST_MEMORY_BYTES else None


# --- the per-pod cache ------------------------------------------------------------------------

# How many pods' VM facts are kept (a node runs at most a few hundred pods).
MAX_PODS: Final = 4096
# An event for a pod not known to hold QEMU scans that pod again at most this often.
POD_RESCAN_S: Final = 5.0
# How long a new process's comm is re-read by the scan, in case it execs QEMU late.
YOUNG_S: Final = 10.0


def _read(path: Path, limit: int = 4096) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def read_comm(proc_root: Path, pid: int) -> str | None:
    data = _read(proc_root / str(pid) / "comm", 64)
    if data is None:
        return None
    return data.rstrip(b"\n").decode("utf-8", errors="replace")


def pod_cgroup(path: str | None) -> str | None:
    """The pod-level cgroup of a path inside a pod (the path itself for a pod cgroup)."""
    if not path:
        return None
    uid = tags_for_path(path)["pod_uid"]
    if uid is None:
        return None
    pod = path
    while True:
        parent = pod.rsplit("/", 1)[0] or "/"
        if parent == pod or tags_for_path(parent)["pod_uid"] != uid:
            return pod
        pod = parent


def pids_in(memory_root: Path, cgroup: str, limit: int = 65536) -> list[int]:
    """The processes in a cgroup and its descendants (cgroup.procs, tgids only)."""
    pids: list[int] = []
    for directory in _walk(memory_root / cgroup.lstrip("/")):
        data = _read(directory / "cgroup.procs", 1 << 20)
        if data is None:
            continue
        for word in data.split():
            if word.isdigit():
                pids.append(int(word))
                if len(pids) >= limit:
                    return pids
    return pids


def _walk(top: Path, max_depth: int = 8) -> Iterator[Path]:
    stack = [(top, 0)]
    while stack:
        directory, depth = stack.pop()
        yield directory
        if depth >= max_depth:
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), depth + 1))
        except OSError:
            continue


@dataclass(frozen=True)
class PodVm:
    pod_uid: str
    info: QemuInfo


class VmLocator:
    """Finds the QEMU process of each pod and keeps what its command line says.

    `scan()` (run by `start()` every `scan_interval_s` in a thread) reads the comm of
    processes younger than YOUNG_S (a fork is named after its parent until it execs; the
    processes already there at the first scan are read once), and the cgroup and command
    line of each new QEMU process once. `for_pod()` is
    the event path: cache first; on a miss at most one scan of that pod's cgroup per
    POD_RESCAN_S. Thread-safe.
    """

    def __init__(
        self,
        memory_root: Path,
        proc_root: Path = Path("/proc"),
        scan_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_found: Callable[[PodVm], None] | None = None,
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

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a failed scan must not end the thread
                self.scan()
            self._stop.wait(self._interval)

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
            if is_qemu_comm(read_comm(self._proc, pid)):
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

    def _learn(self, pid: int, pod_uid: str | None) -> bool:
        # One learner at a time, start to end: an event that finds the scan thread reading
        # this QEMU's command line waits for it instead of seeing "parsed" and no answer yet.
        with self._learning:
            with self._lock:
                if pid in self._parsed:
                    return False
                self._parsed.add(pid)
            if pod_uid is None:
                pod_uid = tags_for_path(path_of_pid(pid, self._proc))["pod_uid"]
                if pod_uid is None:
                    return False  # QEMU outside a pod (plain libvirt): not a KubeVirt VM
            raw = _read(self._proc / str(pid) / "cmdline", MAX_CMDLINE_BYTES)
            self.cmdline_reads += 1
            if not raw:
                return False  # exited, or a kernel thread
            info = parse_qemu_cmdline(raw, pid)
            with self._lock:
                self._pods[pod_uid] = info
                self._pods.move_to_end(pod_uid)
                while len(self._pods) > MAX_PODS:
                    self._pods.popitem(last=False)
        if self._on_found is not None:
            self._on_found(PodVm(pod_uid, info))
        return True

    def for_pod(self, pod_uid: str | None, cgroup: str | None) -> QemuInfo | None:
        """What is known of the VM in pod `pod_uid` (whose cgroup `cgroup` is, or is inside)."""
        if pod_uid is None:
            return None
        with self._lock:
            info = self._pods.get(pod_uid)
            if info is not None:
                return info
            now = self._clock()
            last = self._pod_scanned.get(pod_uid)
            if last is not None and now - last < POD_RESCAN_S:
                return None
            self._pod_scanned[pod_uid] = now
            if len(self._pod_scanned) > MAX_PODS:
                oldest = min(self._pod_scanned, key=self._pod_scanned.__getitem__)
                del self._pod_scanned[oldest]
        pod = pod_cgroup(cgroup)
        if pod is None:
            return None
        for pid in pids_in(self._memory_root, pod):
            if is_qemu_comm(read_comm(self._proc, pid)):
                self._learn(pid, pod_uid)
        with self._lock:
            return self._pods.get(pod_uid)

    def known(self, pod_uid: str) -> QemuInfo | None:
        with self._lock:
            return self._pods.get(pod_uid)


# --- the pipeline stage -----------------------------------------------------------------------


@dataclass(frozen=True)
class PodHint:
    """What the Kubernetes metadata says about a pod's VM (labels/annotations), if anything."""

    virt_launcher: bool
    vm: str | None  # "<namespace>/<vmi>" from the kubevirt.io/domain annotation


class VmStage:
    """Adds vm, guest_memory_bytes, vcpus, trigger_role and victim_role to events of VM pods.

    A pod is a VM pod if its QEMU process was found, or if its labels say virt-launcher
    (`pod_hint`, from the Kubernetes metadata when that is on). Other events are untouched.
    """

    def __init__(
        self,
        locator: VmLocator,
        proc_root: Path = Path("/proc"),
        pod_hint: Callable[[str], PodHint | None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._locator = locator
        self._proc = proc_root
        self._pod_hint = pod_hint
        self._on_error = on_error

    def start(self) -> None:
        """Starts the locator's background scan of /proc for new QEMU processes."""
        self._locator.start()

    def close(self) -> None:
        self._locator.close()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            self._attribute(event)
        except Exception as err:  # attribution must never stop the event
            if self._on_error is not None:
                self._on_error(f"vm attribution failed: {err}")
        return event

    def _attribute(self, event: dict[str, Any]) -> None:
        pod_uid = event.get("pod_uid")
        if pod_uid is None:
            return
        info = self._locator.for_pod(pod_uid, event.get("cgroup"))
        hint = self._pod_hint(pod_uid) if self._pod_hint is not None else None
        comms = (event.get("trigger_comm"), event.get("victim_comm"))
        kubevirt_task = any(role_of(c) not in (None, OTHER) for c in comms)
        if info is None and not (hint is not None and hint.virt_launcher) and not kubevirt_task:
            return
        if info is not None:
            event["vm"] = info.vm
            event["guest_memory_bytes"] = info.guest_memory_bytes
            event["vcpus"] = info.vcpus
        if event.get("vm") is None and hint is not None:
            event["vm"] = hint.vm
        qemu_pid = info.pid if info is not None else None
        if event.get("trigger_comm") is not None:
            event["trigger_role"] = self._role(event["trigger_comm"], event.get("trigger_tgid"), qemu_pid)
        if event.get("event") == "oom_kill" and event.get("victim_comm") is not None:
            event["victim_role"] = self._role(event["victim_comm"], event.get("victim_tgid"), qemu_pid)

    def _role(self, comm: str, tgid: int | None, qemu_pid: int | None) -> str | None:
        own = role_of(comm)
        if own != OTHER or tgid is None:
            return own
        # A thread with a name of its own: its process says what it is part of.
        if tgid == qemu_pid:
            return QEMU
        return role_of(comm, read_comm(self._proc, tgid))
