"""Which tier each probe gets on this kernel, and why: feature detection without bcc.

Tiers, best first: fentry (BPF trampolines, needs BTF), kprobe, tracepoint. Every probe
takes the best tier the kernel allows and the plan says why it did not get a better one,
so nothing degrades silently. Roots are parameters so tests can use fixture trees.
"""

import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tracer.schema import FENTRY, KPROBE, PROBE_TIERS, TRACEPOINT, UNAVAILABLE

if TYPE_CHECKING:
    from tracer.kernel.btf import Btf


# Probes and what each hooks, per tier. Function names are checked in /proc/kallsyms.
MEMCG_OOM, OOM_CONTEXT, OOM_KILL, NEAR_OOM, CHARGE_FAILURE = (
    "memcg_oom",
    "oom_context",
    "oom_kill",
    "near_oom",
    "charge_failure",
)
PROBES = (MEMCG_OOM, OOM_CONTEXT, OOM_KILL, NEAR_OOM, CHARGE_FAILURE)

_FUNCTIONS: dict[str, tuple[str, ...]] = {
    MEMCG_OOM: ("mem_cgroup_out_of_memory",),
    OOM_CONTEXT: ("oom_kill_process",),
    OOM_KILL: ("__oom_kill_process",),
    NEAR_OOM: ("try_to_free_mem_cgroup_pages",),
    CHARGE_FAILURE: ("try_charge_memcg", "try_charge"),  # renamed in 5.13/5.14
}
_TRACEPOINTS: dict[str, tuple[str, ...]] = {
    OOM_KILL: ("oom/mark_victim",),
    NEAR_OOM: ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_memcg_reclaim_end"),
}
# Probes whose fentry/kprobe body reads kernel structs: they need offsets from BTF.
_NEEDS_BTF = {MEMCG_OOM, OOM_CONTEXT, OOM_KILL, CHARGE_FAILURE}


@dataclass(frozen=True)
class KernelFeatures:
    release: str
    btf: bool
    btf_error: str | None
    kprobes: bool
    fentry: bool
    fentry_reason: str
    symbols: frozenset[str]
    tracepoints: frozenset[str]  # "group/name" with a readable format file
    mark_victim_raw_task: bool  # raw oom:mark_victim passes the victim's task_struct
    mark_victim_fields: frozenset[str]
    cgroup2_memory: bool  # pure cgroup v2 with the memory controller at the root
    # The parsed kernel BTF when usable, so callers need not parse it (~1 s) again.
    btf_data: "Btf | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ProbeChoice:
    probe: str
    tier: str
    target: str  # the kernel function or tracepoint(s) hooked
    reason: str  # why not a better tier (empty when it got the best)


@dataclass(frozen=True)
class Plan:
    choices: tuple[ProbeChoice, ...]
    btf: bool
    notes: tuple[str, ...] = field(default=())

    def tier(self, probe: str) -> str:
        return self.choice(probe).tier

    def choice(self, probe: str) -> ProbeChoice:
        return next(c for c in self.choices if c.probe == probe)

    def downgrade(self, probe: str, reason: str, features: "KernelFeatures") -> "Plan":
        """The same plan with `probe` moved below its current tier (after a refused load)."""
        current = self.choice(probe)
        below = PROBE_TIERS[PROBE_TIERS.index(current.tier) + 1 :] if current.tier in PROBE_TIERS else ()
        refused = "; ".join(r for r in (current.reason, f"{current.tier}: {reason}") if r)
        choice = _choose(probe, features, self.btf, allowed=below, first_reason=refused)
        return replace(self, choices=tuple(choice if c.probe == probe else c for c in self.choices))


def read_symbols(kallsyms: Path) -> frozenset[str]:
    """Function names in kallsyms; suffixed clones (.isra, .constprop, .cold) are skipped
    because their arguments may differ from the source's."""
    names = set()
    try:
        with kallsyms.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW" and "." not in parts[2]:
                    names.add(parts[2])
    except OSError:
        pass
    return frozenset(names)


def _exists(path: Path) -> bool:
    """Like Path.exists(), but a directory this user may not search (tracefs is 0700) is
    "not there" rather than an exception."""
    try:
        return path.exists()
    except OSError:
        return False


def _tracefs(sys_root: Path) -> Path | None:
    for candidate in (sys_root / "kernel/tracing", sys_root / "kernel/debug/tracing"):
        if _exists(candidate / "events"):
            return candidate
    return None


def _fentry_refusal(btf: "Btf") -> str | None:
    """Why fentry cannot be used, from a load test of a no-op program (never attached)."""
    from tracer.kernel.btf import FUNC
    from tracer.kernel.fentry_check import try_load_fentry

    func_id = btf.find(FUNC, "mem_cgroup_out_of_memory")
    if func_id is None:
        return "mem_cgroup_out_of_memory not in BTF"
    if os.geteuid() != 0:
        return "not verified: loading a test program needs root"
    return try_load_fentry(func_id)


