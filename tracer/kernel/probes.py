"""The five probes oomtrace attaches and what each hooks, per tier.

The names are the `probe` label of /metrics and `oomtrace probes`; tracer/kernel/features.py
detects which hooks this kernel has and tracer/kernel/tiers.py picks the tier.
"""

# Probes and what each hooks, per tier. Function names are checked in /proc/kallsyms.
MEMCG_OOM, OOM_CONTEXT, OOM_KILL, NEAR_OOM, CHARGE_FAILURE = (
    "memcg_oom",
    "oom_context",
    "oom_kill",
    "near_oom",
    "charge_failure",
)
PROBES = (MEMCG_OOM, OOM_CONTEXT, OOM_KILL, NEAR_OOM, CHARGE_FAILURE)

FUNCTIONS: dict[str, tuple[str, ...]] = {
    MEMCG_OOM: ("mem_cgroup_out_of_memory",),
    OOM_CONTEXT: ("oom_kill_process",),
    OOM_KILL: ("__oom_kill_process",),
    NEAR_OOM: ("try_to_free_mem_cgroup_pages",),
    CHARGE_FAILURE: ("try_charge_memcg", "try_charge"),  # renamed in 5.13/5.14
}
TRACEPOINTS: dict[str, tuple[str, ...]] = {
    OOM_KILL: ("oom/mark_victim",),
    NEAR_OOM: ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_memcg_reclaim_end"),
}
# Probes whose fentry/kprobe body reads kernel structs: they need offsets from BTF.
NEEDS_BTF = {MEMCG_OOM, OOM_CONTEXT, OOM_KILL, CHARGE_FAILURE}
