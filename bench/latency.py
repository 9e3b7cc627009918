"""Benchmark 2: delivery latency, kernel timestamp → JSON line read from stdout, at OOM-kill rates.

Kills come from allocators forked into 100 small pod-shaped cgroups (8 MiB limit, each child
touching up to 32 MiB), round robin, paced at the target rate with at most 4 allocators alive
at once. The kernel serializes memcg OOMs on its global oom_lock, and each allocator is a fork
plus a cgroup migration, so a target it cannot reach runs at the highest rate it can (reported
as achieved); more allocators waiting at once do not raise that rate, they only add runnable
tasks spinning in reclaim. That is the other half of the measurement: the same 100/s with 16
allocators alive, the CPU saturated by OOMing tasks, with the tracer at the default priority
and at nice -10.

Latency per oom_kill event: the harness's CLOCK_MONOTONIC when it read the line minus the
event's ktime_ns (the BPF clock, CLOCK_MONOTONIC too). Achieved rate: kills / time between the
first and the last kill's ktime. Delivered events are checked against the kernel's own
per-cgroup oom_kill counters.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.harness import ProcessUsage, TracerRun, distribution, ms, say
from bench.workload import MIB, Pool, Zygote

CGROUPS = 100
LIMIT = 8 * MIB
# (asked kills/s, seconds, allocators alive at most, tracer's nice value)
RUNS: tuple[tuple[int, float, int, int], ...] = (
    (1, 20.0, 4, 0),
    (100, 10.0, 4, 0),
    (1000, 5.0, 4, 0),
    (100, 10.0, 16, 0),
    (100, 10.0, 16, -10),
)


def _drive(zygotes: list[Zygote], pool: Pool, rate: int, seconds: float, in_flight: int, comm: str) -> int:
    n = max(1, int(rate * seconds))
    start = time.monotonic()
    for i in range(n):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        while sum(z.in_flight for z in zygotes) >= in_flight:
            time.sleep(0.0005)
        zygotes[i % len(zygotes)].spawn(
            pool.sandboxes[i % len(pool)], comm, 4 * LIMIT // MIB, wait_fork=False
        )
    return n


def _renice(pid: int, nice: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def run(scale: float = 1.0) -> dict[str, Any]:
    rows = []
    with Pool(CGROUPS, LIMIT) as pool, TracerRun("--interval", "1") as tracer:
        containers = set(pool.by_container())
        zygotes = [Zygote(), Zygote()]
        try:
            for n, (rate, seconds, in_flight, nice) in enumerate(RUNS):
                seconds = max(2.0, seconds * scale)
                comm = f"lat-{n}"
                _renice(tracer.process.pid, nice)
                before_kernel = pool.kernel_oom_kills()
                usage0, t0 = tracer.usage(), time.monotonic()
                say(f"latency: {rate} kills/s for {seconds:.0f} s, {in_flight} allocators alive, nice {nice}")
                asked = _drive(zygotes, pool, rate, seconds, in_flight, comm)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and sum(z.in_flight for z in zygotes):
                    time.sleep(0.05)
                kernel = pool.kernel_oom_kills() - before_kernel

                def arrived(lines: list[Any], comm: str = comm, kernel: int = kernel) -> bool:
                    return sum(1 for ln in lines if ln.event.get("victim_comm") == comm) >= kernel

                tracer.wait_for(arrived, timeout_s=20)
                usage1, t1 = tracer.usage(), time.monotonic()
                kills = [
                    ln
                    for ln in tracer.events(
                        lambda e, comm=comm: e["event"] == "oom_kill" and e["victim_comm"] == comm
                    )
                    if ln.event["task_memcg"] in containers
                ]
                stamps = sorted(ln.event["ktime_ns"] for ln in kills)
                span_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
                rows.append(
                    {
                        "target_kills_per_s": rate,
                        "seconds": seconds,
                        "allocators_in_flight_max": in_flight,
                        "tracer_nice": nice,
                        "allocators": asked,
                        "kernel_kills": kernel,
                        "delivered": len(kills),
                        "achieved_kills_per_s": round((len(stamps) - 1) / span_s, 1) if span_s else None,
                        "latency_ms": distribution(ms(ln.read_ns - ln.event["ktime_ns"]) for ln in kills),
                        "tracer_cpu_percent_of_one_core": round(
                            100 * (usage1.cpu_s - usage0.cpu_s) / (t1 - t0), 1
                        ),
                        "tracer_rss_bytes": usage1.rss_bytes,
                    }
                )
                _renice(tracer.process.pid, 0)
                time.sleep(1.5)
            lost = tracer.lost()
            rss = ProcessUsage.of(tracer.process.pid)
        finally:
            for z in zygotes:
                z.close()
    return {
        "cgroups": CGROUPS,
        "limit_bytes": LIMIT,
        "rows": rows,
        "lost": lost,
        "tracer_rss_end_bytes": rss.rss_bytes,
        "tracer_rss_peak_bytes": rss.hwm_bytes,
        "tracer_startup_s": round(tracer.startup_s, 2),
    }
