"""What decides how fast a kill's line is delivered, and how the benchmark measures it: the
daemon drains the ring buffer between near_oom summaries; the latency benchmark's line stamper,
its console switch and its report."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bench import harness, report
from bench import pipeline as pipeline_bench
from tests.unit.conftest import full_kernel_features
from tracer import decode
from tracer.decode import Decoder, NearOomStats
from tracer.kernel.tiers import plan
from tracer.resolve.lineage import Lineage
from tracer.sinks.metrics import Metrics
from tracer.sources.bpf import BpfConfig, BpfSource


class _RecordingTracer:
    """A tracer.sources.bpf.Tracer with near_oom stats for many cgroups, and a log of when the
    source drained the ring buffer relative to what it published."""

    def __init__(self, log: list[str], cgroups: int) -> None:
        self.log = log
        self.plan = plan(full_kernel_features(frozenset({"pid", "comm", "anon_rss", "uid"})))
        self.stats = {
            1000 + n: NearOomStats(reclaim_calls=5, reclaim_ns=10, reclaimed_pages=1, charge_failures=2)
            for n in range(cgroups)
        }

    def poll(self, timeout_ms: int) -> None:
        pass

    def near_oom_stats(self) -> dict[int, NearOomStats]:
        return self.stats

    def consume(self) -> None:
        self.log.append("consume")

    def forget_near_oom(self, memcg_ids: list[int]) -> None:
        pass

    def lost(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def test_the_ring_buffer_is_drained_before_every_near_oom_summary(tmp_path: Path) -> None:
    log: list[str] = []
    config = BpfConfig(
        tmp_path,
        tmp_path,
        use_btf=True,
        headers_cache=tmp_path,
        near_oom_quiet_s=10,
        interval_s=1,
        ringbuf_pages=64,
    )
    metrics = Metrics(CollectorRegistry(), kernel="test")
    source = BpfSource(config, lambda event: log.append(event["phase"]), metrics, log=None)
    source.use(_RecordingTracer(log, cgroups=50), Decoder(4096, {}), memcg_known=True)
    source.every_interval()
    assert log.count("summary") == 50
    # A kill waiting in the ring buffer is never behind more than the summary being written.
    assert log == ["consume", "summary"] * 50


def test_a_kill_drained_amid_the_summaries_is_flushed_before_the_next_summary(tmp_path: Path) -> None:
    log: list[str] = []
    config = BpfConfig(tmp_path, tmp_path, True, tmp_path, near_oom_quiet_s=10, interval_s=1, ringbuf_pages=8)
    source = BpfSource(
        config,
        lambda event: log.append(event["event"]),
        Metrics(CollectorRegistry(), kernel="test"),
        log=None,
        flush=lambda: log.append("flush"),
    )
    tracer = _RecordingTracer(log, cgroups=3)
    kills = [pipeline_bench.record(1000, 4242, 1)]  # one kill waits in the ring buffer

    def consume() -> None:
        log.append("consume")
        while kills:
            source.on_record(kills.pop())

    tracer.consume = consume  # type: ignore[method-assign]
    source.use(tracer, Decoder(4096, {}), memcg_known=True)
    source.every_interval()
    assert log == ["consume", "oom_kill", "flush", "near_oom", "consume", "near_oom", "consume", "near_oom"]


def _near_oom_record(memcg_id: int, ktime_ns: int) -> bytes:
    raw = decode.OomtraceEvent(kind=1, tier=3, ktime_ns=ktime_ns, known=decode.KNOWN_MEMCG)
    raw.memcg_id = memcg_id
    return bytes(raw)


def _polling(
    tmp_path: Path, log: list[str], batch: list[bytes], later: list[bytes], lineage: Lineage | None = None
) -> BpfSource:
    """A source whose one poll hands over `batch`; its first consume() after that, `later`. Logs
    each published event as kind:ktime_ns, each flush and each consume."""
    config = BpfConfig(tmp_path, tmp_path, True, tmp_path, near_oom_quiet_s=10, interval_s=1, ringbuf_pages=8)
    source = BpfSource(
        config,
        lambda event: log.append(f"{event['event']}:{event['ktime_ns']}"),
        Metrics(CollectorRegistry(), kernel="test"),
        log=None,
        flush=lambda: log.append("flush"),
        overtakes=lineage.overtakes if lineage is not None else None,
    )
    tracer = _RecordingTracer(log, cgroups=0)

    def poll(_timeout_ms: int) -> None:
        for data in batch:
            source.on_record(data)

    def consume() -> None:
        log.append("consume")
        while later:
            source.on_record(later.pop(0))

    tracer.poll = poll  # type: ignore[method-assign]
    tracer.consume = consume  # type: ignore[method-assign]
    source.use(tracer, Decoder(4096, {}), memcg_known=True)
    return source


def test_each_kill_of_a_batch_is_written_out_at_once_in_the_kernel_s_order(tmp_path: Path) -> None:
    # In a storm one poll hands over kills and each new cgroup's first near_oom together; a kill
    # line held until the whole batch was processed, for one write, was the storm's tail. The
    # lines stay in the kernel's order (the VM matrix checks near_oom, memcg_oom, oom_kill).
    log: list[str] = []
    batch = [_near_oom_record(1000, 1), pipeline_bench.record(1000, 4242, 2), _near_oom_record(1001, 3)]
    batch += [pipeline_bench.record(1001, 4243, 4), _near_oom_record(1002, 5)]
    _polling(tmp_path, log, batch, later=[]).poll(100)
    assert log == ["near_oom:1", "oom_kill:2", "flush", "near_oom:3", "oom_kill:4", "flush", "near_oom:5"]


# Storm-shaped paths: ids 1000+ are containers of their own pods; 2000 and 2001 are two
# containers of one pod; 3000 is that pod, where its limit is.
_PATHS = {
    **{1000 + n: f"/kubepods/burstable/pod{n}/ctr{n}" for n in range(10)},
    2000: "/kubepods/burstable/podvm/ctr-a",
    2001: "/kubepods/burstable/podvm/ctr-b",
    3000: "/kubepods/burstable/podvm",
}


def test_a_kill_overtakes_only_the_near_ooms_of_cgroups_it_cannot_be_part_of(tmp_path: Path) -> None:
    log: list[str] = []
    batch = [
        _near_oom_record(1001, 1),  # another pod: overtaken
        _near_oom_record(3000, 2),  # the kill's pod, at its limit: stays before it
        _near_oom_record(2001, 3),  # the other container of the kill's pod: stays before it
        _near_oom_record(9999, 4),  # a cgroup whose path is unknown: stays before it
        _near_oom_record(1002, 5),  # another pod: overtaken
        pipeline_bench.record(2000, 4242, 6),
    ]
    arriving_later = [pipeline_bench.record(1002, 4243, 7)]  # while the first waiting near_oom goes out
    _polling(tmp_path, log, batch, arriving_later, Lineage(_PATHS.get)).poll(100)
    assert log == [
        "near_oom:2", "near_oom:3", "near_oom:4", "oom_kill:6", "flush",
        "near_oom:1", "consume",
        "near_oom:5", "oom_kill:7", "flush",  # its own cgroup's near_oom goes first
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("near", "oom", "overtakes"),
    [
        (1001, 1002, True),  # two pods
        (1001, 1001, False),  # one cgroup
        (3000, 2000, False),  # the pod above the container
        (2000, 3000, False),  # the container below the pod
        (2001, 2000, False),  # two containers of one pod
        (9999, 1001, False),  # unknown path
        (1001, 9999, False),
    ],
)
def test_lineage_keeps_one_pod_s_lines_in_the_kernel_s_order(near: int, oom: int, overtakes: bool) -> None:
    kill = {"event": "oom_kill", "task_memcg_id": oom, "oom_memcg_id": None, "trigger_memcg_id": oom}
    assert Lineage(_PATHS.get).overtakes(kill)({"event": "near_oom", "memcg_id": near}) is overtakes


def test_nothing_overtakes_a_near_oom_of_a_cgroup_under_the_root_s_direct_children() -> None:
    # /system.slice/a and /system.slice/b share a parent: a plain host's services stay in order;
    # a cgroup right below the root has "/" as its parent, which holds everything.
    paths = {1: "/system.slice/a.service", 2: "/system.slice/b.service", 3: "/test", 4: "/other"}
    lineage = Lineage(paths.get)
    assert not lineage.overtakes({"task_memcg_id": 2})({"memcg_id": 1})
    assert not lineage.overtakes({"task_memcg_id": 4})({"memcg_id": 3})


def test_the_stamper_stamps_every_whole_line_once_with_the_monotonic_clock() -> None:
    stamper = subprocess.Popen(
        [sys.executable, "-c", harness._STAMPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert stamper.stdin is not None and stamper.stdout is not None

    def send(chunk: bytes) -> None:
        assert stamper.stdin is not None
        stamper.stdin.write(chunk)
        stamper.stdin.flush()

    # A line split across two writes is one line, stamped when it became whole.
    send(b'{"event": "oom_kill", "n": 1}\n{"event": "oom')
    first = stamper.stdout.readline()
    time.sleep(0.05)
    before = time.monotonic_ns()
    send(b'_kill", "n": 2}\n{"n": 3}\n')
    stamper.stdin.close()
    rest = stamper.stdout.read()
    after = time.monotonic_ns()
    assert stamper.wait(timeout=30) == 0
    stamps, lines = zip(
        *(line.split(b" ", 1) for line in [first, *rest.splitlines(keepends=True)]), strict=True
    )
    assert list(lines) == [
        b'{"event": "oom_kill", "n": 1}\n',
        b'{"event": "oom_kill", "n": 2}\n',
        b'{"n": 3}\n',
    ]
    ns = [int(s) for s in stamps]
    assert ns[0] < before <= ns[1] == ns[2] <= after


def _proc(tmp_path: Path, consoles: str, printk: str) -> Path:
    (tmp_path / "consoles").write_text(consoles)
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/printk").write_text(printk)
    return tmp_path


def test_a_serial_console_at_level_4_gets_the_kill_line(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "ttyS0                -W- (EC  p a)    4:64\n", "4\t4\t1\t7\n")
    assert harness.consoles(proc) == {
        "consoles": ["ttyS0"],
        "console_loglevel": 4,
        "kill_line_on_console": True,
    }


@pytest.mark.parametrize(
    ("consoles", "printk"),
    [("ttyS0 -W- (EC p a) 4:64\n", "3 4 1 7\n"), ("", "7 4 1 7\n")],
    ids=["level-3", "no-console"],
)
def test_no_kill_line_on_console_below_err_level_or_without_a_console(
    tmp_path: Path, consoles: str, printk: str
) -> None:
    assert harness.consoles(_proc(tmp_path, consoles, printk))["kill_line_on_console"] is False


def test_the_console_level_is_lowered_for_the_block_and_restored_even_on_error(tmp_path: Path) -> None:
    printk = _proc(tmp_path, "ttyS0\n", "4\t4\t1\t7\n") / "sys/kernel/printk"
    with pytest.raises(RuntimeError), harness.kill_line_off_console(printk) as changed:
        assert changed
        assert printk.read_text().split() == ["3", "4", "1", "7"]
        raise RuntimeError("benchmark failed")
    assert printk.read_text().split() == ["4", "4", "1", "7"]


def test_a_console_level_already_low_is_left_alone(tmp_path: Path) -> None:
    printk = _proc(tmp_path, "ttyS0\n", "2 4 1 7\n") / "sys/kernel/printk"
    with harness.kill_line_off_console(printk) as changed:
        assert not changed
    assert printk.read_text() == "2 4 1 7\n"


def _row(rate: int, p99: float, on_console: bool | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target_kills_per_s": rate,
        "seconds": 10.0,
        "allocators_in_flight_max": 4,
        "tracer_nice": 0,
        "allocators": rate * 10,
        "kernel_kills": rate * 10,
        "delivered": rate * 10,
        "achieved_kills_per_s": float(rate),
        "latency_ms": {
            "n": rate * 10,
            "min": 0.5,
            "p50": 1.0,
            "p90": 2.0,
            "p99": p99,
            "max": p99 + 1,
            "mean": 1,
        },
        "tracer_cpu_percent_of_one_core": 3.0,
        "tracer_rss_bytes": 1 << 27,
    }
    if on_console is not None:
        row["kill_line_on_console"] = on_console
    return row


def _record(rows: list[dict[str, Any]]) -> dict[str, Any]:
    latency = {
        "cgroups": 100,
        "limit_bytes": 8 << 20,
        "rows": rows,
        "lost": {},
        "tracer_rss_end_bytes": 1 << 27,
        "tracer_rss_peak_bytes": 1 << 27,
    }
    machine = {
        "date": "2026-11-26T00:00:00Z",
        "kernel": "6.18",
        "cpu": "test CPU",
        "cpus": 2,
        "memory_bytes": 1 << 34,
        "virtualization": "kvm",
        "commit": "abc1234",
        "consoles": ["ttyS0"],
        "console_loglevel": 4,
        "kill_line_on_console": True,
    }
    return {"machine": machine, "benchmarks": {"latency": latency}}


def test_the_summary_judges_100_per_s_with_and_without_the_kill_line_on_the_console() -> None:
    rows = [_row(1, 3.0, True), _row(100, 16.0, True), _row(1, 1.5, False), _row(100, 4.0, False)]
    table = report.summary_table(_record(rows))
    loud = next(line for line in table.splitlines() if "100 kills/s |" in line)
    quiet = next(line for line in table.splitlines() if "kept off the serial console" in line)
    assert "p99 16 ms" in loud.replace("16.0", "16") and "missed" in loud
    assert "p99 4" in quiet and "met" in quiet and "missed" not in quiet
    assert "Rows with the kill line off the console" in report.markdown(_record(rows))


def test_results_from_before_the_console_rows_count_as_on_the_console() -> None:
    text = report.markdown(_record([_row(1, 3.0, None), _row(100, 16.0, None)]))
    assert "| yes |" in text and "| no |" not in text
    assert "Rows with the kill line off the console" not in text
    assert 'ttyS0 at log level 4: the kernel writes each kill\'s "Killed process" line' in text
    assert "kept off the serial console" not in report.summary_table(_record([_row(100, 16.0, None)]))


def test_storm_rows_are_rendered_by_nice_value_in_the_section_and_the_summary() -> None:
    record = _record([_row(100, 4.0, True)])

    def storm(nice: int, p50: float) -> dict[str, Any]:
        latency = {"n": 50, "min": 1.0, "p50": p50, "p90": p50, "p99": p50, "max": p50 * 2, "mean": p50}
        counts = {"cgroups": 50, "storm_seconds": 0.7, "kernel_kills": 50, "delivered": 50}
        return {**counts, "tracer_nice": nice, "latency_ms": latency}

    record["benchmarks"]["latency"]["storms"] = [storm(0, 147.0), storm(-10, 2.3)]
    text = report.markdown(record)
    assert "| 0 | 1 | 0.7 s | 50 / 50 | 147 ms | 147 ms | 294 ms | — |" in text.replace(".0 ms", " ms")
    assert "| -10 | 1 | 0.7 s | 50 / 50 | 2.3 ms |" in text
    summary = next(line for line in report.summary_table(record).splitlines() if "OOM storm (50" in line)
    assert "nice 0 (1 storm): p50 147" in summary and "nice -10 (1 storm): p50 2.3" in summary
    assert "OOM storms" not in report.markdown(_record([_row(100, 4.0, True)]))


@pytest.mark.parametrize(
    "module, name",
    [("bench.pipeline", "ReplayTracer"), ("tracer.kernel.loader", "Tracer")],
    ids=["replay", "bcc"],
)
def test_every_tracer_offers_all_the_bpf_source_calls(module: str, name: str) -> None:
    # The benchmark's replay tracer stands in for bcc's; a method missing there (consume() once)
    # stopped the benchmark's tracer on its first interval.
    import importlib

    from tracer.sources.bpf import Tracer

    called = {n for n, v in vars(Tracer).items() if callable(v) and not n.startswith("_")}
    offered = set(dir(getattr(importlib.import_module(module), name)))
    assert called <= offered, called - offered
