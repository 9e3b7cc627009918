"""Decodes BPF records (bpf/oomtrace.h) into partial events: kernel ids and pages, no paths.

The ctypes structs here mirror bpf/oomtrace.h field for field; a kernel test compares
their sizes and offsets with what clang compiled.
"""

import ctypes
from dataclasses import dataclass
from typing import Any

from tracer import schema

COMM_LEN = 16

# The numbers bpf/oomtrace.h gives kinds and tiers, back to their names.
KIND_NAMES = {code: kind for kind, code in schema.KIND_CODES.items()}
TIER_NAMES = {code: tier for tier, code in schema.TIER_CODES.items()}

KNOWN_TRIGGER_MEMCG = 1 << 0
KNOWN_MEMCG = 1 << 1
KNOWN_USAGE_LIMIT = 1 << 2
KNOWN_FAILCNT = 1 << 3
KNOWN_GFP_ORDER = 1 << 4
KNOWN_VICTIM_TGID = 1 << 5
KNOWN_VICTIM_MEMCG = 1 << 6
KNOWN_VICTIM_MM = 1 << 7
KNOWN_VICTIM_UID = 1 << 8
KNOWN_OOM_SCORE_ADJ = 1 << 9
KNOWN_CONSTRAINT = 1 << 10
KNOWN_VICTIM_COMM = 1 << 11



class OomtraceEvent(ctypes.Structure):
    _fields_ = (
        ("kind", ctypes.c_uint32),
        ("tier", ctypes.c_uint32),
        ("ktime_ns", ctypes.c_uint64),
        ("known", ctypes.c_uint64),
        ("trigger_pid", ctypes.c_uint32),
        ("trigger_tgid", ctypes.c_uint32),
        ("trigger_comm", ctypes.c_char * COMM_LEN),
        ("trigger_memcg_id", ctypes.c_uint64),
        ("memcg_id", ctypes.c_uint64),
        ("usage_pages", ctypes.c_uint64),
        ("limit_pages", ctypes.c_uint64),
        ("failcnt", ctypes.c_uint64),
        ("gfp_mask", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("victim_pid", ctypes.c_uint32),
        ("victim_tgid", ctypes.c_uint32),
        ("victim_comm", ctypes.c_char * COMM_LEN),
        ("victim_memcg_id", ctypes.c_uint64),
        ("total_vm_pages", ctypes.c_uint64),
        ("anon_rss_pages", ctypes.c_uint64),
        ("file_rss_pages", ctypes.c_uint64),
        ("shmem_rss_pages", ctypes.c_uint64),
        ("pgtables_bytes", ctypes.c_uint64),
        ("victim_uid", ctypes.c_uint32),
        ("oom_score_adj", ctypes.c_int32),
        ("constraint", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class NearOomStats(ctypes.Structure):
    _fields_ = (
        ("reclaim_calls", ctypes.c_uint64),
        ("reclaim_ns", ctypes.c_uint64),
        ("reclaimed_pages", ctypes.c_uint64),
        ("charge_failures", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("usage_pages", ctypes.c_uint64),
        ("limit_pages", ctypes.c_uint64),
    )


class DecodeError(ValueError):
    """A record that does not match bpf/oomtrace.h."""


@dataclass(frozen=True)
class Decoder:
    """Turns records into events with kernel ids (`*_memcg_id`) still to be resolved."""

    page_size: int
    constraint_names: dict[int, str]

    def limit_bytes(self, pages: int) -> int | None:
        """None when the cgroup has no limit: page_counter.max holds PAGE_COUNTER_MAX,
        LONG_MAX / PAGE_SIZE on 64-bit kernels."""
        if pages >= (2**63 - 1) // self.page_size:
            return None
        return pages * self.page_size

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < ctypes.sizeof(OomtraceEvent):
            raise DecodeError(f"record of {len(data)} bytes, expected {ctypes.sizeof(OomtraceEvent)}")
        raw = OomtraceEvent.from_buffer_copy(data[: ctypes.sizeof(OomtraceEvent)])
        kind = KIND_NAMES.get(raw.kind)
        tier = TIER_NAMES.get(raw.tier)
        if kind is None or tier is None:
            raise DecodeError(f"unknown kind {raw.kind} or tier {raw.tier}")
        known = raw.known
        event = schema.blank_event(kind)
        event.update(
            tier=tier,
            ktime_ns=raw.ktime_ns,
            trigger_pid=raw.trigger_pid,
            trigger_tgid=raw.trigger_tgid,
            trigger_comm=_comm(raw.trigger_comm),
            trigger_memcg_id=raw.trigger_memcg_id if known & KNOWN_TRIGGER_MEMCG else None,
        )
        memcg_id = raw.memcg_id if known & KNOWN_MEMCG else None
        if known & KNOWN_USAGE_LIMIT:
            event["usage_bytes"] = raw.usage_pages * self.page_size
            event["limit_bytes"] = self.limit_bytes(raw.limit_pages)
        if kind == schema.NEAR_OOM:
            event.update(memcg_id=memcg_id, phase=schema.FIRST)
        elif kind == schema.MEMCG_OOM:
            event.update(oom_memcg_id=memcg_id)
            if known & KNOWN_FAILCNT:
                event["failcnt"] = raw.failcnt
            if known & KNOWN_GFP_ORDER:
                event.update(gfp_mask=f"{raw.gfp_mask:#x}", order=raw.order)
        else:
            self._victim(event, raw, known, memcg_id)
        return event

    def _victim(self, event: dict[str, Any], raw: OomtraceEvent, known: int, memcg_id: int | None) -> None:
        event.update(
            victim_pid=raw.victim_pid,
            victim_tgid=raw.victim_tgid if known & KNOWN_VICTIM_TGID else None,
            victim_comm=_comm(raw.victim_comm) if known & KNOWN_VICTIM_COMM else None,
            task_memcg_id=raw.victim_memcg_id if known & KNOWN_VICTIM_MEMCG else None,
            oom_memcg_id=memcg_id,
            victim_uid=raw.victim_uid if known & KNOWN_VICTIM_UID else None,
            oom_score_adj=raw.oom_score_adj if known & KNOWN_OOM_SCORE_ADJ else None,
        )
        if known & KNOWN_CONSTRAINT:
            event["constraint"] = self.constraint_names.get(raw.constraint)
        if known & KNOWN_VICTIM_MM:
            event.update(
                total_vm_bytes=raw.total_vm_pages * self.page_size,
                anon_rss_bytes=raw.anon_rss_pages * self.page_size,
                file_rss_bytes=raw.file_rss_pages * self.page_size,
                shmem_rss_bytes=raw.shmem_rss_pages * self.page_size,
                pgtables_bytes=raw.pgtables_bytes,
            )


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
