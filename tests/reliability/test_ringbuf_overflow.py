"""Ring-buffer overflow: a stalled consumer loses events, and says exactly how many.

The tracer runs with a one-page ring buffer (the hidden --ringbuf-pages flag: 4096 bytes, 21
records of 192 bytes) and is frozen with SIGSTOP while 40 cgroups OOM. The kernel's programs
cannot reserve space for what does not fit and count each failure in the per-CPU `lost`
array; after SIGCONT the tracer exports that as
oomtrace_events_lost_total{reason="ringbuf_full"}.

What was produced is known without the tracer: every cgroup had already OOMed once before
the stall, so with --near-oom-quiet 600 none of them sends another near_oom record, and the
only records the programs make in the window are one per OOM kill, which the kernel counts
in /proc/vmstat (`oom_kill`, host-wide). So lost == kills in the window - kill records
delivered from the window, exactly. (Another test OOMing cgroups on this host during the
10-second window would add records of its own: run this suite alone, as CI does.)
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from bench.workload import MIB, Pool, Zygote, host_oom_kills
from tests.kernel.conftest import Tracer
from tests.reliability.conftest import http_status, lost

pytestmark = pytest.mark.kernel

CGROUPS = 40
LIMIT = 16 * MIB
RECORDS_PER_PAGE = 4096 // 192
WARM_BATCH = 5  # cgroups OOMed at once while warming up: 10 records, under RECORDS_PER_PAGE


def _kills(tracer: Tracer, comm: str) -> list[dict[str, Any]]:
    return [e for e in list(tracer.events) if e["event"] == "oom_kill" and e["victim_comm"] == comm]


def _wait(predicate: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.1)


def test_a_stalled_consumer_loses_exactly_what_the_lost_counter_says_and_recovers_without_restart(
    kernel_host: None, zygote: Zygote
) -> None:
    tracer = Tracer("--ringbuf-pages", "1", "--near-oom-quiet", "600", "--interval", "0.2")
    pid = tracer.process.pid
    try:
        with Pool(CGROUPS, LIMIT) as pool:
            containers = set(pool.by_container())
            # Warm-up: each cgroup's near_oom "first" record goes out now, not in the window. In
            # batches small enough (2 records per cgroup) that the one-page buffer never fills,
            # however slowly a loaded machine lets the tracer read.
            sandboxes = list(pool)
            for first in range(0, CGROUPS, WARM_BATCH):
                warm = [zygote.spawn(s, "ovf-warm", 64) for s in sandboxes[first : first + WARM_BATCH]]
                assert all(zygote.wait(t).oom_killed for t in warm)
                done = min(first + WARM_BATCH, CGROUPS)
                _wait(
                    lambda done=done: (
                        len([e for e in _kills(tracer, "ovf-warm") if e["task_memcg"] in containers]) == done
                    ),
                    "every warm-up kill delivered",
                )
            assert lost(tracer.metrics_port)["ringbuf_full"] == 0

            tracer.process.send_signal(signal.SIGSTOP)
            try:
                start_ns, kills_before = time.monotonic_ns(), host_oom_kills()
                stalled = [zygote.spawn(s, "ovf-stalled", 64) for s in pool]
                assert all(zygote.wait(t).oom_killed for t in stalled)
                produced, end_ns = host_oom_kills() - kills_before, time.monotonic_ns()
            finally:
                tracer.process.send_signal(signal.SIGCONT)

            assert produced >= CGROUPS > RECORDS_PER_PAGE  # more than the buffer holds
            # Delivered records drain at once; the lost count is read on the next interval.
            _wait(lambda: lost(tracer.metrics_port)["ringbuf_full"] > 0, "losses exported")
            time.sleep(0.6)
            window = [
                e
                for e in list(tracer.events)
                if start_ns <= e["ktime_ns"] <= end_ns
                and not (e["event"] == "near_oom" and e["phase"] == "summary")
            ]
            dropped = lost(tracer.metrics_port)["ringbuf_full"]
            assert {e["event"] for e in window} == {"oom_kill"}
            assert 0 < len(window) <= RECORDS_PER_PAGE
            assert dropped == produced - len(window)

            # Recovery, same process: new OOMs arrive whole and nothing more is lost.
            after = [zygote.spawn(s, "ovf-after", 64) for s in pool.sandboxes[:5]]
            assert all(zygote.wait(t).oom_killed for t in after)
            _wait(lambda: len(_kills(tracer, "ovf-after")) == 5, "kills after the stall delivered")
            assert lost(tracer.metrics_port)["ringbuf_full"] == dropped
            assert http_status(tracer.metrics_port, "/healthz") == 200
            assert tracer.process.pid == pid and tracer.process.poll() is None
    finally:
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)
