"""Security checks: where the HTTP server listens, what it refuses, and that no command line or
environment leaves the tracer.

The leak test plants a marker everywhere a careless tracer could pick it up: in the argv and the
environment of an OOM victim that names itself QEMU (so the VM attribution reads and parses its
command line while it runs), and in the tracer's own environment — as an unrelated variable and
as the Loki password, a real secret it must use but never show. Then every event on stdout,
every diagnostic on stderr and every HTTP answer (/metrics, /healthz, the /events replay, and
paths that would be a leak if they existed) is searched for it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_loki import FakeLoki
from tests.kernel.conftest import Tracer
from tracer import schema
from tracer.cli.sandbox import PodSandbox
from tracer.enrich.vm import QemuInfo, parse_qemu_cmdline
from tracer.http.server import MAX_REQUEST_HEAD_BYTES, start_http_server
from tracer.sinks.stream import StreamHub

MIB = 1 << 20
MARKER = f"oomtrace-secret-{secrets.token_hex(6)}"

# A process that calls itself qemu-system-x86, waits to be seen, then grows until the OOM kill.
FAKE_QEMU = r"""
import ctypes, mmap, sys, time
ctypes.CDLL(None).prctl(15, b"qemu-system-x86", 0, 0, 0)
time.sleep(2.0)
region = mmap.mmap(-1, 256 << 20)
for offset in range(0, 256 << 20, 4096):
    region[offset] = 1
    if offset % (1 << 20) == 0:
        time.sleep(0.005)
