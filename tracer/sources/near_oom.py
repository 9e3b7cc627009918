"""Per-interval near-OOM summaries from the in-kernel per-cgroup counters.

The kernel side sends one record when a cgroup starts failing charges; everything after
that is counted in a BPF map, which this module reads each interval and turns into one
`near_oom` summary per cgroup whose counters moved.
"""

from typing import Any

from tracer import schema
from tracer.decode import Decoder, NearOomStats


class NearOomSummarizer:
    def __init__(
        self, decoder: Decoder, tier: str, charge_failures_known: bool, forget_after_s: float = 300.0
    ) -> None:
        self._decoder = decoder
        self._tier = tier
        self._charge_failures_known = charge_failures_known
        self._forget_after_ns = int(forget_after_s * 1e9)
        self._previous: dict[int, NearOomStats] = {}

    def summarize(
        self, stats: dict[int, NearOomStats], now_ns: int, interval_s: float, memcg_known: bool
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """(summary events, ids of cgroups quiet long enough to drop from the map)."""
        events, stale = [], []
        for memcg_id, current in stats.items():
            before = self._previous.get(memcg_id, NearOomStats())
            calls = current.reclaim_calls - before.reclaim_calls
            failures = current.charge_failures - before.charge_failures
            if calls > 0 or failures > 0:
                event = schema.blank_event(schema.NEAR_OOM)
                event.update(
                    tier=self._tier,
                    ktime_ns=now_ns,
                    memcg_id=memcg_id if memcg_known else None,
                    phase=schema.SUMMARY,
                    interval_s=interval_s,
                    reclaim_calls=calls,
                    reclaim_time_ns=current.reclaim_ns - before.reclaim_ns,
                    reclaimed_bytes=(current.reclaimed_pages - before.reclaimed_pages)
                    * self._decoder.page_size,
                    charge_failures=failures if self._charge_failures_known else None,
                )
                if current.limit_pages:
                    event["usage_bytes"] = current.usage_pages * self._decoder.page_size
                    event["limit_bytes"] = self._decoder.limit_bytes(current.limit_pages)
                events.append(event)
            elif now_ns - current.last_ns > self._forget_after_ns:
                stale.append(memcg_id)
        self._previous = {k: v for k, v in stats.items() if k not in stale}
        return events, stale
