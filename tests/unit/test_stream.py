"""The live stream: StreamHub (ids, replay, filters, bounded per-client queues, the client
limit) and GET /events on the real HTTP server over loopback, with real sockets as clients."""

import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tracer.http import server as server_module
from tracer.http.server import HttpServer, start_http_server
from tracer.schema import KINDS, MEMCG_OOM, NEAR_OOM, OOM_KILL, blank_event
from tracer.sinks import stream as stream_module
from tracer.sinks.stream import (
    Entry,
    EventFilter,
    QueryError,
    StreamClosed,
    StreamFull,
    StreamHub,
    negotiate,
    parse_query,
)

REPO = Path(__file__).resolve().parents[2]
FIRST = 1_000_000


def event(kind: str = OOM_KILL, n: int = 0, **fields: Any) -> dict[str, Any]:
    """An event shaped like the tracer's, about 1 KB of JSON as real ones are."""
    e = blank_event(kind)
    e.update(
        ts=f"2026-11-26T17:05:{n % 60:02d}.{n:06d}Z",
        node="node-1",
        tier="tracepoint",
        ktime_ns=891553458812 + n,
        cgroup="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podaf0ca5a6_a8c9_4614_928c_"
        "ba5c679c2a0d.slice/cri-containerd-b00e693c19c092c0892722c90b7e8b6e4067b52bd7189a7849649ceb7bf32a39.scope",
        pod_uid="af0ca5a6-a8c9-4614-928c-ba5c679c2a0d",
        qos="burstable",
        container_id="b00e693c19c092c0892722c90b7e8b6e4067b52bd7189a7849649ceb7bf32a39",
        runtime="containerd",
        seq=n,
    )
    e.update(fields)
    return e


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def hub_with(registry: CollectorRegistry, **kwargs: Any) -> StreamHub:
    kwargs.setdefault("first_id", FIRST)
    return StreamHub(registry, **kwargs)


def drain(sub: Any) -> list[Entry]:
    out: list[Entry] = []
    while batch := sub.take(0, limit=10_000):
        out += batch
    return out


# --- ids and replay -------------------------------------------------------------------------


def test_event_ids_increase_by_one_from_the_first_id(registry: CollectorRegistry) -> None:
    hub = hub_with(registry)
    sub, _, _ = hub.subscribe(EventFilter())
    for n in range(5):
        hub.write(event(n=n))
    assert [e.id for e in drain(sub)] == [FIRST + n for n in range(5)]
    assert hub.last_id == FIRST + 4


