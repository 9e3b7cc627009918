"""`oomtrace watch`: its one-line view, colour rules, SSE parsing, backoff, and the client
against the real /events server over loopback (reconnect, resume with Last-Event-ID, the
client limit, fatal answers), plus the command line as a subprocess."""

import argparse
import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_stream import FIRST, REPO, event, wait_until
from tracer.cli.watch import add_arguments, watch
from tracer.cli.watch.client import Backoff, Endpoint, Watcher, WatchError, parse_endpoint
from tracer.cli.watch.render import human_bytes, render, use_colour, who
from tracer.cli.watch.sse import Message, sse_messages
from tracer.http import events as events_module
from tracer.http.server import HttpServer, start_http_server
from tracer.schema import MEMCG_OOM, NEAR_OOM, OOM_KILL
from tracer.sinks.stream import StreamHub

MIB = 1 << 20


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lines show local time: pin the zone so expected lines are exact."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- one line per event ---------------------------------------------------------------------

KILL = event(
    OOM_KILL,
    ts="2026-11-26T17:05:34.672497Z",
    victim_pid=11794,
    victim_comm="demo-allocator",
    anon_rss_bytes=66772992,
    file_rss_bytes=5971968,
    shmem_rss_bytes=0,
    oom_score_adj=0,
    trigger_pid=11794,
    trigger_comm="demo-allocator",
)


