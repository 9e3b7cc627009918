"""The one-line notes of oomtrace's Kubernetes Events: what the kernel log cannot say."""

from __future__ import annotations

from typing import Any, Final

REPORTING_CONTROLLER: Final = "oomtrace"
# events.k8s.io/v1 caps `note` at 1 kB.
MAX_NOTE_BYTES: Final = 1024
MIB: Final = 1 << 20


def _mib(n: object) -> str:
    return f"{n / MIB:.0f} MiB" if isinstance(n, int | float) and not isinstance(n, bool) else "?"


def _usage_of_limit(event: dict[str, Any]) -> str | None:
    """The OOMing cgroup's usage/limit: from the kill's overhead analysis or memory snapshot."""
    for source in (event.get("overhead"), event.get("memory_snapshot")):
        if isinstance(source, dict) and source.get("limit_bytes") is not None:
            return f"{_mib(source.get('usage_bytes'))} of its {_mib(source['limit_bytes'])} limit"
    return None


def kill_note(event: dict[str, Any]) -> str:
    """`oom_kill` → e.g. "OOM-killed qemu-system-x86 (pid 4246, 160 MiB resident) in container
    compute: the pod's cgroup was at 192 MiB of its 192 MiB limit; VM default/vm2: guest 1948 MiB,
    overhead budget -1756 MiB, non-guest used 32 MiB; set harvesterhci.io/reservedMemory: 0Mi ..."."""
    victim = f"{event.get('victim_comm') or '?'} (pid {event.get('victim_pid')}"
    resident = event.get("anon_rss_bytes")
    victim += f", {_mib(resident)} resident)" if resident is not None else ")"
    parts = [
        f"OOM-killed {victim}" + (f" in container {event['container']}" if event.get("container") else "")
    ]
    usage = _usage_of_limit(event)
    if usage is not None:
        parts[0] += f": its cgroup was at {usage}"
    overhead = event.get("overhead")
    if event.get("vm") and isinstance(overhead, dict):
        guest, budget = overhead.get("guest_memory_bytes"), overhead.get("overhead_budget_bytes")
        vm = (
            f"VM {event['vm']}: guest {_mib(guest)}, overhead budget {_mib(budget)},"
            f" non-guest used {_mib(overhead.get('non_guest_usage_bytes'))}"
        )
        rec = overhead.get("recommendation")
        if isinstance(rec, dict) and rec.get("budget_sufficient") is False:
            ratio = rec.get("additional_guest_memory_overhead_ratio")
            vm += (
                f"; would have been avoided by harvesterhci.io/reservedMemory: {rec.get('reserved_memory')}"
                f" or additional-guest-memory-overhead-ratio: {ratio}"
            )
        parts.append(vm)
    elif event.get("vm"):
        parts.append(f"VM {event['vm']}")
    return _cap("; ".join(parts))


def near_oom_note(event: dict[str, Any], intervals: int, seconds: float) -> str:
    """A sustained near-OOM: how long, how hard, how close to the limit."""
    where = f"container {event['container']}" if event.get("container") else "the pod"
    text = f"{where} reclaiming at its memory limit for {seconds:.0f} s ({intervals} intervals)"
    if event.get("charge_failures") is not None and event.get("interval_s") is not None:
        text += f", {event['charge_failures']} charge failures in the last {event['interval_s']:g} s"
    if event.get("usage_bytes") is not None:
        text += f"; usage {_mib(event['usage_bytes'])} of {_mib(event.get('limit_bytes'))}"
    return _cap(text + ": an OOM kill is near")


def _cap(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_NOTE_BYTES:
        return text
    return data[: MAX_NOTE_BYTES - 3].decode("utf-8", errors="ignore") + "..."
