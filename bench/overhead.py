"""Benchmark 3: what tracing costs the workload, tracer off vs on, interleaved.

Two workloads, each in its own pod-shaped cgroup, measured as page-fault throughput (MiB of
freshly touched anonymous memory per second):
- at the limit, constant reclaim: a 64 MiB cgroup; the process walks a 256 MiB region in
  1 MiB chunks, writing each chunk and then marking it MADV_FREE (lazily freed: reclaimable
  without swap and without I/O), so every fault past the limit charges a page the cgroup does
  not have and the kernel reclaims inside the cgroup — the path oomtrace's near_oom probes sit
  on — thousands of times a second;
- far below the limit: a 256 MiB cgroup; the process maps, touches and unmaps 32 MiB in a loop.

Rounds alternate the order (off-on, on-off, ...) so drift and warm-up cancel; each round's
on/off ratio is one sample. The tracer runs with its defaults (`oomtrace run`), restarted per
"on" half so every sample includes its steady state, not its start-up.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from bench.harness import TracerRun, distribution, say
from bench.workload import MIB
from tracer.cli.sandbox import PodSandbox

WORKER = r"""
import ctypes, json, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
c = ctypes
libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
PROT_RW, PRIVATE_ANON, MADV_FREE, CHUNK = 3, 0x22, 8, 1 << 20
mode, seconds, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) << 20
touched, start = 0, time.monotonic()
end = start + seconds
if mode == "limit":
    base, offset = libc.mmap(None, size, PROT_RW, PRIVATE_ANON, -1, 0), 0
    while time.monotonic() < end:
        for _ in range(16):
            libc.memset(base + offset, 1, CHUNK)
            libc.madvise(base + offset, CHUNK, MADV_FREE)
            offset = (offset + CHUNK) % size
            touched += CHUNK
else:
    while time.monotonic() < end:
        base = libc.mmap(None, size, PROT_RW, PRIVATE_ANON, -1, 0)
        libc.memset(base, 1, size)
        libc.munmap(base, size)
        touched += size
print(json.dumps({"mib_per_s": touched / (time.monotonic() - start) / (1 << 20)}))
"""

WORKLOADS = {"limit": (64 * MIB, 256), "below": (256 * MIB, 32)}  # cgroup limit, region MiB


def _failcnt(pod: PodSandbox) -> int:
    directory = pod.dir(pod.container_path)
    name = "memory.failcnt" if pod.v1 else "memory.events"
    text = (directory / name).read_text()
    if pod.v1:
        return int(text)
    return int(dict(line.split() for line in text.splitlines()).get("max", 0))


def _measure(pod: PodSandbox, mode: str, seconds: float, region_mib: int) -> tuple[float, int]:
    before = _failcnt(pod)
    process = pod.spawn(
        f"ovh-{mode}", 0, command=[sys.executable, "-c", WORKER, mode, str(seconds), str(region_mib)]
    )
    out, _ = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise RuntimeError(f"overhead worker {mode} failed: exit {process.returncode}")
    return float(json.loads(out)["mib_per_s"]), _failcnt(pod) - before


# Student's t, two-sided 95 %, by degrees of freedom (a paired-rounds count stays small).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        12: 2.18, 14: 2.14, 16: 2.12, 18: 2.10, 20: 2.09, 25: 2.06, 30: 2.04}  # fmt: skip


def _ci95(values: list[float]) -> list[float] | None:
    """95 % confidence interval of the mean of paired samples."""
    if len(values) < 2:
        return None
    df = len(values) - 1
    t = _T95.get(df) or _T95[max(k for k in _T95 if k <= df)]
    half = t * statistics.stdev(values) / len(values) ** 0.5
    mean = statistics.fmean(values)
    return [round(mean - half, 2), round(mean + half, 2)]


def run(rounds: int = 8, seconds: float = 4.0) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {m: {"off": [], "on": []} for m in WORKLOADS}
    charge_failures: dict[str, list[float]] = {"off": [], "on": []}
    reclaims_seen: list[float] = []
    with PodSandbox(WORKLOADS["limit"][0]) as at_limit, PodSandbox(WORKLOADS["below"][0]) as below:
        pods = {"limit": at_limit, "below": below}
        for r in range(rounds):
            for state in ("off", "on") if r % 2 == 0 else ("on", "off"):
                say(f"overhead: round {r + 1}/{rounds}, tracer {state}")
                tracer = TracerRun("--interval", "1") if state == "on" else None
                try:
                    time.sleep(1.0)
                    for mode, (_limit, region) in WORKLOADS.items():
                        t0 = time.monotonic_ns()
                        rate, failures = _measure(pods[mode], mode, seconds, region)
                        samples[mode][state].append(rate)
                        if mode == "limit":
                            charge_failures[state].append(failures / seconds)
                            if tracer is not None:
                                time.sleep(1.2)  # one more summary interval
                                calls = sum(
                                    ln.event["reclaim_calls"] or 0
                                    for ln in tracer.events(
                                        lambda e: (
                                            e["event"] == "near_oom"
                                            and e["phase"] == "summary"
                                            and e["memcg"] == at_limit.container_path
                                        )
                                    )
                                    if ln.event["ktime_ns"] >= t0
                                )
                                reclaims_seen.append(calls / seconds)
                finally:
                    if tracer is not None:
                        tracer.stop()
    result: dict[str, Any] = {"rounds": rounds, "seconds_per_sample": seconds, "workloads": {}}
    for mode in WORKLOADS:
        off, on = samples[mode]["off"], samples[mode]["on"]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        result["workloads"][mode] = {
            "cgroup_limit_bytes": WORKLOADS[mode][0],
            "off_mib_per_s": distribution(off, 1),
            "on_mib_per_s": distribution(on, 1),
            "on_over_off": distribution(ratios, 4),
            "slowdown_percent_median": round((1 - statistics.median(ratios)) * 100, 2),
            "slowdown_percent_ci95": _ci95([(1 - r) * 100 for r in ratios]),
            "samples_mib_per_s": {"off": [round(x, 1) for x in off], "on": [round(x, 1) for x in on]},
        }
    result["workloads"]["limit"]["charge_failures_per_s"] = {
        s: distribution(v, 0) for s, v in charge_failures.items()
    }
    result["workloads"]["limit"]["reclaims_traced_per_s"] = distribution(reclaims_seen, 0)
    return result