@pytest.mark.parametrize(
    ("e", "line"),
    [
        pytest.param(
            KILL,
            "17:05:34.672  oom_kill   pod:af0ca5a6/b00e693c19c0  killed demo-allocator[11794] "
            "anon_rss=63.7MiB file_rss=5.7MiB shmem_rss=0B oom_score_adj=0",
            id="oom-kill-by-itself",
        ),
        pytest.param(
            {
                **KILL,
                "namespace": "kv",
                "pod": "virt-launcher-vm1-x",
                "container": "compute",
                "vm": "vm1",
                "constraint": "memcg",
                "trigger_pid": 1,
                "trigger_comm": "virt-handler",
            },
            "17:05:34.672  oom_kill   kv/virt-launcher-vm1-x/compute vm:vm1  killed demo-allocator[11794] "
            "anon_rss=63.7MiB file_rss=5.7MiB shmem_rss=0B oom_score_adj=0 constraint=memcg "
            "trigger=virt-handler[1]",
            id="oom-kill-in-a-named-vm-pod-triggered-by-another-task",
        ),
        pytest.param(
            event(
                MEMCG_OOM,
                ts="2026-11-26T17:05:34.671Z",
                usage_bytes=64 * MIB,
                limit_bytes=64 * MIB,
                failcnt=12,
                order=0,
                gfp_mask="0xcc0",
                trigger_pid=7,
                trigger_comm="java",
            ),
            "17:05:34.671  memcg_oom  pod:af0ca5a6/b00e693c19c0  usage=64.0MiB/64.0MiB failcnt=12 order=0 "
            "gfp_mask=0xcc0 trigger=java[7]",
            id="memcg-oom",
        ),
        pytest.param(
            event(
                NEAR_OOM,
                ts="2026-11-26T17:05:34.000001Z",
                phase="first",
                usage_bytes=64 * MIB,
                limit_bytes=64 * MIB,
                trigger_pid=7,
                trigger_comm="java",
            ),
            "17:05:34.000  near_oom   pod:af0ca5a6/b00e693c19c0  first charge failure: usage=64.0MiB/64.0MiB "
            "trigger=java[7]",
            id="near-oom-first",
        ),
        pytest.param(
            event(
                NEAR_OOM,
                ts="2026-11-26T17:05:35.475081Z",
                phase="summary",
                interval_s=1.0,
                reclaim_calls=35,
                reclaim_time_ns=1517726,
                reclaimed_bytes=0,
                usage_bytes=64 * MIB,
                limit_bytes=64 * MIB,
            ),
            "17:05:35.475  near_oom   pod:af0ca5a6/b00e693c19c0  1s: reclaims=35 (1.5ms) reclaimed=0B "
            "usage=64.0MiB/64.0MiB",
            id="near-oom-summary",
        ),
        pytest.param(
            {"event": OOM_KILL, "ts": None},
            "--:--:--.---  oom_kill   -  killed ?",
            id="everything-unknown",
        ),
    ],
)
def test_each_event_is_one_readable_line(e: dict[str, Any], line: str) -> None:
    assert render(e) == line


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"namespace": "shop", "pod": "cart-1", "container": "app"}, "shop/cart-1/app", id="k8s"),
        pytest.param({"namespace": "shop", "pod": "cart-1"}, "shop/cart-1", id="k8s-without-container"),
        pytest.param({"pod_uid": "af0ca5a6-a8c9", "container_id": None}, "pod:af0ca5a6", id="pod-uid"),
        pytest.param(
            {"unit": "ssh.service", "cgroup": "/system.slice/ssh.service"}, "ssh.service", id="unit"
        ),
        pytest.param(
            {"runtime": "docker", "container_id": "ab" * 32, "unit": "docker-x.scope"},
            "docker:abababababab",
            id="host-container",
        ),
        pytest.param(
            {"runtime": "containerd", "runtime_namespace": "tests", "container_id": "c1"},
            "containerd:tests/c1",
            id="ctr-container",
        ),
        pytest.param(
            {"runtime": "libvirt", "machine": "qemu-2-web", "vm": "web", "unit": None},
            "libvirt:qemu-2-web vm:web",
            id="host-vm",
        ),
        pytest.param({"machine": "deb", "unit": "machine-deb.scope"}, "machine:deb", id="machine"),
        pytest.param({"cgroup": "/user.slice"}, "/user.slice", id="cgroup"),
        pytest.param({}, "-", id="nothing"),
        pytest.param({"vm": "vm7"}, "- vm:vm7", id="vm-only"),
    ],
)
def test_who_names_the_most_specific_owner_known(fields: dict[str, Any], expected: str) -> None:
    assert who(fields) == expected


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (64 * MIB, "64.0MiB"),
        (3 << 40, "3072.0GiB"),
        (None, "?"),
    ],
)
def test_sizes_are_shown_in_binary_units(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_colour_marks_the_kind_and_resets_after_it() -> None:
    line = render(KILL, colour=True)
    assert "\x1b[1;31moom_kill \x1b[0m" in line
    assert line.count("\x1b[0m") == 3  # time, kind, who


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("mode", "tty", "env", "expected"),
    [
        pytest.param("auto", True, {}, True, id="auto-terminal"),
        pytest.param("auto", False, {}, False, id="auto-pipe"),
        pytest.param("auto", True, {"NO_COLOR": "1"}, False, id="auto-terminal-NO_COLOR"),
        pytest.param("auto", True, {"NO_COLOR": ""}, True, id="auto-terminal-empty-NO_COLOR"),
        pytest.param("always", False, {"NO_COLOR": "1"}, True, id="always-overrides-NO_COLOR"),
        pytest.param("never", True, {}, False, id="never"),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    mode: str, tty: bool, env: dict[str, str], expected: bool
) -> None:
    stream = FakeTty() if tty else io.StringIO()
    assert use_colour(mode, stream, env) is expected


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        pytest.param("127.0.0.1:9700", "http://127.0.0.1:9700/events", id="host-port"),
        pytest.param("node-1", "http://node-1:9700/events", id="host-default-port"),
        pytest.param(":9800", "http://127.0.0.1:9800/events", id="port-only"),
        pytest.param("[::1]:9700", "http://[::1]:9700/events", id="ipv6"),
        pytest.param("http://node-1:9700/", "http://node-1:9700/events", id="url"),
        pytest.param(
            "http://proxy/oomtrace/node-1", "http://proxy:9700/oomtrace/node-1/events", id="url-prefix"
        ),
        pytest.param("https://proxy/oomtrace", "https://proxy:443/oomtrace/events", id="https"),
        pytest.param("http://node-1:9700/events", "http://node-1:9700/events", id="full-events-url"),
    ],
)
def test_address_forms_name_the_events_url(address: str, url: str) -> None:
    assert parse_endpoint(address).url == url


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("", id="empty"),
        pytest.param("ftp://node-1", id="other-scheme"),
        pytest.param("node-1:99999", id="port-too-high"),
        pytest.param("node-1:http", id="port-name"),
        pytest.param("node-1:9700/events?kind=oom_kill", id="filters-in-the-address"),
        pytest.param("http://user:pw@node-1", id="credentials"),
    ],
)
def test_bad_address_is_a_one_line_watch_error(address: str) -> None:
    with pytest.raises(WatchError) as info:
        parse_endpoint(address)
    assert "\n" not in str(info.value)


