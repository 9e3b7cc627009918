"""/dev/kmsg for real: reading new records, parsing the live log, clock calibration."""

import os
import secrets
import select
import time
from pathlib import Path

import pytest

from tracer.schema import blank_event
from tracer.sources.kmsg import KmsgReader, OomReportParser, printk_offset_ns


@pytest.mark.kernel
def test_reader_of_dev_kmsg_sees_new_records_only() -> None:
    with KmsgReader(from_start=True) as history:
        last_old_seq = max(seq for seq, _, _ in history.read_available())
    marker = f"oomtrace: test marker {secrets.token_hex(8)}"

    with KmsgReader(kernel_only=False) as reader:
        writer = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            os.write(writer, f"<15>{marker}\n".encode())
        finally:
            os.close(writer)
        records: list[tuple[int, int, str]] = []
        deadline = time.monotonic() + 1
        while marker not in [msg for _, _, msg in records] and time.monotonic() < deadline:
            select.select([reader], [], [], 0.1)
            records += reader.read_available()

    assert marker in [msg for _, _, msg in records]
    assert all(seq > last_old_seq for seq, _, _ in records)


@pytest.mark.kernel
def test_a_kill_line_written_from_user_space_is_not_taken_for_the_kernels() -> None:
    # What a process could do to fool a kernel-log reader: write the kernel's own wording,
    # at the kernel's level ("<4>"), naming a victim. The kernel files it under LOG_USER.
    pid = 4_000_000 + secrets.randbelow(100_000)
    fake = (
        f"<4>Memory cgroup out of memory: Killed process {pid} (sshd) total-vm:1kB, anon-rss:1kB,"
        " file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0"
    )
    with KmsgReader() as kernel, KmsgReader(kernel_only=False) as everything:
        writer = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            os.write(writer, f"{fake}\n".encode())
        finally:
            os.close(writer)
        seen: list[tuple[int, int, str]] = []
        deadline = time.monotonic() + 1
        while not any(str(pid) in msg for _, _, msg in seen) and time.monotonic() < deadline:
            select.select([everything], [], [], 0.1)
            seen += everything.read_available()
        assert any(f"Killed process {pid} " in msg for _, _, msg in seen), "the write never reached the log"
        parser = OomReportParser()
        events = [e for _, ts, msg in kernel.read_available() for e in parser.feed(msg, ts)]
    assert not [e for e in events if e.get("victim_pid") == pid]


@pytest.mark.kernel
def test_parser_reads_the_whole_live_kernel_log_without_raising() -> None:
    parser = OomReportParser()
    with KmsgReader(from_start=True) as reader:
        for _seq, ts_ns, message in reader.read_available():
            for ev in parser.feed(message, ts_ns):
                assert set(ev) == set(blank_event(ev["event"]))


@pytest.mark.kernel
def test_printk_offset_is_near_zero_and_repeatable() -> None:
    first = printk_offset_ns()
    second = printk_offset_ns()

    # The two clocks drift apart with uptime (68 ms after 20 h on this VM, about 1 ppm): allow
    # 10 ppm of it beside 50 ms. A wrong clock (boot time, wall time) would be off by far more.
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(first) < 50_000_000 + uptime_s * 10_000
    assert abs(second - first) < 1_000_000
