"""What every benchmark needs: the tracer as a subprocess whose stdout lines are stamped when
read, the kernel's own log with its clock calibrated, statistics, and a record of the machine.

Clocks: BPF stamps events with bpf_ktime_get_ns() (CLOCK_MONOTONIC); a stamping process stamps
each line with time.monotonic_ns() as it reads it from the tracer's stdout (the same clock);
/dev/kmsg stamps records with the printk clock, converted with tracer.sources.kmsg.printk_offset_ns()
measured before and after each benchmark (KERNEL_LAB.md, "Comparing kernel-log time with BPF
time").
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.sources.kmsg import KmsgReader, OomReportParser, printk_offset_ns

REPO = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Line:
    read_ns: int  # CLOCK_MONOTONIC when the harness read it
    event: dict[str, Any]


# Reads stdin as it arrives and writes every line prefixed with CLOCK_MONOTONIC ns at read. It
# runs real-time (SCHED_FIFO) where it may, and hands its output to a thread of its own: the
# instrument must wait neither for a CPU behind the OOMing tasks it measures nor for its own
# reader (a pipe holds only about 27 events with snapshots). The tracer itself gets no help.
_STAMPER = """
import os, queue, sys, threading, time
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except OSError:
    pass
stamped = queue.SimpleQueue()
def forward():
    while (data := stamped.get()) is not None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
writer = threading.Thread(target=forward)
writer.start()
pending = b""
while chunk := os.read(0, 1 << 20):
    now = b"%d " % time.monotonic_ns()
    *lines, pending = (pending + chunk).split(b"\\n")
    stamped.put(b"".join(now + line + b"\\n" for line in lines if line))
stamped.put(None)
writer.join()
"""


def stamper_for(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """The stamping process for `process`'s stdout (which it takes over); read its stdout for
    "<CLOCK_MONOTONIC ns> <line>" lines. A process of its own: a reader thread here shares the
    GIL with the workload driver and JSON parsing, which was seen to add tens of milliseconds to
    the tail of what it measured."""
    assert process.stdout is not None
    stamper = subprocess.Popen(
        [sys.executable, "-c", _STAMPER], stdin=process.stdout, stdout=subprocess.PIPE, bufsize=0
    )
    process.stdout.close()
    return stamper


# Every tracer start-up of this bench run: seconds from exec to "tracing", and RSS then.
STARTUPS: list[tuple[float, int]] = []


class TracerRun:
    """`python -m tracer run` with stdout lines stamped at read (CLOCK_MONOTONIC)."""

    def __init__(self, *args: str, ready_timeout_s: float = 120.0) -> None:
        self.started_ns = time.monotonic_ns()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tracer", "run", "--metrics-address", "127.0.0.1:0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._stamper = stamper_for(self.process)
        self.lines: list[Line] = []
        self.diagnostics: list[dict[str, Any]] = []
        self.port = 0
        self.ready_ns: int | None = None
        self._cond = threading.Condition()
        threading.Thread(target=self._stdout, daemon=True, name="tracer-stdout").start()
        threading.Thread(target=self._stderr, daemon=True, name="tracer-stderr").start()
        deadline = time.monotonic() + ready_timeout_s
        with self._cond:
            while self.ready_ns is None:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tracer did not become ready: {self.diagnostics[-3:]}")
                self._cond.wait(0.2)
        self.ready_rss_bytes = ProcessUsage.of(self.process.pid).rss_bytes
        STARTUPS.append((self.startup_s, self.ready_rss_bytes))

    @property
    def startup_s(self) -> float:
        assert self.ready_ns is not None
        return (self.ready_ns - self.started_ns) / 1e9

    def _stdout(self) -> None:
        assert self._stamper.stdout is not None
        for stamped in self._stamper.stdout:
            read_ns, _, line = stamped.partition(b" ")
            with self._cond:
                self.lines.append(Line(int(read_ns), json.loads(line)))
                self._cond.notify_all()

    def _stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            now = time.monotonic_ns()
            text = raw.decode(errors="replace")
            record = json.loads(text) if text.startswith("{") else {"msg": text.strip()}
            with self._cond:
                self.diagnostics.append(record)
                if record.get("msg") == "serving /metrics and /healthz":
                    self.port = int(record["port"])
                if record.get("msg") == "tracing":
                    self.ready_ns = now
                self._cond.notify_all()

    def events(self, predicate: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[Line]:
        with self._cond:
            return [line for line in self.lines if predicate(line.event)]

    def wait_for(self, predicate: Callable[[list[Line]], bool], timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def metrics(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out

    def lost(self) -> dict[str, float]:
        prefix = 'oomtrace_events_lost_total{reason="'
        return {k[len(prefix) : -2]: v for k, v in self.metrics().items() if k.startswith(prefix)}

    def usage(self) -> ProcessUsage:
        return ProcessUsage.of(self.process.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=60)
        self._stamper.wait(timeout=60)  # it ends with the tracer's stdout
        return code

    def __enter__(self) -> TracerRun:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float  # user + system, the whole process so far
    rss_bytes: int
    hwm_bytes: int  # peak RSS

    @classmethod
    def of(cls, pid: int) -> ProcessUsage:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        kib = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
        return cls(cpu, kib("VmRSS"), kib("VmHWM"))


class KernelLog:
    """The kernel's OOM reports and raw records from /dev/kmsg, from now on, in a thread."""

    def __init__(self) -> None:
        self.offsets_ns = [printk_offset_ns()]
        self._reader = KmsgReader()
        self._parser = OomReportParser()
        self.records: list[tuple[int, str]] = []  # (printk ns, message)
        self.events: list[dict[str, Any]] = []  # ktime_ns on the printk clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmsg")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            select.select([self._reader.fileno()], [], [], 0.1)
            for _seq, ts_ns, message in self._reader.read_available():
                self.records.append((ts_ns, message))
                self.events += self._parser.feed(message, ts_ns)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._reader.close()
        self.offsets_ns.append(printk_offset_ns())

    @property
    def offset_ns(self) -> int:
        """printk clock - CLOCK_MONOTONIC: the mean of the calibrations before and after."""
        return int(statistics.fmean(self.offsets_ns))

    @property
    def drift_ns(self) -> int:
        return max(self.offsets_ns) - min(self.offsets_ns)

    def monotonic(self, printk_ns: int) -> int:
        return printk_ns - self.offset_ns

    def count(self, needle: str) -> int:
        return sum(1 for _ts, message in self.records if needle in message)

    def __enter__(self) -> KernelLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        if not self._stop.is_set():
            self.close()