def test_a_later_run_of_the_tracer_numbers_its_events_above_an_earlier_runs() -> None:
    earlier = StreamHub()
    for n in range(3):
        earlier.write(event(n=n))
    time.sleep(0.001)
    later = StreamHub()
    assert later.first_id > earlier.last_id
    assert abs(later.first_id - time.time_ns() // 1000) < 5_000_000  # microseconds since the epoch


def test_resuming_after_an_id_replays_exactly_the_later_events(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, replay=10)
    for n in range(6):
        hub.write(event(n=n))
    _, replay, gap = hub.subscribe(EventFilter(), after_id=FIRST + 2)
    assert [e.id for e in replay] == [FIRST + 3, FIRST + 4, FIRST + 5]
    assert gap is None


def test_resuming_after_the_newest_event_replays_nothing(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, replay=10)
    for n in range(3):
        hub.write(event(n=n))
    _, replay, gap = hub.subscribe(EventFilter(), after_id=hub.last_id)
    assert (replay, gap) == ([], None)


def test_resuming_after_an_id_older_than_the_replay_buffer_says_how_many_were_missed(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, replay=4)
    for n in range(10):
        hub.write(event(n=n))
    _, replay, gap = hub.subscribe(EventFilter(), after_id=FIRST + 1)
    assert [e.id for e in replay] == [FIRST + 6, FIRST + 7, FIRST + 8, FIRST + 9]
    assert gap is not None
    assert (gap.after_id, gap.next_id, gap.missed, gap.restarted) == (FIRST + 1, FIRST + 6, 4, False)


@pytest.mark.parametrize(
    "resume", [FIRST - 500, FIRST + 10_000], ids=["earlier-run", "clock-stepped-back-run"]
)
def test_resuming_with_an_id_of_another_run_replays_all_kept_and_says_the_tracer_restarted(
    registry: CollectorRegistry, resume: int
) -> None:
    hub = hub_with(registry, replay=4)
    for n in range(6):
        hub.write(event(n=n))
    _, replay, gap = hub.subscribe(EventFilter(), after_id=resume)
    assert [e.id for e in replay] == [FIRST + 2, FIRST + 3, FIRST + 4, FIRST + 5]
    assert gap is not None and gap.restarted
    assert gap.missed == 2  # this run's first two are gone from the buffer


def test_replay_since_a_time_returns_the_events_at_or_after_it(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, replay=10)
    for n in range(5):
        hub.write(event(n=n, ts=f"2026-11-26T17:05:0{n}.000000Z"))
    since = parse_query("since=2026-11-26T18:05:02%2B01:00").since_s  # the same instant, +01:00
    _, replay, gap = hub.subscribe(EventFilter(), since_s=since)
    assert [e.id for e in replay] == [FIRST + 2, FIRST + 3, FIRST + 4]
    assert gap is None


def test_replay_since_a_time_reports_a_gap_when_newer_events_left_the_buffer(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, replay=2)
    for n in range(5):
        hub.write(event(n=n, ts=f"2026-11-26T17:05:0{n}.000000Z"))
    _, replay, gap = hub.subscribe(EventFilter(), since_s=parse_query("since=2026-11-26T17:05:01Z").since_s)
    assert [e.id for e in replay] == [FIRST + 3, FIRST + 4]
    assert gap is not None and gap.missed is None and gap.next_id == FIRST + 3


def test_replay_of_zero_keeps_nothing_but_still_streams_live(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, replay=0)
    hub.write(event(n=0))
    sub, replay, _ = hub.subscribe(EventFilter(), after_id=0)
    hub.write(event(n=1))
    assert replay == []
    assert [e.id for e in drain(sub)] == [FIRST + 1]


def test_replay_and_live_events_neither_overlap_nor_leave_a_hole_while_events_flow(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, replay=100_000, client_queue=100_000, max_clients=64)
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            hub.write(event(n=n))
            n += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        subs = []
        for _ in range(20):
            time.sleep(0.005)
            subs.append(hub.subscribe(EventFilter(), after_id=FIRST - 1))
    finally:
        stop.set()
        producer.join()
    assert hub.last_id > FIRST + 100  # events really flowed during the subscribes
    for sub, replay, _ in subs:
        ids = [e.id for e in replay] + [e.id for e in drain(sub)]
        assert ids == list(range(FIRST, hub.last_id + 1))


# --- filters --------------------------------------------------------------------------------

FILTER_EVENTS = [
    event(NEAR_OOM, phase="first", namespace="shop", pod="cart-1"),
    event(MEMCG_OOM, namespace="shop", pod="cart-1"),
    event(OOM_KILL, namespace="shop", pod="cart-1"),
    event(OOM_KILL, namespace="kv", pod="virt-launcher-vm1-x", vm="vm1"),
    event(NEAR_OOM, phase="summary", namespace="kv", pod="virt-launcher-vm2-y", vm="vm2"),
    event(OOM_KILL),  # not enriched: no namespace, pod or vm
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("", [0, 1, 2, 3, 4, 5], id="no-filter"),
        pytest.param("kind=oom_kill", [2, 3, 5], id="kind"),
        pytest.param("kind=near_oom,memcg_oom", [0, 1, 4], id="kinds-comma-separated"),
        pytest.param("kind=near_oom&kind=memcg_oom", [0, 1, 4], id="kinds-repeated"),
        pytest.param("min_kind=memcg_oom", [1, 2, 3, 5], id="min-kind"),
        pytest.param("min_kind=near_oom", [0, 1, 2, 3, 4, 5], id="min-kind-least-severe"),
        pytest.param("kind=near_oom,oom_kill&min_kind=memcg_oom", [2, 3, 5], id="kind-and-min-kind"),
        pytest.param("namespace=shop", [0, 1, 2], id="namespace"),
        pytest.param("pod=cart-1,virt-launcher-vm2-y", [0, 1, 2, 4], id="pods"),
        pytest.param("vm=vm1", [3], id="vm"),
        pytest.param("namespace=kv&kind=oom_kill", [3], id="namespace-and-kind"),
        pytest.param("namespace=nowhere", [], id="nothing-matches"),
    ],
)
def test_server_side_filters_pass_exactly_the_matching_events(
    registry: CollectorRegistry, query: str, expected: list[int]
) -> None:
    hub = hub_with(registry)
    sub, _, _ = hub.subscribe(parse_query(query).filter)
    for e in FILTER_EVENTS:
        hub.write(e)
    assert [e.id - FIRST for e in drain(sub)] == expected


