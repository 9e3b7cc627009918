"""Benchmark 5: oomtrace and its peers on the same OOMs.

Peers, run side by side with oomtrace (BPF) on the same kills:
- bcc's own oomkill tool (Debian bpfcc-tools, /usr/sbin/oomkill-bpfcc): a kprobe on
  oom_kill_process() printing trigger and victim pid/comm, no cgroup;
- a /dev/kmsg reader, the approach of node-problem-detector and cAdvisor: oomtrace's own kernel
  log parser (`oomtrace run --source kmsg`), which attributes a kill to a cgroup only from the
  report's oom-kill: line;
- the floor: bpftrace on the oom:mark_victim tracepoint printing the victim's pid and nothing
  else, a reader with no work per kill (Debian bpftrace). How soon it reads a kill in a storm is
  how soon the CPU lets any reader at default priority have it.

The truth is the kernel: its per-cgroup oom_kill counters say how many kills there were, and
the "Killed process" record's printk stamp (calibrated to CLOCK_MONOTONIC) says when; every
tool's output line is stamped when the harness's real-time stamping process reads it. Two
scenarios: 10 OOMs a second apart (the kernel prints every report), and storms of 50 cgroups
OOMing at once, each after 6 quiet seconds, where the kernel's dump_header rate limit (10
reports per 5 s) drops report lines; the storms' kills are pooled (four storms here, one in
the VMs, where a storm takes minutes under emulation).
A kill counts as attributed when the tool names the pod UID of the cgroup it happened in.

Where the kernel has no kprobes (this machine's), oomkill-bpfcc cannot attach and says so in
the results; bench/vm_peers.py runs this same benchmark in VMs on Debian kernels that have them.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.harness import KernelLog, TracerRun, distribution, ms, say, stamper_for
from bench.workload import MIB, Child, Pool, Zygote
from tracer.cli.sandbox import PodSandbox

LIMIT = 32 * MIB
OOMKILL_BPFCC = "/usr/sbin/oomkill-bpfcc"
# oomkill-bpfcc's line: "<time> Triggered by PID <tgid> (\"<comm>\"), OOM kill of PID <tgid>
# (\"<comm>\"), <oc->totalpages> pages, loadavg: ..."; for a memcg OOM totalpages is the
# cgroup's limit in pages, the size of the OOM domain, not the victim's memory.
_OOMKILL_LINE = re.compile(r"OOM kill of PID (\d+) \(\"(.*)\"\), (\d+) pages")
BPFTRACE = "/usr/bin/bpftrace"
# mark_victim's pid is the victim's task pid, the one the kernel's Killed line prints.
BPFTRACE_PROGRAM = 'tracepoint:oom:mark_victim { printf("oom_kill %d\\n", args->pid); }'
_BPFTRACE_LINE = re.compile(r"^oom_kill (\d+)$")


@dataclass
class LineTool:
    """A peer tool as a subprocess that prints a line per kill. Its lines are stamped at read by
    the same real-time stamping process as oomtrace's (bench.harness.stamper_for), so every
    tool is measured by one instrument."""

    ready_timeout_s: float = 90.0  # its compile and attach; minutes under QEMU's emulation
    lines: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    ready_s: float | None = None  # exec to its first line: compile + attach
    process: subprocess.Popen[bytes] | None = None

    path: ClassVar[str]
    package: ClassVar[str]
    kill_line: ClassVar[re.Pattern[str]]  # group 1: the victim's pid

    def command(self) -> list[str]:
        return [self.path]

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> LineTool:
        if not os.path.exists(self.path):
            self.error = f"{self.path} is not installed (Debian package {self.package})"
            return self
        env = self.environment()
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
        )
        stamper = stamper_for(self.process)
        started = threading.Event()

        def read() -> None:
            assert stamper.stdout is not None
            for stamped in stamper.stdout:
                read_ns, _, line = stamped.partition(b" ")
                self.lines.append((int(read_ns), line.decode(errors="replace").rstrip()))
                started.set()

        threading.Thread(target=read, daemon=True).start()
        started_at = time.monotonic()
        deadline = started_at + self.ready_timeout_s
        while time.monotonic() < deadline and not started.is_set() and self.process.poll() is None:
            time.sleep(0.1)
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            text = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            self.error = text[-1] if text else f"exited with {self.process.returncode}"
        elif not started.is_set():
            self.error = f"printed nothing within {self.ready_timeout_s:.0f} s of starting"
        else:
            self.ready_s = round(time.monotonic() - started_at, 1)
        return self

    def kills(self) -> dict[int, int]:
        """victim pid → when its line was read (the first line wins)."""
        out = {}
        for read_ns, line in self.lines:
            m = self.kill_line.search(line)
            if m:
                out.setdefault(int(m[1]), read_ns)
        return out

    def wait_for(self, pids: set[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not pids <= self.kills().keys():
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class BccOomkill(LineTool):
    """bcc's oomkill tool: a kprobe on oom_kill_process(), pid and comm, no cgroup."""

    path: ClassVar[str] = OOMKILL_BPFCC
    package: ClassVar[str] = "bpfcc-tools"
    kill_line: ClassVar[re.Pattern[str]] = _OOMKILL_LINE

    def environment(self) -> dict[str, str]:
        # The tool print()s without flushing: into a pipe its lines would sit in Python's
        # block buffer, arriving late or only at exit.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            from tracer.kernel.headers import find_headers

            tree = find_headers(os.uname().release)
            if tree.path is not None:
                env["BCC_KERNEL_SOURCE"] = str(tree.path)  # no headers of its own on this kernel
        except Exception as err:  # its own start-up will then say what is missing
            self.error = f"no kernel headers for it: {err}"
        return env

    def pages(self) -> list[int]:
        """The distinct "pages" figures it printed (oc->totalpages)."""
        return sorted({int(m[3]) for _t, line in self.lines if (m := _OOMKILL_LINE.search(line))})


