"""Which tier each probe gets on this kernel, and why.

Tiers, best first: fentry (BPF trampolines, needs BTF), kprobe, tracepoint. Every probe
takes the best tier the kernel allows and the plan says why it did not get a better one,
so nothing degrades silently.
"""

from dataclasses import dataclass, field, replace

from tracer.kernel.features import KernelFeatures
from tracer.kernel.probes import FUNCTIONS, NEEDS_BTF, OOM_KILL, PROBES, TRACEPOINTS
from tracer.schema import FENTRY, KPROBE, PROBE_TIERS, TRACEPOINT, UNAVAILABLE


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


def _choose(
    probe: str, f: KernelFeatures, btf: bool, allowed: tuple[str, ...] = PROBE_TIERS, first_reason: str = ""
) -> ProbeChoice:
    reasons = [first_reason] if first_reason else []
    functions = [fn for fn in FUNCTIONS.get(probe, ()) if fn in f.symbols]
    function_missing = f"{'/'.join(FUNCTIONS.get(probe, ()))} not in kallsyms"
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
            elif probe in NEEDS_BTF and not btf:
                reasons.append("kprobe: reads kernel structs, needs offsets from BTF")
            else:
                return ProbeChoice(probe, KPROBE, functions[0], "; ".join(reasons))
        elif tier == TRACEPOINT:
            tps = TRACEPOINTS.get(probe)
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
