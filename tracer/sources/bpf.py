"""The kernel probes as a source: detect what the kernel allows, plan a tier per probe, load the
programs, and turn what they report into events.

Two ways in: records from the ring buffer (decoded and published through `poll`: an OOM
record's line is written out at once, ahead of that poll's near_oom records of unrelated
cgroups, tracer.resolve.lineage), and once per interval the in-kernel per-cgroup near-OOM
counters (summarised) and the kernel's loss counters (counted).
The loader is a parameter, so a benchmark or test can stand in for bcc and the kernel with
anything that behaves like `Tracer`.
"""

import resource
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tracer import schema
from tracer.decode import DecodeError, Decoder, NearOomStats
from tracer.kernel import probes, tiers
from tracer.kernel.features import KernelFeatures, detect
from tracer.kernel.headers import HeaderTree
from tracer.kernel.source import DEFAULT_RINGBUF_PAGES
from tracer.kernel.tiers import Plan
from tracer.pipeline import Event
from tracer.sinks.metrics import Metrics
from tracer.sources.near_oom import NearOomSummarizer


class Tracer(Protocol):
    """Loaded and attached BPF programs (tracer.kernel.loader.Tracer)."""

    plan: Plan

    def poll(self, timeout_ms: int) -> None:
        """Waits up to `timeout_ms` for ring-buffer records and hands each to the on_record callback."""

    def consume(self) -> None:
        """Hands over the records already in the ring buffer, without waiting."""

    def near_oom_stats(self) -> dict[int, NearOomStats]: ...

    def forget_near_oom(self, memcg_ids: list[int]) -> None: ...

    def lost(self) -> dict[str, int]:
        """Records the kernel could not deliver, by schema.KERNEL_LOSS_REASONS, since loading."""

    def close(self) -> None: ...


class Load(Protocol):
    """tracer.kernel.loader.load: compiles and attaches a plan, moving probes down a tier when refused."""

    def __call__(
        self,
        plan: Plan,
        features: KernelFeatures,
        constants: dict[str, int],
        headers: HeaderTree,
        on_record: Callable[[bytes], None],
        near_oom_quiet_s: float,
        log: Callable[[str], None],
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
    ) -> Tracer: ...


def load_with_bcc(*args: Any, **kwargs: Any) -> Tracer:
    """The real loader, imported only when used: bcc and LLVM cost ~100 MB and a second to import."""
    from tracer.kernel import loader

    return loader.load(*args, **kwargs)


@dataclass(frozen=True)
class BpfConfig:
    proc_root: Path
    sys_root: Path
    use_btf: bool
    headers_cache: Path
    near_oom_quiet_s: float
    interval_s: float
    ringbuf_pages: int