def distribution(values: Iterable[float], digits: int = 3) -> dict[str, Any]:
    """n, min, p50, p90, p99, max, mean of the values (None for each when there are none)."""
    data = sorted(values)
    if not data:
        return {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}

    def pct(p: float) -> float:
        # Nearest rank: a value that was actually observed.
        return data[min(len(data) - 1, max(0, round(p / 100 * len(data) + 0.5) - 1))]

    r = lambda x: round(x, digits)  # noqa: E731
    return {
        "n": len(data),
        "min": r(data[0]),
        "p50": r(pct(50)),
        "p90": r(pct(90)),
        "p99": r(pct(99)),
        "max": r(data[-1]),
        "mean": r(statistics.fmean(data)),
    }


def ms(ns: float) -> float:
    return ns / 1e6


# --- what the numbers were measured on -------------------------------------------------------


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _virt() -> str:
    """The hypervisor (and the container manager, if any) as systemd-detect-virt names them."""
    found = []
    for flag in ("--vm", "--container"):
        try:
            out = subprocess.run(["systemd-detect-virt", flag], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() not in ("", "none"):
            found.append(out.stdout.strip())
    return "+".join(found) or "none detected"


def _busy_processes(top: int = 4) -> list[str]:
    """The processes using most CPU right now, this benchmark's own excepted (other load skews
    every timing here)."""
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
    ).stdout
    me = os.getpid()
    busy = []
    for line in out.splitlines():
        pid, ppid, rest = line.split(None, 2)
        if me not in (int(pid), int(ppid)):
            busy.append(" ".join(rest.split()))
    return busy[:top]


def _git() -> str:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = run("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")


def probe_tiers() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "tracer", "probes", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    return {p["probe"]: p["tier"] for p in report["probes"]}


PROC = Path("/proc")
# KERN_ERR: the level of the kernel's "Killed process" line.
_KERN_ERR = 3


def consoles(proc: Path = PROC) -> dict[str, Any]:
    """The kernel's consoles and the level below which a message is written to them.

    A serial console writes every message under its level synchronously, with interrupts off
    on that CPU; the OOM kill's "Killed process" line is KERN_ERR, so at the common level 4 each
    kill also waits for a serial write, and so does the BPF ring buffer's wake-up (irq_work)
    of the tracer behind it.
    """
    try:
        names = [line.split()[0] for line in (proc / "consoles").read_text().splitlines() if line.strip()]
        level = int((proc / "sys/kernel/printk").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {"consoles": None, "console_loglevel": None, "kill_line_on_console": None}
    on_console = bool(names) and level > _KERN_ERR
    return {"consoles": names, "console_loglevel": level, "kill_line_on_console": on_console}


@contextlib.contextmanager
def kill_line_off_console(printk: Path = PROC / "sys/kernel/printk") -> Iterator[bool]:
    """Lowers the console log level so the "Killed process" line stays off the consoles (it is
    still in /dev/kmsg), and restores the level after. Yields whether anything was changed."""
    original = printk.read_text()
    fields = original.split()
    if int(fields[0]) <= _KERN_ERR:
        yield False
        return
    printk.write_text(" ".join([str(_KERN_ERR), *fields[1:]]))
    try:
        yield True
    finally:
        printk.write_text(original)


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
        "virtualization": _virt(),
        "python": platform.python_version(),
        "commit": _git(),
        "loadavg_at_start": os.getloadavg(),
        "busiest_processes_at_start": _busy_processes(),
        **consoles(),
    }


def summarize_load(record: dict[str, Any]) -> None:
    record["loadavg_at_end"] = os.getloadavg()
    record["busiest_processes_at_end"] = _busy_processes()


def pct_change(ratios: Sequence[float]) -> float | None:
    return None if not ratios else round((statistics.median(ratios) - 1) * 100, 2)


@dataclass
class Timer:
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)