def detect(
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    btf_path: Path | None = None,
    release: str | None = None,
    use_btf: bool = True,
) -> KernelFeatures:
    from tracer.kernel.btf import Btf, BtfError  # parsing takes ~1 s: only when detecting

    btf_path = btf_path or sys_root / "kernel/btf/vmlinux"
    btf_ok, btf_error, raw_task, fentry_refusal = False, None, False, None
    btf: Btf | None = None
    if not use_btf:
        btf_error = "disabled by --no-btf"
    elif not btf_path.exists():
        btf_error = f"{btf_path} not found (kernel built without CONFIG_DEBUG_INFO_BTF)"
    else:
        try:
            btf = Btf.from_file(btf_path)
            from tracer.kernel.offsets import kernel_constants

            kernel_constants(btf)
            btf_ok = True
            params = btf.raw_tracepoint_params("mark_victim") or []
            raw_task = bool(params) and params[0] == "struct task_struct *"
            fentry_refusal = _fentry_refusal(btf)
        except BtfError as err:
            btf_error, btf = str(err), None

    tracefs = _tracefs(sys_root)
    tracepoints = set()
    mark_victim_fields: set[str] = set()
    if tracefs is not None:
        for tracepoint in {tp for tps in _TRACEPOINTS.values() for tp in tps}:
            fmt = tracefs / "events" / tracepoint / "format"
            try:
                text = fmt.read_text()
            except OSError:
                continue
            tracepoints.add(tracepoint)
            if tracepoint == "oom/mark_victim":
                for line in text.splitlines():
                    line = line.strip()
                    if line.startswith("field:") and not line.split(";")[0].split()[-1].startswith("common_"):
                        mark_victim_fields.add(line.split(";")[0].split()[-1])

    kprobes = _exists(sys_root / "bus/event_source/devices/kprobe") or (
        tracefs is not None and _exists(tracefs / "kprobe_events")
    )
    if not btf_ok:
        fentry, fentry_reason = False, "needs kernel BTF"
    elif platform.machine() not in ("x86_64", "aarch64"):
        fentry, fentry_reason = False, f"no BPF trampolines on {platform.machine()}"
    elif fentry_refusal is not None:
        fentry, fentry_reason = False, fentry_refusal
    else:
        fentry, fentry_reason = True, ""

    controllers = sys_root / "fs/cgroup/cgroup.controllers"
    try:
        cgroup2_memory = "memory" in controllers.read_text().split()
    except OSError:
        cgroup2_memory = False

    return KernelFeatures(
        release=release or os.uname().release,
        btf=btf_ok,
        btf_error=btf_error,
        kprobes=kprobes,
        fentry=fentry,
        fentry_reason=fentry_reason,
        symbols=read_symbols(proc_root / "kallsyms"),
        tracepoints=frozenset(tracepoints),
        mark_victim_raw_task=raw_task and btf_ok,
        mark_victim_fields=frozenset(mark_victim_fields),
        cgroup2_memory=cgroup2_memory,
        btf_data=btf if btf_ok else None,
    )


def _choose(
    probe: str, f: KernelFeatures, btf: bool, allowed: tuple[str, ...] = PROBE_TIERS, first_reason: str = ""
) -> ProbeChoice:
    reasons = [first_reason] if first_reason else []
    functions = [fn for fn in _FUNCTIONS.get(probe, ()) if fn in f.symbols]
    function_missing = f"{'/'.join(_FUNCTIONS.get(probe, ()))} not in kallsyms"
    for tier in allowed:
        if tier == FENTRY:
            if not f.fentry:
                reasons.append(f"fentry: {f.fentry_reason}")
            elif not functions:
                reasons.append(f"fentry: {function_missing}")
            else:
                return ProbeChoice(probe, FENTRY, functions[0], "; ".join(reasons))
        elif tier == KPROBE:
            if not f.kprobes:
                reasons.append("kprobe: kernel has no kprobes (CONFIG_KPROBES)")
            elif not functions:
                reasons.append(f"kprobe: {function_missing}")
            elif probe in _NEEDS_BTF and not btf:
                reasons.append("kprobe: reads kernel structs, needs offsets from BTF")
            else:
                return ProbeChoice(probe, KPROBE, functions[0], "; ".join(reasons))
        elif tier == TRACEPOINT:
            tps = _TRACEPOINTS.get(probe)
            if tps is None:
                reasons.append("tracepoint: no tracepoint fires at this point")
            elif not all(tp in f.tracepoints for tp in tps):
                reasons.append(f"tracepoint: {', '.join(tps)} not found in tracefs")
            else:
                target = ", ".join(tps)
                if probe == OOM_KILL:
                    target = "raw oom/mark_victim" if f.mark_victim_raw_task else "oom/mark_victim"
                return ProbeChoice(probe, TRACEPOINT, target, "; ".join(reasons))
    return ProbeChoice(probe, UNAVAILABLE, "", "; ".join(reasons))


def plan(features: KernelFeatures) -> Plan:
    notes = []
    if not features.btf:
        notes.append(
            f"no kernel BTF ({features.btf_error}): tracepoint fields and helpers only; "
            "memory cgroups of victims and usage/limit are unknown"
        )
    return Plan(tuple(_choose(p, features, features.btf) for p in PROBES), features.btf, tuple(notes))