class BpfSource:
    def __init__(
        self,
        config: BpfConfig,
        publish: Callable[[Event], None],
        metrics: Metrics,
        log: Any,
        load: Load = load_with_bcc,
        flush: Callable[[], None] | None = None,
        overtakes: Callable[[Event], Callable[[Event], bool]] | None = None,
    ) -> None:
        self._config = config
        self._publish = publish
        # Hands on what was published: the daemon does after each poll; here, after each OOM record.
        self._flush = flush or (lambda: None)
        # For an OOM record, which near_oom records that came first it may be published before
        # (tracer.resolve.lineage.Lineage.overtakes); None: none, every line in the kernel's order.
        self._overtakes = overtakes
        self._later: deque[Event] = deque()  # this poll's near_oom records, not yet published
        self._decoder: Decoder | None = None
        self._metrics = metrics
        self._log = log
        self._load = load
        self._tracer: Tracer | None = None
        self._summarizer: NearOomSummarizer | None = None
        self._memcg_known = False
        self._lost_seen: dict[str, int] = {}
        self._failures: list[Exception] = []
        self.status = ""  # which tier each probe got and which headers bcc compiled against

    def open(self) -> None:
        """Detects, plans, compiles and attaches. Raises LoadError, HeadersError or BtfError."""
        from tracer.kernel import compiler_memory

        self._load_programs()
        # The BTF objects and the compiler are done with once _load_programs has returned.
        released = compiler_memory.release()
        self._log.info(
            "gave back the compiler's memory",
            rss_before_mib=round(released.before_bytes / 2**20, 1),
            rss_after_mib=round(released.after_bytes / 2**20, 1),
            anon_before_mib=round(released.anon_before_bytes / 2**20, 1),
            anon_after_mib=round(released.anon_after_bytes / 2**20, 1),
            compiler_paged_out=released.paged_out,
        )

    def _load_programs(self) -> None:
        from tracer.kernel import offsets
        from tracer.kernel.headers import find_headers

        cfg = self._config
        self._ensure_tracefs()
        features = detect(cfg.proc_root, cfg.sys_root, use_btf=cfg.use_btf)
        plan = tiers.plan(features)
        for note in plan.notes:
            self._log.warning(note)
        btf = features.btf_data
        constants = offsets.kernel_constants(btf) if btf else {}
        decoder = Decoder(resource.getpagesize(), offsets.constraint_names(btf))
        headers = find_headers(features.release, cache_dir=cfg.headers_cache)
        self._log.info(
            "compiling BPF programs", headers=str(headers.path or "running kernel"), origin=headers.origin
        )

        self._decoder = decoder
        tracer = self._load(
            plan,
            features,
            constants,
            headers,
            self.on_record,
            cfg.near_oom_quiet_s,
            lambda m: self._log.warning(m),
            ringbuf_pages=cfg.ringbuf_pages,
        )
        # Without BTF only the v2 cgroup of the charging task is known, which is its memory
        # cgroup on a pure cgroup v2 host only.
        self.use(tracer, decoder, memcg_known=tracer.plan.btf or features.cgroup2_memory)
        plan = tracer.plan  # with any tier the kernel refused moved down
        self._metrics.set_probes((c.probe, c.tier, c.target or "-") for c in plan.choices)
        self._metrics.set_headers(headers.origin, btf=plan.btf)
        chosen = " ".join(f"{c.probe}={c.tier}" for c in plan.choices)
        offsets_from = "BTF" if plan.btf else "none (tracepoint fields only)"
        self.status = f"{chosen}; headers: {headers.origin}; struct offsets: {offsets_from}"
        for choice in plan.choices:
            self._log.info(
                "probe",
                probe=choice.probe,
                tier=choice.tier,
                target=choice.target or None,
                why_not_better=choice.reason or None,
            )

    def on_record(self, data: bytes) -> None:
        """One raw ring-buffer record (bcc calls it from poll and consume)."""
        if self._failures or self._decoder is None:
            return
        try:
            event = self._decoder.decode(data)
        except DecodeError as err:
            self._metrics.lost(schema.DECODE_ERROR, 1)
            self._log.error("undecodable record", error=str(err))
            return
        if event["event"] == schema.NEAR_OOM and self._overtakes is not None:
            self._later.append(event)  # published after this poll's OOM records that may overtake it
            return
        if event["event"] != schema.NEAR_OOM and self._later:
            self._publish_before(event)
        self._publish_guarded(event)

    def _publish_guarded(self, event: Event) -> None:
        if self._failures:
            return
        try:
            self._publish(event)
            # An OOM record's line leaves now, not with the rest of its batch: behind a CPU crowded
            # by reclaiming tasks the next record's turn can be milliseconds away. near_oom lines
            # leave once per poll.
            if event["event"] != schema.NEAR_OOM:
                self._flush()
        except Exception as err:  # bcc would print it and go on dropping every event: stop instead
            self._log.error("cannot publish an event; stopping", error=str(err))
            self._failures.append(err)

    def _publish_before(self, oom: Event) -> None:
        """The waiting near_oom records that `oom` may not overtake, in their order."""
        assert self._overtakes is not None
        overtaken = self._overtakes(oom)
        waiting, self._later = self._later, deque()
        for near_oom in waiting:
            if self._failures or overtaken(near_oom):
                self._later.append(near_oom)
            else:
                self._publish_guarded(near_oom)

    def _publish_later(self) -> None:
        """This poll's remaining near_oom records, each after any OOM record that arrived meanwhile."""
        assert self._tracer is not None
        while self._later and not self._failures:
            self._publish_guarded(self._later.popleft())
            self._tracer.consume()
        self._later.clear()  # after a failure: poll raises it, and the daemon stops

    def use(self, tracer: Tracer, decoder: Decoder, memcg_known: bool) -> None:
        """Takes over loaded programs: open() calls it after loading; tests hand in stand-ins."""
        self._tracer = tracer
        self._decoder = decoder
        self._summarizer = NearOomSummarizer(
            decoder,
            tracer.plan.tier(probes.NEAR_OOM),
            charge_failures_known=tracer.plan.tier(probes.CHARGE_FAILURE) != schema.UNAVAILABLE,
        )
        self._memcg_known = memcg_known

    def poll(self, timeout_ms: int) -> None:
        assert self._tracer is not None, "open() first"
        self._tracer.poll(timeout_ms)
        self._publish_later()
        if self._failures:
            raise self._failures[0]

    def every_interval(self) -> None:
        """Near-OOM summaries for every cgroup that reclaimed, and the kernel's new losses."""
        tracer, summarizer = self._tracer, self._summarizer
        assert tracer is not None and summarizer is not None, "open() first"
        stats = tracer.near_oom_stats()
        events, stale = summarizer.summarize(
            stats, time.monotonic_ns(), self._config.interval_s, self._memcg_known
        )
        # A summary per cgroup that reclaimed: with hundreds of them this burst takes
        # milliseconds, and a kill that arrives meanwhile must not wait behind it.
        for event in events:
            tracer.consume()  # a kill waiting meanwhile goes out now, not after the burst
            self._publish(event)
        self._publish_later()
        if stale:
            tracer.forget_near_oom(stale)
        for reason, total in tracer.lost().items():
            new = total - self._lost_seen.get(reason, 0)
            if new > 0:
                self._metrics.lost(reason, new)
                self._log.warning("events lost in the kernel", reason=reason, count=new)
            self._lost_seen[reason] = total
        if self._failures:
            raise self._failures[0]

    def close(self) -> None:
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None
            self._log.info("stopped; probes detached")

    def _ensure_tracefs(self) -> None:
        """Tracepoint formats live in tracefs, which some hosts do not mount at boot."""
        sys_root = self._config.sys_root
        tracing = sys_root / "kernel/tracing"
        if (tracing / "events").is_dir() or (sys_root / "kernel/debug/tracing/events").is_dir():
            return
        result = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(tracing)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            self._log.info("mounted tracefs", path=str(tracing))
        else:
            self._log.warning("tracefs is not mounted and mounting it failed", error=result.stderr.strip())