@dataclass
class BpftraceKills(LineTool):
    """The floor: a kill's line from a tool that does nothing else per kill. bpftrace on the
    oom:mark_victim tracepoint (every kernel of the lab has it, this one included), printing
    the victim's pid, line-buffered: no cgroup, no snapshot, no JSON, and compiled C++ instead of
    Python. What it gets in a storm at nice 0 is what the CPU gives any reader."""

    path: ClassVar[str] = BPFTRACE
    package: ClassVar[str] = "bpftrace"
    kill_line: ClassVar[re.Pattern[str]] = _BPFTRACE_LINE

    def command(self) -> list[str]:
        return [self.path, "-B", "line", "-e", BPFTRACE_PROGRAM]


def _scenario(
    name: str,
    victims: list[tuple[PodSandbox, Child]],
    kernel_kills: int,
    log: KernelLog,
    bpf: TracerRun,
    kmsg: TracerRun,
    tools: dict[str, LineTool],
) -> dict[str, Any]:
    by_pid = {child.pid: pod for pod, child in victims}
    killed_at = {
        e["victim_pid"]: log.monotonic(e["ktime_ns"])
        for e in log.events
        if e["event"] == "oom_kill" and e["victim_pid"] in by_pid
    }
    ours = {p.pod_path for p in by_pid.values()} | {p.container_path for p in by_pid.values()}
    reports = sum(1 for e in log.events if e["event"] == "memcg_oom" and e["oom_memcg"] in ours)

    def tool(lines: dict[int, tuple[int, dict[str, Any] | None]]) -> dict[str, Any]:
        seen = [pid for pid in by_pid if pid in lines]
        right = [pid for pid in seen if (lines[pid][1] or {}).get("pod_uid") == by_pid[pid].pod_uid]
        wrong = [
            pid for pid in seen if (lines[pid][1] or {}).get("pod_uid") not in (None, by_pid[pid].pod_uid)
        ]
        later = [ms(lines[pid][0] - killed_at[pid]) for pid in seen if pid in killed_at]
        return {
            "saw": len(seen),
            "attributed_to_the_right_pod": len(right),
            "attributed_to_a_wrong_pod": len(wrong),
            "after_the_kernels_killed_line_ms": distribution(later),
        }

    def from_tracer(run: TracerRun) -> dict[int, tuple[int, dict[str, Any] | None]]:
        out: dict[int, tuple[int, dict[str, Any] | None]] = {}
        for ln in run.events(lambda e: e["event"] == "oom_kill"):
            out.setdefault(ln.event["victim_pid"], (ln.read_ns, ln.event))
        return out

    result = {
        "scenario": name,
        "kills_by_kernel_counters": kernel_kills,
        "killed_lines_in_kernel_log": len(killed_at),
        "reports_in_kernel_log": reports,
        "oomtrace": tool(from_tracer(bpf)),
        "kmsg_reader": tool(from_tracer(kmsg)),
    }
    for key, peer in tools.items():  # they print no cgroup: a kill is seen, never attributed
        if peer.error is None:
            result[key] = tool({pid: (at, None) for pid, at in peer.kills().items()})
        else:
            result[key] = {"saw": None, "error": peer.error}
    return result