def test_filters_apply_to_replayed_events_too(registry: CollectorRegistry) -> None:
    hub = hub_with(registry)
    for e in FILTER_EVENTS:
        hub.write(e)
    _, replay, _ = hub.subscribe(parse_query("min_kind=oom_kill&namespace=kv").filter, after_id=0)
    assert [e.id - FIRST for e in replay] == [3]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("kind=oom_reaper", "unknown event kind 'oom_reaper'", id="unknown-kind"),
        pytest.param("min_kind=panic", "unknown event kind 'panic'", id="unknown-min-kind"),
        pytest.param("min_kind=near_oom,oom_kill", "min_kind: give one event kind", id="two-min-kinds"),
        pytest.param("kind=near_oom&min_kind=oom_kill", "match no event kind", id="kind-below-min-kind"),
        pytest.param("pod=", "pod: empty value", id="empty-pod"),
        pytest.param("namespace=a,,b", "namespace: empty value", id="empty-name-in-list"),
        pytest.param("podname=x", "unknown parameter 'podname'", id="unknown-parameter"),
        pytest.param("since=yesterday", "not an event id or an RFC 3339 time", id="bad-since"),
        pytest.param("since=99999999999999999999", "since: not an event id", id="since-id-too-long"),
        pytest.param("format=xml", "format: expected sse or ndjson", id="bad-format"),
    ],
)
def test_bad_query_is_one_line_query_error(query: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_last_event_id_wins_over_since_and_must_be_an_id() -> None:
    assert parse_query("since=2026-01-01T00:00:00Z", last_event_id="42").after_id == 42
    assert parse_query("since=2026-01-01T00:00:00Z", last_event_id="42").since_s is None
    assert parse_query("since=7").after_id == 7
    with pytest.raises(QueryError, match="Last-Event-ID"):
        parse_query("", last_event_id="abc")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        pytest.param("", "ndjson", id="none"),
        pytest.param("*/*", "ndjson", id="anything"),
        pytest.param("text/event-stream", "sse", id="eventsource"),
        pytest.param("application/x-ndjson", "ndjson", id="ndjson"),
        pytest.param("application/json", "ndjson", id="json"),
        pytest.param("text/html,application/xhtml+xml,*/*;q=0.8", "ndjson", id="browser"),
        pytest.param("application/x-ndjson;q=0.5, text/event-stream", "sse", id="q-values"),
        pytest.param("text/event-stream;q=0.2, */*;q=0.9", "ndjson", id="wildcard-higher-q"),
        pytest.param("text/*", "sse", id="text-wildcard"),
        pytest.param("text/html", None, id="unsupported"),
        pytest.param("text/event-stream;q=0", None, id="refused-by-q0"),
    ],
)
def test_accept_header_chooses_the_stream_format(accept: str, expected: str | None) -> None:
    assert negotiate(accept) == expected


# --- bounded queues and the client limit ----------------------------------------------------


def test_client_whose_queue_overflows_is_dropped_counted_and_its_backlog_freed(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, client_queue=5)
    dropped: list[bool] = []
    sub, _, _ = hub.subscribe(EventFilter(), on_drop=lambda: dropped.append(True))
    for n in range(5):
        hub.write(event(n=n))
    assert (len(sub), sub.ended, dropped) == (5, None, [])
    hub.write(event(n=5))
    assert sub.ended == "overflow"
    assert dropped == [True]  # its connection was shut down
    assert len(sub) == 0
    assert sub.take(0) is None
    assert hub.clients() == 0
    assert value(registry, "oomtrace_stream_clients_dropped_total", {"reason": "overflow"}) == 1
    assert value(registry, "oomtrace_stream_clients") == 0