# --- Server-Sent Events parsing -------------------------------------------------------------


def parse(text: bytes, last_id: str | None = None) -> list[Message | int]:
    return list(sse_messages(io.BytesIO(text).readline, last_id))


def test_sse_parser_follows_the_standard_for_ids_types_comments_and_multiline_data() -> None:
    stream = (
        b"retry: 2000\n\n"
        b": heartbeat\n\n"
        b'id: 7\ndata: {"a": 1}\n\n'
        b"data: no id here\n\n"  # the last id stays
        b"event: gap\ndata: line one\ndata:line two\r\n\r\n"
        b"id: 8\ndata: cut off at EOF"  # incomplete: discarded
    )
    assert parse(stream, last_id="6") == [
        2000,
        Message("message", '{"a": 1}', "7"),
        Message("message", "no id here", "7"),
        Message("gap", "line one\nline two", "7"),
    ]


def test_sse_line_longer_than_any_event_is_a_protocol_error() -> None:
    import http.client

    with pytest.raises(http.client.HTTPException):
        parse(b"data: " + b"x" * (2 << 20) + b"\n\n")


# --- backoff --------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_its_maximum_and_resets() -> None:
    low, high = Backoff(0.5, 4.0, rand=lambda: 0.0), Backoff(0.5, 4.0, rand=lambda: 0.999999)
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [round(high.next(), 3) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low.reset()
    assert low.next() == 0.25


def test_backoff_waits_at_least_what_the_server_asked() -> None:
    assert Backoff(0.5, 30, rand=lambda: 0.0).next(at_least_s=5.0) == 5.0


# --- the client against the real server -----------------------------------------------------


class Running:
    """A Watcher on its own thread, writing into buffers the test reads."""

    def __init__(self, port: int, query: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        kwargs.setdefault("backoff", Backoff(0.05, 0.2))
        self.watcher = Watcher(
            Endpoint("http", "127.0.0.1", port, "/events"), query or [], self.out, self.err, **kwargs
        )
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.watcher.run()

    def lines(self, n: int, timeout: float = 10) -> list[str]:
        wait_until(lambda: len(self.out.getvalue().splitlines()) >= n, timeout)
        return self.out.getvalue().splitlines()

    def stop(self) -> int | None:
        self.watcher.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        return self.code


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def serve(registry: CollectorRegistry, hub: StreamHub, port: int = 0) -> HttpServer:
    return start_http_server(f"127.0.0.1:{port}", registry, lambda: (True, "ok"), hub)


def pids(lines: list[str]) -> list[int]:
    return [json.loads(line)["victim_pid"] for line in lines]


def test_watch_prints_each_event_as_it_arrives_and_stops_after_count(registry: CollectorRegistry) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        running = Running(srv.port, count=2)
        wait_until(lambda: hub.clients() == 1)
        hub.write(KILL)
        hub.write(event(NEAR_OOM, phase="first"))
        hub.write(event(OOM_KILL, victim_pid=3))
        running.thread.join(timeout=5)
        hub.close()
    assert running.code == 0
    lines = running.out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == render(KILL)
    assert "near_oom" in lines[1]


def test_watch_json_prints_the_events_json_unchanged(registry: CollectorRegistry) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        running = Running(srv.port, json_lines=True, count=1)
        wait_until(lambda: hub.clients() == 1)
        hub.write(KILL)
        running.thread.join(timeout=5)
        hub.close()
    assert [json.loads(line) for line in running.out.getvalue().splitlines()] == [KILL]


def test_watch_asks_the_server_to_filter(registry: CollectorRegistry) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        running = Running(srv.port, [("min_kind", "oom_kill"), ("namespace", "kv")], json_lines=True)
        wait_until(lambda: hub.clients() == 1)
        hub.write(event(OOM_KILL, victim_pid=1, namespace="shop"))
        hub.write(event(MEMCG_OOM, namespace="kv"))
        hub.write(event(OOM_KILL, victim_pid=2, namespace="kv"))
        assert pids(running.lines(1)) == [2]
        assert running.stop() == 0
        hub.close()


def test_after_the_connection_drops_watch_reconnects_and_resumes_with_exactly_the_missed_events(
    registry: CollectorRegistry,
) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    first = serve(registry, hub)
    port = first.port
    running = Running(port, json_lines=True)
    wait_until(lambda: hub.clients() == 1)
    for pid in range(3):
        hub.write(event(OOM_KILL, victim_pid=pid))
    running.lines(3)
    first.close()  # the connection drops; the tracer goes on tracing
    for pid in range(3, 6):
        hub.write(event(OOM_KILL, victim_pid=pid))
    with serve(registry, hub, port):
        assert pids(running.lines(6)) == [0, 1, 2, 3, 4, 5]
        hub.write(event(OOM_KILL, victim_pid=6))
        assert pids(running.lines(7)) == [0, 1, 2, 3, 4, 5, 6]
        assert running.stop() == 0
        hub.close()
    notes = running.err.getvalue()
    assert "reconnecting in" in notes and f"resuming after event {FIRST + 2}" in notes


def test_a_watch_that_has_seen_nothing_yet_still_resumes_from_where_it_started(
    registry: CollectorRegistry,
) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    hub.write(event(OOM_KILL, victim_pid=99))  # before watch started: not shown
    first = serve(registry, hub)
    port = first.port
    running = Running(port, json_lines=True)
    wait_until(lambda: hub.clients() == 1)
    first.close()
    hub.write(event(OOM_KILL, victim_pid=1))  # while disconnected, before any event was seen
    with serve(registry, hub, port):
        assert pids(running.lines(1)) == [1]
        running.stop()
        hub.close()


def test_after_the_tracer_restarts_watch_says_so_and_shows_the_new_runs_events(
    registry: CollectorRegistry,
) -> None:
    old = StreamHub(registry, first_id=FIRST)
    first = serve(registry, old)
    port = first.port
    running = Running(port, json_lines=True)
    wait_until(lambda: old.clients() == 1)
    old.write(event(OOM_KILL, victim_pid=1))
    running.lines(1)
    old.close()
    first.close()
    new = StreamHub(CollectorRegistry(), first_id=FIRST + 1_000_000)
    new.write(event(OOM_KILL, victim_pid=2))
    with serve(CollectorRegistry(), new, port):
        assert pids(running.lines(2)) == [1, 2]
        running.stop()
        new.close()
    assert "the tracer restarted" in running.err.getvalue()


def test_when_events_were_lost_to_the_replay_limit_watch_says_how_many(registry: CollectorRegistry) -> None:
    hub = StreamHub(registry, replay=2, first_id=FIRST)
    first = serve(registry, hub)
    port = first.port
    running = Running(port, json_lines=True)
    wait_until(lambda: hub.clients() == 1)
    hub.write(event(OOM_KILL, victim_pid=0))
    running.lines(1)
    first.close()
    for pid in range(1, 6):
        hub.write(event(OOM_KILL, victim_pid=pid))
    with serve(registry, hub, port):
        assert pids(running.lines(3)) == [0, 4, 5]
        running.stop()
        hub.close()
    assert "missed 3 events" in running.err.getvalue()


def test_watch_retries_until_the_tracer_comes_up(registry: CollectorRegistry) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = Running(port, json_lines=True)
    wait_until(lambda: running.err.getvalue().count("Connection refused") >= 2)
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub, port):
        wait_until(lambda: hub.clients() == 1)
        hub.write(event(OOM_KILL, victim_pid=1))
        assert pids(running.lines(1)) == [1]
        running.stop()
        hub.close()


def test_watch_refused_at_the_client_limit_waits_as_long_as_the_server_asks(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "RETRY_AFTER_S", 1)
    hub = StreamHub(registry, max_clients=1, first_id=FIRST)
    with serve(registry, hub) as srv:
        other = Running(srv.port)
        wait_until(lambda: hub.clients() == 1)
        running = Running(srv.port, json_lines=True)
        wait_until(lambda: "503" in running.err.getvalue())
        assert "reconnecting in 1.0s" in running.err.getvalue()
        other.stop()
        wait_until(lambda: running.watcher.connections == 1, timeout=5)  # the slot went to it
        hub.write(event(OOM_KILL, victim_pid=1))
        assert pids(running.lines(1)) == [1]
        running.stop()
        hub.close()


def test_a_connection_silent_past_three_heartbeats_is_given_up_and_reopened() -> None:
    """A hand-made server that answers like /events (SSE headers, heartbeat 0.1 s) and then
    freezes, as a hung tracer or a dead network path would."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Oomtrace-Heartbeat-Seconds: 0.1\r\n\r\nretry: 2000\n\n"
            )
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    running = Running(listener.getsockname()[1])
    wait_until(lambda: len(accepted) >= 2, timeout=6)
    running.stop()
    listener.close()
    for conn in accepted:
        conn.close()
    assert "no data or heartbeat from the tracer in time" in running.err.getvalue()


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_request_the_tracer_refuses_ends_watch_with_its_one_line_reason(
    registry: CollectorRegistry,
) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        out, err = io.StringIO(), io.StringIO()
        code = watch(
            args_for(f"127.0.0.1:{srv.port}", "--kind", "near_oom", "--min-kind", "oom_kill"), out, err
        )
        hub.close()
    assert code == 2
    assert err.getvalue() == (
        "oomtrace: error: the tracer refused the request (400): "
        "kind and min_kind together match no event kind\n"
    )


def test_a_server_without_an_event_stream_ends_watch_with_exit_2(registry: CollectorRegistry) -> None:
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok")) as srv:
        err = io.StringIO()
        assert watch(args_for(f"127.0.0.1:{srv.port}"), io.StringIO(), err) == 2
    assert "no event stream there (404)" in err.getvalue()
    assert err.getvalue().count("\n") == 1


# --- the command line -----------------------------------------------------------------------


def oomtrace(*args: str, **kwargs: Any) -> "subprocess.Popen[bytes]":
    return subprocess.Popen([sys.executable, "-m", "tracer", *args], cwd=REPO, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["ftp://node-1"], "only http:// and https://", id="bad-scheme"),
        pytest.param(["node-1:99999"], "port must be a number", id="bad-port"),
        pytest.param(["--kind", "oom_reaper"], "unknown event kind 'oom_reaper'", id="bad-kind"),
        pytest.param(["--count", "0"], "must be a whole number >= 1", id="bad-count"),
        pytest.param(["--since", " "], "--since: empty value", id="empty-since"),
        pytest.param(["no-such-host.invalid"], "cannot resolve 'no-such-host.invalid'", id="unknown-host"),
    ],
)
def test_bad_watch_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    process = oomtrace("watch", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert message in err.decode()
    assert err.decode().count("\n") == 1 and out == b""


def run_watch_on(
    registry: CollectorRegistry,
    args: list[str],
    stdout: Any,
    env: dict[str, str],
    feed: Callable[[StreamHub], None],
) -> "subprocess.Popen[bytes]":
    hub = StreamHub(registry, first_id=FIRST)
    srv = serve(registry, hub)
    process = oomtrace(
        "watch",
        f"127.0.0.1:{srv.port}",
        *args,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        wait_until(lambda: hub.clients() == 1, timeout=15)
        feed(hub)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        hub.close()
        srv.close()
    return process


def read_pty(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(
    ("env", "coloured"),
    [pytest.param({}, True, id="terminal"), pytest.param({"NO_COLOR": "1"}, False, id="terminal-NO_COLOR")],
)
def test_watch_on_a_terminal_is_coloured_unless_no_color_is_set(
    registry: CollectorRegistry, env: dict[str, str], coloured: bool
) -> None:
    main, tty = pty.openpty()
    try:
        process = run_watch_on(registry, ["--count", "1"], tty, env, lambda hub: hub.write(KILL))
        os.close(tty)
        tty = -1
        output = read_pty(main)
    finally:
        os.close(main)
        if tty >= 0:
            os.close(tty)
    assert process.returncode == 0
    assert b"killed demo-allocator[11794]" in output
    assert (b"\x1b[" in output) is coloured


def test_watch_into_a_pipe_has_no_colour(registry: CollectorRegistry) -> None:
    process = run_watch_on(registry, ["--count", "1"], subprocess.PIPE, {}, lambda hub: hub.write(KILL))
    assert process.stdout is not None
    out = process.stdout.read()
    assert process.returncode == 0
    assert out.decode() == render(KILL) + "\n"


def test_watch_piped_into_a_reader_that_leaves_exits_quietly(registry: CollectorRegistry) -> None:
    def feed(hub: StreamHub) -> None:
        hub.write(KILL)
        assert process_box[0].stdout is not None
        process_box[0].stdout.readline()
        process_box[0].stdout.close()  # `| head -1` has what it wanted and goes
        for pid in range(100):
            hub.write(event(OOM_KILL, victim_pid=pid))

    process_box: list[subprocess.Popen[bytes]] = []
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        process = oomtrace("watch", f"127.0.0.1:{srv.port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process_box.append(process)
        wait_until(lambda: hub.clients() == 1, timeout=15)
        feed(hub)
        assert process.wait(timeout=15) == 0
        hub.close()
    assert process.stderr is not None
    err = process.stderr.read().decode()
    assert "Traceback" not in err and "error" not in err


def test_watch_interrupted_exits_130_without_a_traceback(registry: CollectorRegistry) -> None:
    hub = StreamHub(registry, first_id=FIRST)
    with serve(registry, hub) as srv:
        process = oomtrace("watch", f"127.0.0.1:{srv.port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: hub.clients() == 1, timeout=15)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
        hub.close()
    assert process.returncode == 130
    assert b"Traceback" not in err


# --- what the workload names cannot do to the reader's terminal -------------------------------

HOSTILE = [
    "\x1b]0;owned\x07",  # set the window title
    "\x1b[2J\x1b[H",  # clear the screen
    "a\rb",  # overwrite the line
    "\x9b31m",  # C1 CSI
    "\u202eevil",  # right-to-left override
    "x\x7f",
    "\u2028",  # line separator
]


@pytest.mark.parametrize(
    "text", HOSTILE, ids=["osc-title", "clear", "cr", "c1-csi", "bidi", "del", "line-sep"]
)
@pytest.mark.parametrize("colour", [False, True], ids=["plain", "colour"])
def test_names_from_the_workload_never_reach_the_terminal_raw(text: str, colour: bool) -> None:
    e = event(
        OOM_KILL, victim_comm=text, victim_pid=7, namespace=text, pod=text, container=text, vm=text,
        constraint=text, trigger_pid=8, trigger_comm=text,
    )  # fmt: skip
    line = render(e, colour)
    ours = line
    for style in ("\x1b[0m", "\x1b[2m", "\x1b[1m", "\x1b[1;31m"):
        ours = ours.replace(style, "")
    assert ours.isprintable(), repr(line)
    assert "\\x" in ours or "\\u" in ours  # shown, as a visible escape


def test_a_foreign_servers_raw_control_characters_are_escaped_in_json_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    watcher = Watcher(parse_endpoint("http://127.0.0.1:1"), [], out, err, json_lines=True)
    watcher._show('{"event": "oom_kill", "victim_comm": "\x1b[2Jx\x9b"}')
    line = out.getvalue().rstrip("\n")
    assert line.isprintable()
    assert json.loads(line)["victim_comm"] == "\x1b[2Jx\x9b"  # still the same JSON value
