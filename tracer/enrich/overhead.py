"""KubeVirt's memory overhead formula, and what Harvester should reserve for a VM that OOMed.

KubeVirt sizes a virt-launcher pod's compute container as the VM's memory plus an overhead
(`GetMemoryOverhead`, pkg/virt-controller/services/renderresources.go):

    overhead = memory_request / 512                     page tables
             + fixed                                    monitor + launcher + virtlogd + virtqemud + qemu
             + 8 MiB per vCPU + 8 MiB IOThread
             + video RAM (16 MiB; 32 MiB from 1.6) when a display is attached
             [+ VFIO 1 GiB, SEV 256 MiB, TPM 53 MiB]
             x additionalGuestMemoryOverheadRatio
             + 100 MiB with dedicated CPUs / Guaranteed QoS

in Kubernetes quantity arithmetic (the page-table term and the ratio work in units of
1000 bytes), and the kernel rounds the limit down to a page. Harvester runs the guest with
`memory.guest = limit - harvesterhci.io/reservedMemory` (100 MiB by default), so what is
left for everything that is not guest RAM is the KubeVirt overhead plus the reservation.

Everything here is arithmetic on plain numbers; the stage at the bottom reads the cgroup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tracer.enrich import memsnap
from tracer.enrich.vm.procfs import vm_key
from tracer.enrich.vm.qemu import QemuInfo
from tracer.enrich.vm.roles import QEMU

MIB: Final = 1 << 20
PAGE: Final = 4096

# Harvester 1.4 ships KubeVirt 1.3.
DEFAULT_KUBEVIRT_VERSION: Final = "1.3"
# Harvester's additional-guest-memory-overhead-ratio accepts 1.0 to 10.0.
MIN_RATIO: Final = 1.0
MAX_RATIO: Final = 10.0
# The recommendation leaves this much headroom over what the non-guest part used.
HEADROOM: Final = 0.10

_VERSION: Final = re.compile(
    r"v?([0-9]{1,3})\.([0-9]{1,3})(?:\.[0-9]{1,4})?(?:[-+][0-9A-Za-z.-]+)?", re.ASCII
)


@dataclass(frozen=True)
class FixedOverhead:
    """The per-process constants of one KubeVirt release range, in MiB."""

    since: tuple[int, int]
    monitor: int
    launcher: int
    virtlogd: int
    libvirt: int  # libvirtd before 0.59, virtqemud from then on
    qemu: int

    @property
    def total_bytes(self) -> int:
        return (self.monitor + self.launcher + self.virtlogd + self.libvirt + self.qemu) * MIB


# Newest first. 0.54: Harvester's write-up of v0.54 (Harvester 1.2.1); 0.59-1.4: template.go at
# Harvester 1.3's KubeVirt; 1.5 onwards virtlogd 25 and virtqemud 40; later qemu 50.
_FIXED: Final = (
    FixedOverhead((1, 10), 25, 100, 25, 40, 50),
    FixedOverhead((1, 5), 25, 100, 25, 40, 30),
    FixedOverhead((0, 59), 25, 100, 20, 35, 30),
    FixedOverhead((0, 54), 25, 75, 17, 33, 30),
)
OLDEST_MODELLED: Final = _FIXED[-1].since


def parse_version(text: str) -> tuple[int, int]:
    """`1.3`, `v1.3.1`, `1.3.1-rc.0` → (1, 3). ValueError for garbage or an unmodelled release."""
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a KubeVirt version: {text!r} (expected e.g. 1.3 or v1.3.1)")
    version = (int(m.group(1)), int(m.group(2)))
    if version < OLDEST_MODELLED:
        oldest = ".".join(map(str, OLDEST_MODELLED))
        raise ValueError(f"KubeVirt {text} predates the releases modelled here ({oldest} and later)")
    return version


def fixed_overhead(version: tuple[int, int]) -> FixedOverhead:
    for fixed in _FIXED:
        if version >= fixed.since:
            return fixed
    raise ValueError(f"KubeVirt {version[0]}.{version[1]} is not modelled")


def _kilo_ceil(n: int) -> int:
    """resource.Quantity.ScaledValue(resource.Kilo): bytes in units of 1000, rounded up."""
    return -(-n // 1000)


def kubevirt_overhead(
    memory_request_bytes: int,
    vcpus: int | None,
    version: tuple[int, int],
    *,
    ratio: float | None = None,
    video: bool = True,
    vfio: bool = False,
    sev: bool = False,
    tpm: bool = False,
    dedicated: bool = False,
) -> int:
    """The memory KubeVirt adds to a VM's compute container, in bytes, as GetMemoryOverhead does.

    `memory_request_bytes` is the VMI's memory request (KubeVirt's page-table term uses the
    request; without the VMI, the guest memory is the closest thing a node can see).
    """
    overhead = _kilo_ceil(memory_request_bytes) * 1000 // 512
    overhead += fixed_overhead(version).total_bytes
    overhead += 8 * MIB * max(vcpus or 1, 1)
    overhead += 8 * MIB  # IOThread
    if video:
        overhead += (32 if version >= (1, 6) else 16) * MIB
    if vfio:
        overhead += 1024 * MIB
    if sev:
        overhead += 256 * MIB
    if tpm:
        overhead += 53 * MIB
    if ratio is not None and ratio != 1.0:
        overhead += int(_kilo_ceil(overhead) * (ratio - 1.0)) * 1000
    if dedicated:
        overhead += 100 * MIB
    return overhead


def page_floor(n: int) -> int:
    """What the kernel keeps of a memory limit written in bytes."""
    return n // PAGE * PAGE


@dataclass(frozen=True)
class Recommendation:
    needed_budget_bytes: int  # non-guest usage + HEADROOM
    reserved_memory_bytes: int  # harvesterhci.io/reservedMemory, with the ratio off (1.0)
    overhead_ratio: float | None  # additional-guest-memory-overhead-ratio, with no reservation
    budget_sufficient: bool | None  # whether the current budget already leaves the headroom
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "headroom": HEADROOM,
            "needed_budget_bytes": self.needed_budget_bytes,
            "budget_sufficient": self.budget_sufficient,
            "reserved_memory": f"{self.reserved_memory_bytes // MIB}Mi",
            "reserved_memory_bytes": self.reserved_memory_bytes,
            "additional_guest_memory_overhead_ratio": (
                None if self.overhead_ratio is None else f"{self.overhead_ratio:.1f}"
            ),
            "text": self.text,
        }


def recommend(
    non_guest_usage_bytes: int,
    base_overhead_bytes: int,
    dedicated_bytes: int = 0,
    budget_bytes: int | None = None,
) -> Recommendation:
    """Settings under which the non-guest budget covers `non_guest_usage_bytes` + 10%.

    Harvester's two knobs both grow the budget (limit - guest memory):
    budget = base_overhead x ratio + dedicated + reservedMemory. Each answer assumes the other
    knob is neutral: reservedMemory with the ratio off, the ratio with no reservation.
    """
    needed = math.ceil(max(non_guest_usage_bytes, 0) * (1 + HEADROOM))
    reserved = max(needed - base_overhead_bytes - dedicated_bytes, 0)
    reserved = -(-reserved // MIB) * MIB
    ratio: float | None = None
    if base_overhead_bytes > 0:
        wanted = (needed - dedicated_bytes) / base_overhead_bytes
        ratio = max(MIN_RATIO, math.ceil(round(wanted * 10, 9)) / 10)
        if ratio > MAX_RATIO:
            ratio = None
    parts = [f"harvesterhci.io/reservedMemory: {reserved // MIB}Mi (with the overhead ratio off)"]
    if ratio is not None:
        parts.append(f"or additional-guest-memory-overhead-ratio: {ratio:.1f} (with no reservedMemory)")
    else:
        parts.append(f"(no overhead ratio up to {MAX_RATIO:.1f} is enough)")
    sufficient = None if budget_bytes is None else budget_bytes >= needed
    current = "" if budget_bytes is None else f" (it has {budget_bytes / MIB:.0f} MiB)"
    text = (
        f"non-guest memory used {non_guest_usage_bytes / MIB:.0f} MiB; to leave "
        f"{HEADROOM:.0%} headroom the VM needs {needed / MIB:.0f} MiB beside its guest RAM{current}: "
        + " ".join(parts)
    )
    return Recommendation(needed, reserved, ratio, sufficient, text)


# --- the pipeline stage -----------------------------------------------------------------------


def _memcg_of(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "oom_kill":
        return event.get("oom_memcg") or event.get("task_memcg")
    if kind == "memcg_oom":
        return event.get("oom_memcg")
    return event.get("memcg")


def _qemu_resident(event: dict[str, Any]) -> int | None:
    """Anon + shmem RSS of QEMU at the event: the kernel's numbers if QEMU is the victim, else
    the memory snapshot's. Guest RAM is anonymous or shared memory, never file pages.
    (The stage falls back to QEMU's /proc status.)"""
    if event.get("event") == "oom_kill" and event.get("victim_role") == QEMU:
        anon, shmem = event.get("anon_rss_bytes"), event.get("shmem_rss_bytes")
        if isinstance(anon, int):
            return anon + (shmem if isinstance(shmem, int) else 0)
    snapshot = event.get("memory_snapshot")
    if isinstance(snapshot, dict):
        for task in snapshot.get("tasks") or ():
            if task.get("role") == QEMU and isinstance(task.get("anon_bytes"), int):
                return int(task["anon_bytes"]) + int(task.get("shmem_bytes") or 0)
    return None


class OverheadStage:
    """Adds `overhead` to events of VM pods whose guest memory is known (see docs/attribution.md)."""

    def __init__(
        self,
        memory_root: Path,
        version: tuple[int, int],
        vm_info: Callable[[str], QemuInfo | None],
        on_error: Callable[[str], None],
        proc_root: Path = Path("/proc"),
    ) -> None:
        self._root = memory_root
        self._proc = proc_root
        self._version = version
        self._vm_info = vm_info
        self._version_text = f"{version[0]}.{version[1]}"
        self._on_error = on_error

    def start(self) -> None:
        """Nothing runs in the background: the stage reads cgroupfs and /proc per event."""

    def close(self) -> None:
        """Nothing to release."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        guest = event.get("guest_memory_bytes")
        if not isinstance(guest, int) or vm_key(event) is None:
            return event
        try:
            event["overhead"] = self.analyse(event, guest)
        except Exception as err:  # an analysis must never stop the event
            self._on_error(f"overhead analysis failed: {err}")
        return event

    def analyse(self, event: dict[str, Any], guest: int) -> dict[str, Any] | None:
        limited = memsnap.limited_ancestor(self._root, _memcg_of(event))
        if limited is None:
            return None  # no cgroup with a limit above the task: nothing to budget
        memcg, limit = limited
        usage, source = self._usage(event, memcg, limit)
        key = vm_key(event)
        info = self._vm_info(key) if key is not None else None
        resident_qemu = _qemu_resident(event)
        if resident_qemu is None and info is not None and info.pid is not None:
            task = memsnap.read_task(self._proc, info.pid)
            if task is not None and task["anon_bytes"] is not None:
                resident_qemu = task["anon_bytes"] + (task["shmem_bytes"] or 0)
        guest_resident = guest if resident_qemu is None else min(guest, resident_qemu)
        non_guest = None if usage is None else usage - guest_resident
        if non_guest is not None and non_guest < 0:
            non_guest = None  # guest RAM not all resident and QEMU's RSS unknown: cannot tell
        dedicated = event.get("qos") == "guaranteed"
        base = kubevirt_overhead(
            guest,
            event.get("vcpus"),
            self._version,
            video=info.video if info is not None else True,
            vfio=info is not None and info.vfio,
            sev=info is not None and info.sev,
            tpm=info is not None and info.tpm,
        )
        result: dict[str, Any] = {
            "memcg": memcg,
            "limit_bytes": limit,
            "usage_bytes": usage,
            "usage_source": source,
            "guest_memory_bytes": guest,
            "guest_resident_bytes": guest_resident,
            "overhead_budget_bytes": limit - guest,
            "non_guest_usage_bytes": non_guest,
            "kubevirt_version": self._version_text,
            "kubevirt_overhead_bytes": base + (100 * MIB if dedicated else 0),
            "recommendation": None,
        }
        if event.get("pod_uid") is None:
            # A VM the host's own hypervisor runs: no KubeVirt formula, no Harvester setting to
            # advise; the budget and what used it are the facts.
            result["kubevirt_version"] = result["kubevirt_overhead_bytes"] = None
            return result
        if non_guest is not None:
            rec = recommend(non_guest, base, 100 * MIB if dedicated else 0, limit - guest).as_dict()
            # KubeVirt's page-table term uses the memory request, which may be below the guest
            # memory used here: allow for that before calling a limit foreign.
            if limit - guest < base - guest // 512 - MIB:
                rec["text"] += (
                    f". Note: the limit leaves less than KubeVirt {self._version_text}'s overhead beside the"
                    " guest: it was not set by that formula (another version, or set by hand)"
                )
            result["recommendation"] = rec
        return result

    def _usage(self, event: dict[str, Any], memcg: str, limit: int) -> tuple[int | None, str | None]:
        """Usage of `memcg` at the event: the kernel's number when the event is about that
        cgroup; for a kill, the cgroup's peak (at a memcg OOM it reached the limit); else now."""
        if event.get("limit_bytes") == limit and isinstance(event.get("usage_bytes"), int):
            return event["usage_bytes"], "event"
        if event.get("event") == "oom_kill":
            peak = memsnap.read_peak(self._root, memcg)
            if peak is not None:
                return min(peak, limit), "peak"
        current = memsnap.read_usage(self._root, memcg)
        return (current, "current") if current is not None else (None, None)