def _wait_settled(
    runs: list[TracerRun], tools: list[LineTool], pids: set[int], timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    for run in runs:
        run.wait_for(
            lambda lines: (
                pids <= {ln.event.get("victim_pid") for ln in lines if ln.event["event"] == "oom_kill"}
            ),
            timeout_s=max(0.1, deadline - time.monotonic()),
        )
    for peer in tools:
        if peer.error is None:
            peer.wait_for(pids, timeout_s=max(0.1, deadline - time.monotonic()))


def run(spaced: int = 10, storm: int = 50, storms: int = 4, ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """`storms`: how many storms of `storm` cgroups, their kills pooled into one scenario (one
    storm's 50 kills make a p99 that is its worst kill); `ready_timeout_s`: how long each tool
    may take to compile and attach."""
    scenarios = []
    with (
        KernelLog() as log,
        TracerRun("--interval", "1", ready_timeout_s=ready_timeout_s) as bpf,
        TracerRun("--source", "kmsg", "--interval", "1", ready_timeout_s=ready_timeout_s) as kmsg,
        Zygote() as zygote,
    ):
        bcc = BccOomkill(ready_timeout_s=ready_timeout_s).start()
        floor = BpftraceKills(ready_timeout_s=ready_timeout_s).start()
        tools: dict[str, LineTool] = {"bcc_oomkill": bcc, "bpftrace": floor}
        try:
            say(f"peers: {spaced} OOMs one second apart")
            with Pool(spaced, LIMIT) as pool:
                victims = []
                for pod in pool:
                    victims.append((pod, zygote.wait(zygote.spawn(pod, "peer-spaced", 4 * LIMIT // MIB))))
                    time.sleep(1.0)
                _wait_settled([bpf, kmsg], [*tools.values()], {c.pid for _p, c in victims})
                time.sleep(1.0)
                scenarios.append(_scenario("spaced", victims, pool.kernel_oom_kills(), log, bpf, kmsg, tools))
            victims, kernel_kills, seconds = [], 0, []
            for n in range(storms):
                say(f"peers: 6 quiet seconds (the report rate limit resets), then storm {n + 1}/{storms}")
                with Pool(storm, LIMIT) as pool:
                    time.sleep(6.0)
                    start = time.monotonic()
                    tags = [
                        (pod, zygote.spawn(pod, "peer-storm", 4 * LIMIT // MIB, wait_fork=False))
                        for pod in pool
                    ]
                    these = [(pod, zygote.wait(tag)) for pod, tag in tags]
                    seconds.append(time.monotonic() - start)
                    _wait_settled([bpf, kmsg], [*tools.values()], {c.pid for _p, c in these})
                    time.sleep(1.0)
                    victims += these
                    kernel_kills += pool.kernel_oom_kills()
            row = _scenario("storm", victims, kernel_kills, log, bpf, kmsg, tools)
            row["storms"] = storms
            row["cgroups_per_storm"] = storm
            row["storm_seconds"] = round(statistics.median(seconds), 2)
            scenarios.append(row)
        finally:
            bcc.stop()
            floor.stop()
        log.close()
    return {
        "limit_bytes": LIMIT,
        "printk_offset_drift_us": round(log.drift_ns / 1000, 1),
        "suppressed_report_notes": log.count("callbacks suppressed"),
        "oomtrace_tiers": {r["probe"]: r["tier"] for r in bpf.diagnostics if r.get("msg") == "probe"},
        "bcc_oomkill_error": bcc.error,
        "bcc_oomkill_ready_s": bcc.ready_s,
        "bpftrace_error": floor.error,
        "bpftrace_ready_s": floor.ready_s,
        "bpftrace_program": BPFTRACE_PROGRAM,
        # What the tool really prints, to describe it from evidence: one kill line, verbatim,
        # and the distinct "pages" figures (the OOM domain's size, here LIMIT in pages).
        "bcc_oomkill_sample": next((ln for _t, ln in bcc.lines if _OOMKILL_LINE.search(ln)), None),
        "bcc_oomkill_pages": bcc.pages(),
        "scenarios": scenarios,
    }
