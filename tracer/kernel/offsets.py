"""Kernel struct offsets and enum values from BTF, as -D constants for the BPF programs."""

from tracer.kernel.btf import ARRAY, STRUCT, Btf, BtfError
from tracer.schema import CONSTRAINTS

# (macro, struct, member path): every struct read the BPF programs make.
_MEMBERS = (
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_COMM", "task_struct", "comm"),
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_TASK_SIGNAL", "task_struct", "signal"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_REAL_CRED", "task_struct", "real_cred"),
    ("OFF_CRED_UID", "cred", "uid"),
    ("OFF_CSS_SET_SUBSYS", "css_set", "subsys"),
    ("OFF_CSS_CGROUP", "cgroup_subsys_state", "cgroup"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
    ("OFF_MEMCG_CSS", "mem_cgroup", "css"),
    ("OFF_MEMCG_MEMORY", "mem_cgroup", "memory"),
    ("OFF_PAGE_COUNTER_USAGE", "page_counter", "usage"),
    ("OFF_PAGE_COUNTER_MAX", "page_counter", "max"),
    ("OFF_PAGE_COUNTER_FAILCNT", "page_counter", "failcnt"),
    ("OFF_SIGNAL_OOM_SCORE_ADJ", "signal_struct", "oom_score_adj"),
    ("OFF_MM_TOTAL_VM", "mm_struct", "total_vm"),
    ("OFF_MM_PGTABLES_BYTES", "mm_struct", "pgtables_bytes"),
    ("OFF_MM_RSS_STAT", "mm_struct", "rss_stat"),
    ("OFF_OC_MEMCG", "oom_control", "memcg"),
    ("OFF_OC_CONSTRAINT", "oom_control", "constraint"),
)

# Read when the kernel's BTF has them; the programs have a fallback for each.
_OPTIONAL_MEMBERS = (
    # Set by mark_oom_victim(): a task with it is already a victim (see bpf/oom_kill.bpf.h).
    ("OFF_SIGNAL_OOM_MM", "signal_struct", "oom_mm"),
)
# Parameter count of functions whose fexit program must find the return value after the
# last parameter: try_to_free_mem_cgroup_pages() gained `int *swappiness` in 6.11.
_FUNCTION_ARGS = (("NEAR_OOM_FN_ARGS", "try_to_free_mem_cgroup_pages"),)

_ENUMS = (
    ("MEMORY_CGRP_ID", "memory_cgrp_id"),
    ("MM_FILEPAGES_IDX", "MM_FILEPAGES"),
    ("MM_ANONPAGES_IDX", "MM_ANONPAGES"),
    ("MM_SHMEMPAGES_IDX", "MM_SHMEMPAGES"),
    ("CONSTRAINT_MEMCG_VALUE", "CONSTRAINT_MEMCG"),
)



def _rss_stat_layout(btf: Btf) -> tuple[int, int]:
    """Stride and inner offset of one counter in mm_struct.rss_stat.

    6.2+: `struct percpu_counter rss_stat[NR_MM_COUNTERS]`, read as percpu_counter.count
    (what get_mm_counter() reads). Before: `struct mm_rss_stat { atomic_long_t count[]; }`.
    """
    _, type_id = btf.member("mm_struct", "rss_stat")
    t = btf.type(btf.resolve(type_id))
    if t.kind == ARRAY and t.array:
        elem = t.array[0]
        return btf.size(elem), btf.offset(btf.type(btf.resolve(elem)).name, "count")
    if t.kind == STRUCT:
        _, count_type = btf.member(t.name, "count")
        count = btf.type(btf.resolve(count_type))
        if count.kind == ARRAY and count.array:
            return btf.size(count.array[0]), btf.offset(t.name, "count")
    raise BtfError("unknown layout of mm_struct.rss_stat")


def kernel_constants(btf: Btf) -> dict[str, int]:
    """Every OFF_*/enum constant the BPF programs need; raises BtfError if one is missing.
    The optional ones (_OPTIONAL_MEMBERS, _FUNCTION_ARGS) are left out when BTF lacks them."""
    constants = {macro: btf.offset(struct, path) for macro, struct, path in _MEMBERS}
    constants.update({macro: btf.enum_value(name) for macro, name in _ENUMS})
    constants["RSS_STAT_STRIDE"], constants["RSS_STAT_INNER"] = _rss_stat_layout(btf)
    for macro, struct, path in _OPTIONAL_MEMBERS:
        if btf.has_member(struct, path):
            constants[macro] = btf.offset(struct, path)
    for macro, function in _FUNCTION_ARGS:
        params = btf.func_params(function)
        if params is not None:
            constants[macro] = len(params)
    return constants


def constraint_names(btf: Btf | None) -> dict[int, str]:
    """Kernel enum oom_constraint value → the schema's name for it."""
    if btf is None:
        return {}
    names = {}
    for kernel_name, name in CONSTRAINTS.items():
        try:
            names[btf.enum_value(kernel_name)] = name
        except BtfError:
            continue
    return names
