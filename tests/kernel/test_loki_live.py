"""`oomtrace run --loki-url`: a real OOM in a pod-shaped cgroup reaches Loki with the right labels.

No Grafana Loki server is installable here, so the receiver is tests/fake_loki.py: a loopback
server that speaks Loki's documented push API (snappy-compressed logproto.PushRequest, decoded
independently of the tracer's encoder) and answers 204 like Loki.
"""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_loki import FakeLoki
from tests.kernel.conftest import Tracer
from tracer.cli.sandbox import PodSandbox

MIB = 1 << 20


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki()
    yield server
    server.close()


def test_a_real_oom_kill_reaches_loki_as_one_line_with_bounded_stream_labels(loki: FakeLoki) -> None:
    tracer = Tracer("--interval", "0.5", "--loki-url", loki.url, "--loki-batch-wait", "0.2")
    try:
        with PodSandbox(limit_bytes=64 * MIB) as pod:
            process = pod.spawn("oomtrace-loki", total_mib=256)
            assert process.wait(timeout=60) == -9, "the allocator was not OOM-killed"
            ours = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == process.pid)
            loki.wait(
                lambda server: any(
                    e.event["event"] == "oom_kill" and e.event["victim_pid"] == process.pid
                    for e in server.entries
                ),
                timeout_s=10,
            )
    finally:
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)

    assert loki.errors == []
    (entry,) = [
        e for e in loki.entries if e.event["event"] == "oom_kill" and e.event["victim_pid"] == process.pid
    ]
    assert entry.event == ours  # the same object the tracer printed on stdout
    assert entry.event["pod_uid"] == pod.pod_uid and entry.event["container_id"] == pod.container_id
    assert entry.labels["job"] == "oomtrace"
    assert entry.labels["kind"] == "oom_kill"
    assert entry.labels["node"] == ours["node"]
    assert set(entry.labels) <= {"job", "node", "kind", "namespace", "vm"}  # no pod UID, pid or cgroup
    assert entry.ts_ns // 1000 == _epoch_us(ours["ts"])
    request = loki.accepted[0]
    assert request.headers["content-type"] == "application/x-protobuf"

    # SIGTERM flushed the rest: Loki holds every event the tracer printed, each stream in the
    # order printed (a push groups entries by stream; Loki orders within a stream).
    def by_stream(events: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
        streams: dict[tuple[Any, ...], list[int]] = {}
        for e in events:
            streams.setdefault((e["event"], e.get("namespace"), e.get("vm")), []).append(e["ktime_ns"])
        return streams

    deadline = time.monotonic() + 5  # the stdout reader thread may still hold the last lines
    while len(tracer.events) < len(loki.entries) and time.monotonic() < deadline:
        time.sleep(0.05)
    shipped = by_stream([e.event for e in loki.entries])
    assert shipped == by_stream(tracer.events)
    assert any(key[0] == "near_oom" for key in shipped)


def _epoch_us(ts: str) -> int:
    from datetime import datetime

    stamp = datetime.fromisoformat(ts)
    return int(stamp.timestamp()) * 1_000_000 + stamp.microsecond
