import ctypes
from typing import Any

import pytest

from tracer import decode, schema
from tracer.decode import DecodeError, Decoder, OomtraceEvent

PAGE = 4096
PAGE_COUNTER_MAX = (2**63 - 1) // PAGE  # LONG_MAX / PAGE_SIZE
CONSTRAINTS = {0: "global", 1: "cpuset", 2: "memory_policy", 3: "memcg"}

NEAR_OOM_BITS = (
    decode.KNOWN_TRIGGER_MEMCG | decode.KNOWN_MEMCG | decode.KNOWN_USAGE_LIMIT | decode.KNOWN_FAILCNT
)
MEMCG_OOM_BITS = NEAR_OOM_BITS | decode.KNOWN_GFP_ORDER
OOM_KILL_BITS = (
    decode.KNOWN_TRIGGER_MEMCG
    | decode.KNOWN_MEMCG
    | decode.KNOWN_VICTIM_TGID
    | decode.KNOWN_VICTIM_MEMCG
    | decode.KNOWN_VICTIM_MM
    | decode.KNOWN_VICTIM_UID
    | decode.KNOWN_OOM_SCORE_ADJ
    | decode.KNOWN_CONSTRAINT
    | decode.KNOWN_VICTIM_COMM
)


def record(kind: int = 3, tier: int = 1, known: int = 0, **fields: Any) -> bytes:
    """A record as the kernel side writes it, every field set to something non-zero."""
    raw = OomtraceEvent(
        kind=kind,
        tier=tier,
        ktime_ns=123_456_789_000,
        known=known,
        trigger_pid=4242,
        trigger_tgid=4240,
        trigger_comm=b"stress-ng",
        trigger_memcg_id=1001,
        memcg_id=2002,
        usage_pages=25_000,
        limit_pages=25_600,
        failcnt=7,
        gfp_mask=0xCC0,
        order=0,
        victim_pid=4343,
        victim_tgid=4341,
        victim_comm=b"qemu-system-x86",
        victim_memcg_id=3003,
        total_vm_pages=100_000,
        anon_rss_pages=24_000,
        file_rss_pages=300,
        shmem_rss_pages=20,
        pgtables_bytes=409_600,
        victim_uid=107,
        oom_score_adj=-997,
        constraint=3,
    )
    for name, value in fields.items():
        setattr(raw, name, value)
    return bytes(raw)


def decoder() -> Decoder:
    return Decoder(PAGE, CONSTRAINTS)


# ---- each kind ----


def test_near_oom_record_decodes_to_a_first_near_oom_event() -> None:
    event = decoder().decode(record(kind=1, tier=3, known=NEAR_OOM_BITS))
    assert event == {
        **schema.blank_event(schema.NEAR_OOM),
        "tier": "tracepoint",
        "ktime_ns": 123_456_789_000,
        "phase": "first",
        "memcg_id": 2002,
        "usage_bytes": 25_000 * PAGE,
        "limit_bytes": 25_600 * PAGE,
        "trigger_pid": 4242,
        "trigger_tgid": 4240,
        "trigger_comm": "stress-ng",
        "trigger_memcg_id": 1001,
    }


def test_memcg_oom_record_decodes_with_usage_failcnt_and_gfp() -> None:
    event = decoder().decode(record(kind=2, tier=1, known=MEMCG_OOM_BITS))
    assert event == {
        **schema.blank_event(schema.MEMCG_OOM),
        "tier": "fentry",
        "ktime_ns": 123_456_789_000,
        "oom_memcg_id": 2002,
        "usage_bytes": 25_000 * PAGE,
        "limit_bytes": 25_600 * PAGE,
        "failcnt": 7,
        "gfp_mask": "0xcc0",
        "order": 0,
        "trigger_pid": 4242,
        "trigger_tgid": 4240,
        "trigger_comm": "stress-ng",
        "trigger_memcg_id": 1001,
    }


def test_oom_kill_record_decodes_with_victim_memory_in_bytes() -> None:
    event = decoder().decode(record(kind=3, tier=2, known=OOM_KILL_BITS))
    assert event == {
        **schema.blank_event(schema.OOM_KILL),
        "tier": "kprobe",
        "ktime_ns": 123_456_789_000,
        "victim_pid": 4343,
        "victim_tgid": 4341,
        "victim_comm": "qemu-system-x86",
        "victim_uid": 107,
        "total_vm_bytes": 100_000 * PAGE,
        "anon_rss_bytes": 24_000 * PAGE,
        "file_rss_bytes": 300 * PAGE,
        "shmem_rss_bytes": 20 * PAGE,
        "pgtables_bytes": 409_600,
        "oom_score_adj": -997,
        "task_memcg_id": 3003,
        "oom_memcg_id": 2002,
        "constraint": "memcg",
        "trigger_pid": 4242,
        "trigger_tgid": 4240,
        "trigger_comm": "stress-ng",
        "trigger_memcg_id": 1001,
    }


