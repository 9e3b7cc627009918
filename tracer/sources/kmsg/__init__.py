"""The kernel log as a source: /dev/kmsg records (reader) and the OOM report in them (parser)."""

from tracer.sources.kmsg.parser import KILLED_LINE_FIELDS, OomReportParser
from tracer.sources.kmsg.reader import DEFAULT_PATH, KmsgReader, parse_kmsg_record, printk_offset_ns

__all__ = [
    "DEFAULT_PATH",
    "KILLED_LINE_FIELDS",
    "KmsgReader",
    "OomReportParser",
    "parse_kmsg_record",
    "printk_offset_ns",
]
