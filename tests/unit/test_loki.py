"""The Loki push sink against a local receiver, and the shipper configs in deploy/.

No Grafana Loki server is installable here, so tests/fake_loki.py stands in for it: a
loopback HTTP server that decodes the two payloads Loki documents for
`POST /loki/api/v1/push` (snappy-compressed logproto.PushRequest, decoded independently of
our encoder; and the JSON form), and that can be made slow, down, 429 or 500 on demand.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.fake_loki import FakeLoki, snappy_decompress
from tracer import cli, schema
from tracer.sinks.loki import (
    ENTRY_OVERHEAD_BYTES,
    LABEL_NAMES,
    LokiConfig,
    LokiSink,
    encode_protobuf,
    parse_size,
    retry_after_s,
    stream_labels,
)
from tracer.sinks.metrics import LABELS as ENRICHMENT_FIELDS

# An exception in the sink's sender thread would kill it: fail the test, do not just warn.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

REPO = Path(__file__).resolve().parents[2]
ALLOWED_LABELS = {"job", "node", "kind", "namespace", "vm"}
# Every key an event line can carry: the schema's, plus the names enrichment adds (metrics.LABELS).
EVENT_FIELDS = (
    set(schema.COMMON_FIELDS)
    | set(schema.TAG_FIELDS)
    | set(getattr(schema, "ATTRIBUTION_FIELDS", ()))
    | {f for fields in schema.FIELDS.values() for f in fields}
    | set(ENRICHMENT_FIELDS)
)


def make_event(seq: int, kind: str = schema.OOM_KILL, **fields: Any) -> dict[str, Any]:
    event = schema.blank_event(kind)
    event.update(
        ts=f"2026-11-26T17:05:{seq % 60:02d}.{seq:06d}Z",
        node="node-a",
        tier="tracepoint",
        ktime_ns=1_000_000 + seq,
        pod_uid="af0ca5a6-a8c9-4614-928c-ba5c679c2a0d",
        container_id="b00e693c19c092c0892722c90b7e8b6e4067b52bd7189a7849649ceb7bf32a39",
    )
    if kind == schema.OOM_KILL:
        event.update(victim_pid=seq, victim_comm="qemu-system-x86")
    if kind == schema.NEAR_OOM:
        event.update(phase="first", trigger_pid=seq)
    event.update(fields)
    return event


def seq_of(entry: Any) -> int:
    return int(entry.event["ktime_ns"]) - 1_000_000


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki()
    yield server
    server.close()


class Sinks:
    """Builds sinks with quick test timings, a fresh registry each, and closes them after."""

    def __init__(self) -> None:
        self.made: list[LokiSink] = []
        self.registry = CollectorRegistry()

    def __call__(self, url: str, **overrides: Any) -> LokiSink:
        settings: dict[str, Any] = dict(
            batch_wait_s=0.05, min_backoff_s=0.05, max_backoff_s=0.2, close_timeout_s=2.0, timeout_s=2.0
        )
        settings.update(overrides)
        self.registry = CollectorRegistry()
        sink = LokiSink(LokiConfig(url=url, **settings), registry=self.registry)
        sink.start()
        self.made.append(sink)
        return sink

    def wait_metric(self, name: str, value: float, timeout_s: float = 3.0, **labels: str) -> None:
        """The sink counts a response just after the receiver has recorded its request."""
        deadline = time.monotonic() + timeout_s
        while self.registry.get_sample_value(name, labels) != value:
            assert time.monotonic() < deadline, (
                f"{name}{labels} = {self.registry.get_sample_value(name, labels)}"
            )
            time.sleep(0.01)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name}{labels}"
        return value


@pytest.fixture
def sinks() -> Iterator[Sinks]:
    made = Sinks()
    yield made
    for sink in made.made:
        sink.close()


# --- payloads ---------------------------------------------------------------------------------


def test_protobuf_push_is_snappy_compressed_logproto_that_an_independent_decoder_reads(
    loki: FakeLoki, sinks: Sinks
) -> None:
    sink = sinks(loki.url)
    events = [make_event(1), make_event(2, schema.NEAR_OOM), make_event(3)]
    for event in events:
        sink.write(event)
    entries = loki.wait_for_entries(3)

    request = loki.accepted[0]
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["user-agent"].startswith("oomtrace/")
    assert "content-encoding" not in request.headers  # snappy is implied by the protobuf type
    assert request.raw_bytes > request.body_bytes  # really compressed
    assert loki.errors == []
    assert sorted((e.event for e in entries), key=lambda e: e["ktime_ns"]) == events
    by_seq = {seq_of(e): e for e in entries}
    assert by_seq[1].labels == {"job": "oomtrace", "node": "node-a", "kind": "oom_kill"}
    assert by_seq[2].labels == {"job": "oomtrace", "node": "node-a", "kind": "near_oom"}
    # The entry's timestamp is the event's own ts, to the microsecond.
    assert by_seq[3].ts_ns == 1795712703_000003_000  # 2026-11-26T17:05:03.000003Z


def test_protobuf_encoding_uses_the_field_numbers_of_lokis_push_proto() -> None:
    """Byte-exact, with push.proto's field numbers.

    PushRequest.streams=1; StreamAdapter labels=1, entries=2; EntryAdapter timestamp=1, line=2.
    """
    labels = (("job", "oomtrace"),)
    body = encode_protobuf([(labels, 5_000_000_007, "hi")])
    label_text = b'{job="oomtrace"}'
    entry = b"\x0a\x04\x08\x05\x10\x07" + b"\x12\x02hi"  # Timestamp{seconds=5, nanos=7}, line
    stream = b"\x0a" + bytes([len(label_text)]) + label_text + b"\x12" + bytes([len(entry)]) + entry
    assert body == b"\x0a" + bytes([len(stream)]) + stream


def test_json_push_uses_the_documented_streams_and_values_shape(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url, encoding="json")
    sink.write(make_event(1))
    sink.write(make_event(2))
    entries = loki.wait_for_entries(2)

    request = loki.accepted[0]
    assert request.headers["content-type"] == "application/json"
    assert loki.errors == []
    assert [seq_of(e) for e in entries] == [1, 2]
    assert entries[0].labels == {"job": "oomtrace", "node": "node-a", "kind": "oom_kill"}
    assert entries[1].event == make_event(2)


def test_snappy_bodies_decode_with_the_reference_block_format_for_large_batches(
    loki: FakeLoki, sinks: Sinks
) -> None:
    """Many similar lines: the compressor emits back-references, which the test decoder follows."""
    sink = sinks(loki.url, batch_wait_s=0.2)
    for i in range(200):
        sink.write(make_event(i))
    entries = loki.wait_for_entries(200)
    assert loki.errors == []
    assert [seq_of(e) for e in entries] == list(range(200))
    request = loki.accepted[0]
    assert request.body_bytes * 3 < request.raw_bytes
    assert snappy_decompress(b"\x05\x10hello") == b"hello"


# --- labels -----------------------------------------------------------------------------------


def test_stream_labels_are_bounded_to_job_node_kind_namespace_and_vm(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url)
    sink.write(make_event(1, namespace="team-a", pod="web-1", container="app", vm="vm-7"))
    sink.write(make_event(2, namespace="", vm=None))
    entries = loki.wait_for_entries(2)

    assert entries[0].labels == {
        "job": "oomtrace",
        "node": "node-a",
        "kind": "oom_kill",
        "namespace": "team-a",
        "vm": "vm-7",
    }
    assert entries[1].labels == {"job": "oomtrace", "node": "node-a", "kind": "oom_kill"}
    # Pod, container, UID and pid stay in the line, where `| json` finds them.
    assert entries[0].event["pod"] == "web-1"
    assert entries[0].event["pod_uid"] == "af0ca5a6-a8c9-4614-928c-ba5c679c2a0d"
    assert entries[0].event["victim_pid"] == 1
    assert set(LABEL_NAMES) == ALLOWED_LABELS


def test_label_values_with_quotes_and_backslashes_survive_the_protobuf_label_string(
    loki: FakeLoki, sinks: Sinks
) -> None:
    sink = sinks(loki.url)
    odd = 'vm "quoted" \\ back\nslash'
    sink.write(make_event(1, vm=odd))
    (entry,) = loki.wait_for_entries(1)
    assert entry.labels["vm"] == odd


# --- batching ---------------------------------------------------------------------------------


def test_a_batch_is_sent_as_soon_as_it_reaches_batch_bytes(loki: FakeLoki, sinks: Sinks) -> None:
    line = len(json.dumps(make_event(0), separators=(",", ":")))
    batch_bytes = 4 * (line + ENTRY_OVERHEAD_BYTES) + 10  # room for four entries
    sink = sinks(loki.url, batch_bytes=batch_bytes, batch_wait_s=30.0)
    start = time.monotonic()
    for i in range(13):  # three full batches, and one entry that waits for more
        sink.write(make_event(i))
    entries = loki.wait_for_entries(12, timeout_s=3)

    assert time.monotonic() - start < 3  # long before the 30 s batch wait
    assert [len(r.entries) for r in loki.accepted] == [4, 4, 4]
    assert [seq_of(e) for e in entries] == list(range(12))
    sink.close()  # the open batch goes at close
    assert [seq_of(e) for e in loki.entries] == list(range(13))


def test_a_partial_batch_is_sent_after_batch_wait_with_everything_written_meanwhile(
    loki: FakeLoki, sinks: Sinks
) -> None:
    sink = sinks(loki.url, batch_wait_s=0.4)
    start = time.monotonic()
    for i in range(5):
        sink.write(make_event(i))
        time.sleep(0.02)
    loki.wait_for_entries(5)
    waited = loki.accepted[0].at - start

    assert 0.4 <= waited < 1.2
    assert len(loki.accepted) == 1 and len(loki.accepted[0].entries) == 5


# --- headers, auth, TLS -----------------------------------------------------------------------


def test_tenant_and_basic_auth_headers_are_sent(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url, tenant="team-a", username="shipper", password="s3cret:pw")
    sink.write(make_event(1))
    loki.wait_for_entries(1)
    headers = loki.accepted[0].headers
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == "Basic c2hpcHBlcjpzM2NyZXQ6cHc="  # base64("shipper:s3cret:pw")


def test_bearer_token_is_sent_and_no_tenant_header_without_a_tenant(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url, bearer_token="tok-123")
    sink.write(make_event(1))
    loki.wait_for_entries(1)
    headers = loki.accepted[0].headers
    assert headers["authorization"] == "Bearer tok-123"
    assert "x-scope-orgid" not in headers


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_loki(certificate: tuple[Path, Path]) -> Iterator[FakeLoki]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = FakeLoki(tls=context)
    yield server
    server.close()


def test_tls_with_a_ca_file_verifies_and_delivers(
    tls_loki: FakeLoki, sinks: Sinks, certificate: tuple[Path, Path]
) -> None:
    sink = sinks(tls_loki.url, ca_file=certificate[0])
    sink.write(make_event(1))
    assert [seq_of(e) for e in tls_loki.wait_for_entries(1)] == [1]


def test_tls_insecure_skip_verify_delivers_without_the_ca(tls_loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(tls_loki.url, insecure_skip_verify=True)
    sink.write(make_event(1))
    assert [seq_of(e) for e in tls_loki.wait_for_entries(1)] == [1]


def test_tls_to_an_unknown_ca_is_refused_and_counted_as_a_network_error(
    tls_loki: FakeLoki, sinks: Sinks
) -> None:
    sink = sinks(tls_loki.url, close_timeout_s=0.2)
    sink.write(make_event(1))
    deadline = time.monotonic() + 3
    while sinks.metric("oomtrace_loki_requests_total", result="network_error") < 2:
        assert time.monotonic() < deadline, "the failed handshake was not counted"
        time.sleep(0.02)
    assert tls_loki.requests == []
    assert sinks.metric("oomtrace_loki_events_sent_total") == 0


# --- retries ----------------------------------------------------------------------------------


def test_429_is_retried_after_the_seconds_retry_after_says(loki: FakeLoki, sinks: Sinks) -> None:
    loki.answer(429, headers={"Retry-After": "1"})
    sink = sinks(loki.url)  # its own backoff would retry after 0.05 s
    sink.write(make_event(1))
    entries = loki.wait_for_entries(1, timeout_s=4)

    first, second = loki.requests
    assert first.status == 429 and second.status == 204
    assert 0.95 <= second.at - first.at < 1.6
    assert [seq_of(e) for e in entries] == [1]
    sinks.wait_metric("oomtrace_loki_events_sent_total", 1)
    assert sinks.metric("oomtrace_loki_requests_total", result="rate_limited") == 1


def test_5xx_is_retried_with_exponential_backoff_and_delivered_once(loki: FakeLoki, sinks: Sinks) -> None:
    loki.answer(500, times=2)
    loki.answer(503)
    sink = sinks(loki.url, min_backoff_s=0.1, max_backoff_s=5.0)
    sink.write(make_event(1))
    entries = loki.wait_for_entries(1, timeout_s=4)

    assert [r.status for r in loki.requests] == [500, 500, 503, 204]
    gaps = [b.at - a.at for a, b in zip(loki.requests, loki.requests[1:], strict=False)]
    # 0.1, 0.2, 0.4 s, each with up to 20 % jitter taken off.
    for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert 0.8 * backoff - 0.01 <= gap < backoff + 0.25
    assert gaps[0] < gaps[1] < gaps[2]
    assert [seq_of(e) for e in entries] == [1]
    sinks.wait_metric("oomtrace_loki_events_sent_total", 1)
    assert sinks.metric("oomtrace_loki_requests_total", result="server_error") == 3


def test_other_4xx_is_not_retried_and_its_events_are_counted_as_rejected(
    loki: FakeLoki, sinks: Sinks
) -> None:
    loki.answer(400)
    sink = sinks(loki.url)
    for i in range(3):
        sink.write(make_event(i))
    loki.wait(lambda server: len(server.requests) == 1)
    sinks.wait_metric("oomtrace_loki_events_dropped_total", 3, reason="rejected")
    time.sleep(0.4)  # a retry would have come by now (backoff 0.05 s)
    assert len(loki.requests) == 1
    assert sinks.metric("oomtrace_loki_requests_total", result="rejected") == 1

    sink.write(make_event(3))  # the next batch goes through
    assert [seq_of(e) for e in loki.wait_for_entries(1)] == [3]


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s(" 2.5 ", now) == 2.5
    assert retry_after_s(email_date(now + 30), now) == pytest.approx(30.0)
    assert retry_after_s(email_date(now - 30), now) == 0.0
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def email_date(when: float) -> str:
    import email.utils

    return email.utils.formatdate(when, usegmt=True)


# --- Loki down: bounded buffer, drops, order --------------------------------------------------


def test_while_loki_is_down_memory_stays_bounded_the_oldest_are_dropped_and_the_rest_arrive_in_order(
    loki: FakeLoki, sinks: Sinks
) -> None:
    total = 4000
    buffer_bytes = 128 * 1024
    loki.down()
    sink = sinks(loki.url, batch_bytes=16 * 1024, buffer_bytes=buffer_bytes, close_timeout_s=5.0)
    events = [make_event(i) for i in range(total)]
    latencies = []
    for event in events[: total // 2]:
        start = time.perf_counter()
        sink.write(event)
        latencies.append(time.perf_counter() - start)
    # The second half under tracemalloc: what is still allocated from inside tracer/sinks/loki/
    # afterwards is what the buffer really holds, Python objects and all.
    tracemalloc.start(6)
    try:
        before = tracemalloc.take_snapshot()
        for event in events[total // 2 :]:
            sink.write(event)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    import tracer.sinks.loki

    package = Path(tracer.sinks.loki.__file__).parent
    only_sink = [tracemalloc.Filter(True, str(package / "*"), all_frames=True)]
    held = sum(stat.size_diff for stat in after.filter_traces(only_sink).compare_to(
        before.filter_traces(only_sink), "filename"))  # fmt: skip

    written_bytes = sum(len(json.dumps(e, separators=(",", ":"))) for e in events[total // 2 :])
    assert written_bytes > 10 * buffer_bytes  # far more was written than the buffer holds
    assert sinks.metric("oomtrace_loki_buffered_bytes") <= buffer_bytes
    assert held < 1.25 * buffer_bytes  # the buffer's byte count bounds the real memory
    dropped = sinks.metric("oomtrace_loki_events_dropped_total", reason="buffer_full")
    assert dropped > total * 0.9
    assert sinks.metric("oomtrace_loki_requests_total", result="network_error") >= 1
    latencies.sort()
    # Tracing goes on: a write takes microseconds (the bounds leave room for a busy CI machine).
    assert latencies[len(latencies) // 2] < 0.001
    assert latencies[len(latencies) * 99 // 100] < 0.02 and latencies[-1] < 0.25

    loki.up()
    loki.wait(lambda server: len(server.entries) + dropped >= total, timeout_s=5)
    seqs = [seq_of(e) for e in loki.entries]
    assert len(seqs) + dropped == total  # every event is either delivered or counted
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no duplicates
    # The newest survived: all that fits in the buffer less a batch on the wire and an open one.
    newest = (buffer_bytes - 2 * 16 * 1024) // (len(json.dumps(make_event(total))) + ENTRY_OVERHEAD_BYTES)
    assert seqs[-newest:] == list(range(total - newest, total))
    sinks.wait_metric("oomtrace_loki_events_sent_total", len(seqs))
    assert sinks.metric("oomtrace_loki_buffered_bytes") == 0


def test_write_never_waits_for_a_slow_loki(loki: FakeLoki, sinks: Sinks) -> None:
    loki.delay_s = 1.0
    sink = sinks(loki.url, batch_bytes=4096, close_timeout_s=0.2)
    began = time.monotonic()
    latencies = []
    for i in range(1000):
        start = time.perf_counter()
        sink.write(make_event(i))
        latencies.append(time.perf_counter() - start)
        if i % 100 == 0:
            time.sleep(0.01)  # let the sender pick up batches and sit in its slow request
    finished = time.monotonic()
    latencies.sort()

    loki.wait(lambda server: len(server.requests) >= 1, timeout_s=3)
    assert loki.requests[0].at - began >= 1.0  # Loki's first answer came after the writes were done...
    assert finished - began < 0.9
    assert latencies[len(latencies) // 2] < 0.001  # ...each of which took well under a millisecond
    assert latencies[-1] < 0.25


def test_close_delivers_what_is_buffered(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url, batch_wait_s=60.0)
    for i in range(5):
        sink.write(make_event(i))
    sink.close()
    assert [seq_of(e) for e in loki.entries] == list(range(5))
    assert sinks.metric("oomtrace_loki_events_dropped_total", reason="shutdown") == 0


def test_close_gives_up_after_its_timeout_when_loki_is_down_and_counts_the_rest(
    loki: FakeLoki, sinks: Sinks
) -> None:
    loki.down()
    sink = sinks(loki.url, close_timeout_s=0.5)
    for i in range(5):
        sink.write(make_event(i))
    start = time.monotonic()
    sink.close()
    assert time.monotonic() - start < 1.5
    assert sinks.metric("oomtrace_loki_events_dropped_total", reason="shutdown") == 5
    assert sinks.metric("oomtrace_loki_buffered_bytes") == 0


def test_close_cuts_a_request_that_loki_never_answers(loki: FakeLoki, sinks: Sinks) -> None:
    loki.delay_s = 30.0
    sink = sinks(loki.url, close_timeout_s=0.3, timeout_s=30.0)
    sink.write(make_event(1))
    time.sleep(0.2)  # the request is on the wire
    start = time.monotonic()
    sink.close()
    assert time.monotonic() - start < 2.5
    assert not any(t.name == "oomtrace-loki" and t.is_alive() for t in threading.enumerate())
    assert sinks.metric("oomtrace_loki_events_dropped_total", reason="shutdown") == 1


def test_loki_metrics_have_only_bounded_labels(loki: FakeLoki, sinks: Sinks) -> None:
    sink = sinks(loki.url)
    sink.write(make_event(1, namespace="team-a", vm="vm-7"))
    loki.wait_for_entries(1)
    names = set()
    for metric in sinks.registry.collect():
        for sample in metric.samples:
            assert set(sample.labels) <= {"reason", "result"}, sample
            names.add(sample.name)
    assert {
        "oomtrace_loki_events_sent_total",
        "oomtrace_loki_events_dropped_total",
        "oomtrace_loki_requests_total",
        "oomtrace_loki_buffered_bytes",
        "oomtrace_loki_last_success_timestamp_seconds",
    } <= names


# --- configuration and command line -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "push_url"),
    [
        ("http://loki:3100", "http://loki:3100/loki/api/v1/push"),
        ("http://loki:3100/", "http://loki:3100/loki/api/v1/push"),
        ("https://logs.example.com/api/prom/push", "https://logs.example.com/api/prom/push"),
    ],
    ids=["base-url", "base-url-with-slash", "explicit-path"],
)
def test_the_push_path_is_added_to_a_base_url_only(url: str, push_url: str) -> None:
    assert LokiConfig(url=url).push_url == push_url


def test_sizes_take_binary_units() -> None:
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("512KiB") == 512 << 10
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("1.5MiB")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loki-url", "ftp://loki"], "--loki-url: expected http(s)://"),
        (["--loki-url", "loki:3100"], "--loki-url: expected http(s)://"),
        (["--loki-url", "http://loki:99999"], "--loki-url: bad port"),
        (["--loki-url", "http://loki", "--loki-username", "u"], "go together"),
        (
            [
                "--loki-url",
                "http://loki",
                "--loki-username",
                "u",
                "--loki-password",
                "p",
                "--loki-bearer-token",
                "t",
            ],
            "exclusive",
        ),
        (
            ["--loki-url", "http://loki", "--loki-batch-bytes", "2MiB", "--loki-buffer-bytes", "1MiB"],
            "must be at least",
        ),
        (["--loki-url", "https://loki", "--loki-ca-file", "/nonexistent/ca.pem"], "no such file"),
        (["--loki-url", "http://loki", "--loki-insecure-skip-verify"], "need an https://"),
        (["--loki-tenant", "team-a"], "--loki-tenant given without --loki-url"),
    ],
    ids=[
        "scheme",
        "no-scheme",
        "port",
        "user-no-password",
        "basic-and-bearer",
        "buffer-below-batch",
        "missing-ca",
        "insecure-on-http",
        "tenant-without-url",
    ],
)
def test_bad_loki_flags_are_one_line_and_exit_2_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--metrics-address", "none", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oomtrace: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_ca_file_that_is_not_pem_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    assert cli.main(["run", "--loki-url", "https://loki", "--loki-ca-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--loki-ca-file: cannot load" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["--loki-batch-bytes", "lots"], ["--loki-batch-wait", "0"], ["--loki-encoding", "xml"]],
    ids=["batch-bytes", "batch-wait", "encoding"],
)
def test_malformed_loki_flag_values_are_rejected_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--loki-url", "http://loki", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("oomtrace: error: ") and err.count("\n") == 1


def test_loki_settings_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.sinks import loki

    monkeypatch.setenv("OOMTRACE_LOKI_URL", "http://loki:3100")
    monkeypatch.setenv("OOMTRACE_LOKI_PASSWORD", "from-a-secret")
    monkeypatch.setenv("OOMTRACE_LOKI_USERNAME", "shipper")
    monkeypatch.setenv("OOMTRACE_LOKI_BATCH_BYTES", "64KiB")
    args = cli.build_parser().parse_args(["run"])
    config = loki.config_from_args(args)
    assert config is not None
    assert (config.url, config.username, config.password) == ("http://loki:3100", "shipper", "from-a-secret")
    assert config.batch_bytes == 64 << 10
    assert config.encoding == "protobuf"


# --- shipper configs in deploy/ ---------------------------------------------------------------
#
# Alloy, Promtail and Fluent Bit are not packaged for Debian 12 (nor on PyPI), so they cannot
# run here. These tests parse each config, check the labels it makes are the bounded set and
# that every event field it reads exists, and replay its label logic on a real event line to
# check it yields the same stream labels as the direct push sink.

CRI_STDOUT = "2026-11-26T17:05:34.671300000Z stdout F "


def _labels_from(
    rules: dict[str, str | None], static: dict[str, str], event: dict[str, Any]
) -> dict[str, str]:
    """label name → event field (None: static); a null or empty field sets no label."""
    labels = dict(static)
    for name, source in rules.items():
        if source is None:
            continue
        value = event.get(source)
        if value not in (None, ""):
            labels[name] = str(value)
    return labels


SAMPLE_EVENTS = [
    make_event(1, namespace="team-a", vm="vm-7"),
    make_event(2, schema.NEAR_OOM),
    make_event(3, schema.MEMCG_OOM, namespace="kube-system"),
]


def test_promtail_config_parses_promotes_only_bounded_labels_and_reads_existing_fields() -> None:
    config = yaml.safe_load((REPO / "deploy/promtail/config.yaml").read_text())
    (job,) = config["scrape_configs"]
    stages = job["pipeline_stages"]
    kinds = [next(iter(stage)) for stage in stages]
    assert kinds[0] == "cri"
    assert kinds.index("drop") < kinds.index("json") < kinds.index("labels")
    drop = stages[kinds.index("drop")]["drop"]
    assert (drop["source"], drop["value"]) == ("stream", "stderr")

    expressions = stages[kinds.index("json")]["json"]["expressions"]
    assert set(expressions.values()) <= EVENT_FIELDS
    labels = stages[kinds.index("labels")]["labels"]
    assert set(labels) <= ALLOWED_LABELS
    relabelled = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    assert {t for t in relabelled if not t.startswith("__")} <= ALLOWED_LABELS
    timestamp = stages[kinds.index("timestamp")]["timestamp"]
    assert expressions[timestamp["source"]] == "ts" and timestamp["format"] == "RFC3339Nano"
    assert set(stages[kinds.index("labeldrop")]["labeldrop"]) == {"filename", "stream"}

    static = {
        r["target_label"]: r["replacement"] for r in job["relabel_configs"] if r.get("target_label") == "job"
    }
    for event in SAMPLE_EVENTS:
        rules = {name: expressions[name] for name in labels}
        assert _labels_from(rules, static, event) == dict(stream_labels(event))


def _alloy_tokens(text: str) -> list[str]:
    """Alloy syntax tokens (strings, identifiers, numbers, punctuation), comments removed."""
    token = re.compile(
        r'\s+|//[^\n]*|/\*.*?\*/|("(?:[^"\\\n]|\\.)*")|([A-Za-z_][A-Za-z0-9_.]*)|([0-9][0-9.]*)|([{}\[\](),=+])',
        re.S,
    )
    tokens, pos = [], 0
    while pos < len(text):
        match = token.match(text, pos)
        assert match, f"alloy: unexpected character at {text[pos : pos + 20]!r}"
        tokens += [t for t in match.groups() if t]
        pos = match.end()
    return tokens


def _alloy_block(tokens: list[str], pos: int) -> tuple[dict[str, Any], int]:
    """Parse a block body up to its closing brace: attributes and (repeatable) sub-blocks."""
    body: dict[str, Any] = {}
    while tokens[pos] != "}":
        name = tokens[pos]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name), f"alloy: bad statement start {name!r}"
        if tokens[pos + 1] == "=":
            value, pos = _alloy_value(tokens, pos + 2)
            body[name] = value
            continue
        label = None
        pos += 1
        if tokens[pos].startswith('"'):
            label, pos = json.loads(tokens[pos]), pos + 1
        assert tokens[pos] == "{", f"alloy: expected {{ after {name}"
        inner, pos = _alloy_block(tokens, pos + 1)
        body.setdefault(name, []).append((label, inner))
    return body, pos + 1


def _alloy_value(tokens: list[str], pos: int) -> tuple[Any, int]:
    """A value: string, object, list; references and calls are kept as their tokens."""
    first = tokens[pos]
    if first == "{":
        obj, pos = {}, pos + 1
        while tokens[pos] != "}":
            key = tokens[pos]
            assert tokens[pos + 1] == "=", f"alloy: expected = after {key}"
            obj[key], pos = _alloy_value(tokens, pos + 2)
            if tokens[pos] == ",":
                pos += 1
        return obj, pos + 1
    if first == "[":
        items, pos = [], pos + 1
        while tokens[pos] != "]":
            item, pos = _alloy_value(tokens, pos)
            items.append(item)
            if tokens[pos] == ",":
                pos += 1
        return items, pos + 1
    value: Any = json.loads(first) if first.startswith('"') else first
    pos += 1
    while tokens[pos] in ("(", "+"):  # a call or a concatenation: skip to its end
        depth = 0
        while True:
            depth += tokens[pos] in "([{"
            depth -= tokens[pos] in ")]}"
            pos += 1
            if depth == 0 and tokens[pos - 1] != "+":
                break
        value = ("expression", value)
    return value, pos


def test_alloy_config_parses_promotes_only_bounded_labels_and_reads_existing_fields() -> None:
    tokens = _alloy_tokens((REPO / "deploy/alloy/config.alloy").read_text())
    config, end = _alloy_block([*tokens, "}"], 0)
    assert end == len(tokens) + 1  # the whole file is one well-formed body
    for component in (
        "discovery.kubernetes",
        "discovery.relabel",
        "local.file_match",
        "loki.source.file",
        "loki.process",
        "loki.write",
    ):
        assert component in config, component
    ((_label, process),) = config["loki.process"]
    assert process["forward_to"] == ["loki.write.default.receiver"]
    stage_names = [key for key in process if key.startswith("stage.")]
    assert stage_names[0] == "stage.cri"
    ((_, drop),) = process["stage.drop"]
    assert (drop["source"], drop["value"]) == ("stream", "stderr")
    ((_, json_stage),) = process["stage.json"]
    expressions = {k: v or k for k, v in json_stage["expressions"].items()}  # "" means the same name
    assert set(expressions.values()) <= EVENT_FIELDS
    ((_, labels_stage),) = process["stage.labels"]
    labels = {k: v or k for k, v in labels_stage["values"].items()}
    ((_, static_stage),) = process["stage.static_labels"]
    assert set(labels) | set(static_stage["values"]) <= ALLOWED_LABELS
    ((_, timestamp),) = process["stage.timestamp"]
    assert expressions[timestamp["source"]] == "ts" and timestamp["format"] == "RFC3339Nano"
    ((_, label_drop),) = process["stage.label_drop"]
    assert set(label_drop["values"]) == {"filename", "stream"}

    for event in SAMPLE_EVENTS:
        rules = {name: expressions[source] for name, source in labels.items()}
        assert _labels_from(rules, static_stage["values"], event) == dict(stream_labels(event))


def test_fluent_bit_config_parses_promotes_only_bounded_labels_and_reads_existing_fields() -> None:
    config = yaml.safe_load((REPO / "deploy/fluent-bit/fluent-bit.yaml").read_text())
    pipeline = config["pipeline"]
    (tail,) = pipeline["inputs"]
    assert tail["name"] == "tail" and tail["multiline.parser"] == "cri"
    grep, parser_filter = pipeline["filters"]
    assert (grep["name"], grep["regex"]) == ("grep", "stream ^stdout$")
    assert parser_filter["name"] == "parser" and parser_filter["key_name"] == "log"
    (parser,) = [p for p in config["parsers"] if p["name"] == parser_filter["parser"]]
    assert parser["format"] == "json" and parser["time_key"] == "ts"
    # The tracer's ts parses with the parser's time_format (strptime's %f stands in for %L).
    time.strptime(make_event(1)["ts"][:19], parser["time_format"].split(".")[0])

    (output,) = pipeline["outputs"]
    assert output["name"] == "loki" and output["match"] == tail["tag"]
    assert output["line_format"] == "json" and "remove_keys" not in output
    rules: dict[str, str | None] = {}
    static: dict[str, str] = {}
    for pair in output["labels"].split(","):
        name, _, value = pair.strip().partition("=")
        if value.startswith("$"):
            assert re.fullmatch(r"\$[a-z_]+", value), f"only top-level record keys: {value}"
            rules[name] = value[1:]
        else:
            static[name] = value
    assert set(rules) | set(static) <= ALLOWED_LABELS
    assert {source for source in rules.values() if source} <= EVENT_FIELDS

    for event in SAMPLE_EVENTS:
        record = json.loads(json.dumps(event))  # what the parser filter makes of the line
        assert _labels_from(rules, static, record) == dict(stream_labels(event))


def test_the_cri_line_the_shippers_read_holds_the_event_json_unchanged() -> None:
    """What all three pipelines assume: after the CRI prefix, the line is one event object."""
    from io import StringIO

    from tracer.sinks.stdout import StdoutSink

    out = StringIO()
    sink = StdoutSink(out)
    sink.write(make_event(1))
    sink.flush()
    (line,) = out.getvalue().splitlines()
    assert json.loads((CRI_STDOUT + line)[len(CRI_STDOUT) :]) == make_event(1)