@pytest.mark.parametrize(("kind", "name"), [(1, "near_oom"), (2, "memcg_oom"), (3, "oom_kill")])
def test_decoded_events_have_exactly_the_schema_keys_plus_the_trigger_memcg_id(kind: int, name: str) -> None:
    bits = {1: NEAR_OOM_BITS, 2: MEMCG_OOM_BITS, 3: OOM_KILL_BITS}[kind]
    event = decoder().decode(record(kind=kind, known=bits))
    assert event["event"] == name
    assert set(event) == set(schema.blank_event(name)) | {"trigger_memcg_id"}


@pytest.mark.parametrize(("tier", "name"), [(1, "fentry"), (2, "kprobe"), (3, "tracepoint")])
def test_tier_numbers_decode_to_tier_names(tier: int, name: str) -> None:
    assert decoder().decode(record(tier=tier))["tier"] == name


# ---- known bits ----

UNKNOWN_WITHOUT_BIT = [
    pytest.param(1, decode.KNOWN_TRIGGER_MEMCG, ["trigger_memcg_id"], id="trigger memcg"),
    pytest.param(1, decode.KNOWN_MEMCG, ["memcg_id"], id="near_oom memcg"),
    pytest.param(1, decode.KNOWN_USAGE_LIMIT, ["usage_bytes", "limit_bytes"], id="near_oom usage and limit"),
    pytest.param(2, decode.KNOWN_MEMCG, ["oom_memcg_id"], id="memcg_oom memcg"),
    pytest.param(2, decode.KNOWN_FAILCNT, ["failcnt"], id="memcg_oom failcnt"),
    pytest.param(2, decode.KNOWN_GFP_ORDER, ["gfp_mask", "order"], id="memcg_oom gfp and order"),
    pytest.param(3, decode.KNOWN_MEMCG, ["oom_memcg_id"], id="oom_kill oom memcg"),
    pytest.param(3, decode.KNOWN_VICTIM_TGID, ["victim_tgid"], id="victim tgid"),
    pytest.param(3, decode.KNOWN_VICTIM_COMM, ["victim_comm"], id="victim comm"),
    pytest.param(3, decode.KNOWN_VICTIM_MEMCG, ["task_memcg_id"], id="victim memcg"),
    pytest.param(3, decode.KNOWN_VICTIM_UID, ["victim_uid"], id="victim uid"),
    pytest.param(3, decode.KNOWN_OOM_SCORE_ADJ, ["oom_score_adj"], id="oom_score_adj"),
    pytest.param(3, decode.KNOWN_CONSTRAINT, ["constraint"], id="constraint"),
    pytest.param(
        3,
        decode.KNOWN_VICTIM_MM,
        ["total_vm_bytes", "anon_rss_bytes", "file_rss_bytes", "shmem_rss_bytes", "pgtables_bytes"],
        id="victim memory",
    ),
]


@pytest.mark.parametrize(("kind", "bit", "fields"), UNKNOWN_WITHOUT_BIT)
def test_a_clear_known_bit_makes_its_fields_none_not_zero(kind: int, bit: int, fields: list[str]) -> None:
    every = {1: NEAR_OOM_BITS, 2: MEMCG_OOM_BITS, 3: OOM_KILL_BITS}[kind]
    with_bit = decoder().decode(record(kind=kind, known=every))
    without = decoder().decode(record(kind=kind, known=every & ~bit))
    assert all(with_bit[f] is not None for f in fields)
    assert {f: without[f] for f in fields} == dict.fromkeys(fields)


def test_known_zero_values_stay_zero() -> None:
    event = decoder().decode(record(kind=3, known=OOM_KILL_BITS, oom_score_adj=0, victim_uid=0, constraint=0))
    assert (event["oom_score_adj"], event["victim_uid"], event["constraint"]) == (0, 0, "global")


def test_victim_pid_is_always_known() -> None:
    assert decoder().decode(record(kind=3, known=0))["victim_pid"] == 4343


# ---- units and names ----


