"""A real OOM in a pod-shaped cgroup, seen live on GET /events by real clients of a real
`oomtrace run`: an SSE connection, an NDJSON connection that resumes, and `oomtrace watch`."""

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.kernel.conftest import REPO, KernelLog, Tracer
from tests.kernel.test_oom_events import MIB, VICTIM_FIELDS, _oom
from tracer.cli.sandbox import PodSandbox
from tracer.cli.watch.sse import sse_messages


class SseClient:
    """An EventSource-like client: Accept: text/event-stream, read message by message."""

    def __init__(self, port: int, query: str = "") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", f"/events{query}", headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        self._messages = sse_messages(self.response.readline)

    def next_event(self) -> tuple[int, dict[str, Any]]:
        for message in self._messages:
            if not isinstance(message, int) and message.type == "message":
                assert message.id is not None
                return int(message.id), json.loads(message.data)
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.response.close()
        self.conn.close()


WATCH_ARGS = ("--min-kind", "oom_kill", "--count", "1")


@dataclass
class LiveOom:
    tracer: Tracer
    pod: PodSandbox
    pid: int
    kill_id: int
    streamed: dict[str, Any]  # the oom_kill as the SSE client got it
    near_oom_streamed: list[tuple[int, dict[str, Any]]]  # near_oom events of the pod before it
    kernel: dict[str, Any]
    watch_out: str
    watch_err: str
    watch_code: int


@pytest.fixture(scope="module")
def live_oom() -> Iterator[LiveOom]:
    tracer = Tracer("--interval", "0.5", "--stream-replay", "100")
    kernel_log = KernelLog()
    watch = subprocess.Popen(
        [sys.executable, "-m", "tracer", "watch", f"127.0.0.1:{tracer.metrics_port}", *WATCH_ARGS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "TZ": "UTC"},
    )
    sse = SseClient(tracer.metrics_port)
    try:
        deadline = time.monotonic() + 15
        while "connected" not in (watch.stderr.readline() if watch.stderr else ""):
            assert time.monotonic() < deadline, "oomtrace watch did not connect"
        with PodSandbox(limit_bytes=64 * MIB) as pod:
            pid = _oom(pod)
            near: list[tuple[int, dict[str, Any]]] = []
            while True:
                event_id, event = sse.next_event()
                if event["event"] == "oom_kill" and event["victim_pid"] == pid:
                    break
                if event.get("pod_uid") == pod.pod_uid:
                    near.append((event_id, event))
            kernel = kernel_log.kill_of(pid)
            out, err = watch.communicate(timeout=30)
            yield LiveOom(tracer, pod, pid, event_id, event, near, kernel, out, err, watch.returncode)
    finally:
        sse.close()
        kernel_log.close()
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)


def test_a_real_oom_kill_reaches_a_live_sse_client_as_the_same_event_stdout_has(live_oom: LiveOom) -> None:
    stdout_event = live_oom.tracer.wait_for(
        lambda e: e["event"] == "oom_kill" and e["victim_pid"] == live_oom.pid
    )
    assert live_oom.streamed == stdout_event
    assert live_oom.streamed["pod_uid"] == live_oom.pod.pod_uid
    assert live_oom.streamed["container_id"] == live_oom.pod.container_id
    assert {f: live_oom.streamed[f] for f in VICTIM_FIELDS} == {f: live_oom.kernel[f] for f in VICTIM_FIELDS}


def test_the_pods_near_oom_came_first_on_the_stream_with_smaller_ids(live_oom: LiveOom) -> None:
    assert live_oom.near_oom_streamed, "no near_oom for the pod before its kill"
    ids = [event_id for event_id, _ in live_oom.near_oom_streamed]
    assert ids == sorted(ids) and ids[-1] < live_oom.kill_id
    assert live_oom.near_oom_streamed[0][1]["phase"] == "first"


def test_a_client_resuming_after_the_near_oom_gets_the_kill_from_the_replay_buffer(live_oom: LiveOom) -> None:
    after = live_oom.near_oom_streamed[0][0]
    conn = http.client.HTTPConnection("127.0.0.1", live_oom.tracer.metrics_port, timeout=30)
    conn.request("GET", "/events?min_kind=oom_kill", headers={"Last-Event-ID": str(after)})
    response = conn.getresponse()
    assert response.getheader("Content-Type") == "application/x-ndjson"
    replayed = []
    while True:
        record = json.loads(response.readline())
        replayed.append(record)
        if record.get("victim_pid") == live_oom.pid:
            break
    response.close()
    conn.close()
    assert replayed[-1] == {"id": live_oom.kill_id, **live_oom.streamed}
    assert all(r["event"] == "oom_kill" and r["id"] > after for r in replayed)


def test_oomtrace_watch_shows_the_kill_as_one_line_naming_the_victim_and_pod(live_oom: LiveOom) -> None:
    assert live_oom.watch_code == 0, live_oom.watch_err
    (line,) = live_oom.watch_out.splitlines()
    assert " oom_kill " in line
    assert f"pod:{live_oom.pod.pod_uid[:8]}/{live_oom.pod.container_id[:12]}" in line
    assert f"killed oomtrace-alloc[{live_oom.pid}]" in line
    assert "\x1b[" not in line


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def test_the_tracer_counts_its_stream_clients_on_metrics(live_oom: LiveOom) -> None:
    # watch (exited after its one event) and the resuming client hung up: within a second or
    # two the tracer counts only the SSE client that is still connected.
    deadline = time.monotonic() + 5
    while "oomtrace_stream_clients 1.0" not in (body := _scrape(live_oom.tracer.metrics_port)):
        assert time.monotonic() < deadline, [line for line in body.splitlines() if "stream_clients " in line]
        time.sleep(0.2)
    assert 'oomtrace_stream_clients_dropped_total{reason="overflow"} 0.0' in body
