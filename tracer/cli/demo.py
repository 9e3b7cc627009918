"""`oomtrace demo`: a real OOM in a throwaway pod-shaped cgroup, traced live.

Starts `oomtrace run` as a child, ramps an allocator past the cgroup's limit, prints the
events about that cgroup as they arrive (stdout, JSON lines) and a short account of the
sequence on stderr, then removes the cgroup.
"""

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from tracer.cli.run import require_root, run_config
from tracer.cli.sandbox import PodSandbox
from tracer.daemon import RunConfig
from tracer.errors import UsageError


def command(args: argparse.Namespace) -> int:
    require_root()
    if not 16 <= args.limit_mib <= 512:
        raise UsageError("--limit-mib must be between 16 and 512")
    return run_demo(run_config(args, duration=60.0), args.limit_mib)




def _child_args(config: RunConfig) -> list[str]:
    args = [
        sys.executable, "-m", "tracer", "run",
        "--metrics-address", "none",
        "--interval", str(config.interval_s),
        "--near-oom-quiet", str(config.near_oom_quiet_s),
        "--cgroup-root", str(config.cgroup_root),
        "--headers-cache", str(config.headers_cache),
        "--node-name", config.node,
    ]  # fmt: skip
    return args + (["--no-btf"] if not config.use_btf else [])


def _pump(stream: Any, into: "queue.Queue[str | None]") -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def run_demo(config: RunConfig, limit_mib: int) -> int:
    say = sys.stderr.write
    child = subprocess.Popen(_child_args(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    diagnostics: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
    threading.Thread(target=_pump, args=(child.stderr, diagnostics), daemon=True).start()
    try:
        if not _wait_ready(diagnostics, say):
            say("demo: the tracer did not start\n")
            return 1
        with PodSandbox(limit_bytes=limit_mib << 20, parent="oomtrace-demo") as pod:
            say(f"demo: pod cgroup {pod.container_path}\n")
            say(f"demo: limit {limit_mib} MiB; allocating 1 MiB steps until the kernel kills the allocator\n")
            started = time.monotonic()
            allocator = pod.spawn("demo-allocator", total_mib=4 * limit_mib, step_s=0.002)
            allocator.wait(timeout=120)
            seen = _show_events(lines, pod, allocator.pid, deadline=time.monotonic() + 5)
        _account(seen, allocator.pid, started, say)
        return 0 if any(e["event"] == "oom_kill" for e in seen) else 1
    finally:
        child.terminate()
        child.wait(timeout=30)


def _wait_ready(diagnostics: "queue.Queue[str | None]", say: Any) -> bool:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            line = diagnostics.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            return False
        record = json.loads(line) if line.startswith("{") else {"msg": line.strip()}
        if record.get("msg") == "probe":
            say(f"demo: probe {record['probe']:<15} tier {record['tier']}\n")
        elif record.get("level") in ("warning", "error"):
            say(f"demo: {record.get('msg')}\n")
        if record.get("msg") == "tracing":
            return True
    return False


def _show_events(
    lines: "queue.Queue[str | None]", pod: PodSandbox, pid: int, deadline: float
) -> list[dict[str, Any]]:
    """Prints the events about the demo pod until its kill and a near_oom summary have arrived."""
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        event = json.loads(line)
        if event.get("pod_uid") != pod.pod_uid and event.get("victim_pid") != pid:
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
        seen.append(event)
        kinds = {(e["event"], e.get("phase")) for e in seen}
        if ("oom_kill", None) in kinds and ("near_oom", "summary") in kinds:
            break
    return seen


def _account(seen: list[dict[str, Any]], pid: int, started: float, say: Any) -> None:
    first_ns = min((e["ktime_ns"] for e in seen), default=None)
    for event in seen:
        offset_ms = (event["ktime_ns"] - first_ns) / 1e6 if first_ns is not None else 0.0
        what = event["event"] + (f" ({event['phase']})" if event.get("phase") else "")
        say(f"demo: +{offset_ms:8.2f} ms  {what}\n")
    if not any(e["event"] == "oom_kill" and e["victim_pid"] == pid for e in seen):
        say(f"demo: no oom_kill event for pid {pid} (after {time.monotonic() - started:.1f}s)\n")
