"""Shared fixtures for unit tests: hand-built BTF blobs (Documentation/bpf/btf.rst).

`BtfBuilder` writes the header, type section and string section by hand, so tests never
depend on the running kernel's /sys/kernel/btf/vmlinux. `kernel_btf()` builds a small
"kernel" holding every struct, member and enum tracer/kernel/offsets.py reads, at the offsets in
KERNEL_OFFSETS; parts can be left out to test the error paths.
"""

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from tracer.kernel import btf as B
from tracer.kernel.features import KernelFeatures

BTF_INT_SIGNED = 1


class BtfBuilder:
    """Types are appended in order; each method returns the new type's id (void is 0)."""

    def __init__(self) -> None:
        self._types: list[bytes] = []
        self._strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def optional_str(self, name: str) -> int:
        if name not in self._offsets:
            self._offsets[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        return self._offsets[name]

    def _add(
        self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kind_flag: bool = False
    ) -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self._types.append(struct.pack("<III", self.optional_str(name), info, size_or_type) + extra)
        return len(self._types)

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        encoding = BTF_INT_SIGNED if signed else 0
        return self._add(name, B.INT, 0, size, struct.pack("<I", (encoding << 24) | size * 8))

    def ptr(self, type_id: int) -> int:
        return self._add("", B.PTR, 0, type_id)

    def const(self, type_id: int) -> int:
        return self._add("", B.CONST, 0, type_id)

    def typedef(self, name: str, type_id: int) -> int:
        return self._add(name, B.TYPEDEF, 0, type_id)

    def array(self, elem_type: int, nelems: int, index_type: int = 0) -> int:
        return self._add("", B.ARRAY, 0, 0, struct.pack("<III", elem_type, index_type, nelems))

    def struct(
        self,
        name: str,
        size: int,
        members: Sequence[tuple[str, int, int]],
        union: bool = False,
        bitfields: Sequence[tuple[str, int, int, int]] = (),
    ) -> int:
        """members: (name, type id, byte offset); bitfields: (name, type id, bit offset, bits).
        With bitfields the struct has kind_flag set and every member encodes its size."""
        kind = B.UNION if union else B.STRUCT
        extra = b""
        if bitfields:
            items = [(n, t, off * 8, 0) for n, t, off in members] + list(bitfields)
            for m_name, m_type, bit_off, bits in items:
                extra += struct.pack("<III", self.optional_str(m_name), m_type, (bits << 24) | bit_off)
            return self._add(name, kind, len(items), size, extra, kind_flag=True)
        for m_name, m_type, off in members:
            extra += struct.pack("<III", self.optional_str(m_name), m_type, off * 8)
        return self._add(name, kind, len(members), size, extra)

    def union(self, name: str, size: int, members: Sequence[tuple[str, int, int]]) -> int:
        return self.struct(name, size, members, union=True)

    def enum(self, name: str, values: Iterable[tuple[str, int]], size: int = 4) -> int:
        items = list(values)
        extra = b"".join(struct.pack("<Ii", self.optional_str(n), v) for n, v in items)
        return self._add(name, B.ENUM, len(items), size, extra)

    def enum64(self, name: str, values: Iterable[tuple[str, int]]) -> int:
        items = list(values)
        extra = b"".join(struct.pack("<III", self.optional_str(n), v & 0xFFFFFFFF, v >> 32) for n, v in items)
        return self._add(name, B.ENUM64, len(items), 8, extra)

    def func_proto(self, return_type: int, params: Sequence[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<II", self.optional_str(n), t) for n, t in params)
        return self._add("", B.FUNC_PROTO, len(params), return_type, extra)

    def func(self, name: str, proto: int) -> int:
        return self._add(name, B.FUNC, 0, proto)

    def fwd(self, name: str) -> int:
        return self._add(name, B.FWD, 0, 0)

    def build(self) -> bytes:
        types = b"".join(self._types)
        strings = bytes(self._strings)
        header = struct.pack("<HBBIIIII", B.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
        return header + types + strings


# Offsets of kernel_btf(), as offsets.kernel_constants() should report them. Some sit
# behind anonymous structs/unions, as in real kernels.
KERNEL_OFFSETS = {
    "OFF_TASK_PID": 1264,
    "OFF_TASK_TGID": 1268,
    "OFF_TASK_COMM": 1752,
    "OFF_TASK_CGROUPS": 2376,
    "OFF_TASK_SIGNAL": 1848,
    "OFF_TASK_MM": 1136,
    "OFF_TASK_REAL_CRED": 1728,
    "OFF_CRED_UID": 8,
    "OFF_CSS_SET_SUBSYS": 0,
    "OFF_CSS_CGROUP": 0,
    "OFF_CGROUP_KN": 256,
    "OFF_KERNFS_NODE_ID": 96,  # u64 id in an anonymous union
    "OFF_MEMCG_CSS": 0,
    "OFF_MEMCG_MEMORY": 256,
    "OFF_PAGE_COUNTER_USAGE": 0,
    "OFF_PAGE_COUNTER_MAX": 160,  # in an anonymous struct at 96
    "OFF_PAGE_COUNTER_FAILCNT": 8,
    "OFF_SIGNAL_OOM_SCORE_ADJ": 1058,
    "OFF_MM_TOTAL_VM": 360,  # mm_struct's fields sit in an anonymous struct at 16
    "OFF_MM_PGTABLES_BYTES": 168,
    "OFF_MM_RSS_STAT": 960,
    "OFF_OC_MEMCG": 16,
    "OFF_OC_CONSTRAINT": 56,
}
KERNEL_ENUMS = {
    "MEMORY_CGRP_ID": 4,
    "MM_FILEPAGES_IDX": 0,
    "MM_ANONPAGES_IDX": 1,
    "MM_SHMEMPAGES_IDX": 3,
    "CONSTRAINT_MEMCG_VALUE": 3,
}
MM_ANON_OFFSET = 16  # where mm_struct's anonymous struct starts


def kernel_btf(
    rss_layout: str = "percpu_counter",
    mark_victim: str | None = "task",
    with_func: bool = False,
    omit: Iterable[str] = (),
    optional: bool = False,
) -> bytes:
    """A small vmlinux BTF. rss_layout: "percpu_counter" (6.2+: struct percpu_counter
    rss_stat[4]) or "mm_rss_stat" (before: struct mm_rss_stat { atomic_long_t count[4]; }).
    mark_victim: "task" (6.9+: task_struct *, uid_t), "int" (before), None (no typedef).
    with_func: a FUNC mem_cgroup_out_of_memory. omit: "struct", "struct.member" or an enum
    value name to leave out. optional: also what offsets.py reads only when present
    (signal_struct.oom_mm at 1064; try_to_free_mem_cgroup_pages with 5 parameters, 6.11+)."""
    omitted = set(omit)
    b = BtfBuilder()

    def members(struct_name: str, items: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
        return [m for m in items if f"{struct_name}.{m[0]}" not in omitted]

    def struct_(name: str, size: int, items: Sequence[tuple[str, int, int]]) -> int:
        if name in omitted:
            return b.fwd(name)
        return b.struct(name, size, members(name, items))

    int_ = b.int_("int", 4, signed=True)
    uint = b.int_("unsigned int", 4)
    short = b.int_("short", 2, signed=True)
    ulong = b.int_("long unsigned int", 8)
    s64 = b.typedef("s64", b.int_("long long int", 8, signed=True))
    u64 = b.typedef("u64", b.int_("long long unsigned int", 8))
    char = b.int_("char", 1, signed=True)
    pid_t = b.typedef("pid_t", b.typedef("__kernel_pid_t", int_))
    uid_t = b.typedef("uid_t", b.typedef("__kernel_uid32_t", uint))
    kuid_t = b.typedef("kuid_t", b.struct("", 4, [("val", uid_t, 0)]))
    atomic64_t = b.typedef("atomic64_t", b.struct("", 8, [("counter", s64, 0)]))
    atomic_long_t = b.typedef("atomic_long_t", atomic64_t)

    kernfs_node = struct_(
        "kernfs_node", 128, [("", b.union("", 8, members("kernfs_node", [("id", u64, 0)])), 96)]
    )
    cgroup = struct_("cgroup", 512, [("kn", b.ptr(kernfs_node), 256)])
    css = struct_("cgroup_subsys_state", 200, [("cgroup", b.ptr(cgroup), 0)])
    css_set = struct_("css_set", 256, [("subsys", b.array(b.ptr(css), 14), 0)])
    page_counter = struct_(
        "page_counter",
        192,
        [
            ("usage", atomic_long_t, 0),
            ("failcnt", ulong, 8),
            ("", b.struct("", 72, members("page_counter", [("max", ulong, 64)])), 96),
        ],
    )
    mem_cgroup = struct_("mem_cgroup", 2048, [("css", css, 0), ("memory", page_counter, 256)])
    cred = struct_("cred", 176, [("uid", kuid_t, 8)])
    signal_members = [("oom_score_adj", short, 1058)]
    if optional:
        signal_members.append(("oom_mm", b.ptr(b.fwd("mm_struct")), 1064))
    signal_struct = struct_("signal_struct", 1100, signal_members)

    if rss_layout == "percpu_counter":
        percpu_counter = b.struct(
            "percpu_counter",
            40,
            [
                ("lock", int_, 0),
                ("count", s64, 8),
                ("list", b.array(ulong, 2), 16),
                ("counters", b.ptr(int_), 32),
            ],
        )
        rss_stat = b.array(percpu_counter, 4)
    elif rss_layout == "mm_rss_stat":
        rss_stat = b.struct("mm_rss_stat", 32, [("count", b.array(atomic_long_t, 4), 0)])
    elif rss_layout == "unsigned long":  # no kernel has this: for the error path
        rss_stat = ulong
    else:
        raise ValueError(rss_layout)
    anon = MM_ANON_OFFSET
    mm_inner = b.struct(
        "",
        1200,
        members(
            "mm_struct",
            [
                ("pgtables_bytes", atomic_long_t, 168 - anon),
                ("total_vm", ulong, 360 - anon),
                ("rss_stat", rss_stat, 960 - anon),
            ],
        ),
    )
    mm_struct = struct_("mm_struct", 1300, [("mm_count", int_, 0), ("", mm_inner, anon)])

    task_struct = b.fwd("task_struct") if "task_struct" in omitted else 0
    if not task_struct:
        task_struct = b.struct(
            "task_struct",
            4096,
            members(
                "task_struct",
                [
                    ("mm", b.ptr(mm_struct), 1136),
                    ("pid", pid_t, 1264),
                    ("tgid", pid_t, 1268),
                    ("real_cred", b.ptr(b.const(cred)), 1728),
                    ("comm", b.array(char, 16), 1752),
                    ("signal", b.ptr(signal_struct), 1848),
                    ("cgroups", b.ptr(css_set), 2376),
                ],
            ),
        )

    def enum(name: str, values: Sequence[tuple[str, int]]) -> int:
        return b.enum(name, [v for v in values if v[0] not in omitted])

    constraint = enum(
        "oom_constraint",
        [
            ("CONSTRAINT_NONE", 0),
            ("CONSTRAINT_CPUSET", 1),
            ("CONSTRAINT_MEMORY_POLICY", 2),
            ("CONSTRAINT_MEMCG", 3),
        ],
    )
    struct_("oom_control", 64, [("memcg", b.ptr(mem_cgroup), 16), ("constraint", constraint, 56)])
    enum(
        "cgroup_subsys_id",
        [
            ("cpuset_cgrp_id", 0),
            ("cpu_cgrp_id", 1),
            ("cpuacct_cgrp_id", 2),
            ("io_cgrp_id", 3),
            ("memory_cgrp_id", 4),
        ],
    )
    enum(
        "",
        [
            ("MM_FILEPAGES", 0),
            ("MM_ANONPAGES", 1),
            ("MM_SWAPENTS", 2),
            ("MM_SHMEMPAGES", 3),
            ("NR_MM_COUNTERS", 4),
        ],
    )

    void_ptr = b.ptr(0)
    if mark_victim == "task":
        proto = b.func_proto(0, [("", void_ptr), ("", b.ptr(task_struct)), ("", uid_t)])
        b.typedef("btf_trace_mark_victim", b.ptr(proto))
    elif mark_victim == "int":
        proto = b.func_proto(0, [("", void_ptr), ("", int_)])
        b.typedef("btf_trace_mark_victim", b.ptr(proto))
    if optional:
        reclaim_proto = b.func_proto(
            ulong,
            [
                ("memcg", void_ptr),
                ("nr_pages", ulong),
                ("gfp_mask", uint),
                ("options", uint),
                ("swappiness", b.ptr(int_)),
            ],
        )
        b.func("try_to_free_mem_cgroup_pages", reclaim_proto)
    if with_func:
        oc_proto = b.func_proto(
            b.int_("_Bool", 1), [("memcg", b.ptr(mem_cgroup)), ("gfp_mask", uint), ("order", int_)]
        )
        b.func("mem_cgroup_out_of_memory", oc_proto)
    return b.build()


# ---- a kernel that offers every probe target, for plan and source tests ----

FUNCTIONS = frozenset(
    {
        "mem_cgroup_out_of_memory",
        "oom_kill_process",
        "__oom_kill_process",
        "try_to_free_mem_cgroup_pages",
        "try_charge_memcg",
    }
)
MARK_VICTIM = "oom/mark_victim"
RECLAIM_BEGIN = "vmscan/mm_vmscan_memcg_reclaim_begin"
RECLAIM_END = "vmscan/mm_vmscan_memcg_reclaim_end"
TRACEPOINTS = frozenset({MARK_VICTIM, RECLAIM_BEGIN, RECLAIM_END})


def full_kernel_features(mark_victim_fields: frozenset[str], /, **overrides: Any) -> KernelFeatures:
    """A kernel with everything: BTF, fentry, kprobes, every function and tracepoint."""
    base = KernelFeatures(
        release="6.18.0-test",
        btf=True,
        btf_error=None,
        kprobes=True,
        fentry=True,
        fentry_reason="",
        symbols=FUNCTIONS,
        tracepoints=TRACEPOINTS,
        mark_victim_raw_task=True,
        mark_victim_fields=mark_victim_fields,
        cgroup2_memory=True,
    )
    return dataclasses.replace(base, **overrides)
