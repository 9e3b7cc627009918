"""RFC 3339 time stamps, the one format of every `ts` oomtrace writes or reads: UTC, microseconds,
"Z" (2026-11-26T19:08:09.620988Z)."""

import calendar
import time
from datetime import UTC, datetime


def rfc3339_ns(wall_ns: int) -> str:
    """Nanoseconds since the epoch → RFC 3339 UTC with microseconds."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"


class WallClock:
    """CLOCK_MONOTONIC (bpf_ktime_get_ns) → RFC 3339 UTC, re-anchored on each refresh so
    a stepped wall clock is followed."""

    def __init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def rfc3339(self, ktime_ns: int) -> str:
        return rfc3339_ns(ktime_ns + self._offset_ns)


def now_rfc3339() -> str:
    return rfc3339_ns(time.time_ns())


def _parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_rfc3339(text: str) -> float:
    """RFC 3339 (any offset; no offset is taken as UTC) → seconds since the epoch.
    ValueError if it is not one."""
    return _parse(text).timestamp()


def parse_rfc3339_ns(text: str) -> int:
    """As parse_rfc3339, in whole nanoseconds since the epoch (no float rounding)."""
    moment = _parse(text)
    return calendar.timegm(moment.utctimetuple()) * 1_000_000_000 + moment.microsecond * 1000
