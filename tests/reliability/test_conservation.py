"""Conservation soak: every OOM kill the kernel counts in our cgroups is exactly one oom_kill event.

N real OOMs (N >= 200 in CI; --soak-n / OOMTRACE_SOAK_N for more) across 50 pod-shaped cgroups:
both kubelet drivers, container- and pod-level limits; half one after the other, half in waves
of up to 50 cgroups OOMing at once. The truth is the kernel's own per-cgroup counter (v1
memory.oom_control `oom_kill`, v2 memory.events.local), read after the storm. Loki is down
during the first half and back for the second (the sink outage of the consumers issue, re-run
under the soak): stdout loses nothing meanwhile and Loki gets every kill once it is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.workload import MIB, Child, Pool, Zygote
from tests.fake_loki import FakeLoki
from tests.kernel.conftest import Tracer
from tests.reliability.conftest import lost
from tracer.cli.sandbox import PodSandbox

pytestmark = pytest.mark.kernel

CGROUPS = 50
LIMIT = 16 * MIB
WAVE = 50


@dataclass
class Soak:
    tracer: Tracer
    pool: Pool
    loki: FakeLoki
    children: list[tuple[PodSandbox, Child]] = field(default_factory=list)
    kernel_kills: int = 0
    lost: dict[str, float] = field(default_factory=dict)
    ours: list[dict[str, Any]] = field(default_factory=list)  # our cgroups' oom_kill events, stdout


def _pool() -> Pool:
    pool = Pool(CGROUPS, LIMIT)
    # Vary the shapes the kernel and the tags see: cgroupfs driver, pod-level limits.
    for i in range(len(pool.sandboxes)):
        if i % 10 == 8:
            pool.sandboxes[i] = PodSandbox(LIMIT, driver="cgroupfs")
        elif i % 10 == 9:
            pool.sandboxes[i] = PodSandbox(LIMIT, limit_at="pod")
    return pool


def _ours(tracer: Tracer, containers: set[str]) -> list[dict[str, Any]]:
    return [e for e in list(tracer.events) if e["event"] == "oom_kill" and e["task_memcg"] in containers]


@pytest.fixture(scope="module")
def soak(kernel_host: None, zygote: Zygote, soak_n: int) -> Iterator[Soak]:
    loki = FakeLoki()
    loki.down()  # the outage: connection refused from the start
    tracer = Tracer("--interval", "0.5", "--loki-url", loki.url, "--loki-batch-wait", "0.2")
    try:
        with _pool() as pool:
            run = Soak(tracer, pool, loki)
            sandboxes = pool.sandboxes
            sequential = soak_n // 2
            for i in range(sequential):
                sandbox = sandboxes[i % len(sandboxes)]
                tag = zygote.spawn(sandbox, "soak-seq", 4 * LIMIT // MIB)
                run.children.append((sandbox, zygote.wait(tag)))
            loki.up()
            done = sequential
            while done < soak_n:
                wave = sandboxes[: min(WAVE, soak_n - done)]
                tags = [(s, zygote.spawn(s, "soak-wave", 4 * LIMIT // MIB, wait_fork=False)) for s in wave]
                run.children += [(s, zygote.wait(tag)) for s, tag in tags]
                done += len(wave)
            run.kernel_kills = pool.kernel_oom_kills()
            containers = set(pool.by_container())
            deadline = time.monotonic() + 20
            while len(_ours(tracer, containers)) < run.kernel_kills and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # a duplicate would have arrived by now; one more interval of counters
            run.lost = lost(tracer.metrics_port)
            run.ours = _ours(tracer, containers)
            yield run
    finally:
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)
        loki.close()


def test_the_kernel_killed_every_allocator_of_the_soak(soak: Soak, soak_n: int) -> None:
    assert len(soak.children) == soak_n
    assert [c.signal for _s, c in soak.children] == [9] * soak_n
    assert soak.kernel_kills == soak_n


def test_oom_kill_events_equal_the_kernels_oom_kill_counters_of_our_cgroups(soak: Soak) -> None:
    assert len(soak.ours) == soak.kernel_kills


def test_each_victim_is_reported_once_with_its_own_pod_and_container(soak: Soak) -> None:
    by_pid = {child.pid: sandbox for sandbox, child in soak.children}
    pids = [e["victim_pid"] for e in soak.ours]
    assert sorted(pids) == sorted(by_pid)  # none missing, none twice, none foreign
    wrong = [
        (e["victim_pid"], e["pod_uid"], e["container_id"])
        for e in soak.ours
        if (e["pod_uid"], e["container_id"], e["task_memcg"])
        != (by_pid[e["victim_pid"]].pod_uid, by_pid[e["victim_pid"]].container_id,
            by_pid[e["victim_pid"]].container_path)
    ]  # fmt: skip
    assert wrong == []
    assert {e["victim_comm"] for e in soak.ours} == {"soak-seq", "soak-wave"}


def test_nothing_is_lost_or_undecodable_during_the_soak(soak: Soak) -> None:
    assert soak.lost == {"ringbuf_full": 0, "map_full": 0, "decode_error": 0, "kmsg_overwritten": 0}


def test_a_loki_outage_during_the_soak_costs_loki_no_event_once_it_is_back(soak: Soak) -> None:
    # The tracer is still running (module fixture): its sink catches up on its own.
    pids = {e["victim_pid"] for e in soak.ours}

    def kills(loki: FakeLoki) -> list[dict[str, Any]]:
        return [
            e.event for e in loki.entries if e.event["event"] == "oom_kill" and e.event["victim_pid"] in pids
        ]

    soak.loki.wait(lambda loki: {e["victim_pid"] for e in kills(loki)} == pids, timeout_s=30)
    in_loki = kills(soak.loki)
    assert sorted(e["victim_pid"] for e in in_loki) == sorted(pids)
    assert {e["victim_pid"]: e for e in in_loki} == {e["victim_pid"]: e for e in soak.ours}