time.sleep(30)
"""


# --- where it listens ----------------------------------------------------------------------------


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: TCP_LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            # /proc/net/tcp{,6} prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            family = socket.AF_INET if width == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


@pytest.mark.kernel
def test_the_tracer_listens_only_where_configured_and_not_at_all_with_none(kernel_host: None) -> None:
    configured = Tracer("--interval", "0.5")  # the fixture's --metrics-address 127.0.0.1:0
    try:
        assert _listening(configured.process.pid) == [("127.0.0.1", configured.metrics_port)]
    finally:
        assert configured.stop() == 0
    silent = Tracer("--metrics-address", "none")
    try:
        assert _listening(silent.process.pid) == []
    finally:
        assert silent.stop() == 0


def test_an_ipv6_loopback_address_binds_ipv6_loopback_only() -> None:
    with start_http_server("[::1]:0", CollectorRegistry(), lambda: (True, "ok")) as server:
        assert _listening(os.getpid()) == [("::1", server.port)]


# --- what it refuses ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    registry = CollectorRegistry()
    hub = StreamHub(registry)
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), hub) as http_server:
        yield http_server.port


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status code (0 if the connection just closed) and the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        # The server may answer and close before reading all of an oversized request; then the
        # kernel resets the connection, and sending or shutting down fails: read what came back.
        try:
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        reply = b""
        try:
            while chunk := conn.recv(65536):
                reply += chunk
        except OSError:
            pass
    if reply.startswith(b"HTTP/1."):
        return int(reply.split(b" ", 2)[1]), reply
    # Not even a request line: the standard library answers as HTTP/0.9 did, an error page alone.
    page = re.search(rb"<p>Error code: ([0-9]{3})</p>", reply)
    return (int(page[1]) if page else 0), reply


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"GET /" + b"a" * (2 * MAX_REQUEST_HEAD_BYTES) + b" HTTP/1.1\r\n\r\n", 414, id="long-url"
        ),
        pytest.param(
            b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"b" * (2 * MAX_REQUEST_HEAD_BYTES) + b"\r\n\r\n",
            431,
            id="long-header",
        ),
        pytest.param(
            b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
            431,
            id="many-headers",
        ),
        pytest.param(b"GARBAGE\r\n\r\n", 400, id="not-a-request-line"),
        pytest.param(b"GET /metrics HTTP/9.9\r\n\r\n", 505, id="unknown-http-version"),
        pytest.param(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", 400, id="tls-hello"
        ),
        pytest.param(
            b"POST /metrics HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n" + b"z" * 100,
            501,
            id="post-body",
        ),
        pytest.param(b"DELETE /events HTTP/1.1\r\n\r\n", 501, id="delete"),
        pytest.param(b"GET /events?kind=" + b"x" * 300 + b" HTTP/1.1\r\n\r\n", 400, id="bad-events-query"),
        pytest.param(b"GET /../../proc/self/environ HTTP/1.1\r\n\r\n", 404, id="traversal-environ"),
        pytest.param(b"GET /proc/self/cmdline HTTP/1.1\r\n\r\n", 404, id="cmdline"),
    ],
)
def test_oversized_or_malformed_requests_are_refused_with_a_status_not_served(
    server: int, request_bytes: bytes, status: int
) -> None:
    got, reply = _raw(server, request_bytes)
    assert got == status, reply[:200]
    assert b"# HELP" not in reply  # nothing was served to it


def test_idle_connections_do_not_stop_the_server_answering_others(server: int) -> None:
    # More than the listen backlog (5), each holding a handler thread until its 10 s timeout.
    idle = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(16)]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_flood_is_answered_503_without_a_thread_and_slots_come_back() -> None:
    registry = CollectorRegistry()
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), max_connections=4) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
        try:
            # The server accepts in arrival order: these four hold every slot.
            got, reply = _raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert got == 503, reply
            assert reply.endswith(b"too many connections; retry later\n")
        finally:
            for sock in idle:
                sock.close()  # each handler thread sees EOF, ends, and frees its slot
        deadline = time.monotonic() + 10
        while (got := _raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")[0]) == 503:
            assert time.monotonic() < deadline, "slots were not given back"
            time.sleep(0.05)
        assert got == 200


# --- nothing leaks -----------------------------------------------------------------------------


def test_no_event_field_is_a_command_line_or_an_environment() -> None:
    fields = {f for kind in schema.KINDS for f in schema.blank_event(kind)}
    suspicious = {f for f in fields if any(word in f for word in ("cmd", "argv", "args", "environ", "env"))}
    assert suspicious == set()
    # The VM facts taken from QEMU's command line: its name (KubeVirt's split form and the
    # domain name as libvirt gave it), numbers and flags — no free text.
    assert {name: t for name, t in QemuInfo.__annotations__.items() if "str" in str(t)} == {
        "vm": "str | None",
        "guest_name": "str | None",
    }
    # The name is -name's guest= value alone: another key of that option never comes along.
    raw = b"".join(a + b"\0" for a in (b"qemu", b"-name", b"guest=web,debug-threads=on,secret=hunter2"))
    assert parse_qemu_cmdline(raw).guest_name == "web"


@dataclass
class Leak:
    tracer: Tracer
    pod: PodSandbox
    victim: int
    answers: dict[str, bytes]
    loki: FakeLoki


def _get(port: int, path: str, headers: dict[str, str] | None = None, read_for_s: float = 0) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=read_for_s or 10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = b""
    try:
        if read_for_s:
            while chunk := response.read1(65536):
                body += chunk
        else:
            body = response.read()
    except TimeoutError:
        pass  # a stream: what arrived until the timeout is what we look at
    conn.close()
    return f"{response.status} {response.headers}".encode() + body


@pytest.fixture(scope="module")
def leak(kernel_host: None) -> Iterator[Leak]:
    loki = FakeLoki()
    saved = dict(os.environ)
    os.environ["UNRELATED_TOKEN"] = MARKER
    os.environ["OOMTRACE_LOKI_PASSWORD"] = MARKER
    try:
        tracer = Tracer(
            "--interval", "0.5", "--vm-scan-interval", "0.3", "--loki-url", loki.url,
            "--loki-username", "oomtrace", "--loki-batch-wait", "0.2",
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with PodSandbox(limit_bytes=64 * MIB) as pod:
            os.environ["VICTIM_SECRET"] = MARKER
            try:
                victim = pod.spawn(
                    "qemu",
                    0,
                    command=[
                        sys.executable, "-c", FAKE_QEMU, "-name", "guest=sec_vm1,debug-threads=on",
                        "-m", "64", "-smp", "1", "-append", f"token={MARKER}", f"--password={MARKER}",
                    ],
                )  # fmt: skip
            finally:
                del os.environ["VICTIM_SECRET"]
            assert Path(f"/proc/{victim.pid}/environ").read_bytes().count(MARKER.encode()) == 1
            assert victim.wait(timeout=60) == -9, "the fake QEMU was not OOM-killed"
            tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == victim.pid)
            loki.wait_for_entries(1, timeout_s=10)
            port = tracer.metrics_port
            answers = {
                path: _get(port, path)
                for path in (
                    "/metrics",
                    "/healthz",
                    "/proc/self/environ",
                    "/proc/self/cmdline",
                    "/debug",
                    "/",
                )
            }
            answers["/events replay"] = _get(port, "/events?since=0", read_for_s=1.5)
            answers["/events sse"] = _get(
                port, "/events", {"Accept": "text/event-stream", "Last-Event-ID": "1"}, 1.5
            )
            yield Leak(tracer, pod, victim.pid, answers, loki)
    finally:
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)
        loki.close()


@pytest.mark.kernel
def test_the_victims_command_line_was_read_for_vm_attribution(leak: Leak) -> None:
    kill = next(e for e in leak.tracer.events if e["event"] == "oom_kill" and e["victim_pid"] == leak.victim)
    assert kill["vm"] == "sec/vm1" and kill["guest_memory_bytes"] == 64 * MIB  # parsed, so it was read
    assert kill["victim_comm"] == "qemu-system-x86"


@pytest.mark.kernel
def test_no_event_carries_a_command_line_or_an_environment(leak: Leak) -> None:
    assert leak.tracer.events
    text = "\n".join(json.dumps(e) for e in leak.tracer.events)
    assert MARKER not in text
    assert "debug-threads" not in text and "-append" not in text  # nor any other argument


@pytest.mark.kernel
def test_no_diagnostic_carries_a_command_line_or_an_environment(leak: Leak) -> None:
    assert MARKER not in "".join(leak.tracer.stderr_lines)


@pytest.mark.kernel
def test_no_http_answer_carries_a_command_line_or_an_environment(leak: Leak) -> None:
    assert b"oom_kill" in leak.answers["/events replay"]  # the replay did hold the kill
    leaked = [path for path, body in leak.answers.items() if MARKER.encode() in body]
    assert leaked == []
    assert all(
        leak.answers[p].startswith(b"404") for p in ("/proc/self/environ", "/proc/self/cmdline", "/debug")
    )


@pytest.mark.kernel
def test_the_loki_password_is_used_as_a_credential_and_nowhere_else(leak: Leak) -> None:
    credential = "Basic " + base64.b64encode(f"oomtrace:{MARKER}".encode()).decode()
    assert {r.headers.get("authorization") for r in leak.loki.accepted} == {credential}
    assert not any(MARKER in json.dumps(e.event) for e in leak.loki.entries)
    assert not any(MARKER in str(e.labels) for e in leak.loki.entries)
