from typing import Any

import pytest

from tracer import schema
from tracer.decode import Decoder, NearOomStats
from tracer.sources.near_oom import NearOomSummarizer

PAGE = 4096
SECOND = 1_000_000_000
PAGE_COUNTER_MAX = (2**63 - 1) // PAGE


def stats(**fields: int) -> NearOomStats:
    return NearOomStats(**fields)


def summarizer(
    tier: str = "fentry", charge_failures_known: bool = True, forget_after_s: float = 300.0
) -> NearOomSummarizer:
    return NearOomSummarizer(Decoder(PAGE, {}), tier, charge_failures_known, forget_after_s)


def summarize(
    s: NearOomSummarizer, table: dict[int, NearOomStats], now_s: float, memcg_known: bool = True
) -> tuple[list[dict[str, Any]], list[int]]:
    return s.summarize(table, int(now_s * SECOND), 1.0, memcg_known)


BUSY = stats(
    reclaim_calls=10,
    reclaim_ns=5_000_000,
    reclaimed_pages=300,
    charge_failures=2,
    last_ns=99 * SECOND,
    usage_pages=25_000,
    limit_pages=25_600,
)


def test_first_interval_reports_the_counters_as_they_are() -> None:
    events, stale = summarize(summarizer(), {7: BUSY}, 100)
    assert stale == []
    assert events == [
        {
            **schema.blank_event(schema.NEAR_OOM),
            "tier": "fentry",
            "ktime_ns": 100 * SECOND,
            "memcg_id": 7,
            "phase": "summary",
            "interval_s": 1.0,
            "reclaim_calls": 10,
            "reclaim_time_ns": 5_000_000,
            "reclaimed_bytes": 300 * PAGE,
            "charge_failures": 2,
            "usage_bytes": 25_000 * PAGE,
            "limit_bytes": 25_600 * PAGE,
        }
    ]


def test_later_intervals_report_what_moved_since_the_previous_one() -> None:
    s = summarizer()
    summarize(s, {7: BUSY}, 100)
    later = stats(
        reclaim_calls=15,
        reclaim_ns=8_000_000,
        reclaimed_pages=310,
        charge_failures=2,
        last_ns=100 * SECOND,
        usage_pages=25_500,
        limit_pages=25_600,
    )
    (event,), _ = summarize(s, {7: later}, 101)
    assert (
        event["reclaim_calls"],
        event["reclaim_time_ns"],
        event["reclaimed_bytes"],
        event["charge_failures"],
    ) == (
        5,
        3_000_000,
        10 * PAGE,
        0,
    )
    assert event["usage_bytes"] == 25_500 * PAGE


def test_counters_that_did_not_move_produce_no_event() -> None:
    s = summarizer()
    summarize(s, {7: BUSY}, 100)
    assert summarize(s, {7: BUSY}, 101) == ([], [])


def test_charge_failures_alone_produce_an_event() -> None:
    s = summarizer()
    summarize(s, {7: BUSY}, 100)
    more_failures = stats(**{f: getattr(BUSY, f) for f, _ in NearOomStats._fields_} | {"charge_failures": 5})
    (event,), _ = summarize(s, {7: more_failures}, 101)
    assert (event["reclaim_calls"], event["charge_failures"]) == (0, 3)


def test_each_moving_cgroup_gets_its_own_event() -> None:
    events, _ = summarize(summarizer(), {7: BUSY, 8: stats(reclaim_calls=1, last_ns=99 * SECOND)}, 100)
    assert sorted(e["memcg_id"] for e in events) == [7, 8]


def test_cgroup_quiet_for_longer_than_forget_after_is_reported_stale() -> None:
    s = summarizer(forget_after_s=30)
    summarize(s, {7: BUSY}, 100)
    assert summarize(s, {7: BUSY}, 99 + 30) == ([], [])  # exactly 30 s quiet: kept
    assert summarize(s, {7: BUSY}, 99 + 31) == ([], [7])


def test_cgroup_that_moves_is_never_stale_however_old_its_last_reclaim() -> None:
    s = summarizer(forget_after_s=30)
    events, stale = summarize(s, {7: BUSY}, 1000)
    assert len(events) == 1 and stale == []


def test_after_a_stale_cgroup_is_dropped_its_new_counters_count_from_zero() -> None:
    """The daemon deletes stale entries from the BPF map: they come back from zero."""
    s = summarizer(forget_after_s=30)
    summarize(s, {7: BUSY}, 100)
    summarize(s, {7: BUSY}, 200)
    (event,), _ = summarize(s, {7: stats(reclaim_calls=1, last_ns=300 * SECOND)}, 300)
    assert event["reclaim_calls"] == 1


def test_cgroup_gone_from_the_map_is_forgotten() -> None:
    s = summarizer()
    summarize(s, {7: BUSY}, 100)
    summarize(s, {}, 101)
    (event,), _ = summarize(s, {7: BUSY}, 102)
    assert event["reclaim_calls"] == 10


@pytest.mark.parametrize(
    ("known", "expected"),
    [pytest.param(True, 2, id="charge probe attached"), pytest.param(False, None, id="no charge probe")],
)
def test_charge_failures_are_none_when_no_probe_counts_them(known: bool, expected: int | None) -> None:
    (event,), _ = summarize(summarizer(charge_failures_known=known), {7: BUSY}, 100)
    assert event["charge_failures"] == expected


def test_memcg_id_is_none_when_the_tier_cannot_name_the_cgroup() -> None:
    (event,), _ = summarize(summarizer(tier="tracepoint"), {0: BUSY}, 100, memcg_known=False)
    assert event["memcg_id"] is None
    assert event["tier"] == "tracepoint"


@pytest.mark.parametrize(
    ("limit_pages", "usage", "limit"),
    [
        pytest.param(25_600, 25_000 * PAGE, 25_600 * PAGE, id="limited cgroup"),
        pytest.param(PAGE_COUNTER_MAX, 25_000 * PAGE, None, id="no limit (PAGE_COUNTER_MAX)"),
        pytest.param(0, None, None, id="counter not read (no BTF)"),
    ],
)
def test_usage_and_limit_come_from_the_last_reclaim(
    limit_pages: int, usage: int | None, limit: int | None
) -> None:
    table = {7: stats(reclaim_calls=1, last_ns=99 * SECOND, usage_pages=25_000, limit_pages=limit_pages)}
    (event,), _ = summarize(summarizer(), table, 100)
    assert (event["usage_bytes"], event["limit_bytes"]) == (usage, limit)


def test_summary_events_have_exactly_the_near_oom_schema_keys() -> None:
    (event,), _ = summarize(summarizer(), {7: BUSY}, 100)
    assert list(event) == list(schema.blank_event(schema.NEAR_OOM))
