"""/dev/kmsg records: a non-blocking reader that counts what the kernel overwrote, and the
calibration of the printk clock against CLOCK_MONOTONIC."""

import errno
import os
import re
import secrets
import select
import time
from types import TracebackType
from typing import Final, Self

DEFAULT_PATH: Final = "/dev/kmsg"

# /dev/kmsg: "prio_facility,seq,timestamp_usec,flags[,more];message"
_RECORD_RE: Final = re.compile(
    rb"([0-9]{1,10}),([0-9]{1,20}),([0-9]{1,20}),[^,;]*(?:,[^;]*)?;(.*)", re.DOTALL
)
# The kernel writes every byte < 0x20, >= 0x7f and "\" as \xNN, so this is lossless.
_ESCAPE_RE: Final = re.compile(rb"\\x([0-9a-fA-F]{2})")

# Larger than any record (PRINTK_MESSAGE_MAX is 2 KiB, 8 KiB on old kernels):
# /dev/kmsg answers EINVAL rather than truncate a record to a short buffer.
_READ_SIZE: Final = 16384

# LOG_USER | LOG_DEBUG: marks the line as not the kernel's and keeps it off consoles.
_CALIBRATION_PRIO: Final = 15
_CALIBRATION_TRIES: Final = 3
_CALIBRATION_TIMEOUT_NS: Final = 1_000_000_000


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes((int(match[1], 16),))


def parse_kmsg_record(raw: bytes) -> tuple[int, int, str] | None:
    """(seq, timestamp_ns, message) of one /dev/kmsg record, or None if it is not one.

    Continuation lines (" KEY=value" device properties) are dropped.
    """
    m = _RECORD_RE.fullmatch(raw.split(b"\n", 1)[0])
    if m is None:
        return None
    message = _ESCAPE_RE.sub(_unescape, m[4]).decode("utf-8", errors="replace")
    return int(m[2]), int(m[3]) * 1000, message


class KmsgReader:
    """Non-blocking reader of /dev/kmsg records.

    Starts at the end of the log unless `from_start`. `path` may also name a
    regular file or a FIFO holding records one per line, as tests do. Only the kernel's own
    records (facility 0) are returned unless `kernel_only` is off: anything user space writes
    to /dev/kmsg is stored with facility LOG_USER or above, whatever level it claims, so a
    process printing the kernel's wording cannot pass for an OOM report.
    """

    def __init__(
        self, path: str = DEFAULT_PATH, *, from_start: bool = False, kernel_only: bool = True
    ) -> None:
        self.path = path
        self._kernel_only = kernel_only
        # Records the kernel overwrote before we read them (seq gaps and EPIPE).
        self.lost_records = 0
        self._last_seq: int | None = None
        self._overrun = False
        self._tail = b""
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not from_start:
            try:
                os.lseek(self._fd, 0, os.SEEK_END)
            except OSError as exc:
                if exc.errno != errno.ESPIPE:  # a FIFO has no history to skip
                    os.close(self._fd)
                    raise

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> list[tuple[int, int, str]]:
        """Every record readable now, without blocking."""
        records: list[tuple[int, int, str]] = []
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # The ring buffer wrapped past our position; the next read resumes
                # at the oldest record left.
                self._overrun = True
                continue
            if not chunk:
                break
            self._take(chunk, records)
        return records

    def _take(self, chunk: bytes, records: list[tuple[int, int, str]]) -> None:
        # /dev/kmsg returns one whole record per read(); a file or FIFO returns any
        # slice of the stream, so split on newlines (records escape their own).
        *lines, self._tail = (self._tail + chunk).split(b"\n")
        for line in lines:
            if line.startswith(b" "):
                continue  # a record's KEY=value continuation line
            record = parse_kmsg_record(line)
            if record is None:
                continue
            self._count_lost(record[0])
            if self._kernel_only and int(line.split(b",", 1)[0]) >> 3 != 0:
                continue  # facility (prio_facility >> 3) not the kernel's: skipped, not lost
            records.append(record)

    def _count_lost(self, seq: int) -> None:
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.lost_records += seq - self._last_seq - 1
        elif self._overrun and self._last_seq is None:
            self.lost_records += 1  # at least one; nothing says how many
        self._overrun = False
        self._last_seq = seq

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _await_marker(reader: KmsgReader, marker: str, deadline_ns: int) -> int:
    poller = select.poll()
    poller.register(reader.fileno(), select.POLLIN)
    while (left_ns := deadline_ns - time.monotonic_ns()) > 0:
        for _seq, ts_ns, message in reader.read_available():
            if message == marker:
                return ts_ns
        poller.poll(max(1, left_ns // 1_000_000))
    raise TimeoutError(f"calibration marker never appeared in {reader.path} (is kernel.printk_devkmsg off?)")


def printk_offset_ns(path: str = DEFAULT_PATH) -> int:
    """The printk clock minus CLOCK_MONOTONIC, in ns. Needs root.

    /dev/kmsg stamps records with local_clock(), BPF with CLOCK_MONOTONIC: the two
    drift apart by milliseconds, a thousand times the effects being measured.
    """
    best: tuple[int, int] | None = None  # (bracket_ns, offset_ns)
    # A fresh writer per call: the kernel rate-limits writes per open file (10 per 5 s).
    with KmsgReader(path, kernel_only=False) as reader:  # the marker is our own, LOG_USER
        writer = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for _ in range(_CALIBRATION_TRIES):
                marker = f"oomtrace: clock-calibration {secrets.token_hex(8)}"
                line = f"<{_CALIBRATION_PRIO}>{marker}\n".encode()
                # The kernel stamps the record inside write(), so the bracket closes
                # when write() returns, not when the record is read back.
                before = time.monotonic_ns()
                os.write(writer, line)
                after = time.monotonic_ns()
                stamp_ns = _await_marker(reader, marker, after + _CALIBRATION_TIMEOUT_NS)
                offset = stamp_ns - (before + after) // 2
                if best is None or after - before < best[0]:
                    best = (after - before, offset)
        finally:
            os.close(writer)
    assert best is not None
    return best[1]