def test_other_clients_keep_every_event_when_one_overflows(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, client_queue=10)
    stuck, _, _ = hub.subscribe(EventFilter())
    reader, _, _ = hub.subscribe(EventFilter())
    got: list[int] = []
    for n in range(100):
        hub.write(event(n=n))
        got += [e.id for e in reader.take(0) or []]
    assert stuck.ended == "overflow"
    assert got == list(range(FIRST, FIRST + 100))


def test_filtered_out_events_do_not_fill_a_clients_queue(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, client_queue=2)
    sub, _, _ = hub.subscribe(parse_query("kind=oom_kill").filter)
    for n in range(50):
        hub.write(event(NEAR_OOM, n=n, phase="summary"))
    assert sub.ended is None and len(sub) == 0


def test_write_never_waits_for_a_client_that_does_not_read(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, client_queue=100, max_clients=16)
    for _ in range(16):
        hub.subscribe(EventFilter())  # none of them ever takes an event
    slowest = 0.0
    for n in range(10_000):
        start = time.perf_counter()
        hub.write(event(n=n))
        slowest = max(slowest, time.perf_counter() - start)
    assert hub.clients() == 0
    assert value(registry, "oomtrace_stream_clients_dropped_total", {"reason": "overflow"}) == 16
    # A write that waited for one of these clients would wait forever; the bound only absorbs
    # scheduling noise on a busy machine (typically the slowest is well under a millisecond).
    assert slowest < 0.5, f"a write took {slowest * 1000:.1f} ms"


def test_client_limit_refuses_the_next_client_and_counts_it_until_a_slot_frees(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, max_clients=2)
    first, _, _ = hub.subscribe(EventFilter())
    hub.subscribe(EventFilter())
    with pytest.raises(StreamFull):
        hub.subscribe(EventFilter())
    assert value(registry, "oomtrace_stream_clients_rejected_total") == 1
    assert value(registry, "oomtrace_stream_clients") == 2
    hub.unsubscribe(first)
    hub.subscribe(EventFilter())
    assert value(registry, "oomtrace_stream_clients") == 2


def test_closing_the_hub_ends_every_stream_and_refuses_new_clients(registry: CollectorRegistry) -> None:
    hub = hub_with(registry)
    sub, _, _ = hub.subscribe(EventFilter())
    hub.close()
    assert sub.take(5) is None  # ends at once, not after the timeout
    with pytest.raises(StreamClosed):
        hub.subscribe(EventFilter())
    hub.write(event())  # a sink written after close is harmless
    assert value(registry, "oomtrace_stream_clients") == 0


def test_stream_metrics_have_only_bounded_labels(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, client_queue=1)
    hub.subscribe(EventFilter())
    hub.write(event(n=0))
    hub.write(event(n=1))
    for family in registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= {"reason"}, sample
            assert sample.labels.get("reason", "overflow") in stream_module.DROP_REASONS


def test_hub_refuses_nonsense_sizes() -> None:
    for kwargs in ({"replay": -1}, {"max_clients": 0}, {"client_queue": 0}, {"heartbeat_s": 0}):
        with pytest.raises(ValueError):
            StreamHub(**kwargs)


# --- GET /events over HTTP ------------------------------------------------------------------


@pytest.fixture
def hub(registry: CollectorRegistry) -> Iterator[StreamHub]:
    h = hub_with(registry, heartbeat_s=0.3)
    yield h
    h.close()


@pytest.fixture
def server(registry: CollectorRegistry, hub: StreamHub) -> Iterator[HttpServer]:
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as srv:
        yield srv


