"""Benchmark 1: oomtrace's lead over the kernel log, against the physical warning window.

Per OOM, in a fresh pod-shaped cgroup with a 256 MiB container limit:
- first charge failure: the kernel timestamp of the cgroup's first memcg reclaim. On the
  tracepoint tier this is the first near_oom's own ktime (vmscan:mm_vmscan_memcg_reclaim_begin
  fires on the charge failure that starts reclaim), so window start and near_oom coincide by
  construction; what is measured is how long the kernel then takes to the report and the kill,
  and how long the event takes to reach stdout;
- the kernel's report: the printk stamp of its "invoked oom-killer" line, converted to
  CLOCK_MONOTONIC with the printk offset measured before and after;
- the kill: oomtrace's oom_kill ktime (oom:mark_victim, which fires after the report).

Workloads: anonymous memory (nothing to reclaim) prefilled to 224 MiB at full speed, then the
last 32 MiB and beyond at 10, 100 and 1000 MiB/s; and a mixed one that first reads a 200 MiB
file into page cache (reclaimable) and then grows anonymous memory at 100 MiB/s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import KernelLog, TracerRun, distribution, ms, say
from bench.workload import MIB, Zygote, make_cache_file
from tracer.cli.sandbox import PodSandbox

LIMIT = 256 * MIB
CACHE_FILE = Path("/var/tmp/oomtrace-bench/page-cache-200MiB.bin")
WORKLOADS: tuple[dict[str, Any], ...] = (
    {"name": "anon 10 MiB/s", "rate_mibps": 10, "prefill_mib": 224, "cache": False},
    {"name": "anon 100 MiB/s", "rate_mibps": 100, "prefill_mib": 224, "cache": False},
    {"name": "anon 1000 MiB/s", "rate_mibps": 1000, "prefill_mib": 224, "cache": False},
    {"name": "200 MiB page cache, then anon 100 MiB/s", "rate_mibps": 100, "prefill_mib": 0, "cache": True},
)
TARGET_DELIVERY_MS = 10.0


def _one(tracer: TracerRun, log: KernelLog, zygote: Zygote, workload: dict[str, Any]) -> dict[str, Any]:
    with PodSandbox(LIMIT) as pod:
        tag = zygote.spawn(
            pod,
            "lead-alloc",
            LIMIT // MIB * 2,
            rate_mibps=workload["rate_mibps"],
            prefill_mib=workload["prefill_mib"],
            cache_file=CACHE_FILE if workload["cache"] else None,
        )
        child = zygote.wait(tag, timeout_s=120)
        if not child.oom_killed:
            raise RuntimeError(f"{workload['name']}: the allocator was not OOM-killed ({child})")
        path = pod.container_path

        def ours(lines: list[Any]) -> bool:
            kinds = {
                (ln.event["event"], ln.event.get("phase"))
                for ln in lines
                if _about(ln.event, path, child.pid)
            }
            return {("near_oom", "first"), ("oom_kill", None)} <= kinds

        tracer.wait_for(ours, timeout_s=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _report(log, path, child.pid)[0]:
            time.sleep(0.05)
    near = min(
        (ln for ln in tracer.events(lambda e: _about(e, path, child.pid)) if ln.event["event"] == "near_oom"
         and ln.event["phase"] == "first"),
        key=lambda ln: ln.event["ktime_ns"],
    )  # fmt: skip
    (kill,) = [
        ln for ln in tracer.events(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == child.pid)
    ]
    invoked_printk, killed_printk = _report(log, path, child.pid)
    first_cf = near.event["ktime_ns"]
    row: dict[str, Any] = {
        "workload": workload["name"],
        "near_oom_delivery_ms": ms(near.read_ns - first_cf),
        "window_to_kill_ms": ms(kill.event["ktime_ns"] - first_cf),
        "oom_kill_delivery_ms": ms(kill.read_ns - kill.event["ktime_ns"]),
        "report_printed": invoked_printk is not None,
    }
    if invoked_printk is not None:
        invoked = log.monotonic(invoked_printk)
        row.update(
            window_to_report_ms=ms(invoked - first_cf),
            near_oom_lead_ms=ms(invoked - first_cf),  # kernel time of our event before the report
            near_oom_on_stdout_before_report_ms=ms(invoked - near.read_ns),
            oom_kill_after_report_ms=ms(kill.event["ktime_ns"] - invoked),
        )
    if killed_printk is not None:
        row["oom_kill_vs_killed_line_ms"] = ms(kill.event["ktime_ns"] - log.monotonic(killed_printk))
    return row


def _about(event: dict[str, Any], path: str, pid: int) -> bool:
    return event.get("memcg") == path or event.get("victim_pid") == pid


def _report(log: KernelLog, path: str, pid: int) -> tuple[int | None, int | None]:
    """printk stamps of this OOM's "invoked oom-killer" line and its "Killed process" line."""
    invoked = next(
        (e["ktime_ns"] for e in log.events if e["event"] == "memcg_oom" and e["oom_memcg"] == path), None
    )
    killed = next(
        (e["ktime_ns"] for e in log.events if e["event"] == "oom_kill" and e["victim_pid"] == pid), None
    )
    return invoked, killed


def run(reps: int = 5) -> dict[str, Any]:
    make_cache_file(CACHE_FILE, 200)
    rows: list[dict[str, Any]] = []
    with TracerRun("--interval", "1") as tracer, KernelLog() as log, Zygote() as zygote:
        startup = tracer.startup_s
        for workload in WORKLOADS:
            for i in range(reps):
                say(f"lead: {workload['name']} #{i + 1}")
                rows.append(_one(tracer, log, zygote, workload))
                time.sleep(0.6)  # stay inside the kernel's report burst (10 per 5 s)
        lost = tracer.lost()
        log.close()
    result: dict[str, Any] = {
        "limit_bytes": LIMIT,
        "reps": reps,
        "printk_offset_ns": log.offsets_ns,
        "printk_offset_drift_us": round(log.drift_ns / 1000, 1),
        "tracer_startup_s": round(startup, 2),
        "lost": lost,
        "memcg_oom": "unavailable on this kernel (tracepoint tier): no tracepoint fires before the report; "
        "fentry/kprobe numbers: docs/kernel-matrix.md",
        "rows": rows,
        "by_workload": {},
    }
    for workload in WORKLOADS:
        mine = [r for r in rows if r["workload"] == workload["name"]]
        printed = [r for r in mine if r["report_printed"]]
        result["by_workload"][workload["name"]] = {
            "ooms": len(mine),
            "reports_printed": len(printed),
            "window_to_report_ms": distribution(r["window_to_report_ms"] for r in printed),
            "window_to_kill_ms": distribution(r["window_to_kill_ms"] for r in mine),
            "near_oom_lead_ms": distribution(r["near_oom_lead_ms"] for r in printed),
            "near_oom_delivery_ms": distribution(r["near_oom_delivery_ms"] for r in mine),
            "near_oom_within_10ms": sum(r["near_oom_delivery_ms"] <= TARGET_DELIVERY_MS for r in mine),
            "near_oom_on_stdout_before_report_ms": distribution(
                r["near_oom_on_stdout_before_report_ms"] for r in printed
            ),
            "near_oom_on_stdout_before_report": sum(
                r["near_oom_on_stdout_before_report_ms"] > 0 for r in printed
            ),
            "oom_kill_after_report_ms": distribution(r["oom_kill_after_report_ms"] for r in printed),
            "oom_kill_delivery_ms": distribution(r["oom_kill_delivery_ms"] for r in mine),
        }
    return result
