"""Benchmark 6: the kill line in an OOM storm against the tracer's Kubernetes CPU request.

In Kubernetes a nice value orders only the threads of one container; between pods the CPU is
shared by the cpu controller's weights, which kubelet derives from each pod's CPU request
(cgroup v1 cpu.shares = milliCPU * 1024 / 1000, at least 2; v2's cpu.weight is the same ratio
rescaled). No kubelet runs here, so its arithmetic is modelled with the cpu controller itself:
two sibling cpu cgroups, one holding the tracer with the shares of its request, the other
holding every OOMing pod with the shares of the rest of the node's CPUs. That is the worst a
scheduler that never over-commits requests allows: every other pod busy at once and together
asking for all the CPU the tracer does not. (Whether the pods share their group's weight among
themselves does not change what the tracer gets.)

The storm is section 2's (bench.latency.storm: 50 pod cgroups OOMing at once). Each request is
run against the same-run baseline, the plain host at nice 0 with no cpu cgroups, interleaved
over rounds, and its kills pooled. Needs the cgroup v1 cpu controller (as here): on a cgroup v2
host the pods' memory cgroups would have to be created under the cpu group instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import TracerRun, say
from bench.latency import STORM_CGROUPS, pooled, storm
from bench.workload import Zygote
from tracer.cli.sandbox import remove_cgroup

REQUESTS_MILLICPU = (50, 250, 1000)  # 50m: deploy/daemonset.yaml's request
ROUNDS = 3
STORMS_PER_SETTING = 2
GROUP = "oomtrace-bench-cpu"


def kubelet_shares(millicpu: int) -> int:
    """cgroup v1 cpu.shares kubelet writes for a CPU request (pkg/kubelet/cm MilliCPUToShares)."""
    return max(2, millicpu * 1024 // 1000)


def cpu_v1_root(mounts: Path = Path("/proc/mounts")) -> Path:
    for line in mounts.read_text().splitlines():
        _dev, where, fstype, options, *_ = line.split()
        if fstype == "cgroup" and "cpu" in options.split(","):
            return Path(where)
    raise RuntimeError("needs the cgroup v1 cpu controller (none is mounted here)")


class CpuGroups:
    """`tracer` and `pods` as sibling cpu cgroups under GROUP; removed on exit, every process moved
    back to the root first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / GROUP
        self.moved: list[int] = []

    def __enter__(self) -> CpuGroups:
        for name in ("tracer", "pods"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        return self

    def shares(self, tracer: int, pods: int) -> None:
        (self.base / "tracer" / "cpu.shares").write_text(str(tracer))
        (self.base / "pods" / "cpu.shares").write_text(str(pods))

    def move(self, pid: int, name: str) -> None:
        # A v1 write to cgroup.procs moves every thread of the process; children forked later
        # (the zygote's allocators) start in it.
        (self.base / name / "cgroup.procs").write_text(str(pid))
        self.moved.append(pid)

    def release(self) -> None:
        for pid in self.moved:
            with contextlib.suppress(ProcessLookupError, OSError):
                (self.root / "cgroup.procs").write_text(str(pid))
        self.moved.clear()

    def __exit__(self, *_exc: object) -> None:
        self.release()  # the tracer and the zygote back to the root: what is left are allocators
        for name in ("tracer", "pods", ""):
            remove_cgroup(self.base / name)


@contextlib.contextmanager
def _setting(
    groups: CpuGroups, tracer: TracerRun, zygote: Zygote, millicpu: int | None, node: int
) -> Iterator[None]:
    """None: the baseline, both in the root cpu cgroup. Otherwise the tracer with `millicpu`
    requested and the pods with the rest of the `node` milliCPU."""
    if millicpu is None:
        groups.release()
        yield
        return
    groups.shares(kubelet_shares(millicpu), kubelet_shares(node - millicpu))
    groups.move(tracer.process.pid, "tracer")
    groups.move(zygote.pid, "pods")
    try:
        yield
    finally:
        groups.release()


def run(rounds: int = ROUNDS) -> dict[str, Any]:
    settings: list[int | None] = [None, *REQUESTS_MILLICPU]
    storms: dict[int | None, list[dict[str, Any]]] = {s: [] for s in settings}
    node = (os.cpu_count() or 1) * 1000
    with CpuGroups(cpu_v1_root()) as groups, TracerRun("--interval", "1") as tracer:
        zygote = Zygote()
        try:
            for rnd in range(rounds):
                for setting in settings if rnd % 2 == 0 else reversed(settings):
                    what = "plain host, nice 0" if setting is None else f"request {setting}m"
                    with _setting(groups, tracer, zygote, setting, node):
                        for n in range(STORMS_PER_SETTING):
                            say(f"cpu-request: round {rnd + 1}/{rounds}, {what}, storm {n + 1}")
                            storms[setting].append(storm(tracer, zygote, 0))
                            time.sleep(1.0)
            lost = tracer.lost()
        finally:
            zygote.close()
    rows = []
    for setting, runs in storms.items():
        rows.append(
            {
                "request_millicpu": setting,
                "tracer_shares": None if setting is None else kubelet_shares(setting),
                "pods_shares": None if setting is None else kubelet_shares(node - setting),
                **pooled(runs),
            }
        )
    return {
        "cgroups": STORM_CGROUPS,
        "node_millicpu": node,
        "rounds": rounds,
        "storms_per_setting": STORMS_PER_SETTING,
        "rows": rows,
        "lost": lost,
    }