@pytest.mark.parametrize(
    ("pages", "limit"),
    [
        pytest.param(PAGE_COUNTER_MAX, None, id="PAGE_COUNTER_MAX: no limit"),
        pytest.param(2**64 - 1, None, id="all ones: no limit"),
        pytest.param(PAGE_COUNTER_MAX - 1, (PAGE_COUNTER_MAX - 1) * PAGE, id="one page below: a limit"),
        pytest.param(0, 0, id="zero: a limit of zero"),
    ],
)
def test_limit_at_page_counter_max_means_no_limit(pages: int, limit: int | None) -> None:
    event = decoder().decode(record(kind=2, known=MEMCG_OOM_BITS, limit_pages=pages))
    assert event["limit_bytes"] == limit


@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_pages_become_bytes_with_the_page_size(page_size: int) -> None:
    max_pages = (2**63 - 1) // page_size
    d = Decoder(page_size, CONSTRAINTS)
    event = d.decode(record(kind=2, known=MEMCG_OOM_BITS, usage_pages=3, limit_pages=max_pages))
    assert event["usage_bytes"] == 3 * page_size
    assert event["limit_bytes"] is None
    assert d.limit_bytes(max_pages - 1) == (max_pages - 1) * page_size


@pytest.mark.parametrize(("mask", "text"), [(0xCC0, "0xcc0"), (0x140DCA, "0x140dca"), (0, "0x0")])
def test_gfp_mask_is_a_hex_string_as_the_kernel_prints_it(mask: int, text: str) -> None:
    assert decoder().decode(record(kind=2, known=MEMCG_OOM_BITS, gfp_mask=mask))["gfp_mask"] == text


def test_negative_order_and_oom_score_adj_keep_their_sign() -> None:
    d = decoder()
    assert d.decode(record(kind=2, known=MEMCG_OOM_BITS, order=-1))["order"] == -1
    assert d.decode(record(kind=3, known=OOM_KILL_BITS, oom_score_adj=-1000))["oom_score_adj"] == -1000


@pytest.mark.parametrize(
    ("value", "name"), [(0, "global"), (1, "cpuset"), (2, "memory_policy"), (3, "memcg")]
)
def test_constraint_values_decode_to_schema_names(value: int, name: str) -> None:
    assert decoder().decode(record(kind=3, known=OOM_KILL_BITS, constraint=value))["constraint"] == name


def test_constraint_value_the_kernel_does_not_name_is_none() -> None:
    assert decoder().decode(record(kind=3, known=OOM_KILL_BITS, constraint=9))["constraint"] is None


def test_constraint_is_numbered_as_the_kernel_says() -> None:
    d = Decoder(PAGE, {7: "memcg"})
    assert d.decode(record(kind=3, known=OOM_KILL_BITS, constraint=7))["constraint"] == "memcg"


@pytest.mark.parametrize(
    ("comm", "text"),
    [
        pytest.param(b"a" * 16, "a" * 16, id="full 16 bytes, no NUL"),
        pytest.param(b"sh", "sh", id="short"),
        pytest.param(b"\xff\xfe", "\ufffd\ufffd", id="invalid utf-8 replaced"),
    ],
)
def test_comm_is_decoded_up_to_its_nul(comm: bytes, text: str) -> None:
    event = decoder().decode(record(kind=3, known=OOM_KILL_BITS, victim_comm=comm, trigger_comm=comm))
    assert event["victim_comm"] == event["trigger_comm"] == text


# ---- bad records ----


@pytest.mark.parametrize(
    "length", [0, 8, ctypes.sizeof(OomtraceEvent) - 1], ids=["empty", "8 bytes", "one short"]
)
def test_short_record_is_a_decode_error_naming_both_sizes(length: int) -> None:
    with pytest.raises(
        DecodeError, match=f"record of {length} bytes, expected {ctypes.sizeof(OomtraceEvent)}"
    ):
        decoder().decode(record()[:length])


def test_longer_record_is_decoded_from_its_start() -> None:
    """The ring buffer may hand over a record rounded up to 8 bytes."""
    assert decoder().decode(record(kind=3) + b"\0" * 8)["victim_pid"] == 4343


@pytest.mark.parametrize(
    ("kind", "tier"),
    [
        pytest.param(0, 1, id="kind 0"),
        pytest.param(4, 1, id="kind 4"),
        pytest.param(1, 0, id="tier 0"),
        pytest.param(1, 4, id="tier 4"),
    ],
)
def test_unknown_kind_or_tier_is_a_decode_error(kind: int, tier: int) -> None:
    with pytest.raises(DecodeError, match="unknown kind"):
        decoder().decode(record(kind=kind, tier=tier))


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)