class Stream:
    """A real HTTP client of /events, reading the body line by line."""

    def __init__(self, srv: HttpServer, path: str = "/events", timeout: float = 5, **headers: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def line(self) -> str:
        return self.response.readline().decode()

    def json_lines(self, n: int) -> list[dict[str, Any]]:
        return [json.loads(self.line()) for _ in range(n)]

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def wait_until(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_sse_stream_sends_retry_then_an_id_and_one_data_line_per_event(
    server: HttpServer, hub: StreamHub
) -> None:
    client = Stream(server, Accept="text/event-stream")
    assert client.status == 200
    assert client.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert client.header("Cache-Control") == "no-cache"
    assert [client.line(), client.line()] == ["retry: 2000\n", "\n"]
    wait_until(lambda: hub.clients() == 1)
    hub.write(event(OOM_KILL, n=1, victim_comm="qemu-system-x86"))
    lines = [client.line() for _ in range(3)]
    assert lines[0] == f"id: {FIRST}\n"
    assert lines[1].startswith("data: ")
    assert json.loads(lines[1].removeprefix("data: ")) == event(OOM_KILL, n=1, victim_comm="qemu-system-x86")
    assert lines[2] == "\n"
    client.close()


def test_ndjson_stream_sends_each_event_with_its_id_first(server: HttpServer, hub: StreamHub) -> None:
    client = Stream(server, "/events?format=ndjson", Accept="text/event-stream")  # ?format= wins
    assert client.header("Content-Type") == "application/x-ndjson"
    wait_until(lambda: hub.clients() == 1)
    hub.write(event(MEMCG_OOM, n=3))
    line = client.line()
    assert line.startswith(f'{{"id": {FIRST}, "event": "memcg_oom"')
    assert json.loads(line) == {"id": FIRST, **event(MEMCG_OOM, n=3)}
    client.close()


def test_heartbeat_keeps_a_quiet_stream_alive_in_both_formats(server: HttpServer) -> None:
    sse = Stream(server, Accept="text/event-stream")
    ndjson = Stream(server)
    assert sse.header("Oomtrace-Heartbeat-Seconds") == "0.3"
    start = time.monotonic()
    assert [sse.line(), sse.line()] == ["retry: 2000\n", "\n"]
    assert [sse.line(), sse.line()] == [": heartbeat\n", "\n"]
    beat = json.loads(ndjson.line())
    assert set(beat) == {"heartbeat"} and beat["heartbeat"].endswith("Z")
    assert time.monotonic() - start < 2
    sse.close()
    ndjson.close()


def test_last_event_id_resumes_over_http_with_exactly_the_missed_events(
    server: HttpServer, hub: StreamHub
) -> None:
    for n in range(5):
        hub.write(event(n=n))
    client = Stream(server, "/events?since=0", **{"Last-Event-ID": str(FIRST + 2)})
    assert [e["id"] for e in client.json_lines(2)] == [FIRST + 3, FIRST + 4]
    client.close()


def test_a_resume_beyond_the_replay_buffer_is_told_it_missed_events(
    registry: CollectorRegistry,
) -> None:
    hub = hub_with(registry, replay=2)
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as srv:
        for n in range(6):
            hub.write(event(n=n))
        sse = Stream(srv, Accept="text/event-stream", **{"Last-Event-ID": str(FIRST)})
        lines = [sse.line() for _ in range(5)]
        ndjson = Stream(srv, f"/events?since={FIRST}")
        gap, first_replayed = ndjson.json_lines(2)
        sse.close()
        ndjson.close()
        hub.close()
    assert lines[2] == "event: gap\n"
    expected = {"after_id": FIRST, "next_id": FIRST + 4, "missed": 3, "restarted": False}
    assert json.loads(lines[3].removeprefix("data: ")) == expected
    assert gap == {"gap": expected}
    assert first_replayed["id"] == FIRST + 4


def test_a_stream_starts_by_telling_the_newest_event_id(server: HttpServer, hub: StreamHub) -> None:
    hub.write(event(n=0))
    client = Stream(server)
    assert client.header("Oomtrace-Last-Event-Id") == str(FIRST)
    client.close()


def test_filters_in_the_query_apply_over_http(server: HttpServer, hub: StreamHub) -> None:
    client = Stream(server, "/events?min_kind=oom_kill&namespace=kv")
    wait_until(lambda: hub.clients() == 1)
    for e in FILTER_EVENTS:
        hub.write(e)
    assert client.json_lines(1)[0]["id"] == FIRST + 3
    hub.write(event(OOM_KILL, namespace="kv", pod="p"))
    assert client.json_lines(1)[0]["id"] == FIRST + 6  # nothing in between was sent
    client.close()


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        pytest.param("/events?kind=bogus", 400, "kind: unknown event kind 'bogus'", id="bad-kind"),
        pytest.param("/events?colour=red", 400, "unknown parameter 'colour'", id="unknown-parameter"),
        pytest.param("/events?since=soon", 400, "not an event id or an RFC 3339 time", id="bad-since"),
    ],
)
def test_bad_stream_request_is_answered_with_a_one_line_error(
    server: HttpServer, hub: StreamHub, path: str, status: int, message: str
) -> None:
    client = Stream(server, path)
    body = client.response.read().decode()
    assert client.status == status
    assert message in body and body.count("\n") == 1
    assert hub.clients() == 0


