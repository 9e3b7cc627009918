"""Kernel tests: root, BPF, real cgroups, real OOMs, compared with the kernel's own report.

They never skip: a kernel that cannot run them is a failure to look at.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracer.sources.kmsg import KmsgReader, OomReportParser

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session", autouse=True)
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (BPF, cgroups, /dev/kmsg); run them as root, they never skip")
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "events").is_dir():
        # tracefs is not mounted at boot on this machine kind; mounting it changes nothing else.
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], check=True)


def wait_for_event(
    seen: list[dict[str, Any]], arriving: "queue.Queue[dict[str, Any]]", predicate: Any, timeout_s: float
) -> dict[str, Any]:
    """The first event, already seen or arriving within timeout_s, that satisfies predicate."""
    for event in list(seen):
        if predicate(event):
            return event
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            event = arriving.get(timeout=0.1)
        except queue.Empty:
            continue
        if predicate(event):
            return event
    raise AssertionError(f"no matching event within {timeout_s}s; got {len(seen)} events")


class Tracer:
    """`oomtrace run` as a subprocess; its stdout JSON lines collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tracer", "run", "--metrics-address", "127.0.0.1:0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._diagnostics: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.metrics_port = 0
        self._wait_ready()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events.append(event)
            self._lines.put(event)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)
            self._diagnostics.put(json.loads(line) if line.startswith("{") else {"msg": line})

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                record = self._diagnostics.get(timeout=0.2)
            except queue.Empty:
                continue
            if record.get("msg") == "serving /metrics and /healthz":
                self.metrics_port = record["port"]
            if record.get("msg") == "tracing":
                return
        time.sleep(0.2)  # let the reader thread catch the last words of a failed start
        raise AssertionError("oomtrace run did not become ready:\n" + "".join(self.stderr_lines))

    def wait_for(self, predicate: Any, timeout_s: float = 10) -> dict[str, Any]:
        return wait_for_event(self.events, self._lines, predicate, timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def tracer() -> Iterator[Tracer]:
    t = Tracer("--interval", "0.5")
    yield t
    assert t.stop() == 0, "".join(t.stderr_lines)


class KernelLog:
    """The kernel's own OOM reports, from /dev/kmsg records written after it was opened."""

    def __init__(self) -> None:
        self._reader = KmsgReader()
        self._parser = OomReportParser()
        self.events: list[dict[str, Any]] = []

    def collect(self) -> list[dict[str, Any]]:
        for _seq, ts_ns, message in self._reader.read_available():
            self.events += self._parser.feed(message, ts_ns)
        return self.events

    def kill_of(self, pid: int, timeout_s: float = 5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.collect():
                if event["event"] == "oom_kill" and event["victim_pid"] == pid:
                    return event
            time.sleep(0.05)
        raise AssertionError(f"the kernel log has no kill of pid {pid}")

    def close(self) -> None:
        self._reader.close()


@pytest.fixture(scope="module")
def kernel_report_budget() -> None:
    """The kernel rate-limits its OOM report header (dump_header: 10 per 5 s), while the
    "Killed process" line always comes. Tests that compare with header fields (task_memcg,
    oom_memcg) start each module after a quiet 5 s, so the few OOMs that follow get their
    header even when the module before ran a burst of OOMs."""
    time.sleep(5.5)


@pytest.fixture
def kernel_log(kernel_report_budget: None) -> Iterator[KernelLog]:
    log = KernelLog()
    yield log
    log.close()
