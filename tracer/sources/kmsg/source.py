"""The kernel log as the daemon's source (`oomtrace run --source kmsg`): a fallback where BPF
cannot load, with the kernel's own attribution limits (its report is rate-limited)."""

import select
from collections.abc import Callable
from typing import Any

from tracer import schema
from tracer.pipeline import Event
from tracer.sinks.metrics import Metrics
from tracer.sources.kmsg.parser import OomReportParser
from tracer.sources.kmsg.reader import DEFAULT_PATH, KmsgReader, printk_offset_ns


class KmsgSource:
    def __init__(self, publish: Callable[[Event], None], metrics: Metrics, log: Any) -> None:
        self._publish = publish
        self._metrics = metrics
        self._log = log
        self._parser = OomReportParser()
        self._reader: KmsgReader | None = None
        self._offset_ns = 0
        self._lost_seen = 0
        self.status = f"oom_report={schema.KMSG} ({DEFAULT_PATH})"

    def open(self) -> None:
        # /dev/kmsg stamps records with the printk clock, not CLOCK_MONOTONIC: calibrated
        # here so ktime_ns means the same in every source.
        self._offset_ns = printk_offset_ns()
        self._reader = KmsgReader()
        self._metrics.set_probes([("oom_report", schema.KMSG, DEFAULT_PATH)])
        self._log.info("tracing the kernel log (no BPF)", printk_offset_ns=self._offset_ns)

    def poll(self, timeout_ms: int) -> None:
        reader = self._reader
        assert reader is not None, "open() first"
        select.select([reader.fileno()], [], [], timeout_ms / 1000)
        for _seq, ts_ns, message in reader.read_available():
            for event in self._parser.feed(message, ts_ns - self._offset_ns):
                self._publish(event)

    def every_interval(self) -> None:
        reader = self._reader
        assert reader is not None, "open() first"
        if reader.lost_records > self._lost_seen:
            self._metrics.lost(schema.KMSG_OVERWRITTEN, reader.lost_records - self._lost_seen)
            self._lost_seen = reader.lost_records

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
