"""bench/cpu_request.py's model of kubelet's CPU shares and its section of docs/benchmarks.md,
rendered from a hand-built record (the storms themselves run in `make bench`, as root)."""

from pathlib import Path
from typing import Any

import pytest

from bench import cpu_request, report


def test_shares_follow_kubelets_formula_with_its_floor_of_two() -> None:
    # pkg/kubelet/cm: shares = milliCPU * 1024 / 1000, never below MinShares = 2.
    assert cpu_request.kubelet_shares(50) == 51
    assert cpu_request.kubelet_shares(1000) == 1024
    assert cpu_request.kubelet_shares(1950) == 1996
    assert cpu_request.kubelet_shares(1) == 2


def test_the_v1_cpu_hierarchy_is_found_among_the_mounts_and_its_absence_is_said(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
    )
    assert cpu_request.cpu_v1_root(mounts) == Path("/sys/fs/cgroup/cpu,cpuacct")
    mounts.write_text("cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n")
    with pytest.raises(RuntimeError, match="cgroup v1 cpu controller"):
        cpu_request.cpu_v1_root(mounts)


def row(millicpu: int | None, p50: float, p99: float) -> dict[str, Any]:
    latency = {"n": 100, "min": 0.5, "p50": p50, "p90": p99, "p99": p99, "max": p99 + 1, "mean": p50}
    return {
        "request_millicpu": millicpu,
        "tracer_shares": None if millicpu is None else cpu_request.kubelet_shares(millicpu),
        "pods_shares": None if millicpu is None else cpu_request.kubelet_shares(2000 - millicpu),
        "storms": 6,
        "storm_seconds": 0.8,
        "kernel_kills": 300,
        "delivered": 300,
        "latency_ms": latency,
        "p99_per_storm_ms": [p99 - 1, p99],
    }


def section() -> dict[str, Any]:
    rows = [row(None, 30.0, 200.0), row(50, 60.0, 400.0), row(1000, 2.0, 20.0)]
    return {"cgroups": 50, "node_millicpu": 2000, "rounds": 3, "storms_per_setting": 2, "rows": rows,
            "lost": {"ringbuf": 0}}  # fmt: skip


def test_each_request_is_a_row_with_its_shares_and_its_p99_against_the_same_runs_baseline() -> None:
    table = [line for line in report._cpu_request(section()) if line.startswith("| ")]
    assert table[1].startswith("| plain host, nice 0 (baseline) | — | 6 | 300 / 300 | 30.0 ms | 200.0 ms |")
    assert table[2] == "| 50m | 51 / 1996 | 6 | 300 / 300 | 60.0 ms | 400.0 ms | 401.0 ms | 2.00 | 399, 400 |"
    assert table[3].startswith("| 1000m | 1024 / 1024 |") and "| 0.10 |" in table[3]


def test_the_summary_names_every_request_and_the_baseline() -> None:
    machine = {"date": "2026-12-08T02:30:38Z", "kernel": "6.18", "cpu": "test CPU", "cpus": 2,
               "memory_bytes": 24 << 30, "virtualization": "kvm", "commit": "abc1234"}  # fmt: skip
    record = {"machine": machine, "tiers": {}, "benchmarks": {"cpu-request": section()}}
    (line,) = [ln for ln in report.summary_table(record).splitlines() if ln.startswith("| 6 |")]
    assert "50m: p50 60.0 ms, p99 400.0 ms; 1000m: p50 2.0 ms, p99 20.0 ms" in line
    assert "plain host, nice 0: p50 30.0 ms, p99 200.0 ms" in line
    text = report.markdown(record)
    assert "## 6. The storm against the tracer's Kubernetes CPU request" in text
    assert "Not run, or failed" not in text.split("## 6.")[1].split("##")[0]