def test_unsupported_accept_is_406(server: HttpServer) -> None:
    client = Stream(server, Accept="text/html")
    assert client.status == 406
    assert "text/event-stream" in client.response.read().decode()


def test_client_over_the_limit_gets_503_with_retry_after_and_is_counted(registry: CollectorRegistry) -> None:
    hub = hub_with(registry, max_clients=1)
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as srv:
        first = Stream(srv)
        wait_until(lambda: hub.clients() == 1)
        second = Stream(srv)
        assert second.status == 503
        assert second.header("Retry-After") == "5"
        assert value(registry, "oomtrace_stream_clients_rejected_total") == 1
        first.close()
        wait_until(lambda: hub.clients() == 0, timeout=3)  # the hang-up is noticed within a second
        assert Stream(srv).status == 200
        hub.close()


def test_head_events_answers_the_headers_without_taking_a_client_slot(
    server: HttpServer, hub: StreamHub
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("HEAD", "/events", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert response.read() == b""
    assert hub.clients() == 0
    conn.close()


def test_events_is_404_on_a_server_without_a_stream(registry: CollectorRegistry) -> None:
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok")) as srv:
        client = Stream(srv)
        assert client.status == 404
        assert client.response.read() == b"not found; try /metrics or /healthz\n"


def test_closing_the_http_server_ends_its_streams(registry: CollectorRegistry, hub: StreamHub) -> None:
    srv = start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub)
    client = Stream(srv)
    wait_until(lambda: hub.clients() == 1)
    started = time.monotonic()
    srv.close()
    assert client.response.read() == b""  # EOF, not a hang until the heartbeat
    assert time.monotonic() - started < 2
    assert hub.clients() == 0


def test_a_client_whose_socket_stays_full_is_dropped_as_stalled(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue is too long to overflow here: the write timeout is what catches this client.
    monkeypatch.setattr(server_module._Handler, "timeout", 0.5)
    hub = hub_with(registry, client_queue=1_000_000, heartbeat_s=60)
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as srv:
        stalled = stalled_client(srv.port)
        wait_until(lambda: hub.clients() == 1)
        for n in range(20_000):  # ~20 MB: more than the socket buffers hold
            hub.write(event(n=n))
        wait_until(lambda: hub.clients() == 0, timeout=10)
        stalled.close()
        hub.close()
    assert value(registry, "oomtrace_stream_clients_dropped_total", {"reason": "stalled"}) == 1
    assert value(registry, "oomtrace_stream_clients_dropped_total", {"reason": "overflow"}) == 0


# --- a stalled client while 10,000 events flow ----------------------------------------------


def stalled_client(port: int) -> socket.socket:
    """Connects to /events and never reads: a tiny receive buffer so the server's writes block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n")
    return sock


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def live_entries() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Entry)


# The full measurement (60 s) runs by hand: OOMTRACE_STREAM_STALL_S=60 pytest -s -k stalled_client_
STALL_S = float(os.environ.get("OOMTRACE_STREAM_STALL_S", "1.0"))
EVENTS = 10_000


def test_a_stalled_client_costs_bounded_memory_while_a_reading_client_gets_all_10000_events(
    registry: CollectorRegistry,
) -> None:
    """Synthetic events go into the hub (as Daemon.publish would write them) and out through
    the real HTTP server on loopback to two real sockets: one reads everything, one never reads."""
    queue = 1000
    hub = hub_with(registry, replay=1000, client_queue=queue, heartbeat_s=5)
    received: list[int] = []
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as srv:
        stalled = stalled_client(srv.port)
        reader = Stream(srv, timeout=STALL_S + 30)

        def read() -> None:
            while len(received) < EVENTS:
                line = reader.line()
                if not line:
                    return
                record = json.loads(line)
                if "id" in record:
                    received.append(record["id"])

        reading = threading.Thread(target=read)
        reading.start()
        wait_until(lambda: hub.clients() == 2)
        gc.collect()
        rss_before = rss_bytes()
        peak_rss = rss_before
        peak_queued = 0
        slowest_write = 0.0
        started = time.monotonic()
        for n in range(EVENTS):
            t0 = time.perf_counter()
            hub.write(event(n=n))
            slowest_write = max(slowest_write, time.perf_counter() - t0)
            if n % 100 == 99:
                peak_queued = max(peak_queued, hub.queued())
                peak_rss = max(peak_rss, rss_bytes())
                # Evenly over STALL_S: the stalled client stops reading for the whole run.
                time.sleep(max(0.0, started + STALL_S * (n + 1) / EVENTS - time.monotonic()))
        elapsed = time.monotonic() - started
        reading.join(timeout=30)
        gc.collect()
        entries = live_entries()
        rss_after = rss_bytes()
        dropped = value(registry, "oomtrace_stream_clients_dropped_total", {"reason": "overflow"})
        # The stalled socket was shut down by the server: what it holds ends in EOF, not a hang.
        stalled.settimeout(5)
        stalled_bytes = sum(iter(lambda: len(stalled.recv(1 << 16)), 0))
        stalled.close()
        reader.close()
        hub.close()

    print(
        f"\nstream stall: {EVENTS} events in {elapsed:.1f}s; reader got {len(received)}; "
        f"stalled client dropped={dropped}, got {stalled_bytes} bytes before EOF; "
        f"peak queued={peak_queued} (cap {queue}/client); live entries after={entries}; "
        f"RSS before={rss_before >> 10} KiB peak={peak_rss >> 10} KiB after={rss_after >> 10} KiB; "
        f"slowest write()={slowest_write * 1e3:.2f} ms"
    )
    assert received == list(range(FIRST, FIRST + EVENTS))  # every event, in order, once
    assert dropped == 1
    # Bounded: never more than one full queue per client waiting, and once the stalled client is
    # dropped only the replay buffer's events stay alive (plus the reader's last batch at most).
    assert peak_queued <= 2 * queue
    assert entries <= 1000 + 64
    assert peak_rss - rss_before < 32 << 20
    assert slowest_write < 0.5  # waiting for the stalled client would mean waiting forever
    assert elapsed < STALL_S + 5  # the producer kept its pace
    assert stalled_bytes < EVENTS * 1000  # it got far from everything: it was cut off


# --- command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(["--stream-max-clients", "0"], {}, "must be >= 1", id="no-clients"),
        pytest.param(["--stream-replay", "-1"], {}, "must be >= 0", id="negative-replay"),
        pytest.param(["--stream-client-queue", "lots"], {}, "not a whole number", id="queue-not-a-number"),
        pytest.param([], {"OOMTRACE_STREAM_REPLAY": "x"}, "not a whole number", id="replay-from-env"),
    ],
)
def test_bad_stream_flag_is_one_line_and_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracer", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_run_flags_reach_the_daemons_stream_hub() -> None:
    from tracer.cli.flags import build_parser
    from tracer.cli.run import build_daemon, run_config

    args = build_parser().parse_args(
        ["run", "--stream-replay", "7", "--stream-max-clients", "3", "--stream-client-queue", "9"]
    )
    daemon = build_daemon(run_config(args), args)
    assert daemon.stream is not None and daemon.stream in daemon.pipeline.sinks
    assert (daemon.stream.replay, daemon.stream.max_clients, daemon.stream.client_queue) == (7, 3, 9)
    assert value(daemon.registry, "oomtrace_stream_clients") == 0


def test_every_kind_has_a_severity() -> None:
    assert set(stream_module.SEVERITY) == set(KINDS)
