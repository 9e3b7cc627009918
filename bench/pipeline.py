"""Pipeline throughput and cost: synthetic kernel records through the real user-space pipeline.

No kernel makes 10,000 OOM kills a second, so the records come from a producer process instead:
oom_kill records in the layout of bpf/oomtrace.h (tracer.decode.OomtraceEvent), naming real
cgroups of this machine, written into a pipe sized like the tracer's ring buffer (64 pages).
The producer writes without blocking; a record that does not fit is dropped and counted, as
the kernel counts a failed ring-buffer reservation. The consumer is `oomtrace run` itself —
the same daemon `oomtrace run` builds (tracer.cli.run.build_daemon): decode, cgroup path and tags,
the attribution stages, stdout, metrics and the /events hub — with only the loader it is given
(tracer.sources.bpf.Load) replaced by a stand-in
whose poll() reads that pipe and whose lost() reports the producer's drop count, and whose
near-OOM map holds 100 cgroups each counting 1,000 charge failures a second (100,000/s).

    python -m bench.pipeline consumer --pipe-fd N --stats FILE [--no-attribution] -- <run flags>
    python -m bench.pipeline producer --pipe-fd N --stats FILE --rate R --duration S --ids I,J,...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import REPO, ProcessUsage, distribution, ms
from tracer import decode, schema
from tracer.kernel import probes
from tracer.kernel.tiers import Plan

RECORD = ctypes.sizeof(decode.OomtraceEvent)
RINGBUF_BYTES = 64 * 4096  # the tracer's default ring buffer: 64 pages
F_SETPIPE_SZ = 1031
STATS = struct.Struct("<QQ")  # produced, dropped
CHARGE_FAILURES_PER_S = 100_000
_KNOWN = (
    decode.KNOWN_TRIGGER_MEMCG
    | decode.KNOWN_VICTIM_TGID
    | decode.KNOWN_VICTIM_MEMCG
    | decode.KNOWN_VICTIM_MM
    | decode.KNOWN_VICTIM_UID
    | decode.KNOWN_OOM_SCORE_ADJ
    | decode.KNOWN_VICTIM_COMM
)


def record(memcg_id: int, pid: int, ktime_ns: int) -> bytes:
    """An oom_kill record as the tracepoint tier sends it (raw mark_victim, BTF)."""
    e = decode.OomtraceEvent(kind=3, tier=3, ktime_ns=ktime_ns, known=_KNOWN)
    e.trigger_pid = e.trigger_tgid = e.victim_pid = e.victim_tgid = pid
    e.trigger_comm = e.victim_comm = b"bench-alloc"
    e.trigger_memcg_id = e.victim_memcg_id = memcg_id
    e.total_vm_pages, e.anon_rss_pages, e.file_rss_pages = 19_000, 16_384, 1_500
    e.pgtables_bytes = 196_608
    return bytes(e)


# --- producer ---------------------------------------------------------------------------------


def produce(fd: int, stats: Path, rate: float, duration_s: float, ids: list[int]) -> None:
    os.set_blocking(fd, False)
    out = os.open(stats, os.O_RDWR)
    produced = dropped = 0
    tick = 0.001
    start = time.monotonic()
    pid = 100_000
    while (now := time.monotonic()) < start + duration_s:
        due = int((now - start) * rate)
        while produced < due:
            pid += 1
            try:
                os.write(fd, record(ids[pid % len(ids)], pid, time.monotonic_ns()))
            except BlockingIOError:
                dropped += 1  # the "ring buffer" is full: counted, as the kernel counts it
            produced += 1
        os.pwrite(out, STATS.pack(produced, dropped), 0)
        time.sleep(tick)
    os.pwrite(out, STATS.pack(produced, dropped), 0)
    os.close(fd)


# --- consumer ---------------------------------------------------------------------------------


class ReplayTracer:
    """A tracer.sources.bpf.Tracer: the pipe is the ring buffer, the map is simulated."""

    def __init__(self, plan: Plan, fd: int, stats: Path, ids: list[int], on_record: Any) -> None:
        # charge_failure counted (as on fentry/kprobe kernels), so the summaries carry it.
        charge = replace(plan.choice(probes.CHARGE_FAILURE), tier=schema.FENTRY, target="try_charge_memcg")
        self.plan = replace(
            plan, choices=tuple(charge if c.probe == charge.probe else c for c in plan.choices)
        )
        self._fd, self._stats, self._ids, self._on_record = fd, stats, ids, on_record
        os.set_blocking(fd, False)
        self._pending = b""
        self._started_ns = time.monotonic_ns()

    def poll(self, timeout_ms: int) -> None:
        import select

        ready, _, _ = select.select([self._fd], [], [], timeout_ms / 1000)
        if ready and not self.consume():
            time.sleep(timeout_ms / 1000)  # the producer is done

    def consume(self) -> bool:
        """Delivers the records already written; False once the producer has closed the pipe."""
        while True:
            try:
                chunk = os.read(self._fd, RINGBUF_BYTES)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            data = self._pending + chunk
            whole = len(data) - len(data) % RECORD
            for offset in range(0, whole, RECORD):
                self._on_record(data[offset : offset + RECORD])
            self._pending = data[whole:]

    def near_oom_stats(self) -> dict[int, decode.NearOomStats]:
        elapsed_ns = time.monotonic_ns() - self._started_ns
        per_cgroup = int(CHARGE_FAILURES_PER_S / len(self._ids) * elapsed_ns / 1e9)
        return {
            i: decode.NearOomStats(
                reclaim_calls=per_cgroup,
                reclaim_ns=per_cgroup * 20_000,
                reclaimed_pages=per_cgroup * 32,
                charge_failures=per_cgroup,
                last_ns=time.monotonic_ns(),
                usage_pages=4096,
                limit_pages=4096,
            )
            for i in self._ids
        }

    def forget_near_oom(self, memcg_ids: list[int]) -> None:
        pass

    def lost(self) -> dict[str, int]:
        try:
            _produced, dropped = STATS.unpack(os.pread(os.open(self._stats, os.O_RDONLY), STATS.size, 0))
        except (OSError, struct.error):
            dropped = 0
        return {"ringbuf_full": dropped, "map_full": 0}

    def close(self) -> None:
        os.close(self._fd)


def consume(fd: int, stats: Path, ids: list[int], attribution: bool, run_args: list[str]) -> int:
    from tracer.cli.flags import build_parser
    from tracer.cli.run import build_daemon, run_config

    def load(
        plan: Plan, _features: Any, _constants: Any, _headers: Any, on_record: Any, *_a: Any, **_k: Any
    ) -> ReplayTracer:
        return ReplayTracer(plan, fd, stats, ids, on_record)

    args = build_parser().parse_args(["run", *run_args])
    # The one piece replaced: the loader (no bcc, no kernel programs).
    return build_daemon(run_config(args), args, load=load, attribution=attribution).run()


# --- the harness side -------------------------------------------------------------------------


def run(rate: float, duration_s: float, ids: list[int], attribution: bool = True) -> dict[str, Any]:
    """One run at `rate` records/s; the consumer's stdout is counted here, line by line."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, RINGBUF_BYTES)
    stats = Path(f"/dev/shm/oomtrace-bench-{os.getpid()}")
    stats.write_bytes(STATS.pack(0, 0))
    consumer = subprocess.Popen(
        [sys.executable, "-m", "bench.pipeline", "consumer", "--pipe-fd", str(read_fd), "--stats", str(stats),
         "--ids", ",".join(map(str, ids)), *([] if attribution else ["--no-attribution"]),
         "--", "--metrics-address", "127.0.0.1:0", "--interval", "1"],
        cwd=REPO, pass_fds=(read_fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(read_fd)
    try:
        return _measure(consumer, write_fd, stats, rate, duration_s, ids, attribution)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        stats.unlink(missing_ok=True)


def _measure(
    consumer: subprocess.Popen[bytes],
    write_fd: int,
    stats: Path,
    rate: float,
    duration_s: float,
    ids: list[int],
    attribution: bool,
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    latencies: list[float] = []
    ready = threading.Event()

    def read_stderr() -> None:
        assert consumer.stderr is not None
        for line in consumer.stderr:
            if b'"msg": "tracing"' in line:
                ready.set()

    def read_stdout() -> None:
        assert consumer.stdout is not None
        fd, pending = consumer.stdout.fileno(), b""
        while chunk := os.read(fd, 1 << 20):
            now = time.monotonic_ns()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                kind = line[11:19]  # {"event": "oom_kill" ... — cheap enough for 10k lines/s
                key = {b"oom_kill": "oom_kill", b"near_oom": "near_oom"}.get(kind, "other")
                counts[key] = counts.get(key, 0) + 1
                if key == "oom_kill" and len(latencies) < 200_000:
                    at = line.find(b'"ktime_ns": ')
                    if at >= 0:
                        end = line.find(b",", at)
                        latencies.append(ms(now - int(line[at + 12 : end])))

    threads = [threading.Thread(target=f, daemon=True) for f in (read_stderr, read_stdout)]
    for t in threads:
        t.start()
    started = time.monotonic()
    if not ready.wait(120):
        os.close(write_fd)
        raise RuntimeError("the pipeline consumer did not start")
    startup_s = time.monotonic() - started
    idle = ProcessUsage.of(consumer.pid)
    producer = subprocess.Popen(
        [sys.executable, "-m", "bench.pipeline", "producer", "--pipe-fd", str(write_fd),
         "--stats", str(stats), "--rate", str(rate), "--duration", str(duration_s),
         "--ids", ",".join(map(str, ids))],
        cwd=REPO, pass_fds=(write_fd,),
    )  # fmt: skip
    os.close(write_fd)
    time.sleep(min(2.0, duration_s / 4))  # steady state: measure from here
    first, t0 = ProcessUsage.of(consumer.pid), time.monotonic()
    producer.wait()
    last, t1 = ProcessUsage.of(consumer.pid), time.monotonic()
    time.sleep(2.5)  # drain, and one more interval for the loss counter
    consumer.send_signal(signal.SIGTERM)
    consumer.wait(timeout=60)
    for t in threads:
        t.join(timeout=10)
    produced, dropped = STATS.unpack(stats.read_bytes())
    delivered = counts.get("oom_kill", 0)
    return {
        "rate_per_s": rate,
        "duration_s": duration_s,
        "attribution_stages": attribution,
        "produced": produced,
        "delivered": delivered,
        "dropped_counted": dropped,
        "conserved": delivered + dropped == produced,
        "near_oom_summaries": counts.get("near_oom", 0),
        "delivered_per_s": round(delivered / duration_s, 1),
        "cpu_percent_of_one_core": round(100 * (last.cpu_s - first.cpu_s) / (t1 - t0), 1),
        "rss_idle_bytes": idle.rss_bytes,
        "rss_end_bytes": last.rss_bytes,
        "rss_peak_bytes": last.hwm_bytes,
        "startup_s": round(startup_s, 2),
        "latency_ms": distribution(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.pipeline")
    parser.add_argument("role", choices=("producer", "consumer"))
    parser.add_argument("--pipe-fd", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--no-attribution", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    ids = [int(i) for i in args.ids.split(",")]
    if args.role == "producer":
        try:
            produce(args.pipe_fd, args.stats, args.rate, args.duration, ids)
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
        return 0
    return consume(args.pipe_fd, args.stats, ids, not args.no_attribution, run_args)


if __name__ == "__main__":
    sys.exit(main())
