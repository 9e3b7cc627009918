"""Which Kubernetes Events to create or update for an oomtrace event, aggregated as kubelet does.

An Event is about one object (`regarding`) and one reason. Repeats of it while its series is
active update the Event's `series` (count, lastObservedTime) instead of making new ones:
kills of one pod within KILL_SERIES_S of the last, and a sustained near-OOM for as long as
the pod keeps reclaiming. Pure logic on the event loop's thread: no I/O, no clock of its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from tracer import schema
from tracer.sinks.kube_events.notes import REPORTING_CONTROLLER, kill_note, near_oom_note

OOM_KILLED: Final = "OOMKilled"
NEAR_OOM: Final = "NearOOM"
# Kills of one pod closer than this to the previous one are one series.
KILL_SERIES_S: Final = 10.0
# A near-OOM is sustained after this long with a summary in every interval...
SUSTAINED_S: Final = 30.0
MIN_INTERVALS: Final = 3
# ...and a series update goes out at most this often while it lasts.
NEAR_OOM_PATCH_EVERY_S: Final = 60.0
# A series with nothing new for this long is over; the next occurrence is a new Event
# (client-go's events library uses 6 minutes).
SERIES_IDLE_S: Final = 360.0
MAX_SERIES: Final = 4096
_MAX_NAME: Final = 253
_SUFFIX_LEN: Final = 17  # "." + 16 hex digits


@dataclass(frozen=True)
class Action:
    """One request for the writer: create an Event, or patch the series of one already created."""

    verb: str  # "create" or "patch"
    reason: str
    namespace: str
    name: str
    body: dict[str, Any]


@dataclass
class _Series:
    name: str
    namespace: str
    started: float
    last_seen: float
    count: int = 1
    last_patch: float = 0.0


@dataclass
class _Reclaim:
    """A pod's run of consecutive near-OOM summaries."""

    first: float
    last: float
    intervals: int = 1


@dataclass
class EventPlanner:
    node: str
    _series: dict[tuple[str, str, str, str], _Series] = field(default_factory=dict)
    _reclaim: dict[tuple[str, str], _Reclaim] = field(default_factory=dict)

    def plan(self, event: dict[str, Any], now: float, wall: str) -> list[Action]:
        """The requests `event` calls for (`now`: monotonic seconds; `wall`: RFC 3339 µs time)."""
        namespace, pod = event.get("namespace"), event.get("pod")
        if not isinstance(namespace, str) or not isinstance(pod, str) or not namespace or not pod:
            return []  # no pod name to put an Event on (no Kubernetes metadata for it)
        kind = event.get("event")
        if kind == schema.OOM_KILL:
            ts = event.get("ts")
            when = ts if isinstance(ts, str) else wall
            note = kill_note(event)
            actions = [
                self._occurrence(OOM_KILLED, "Kill", _pod_ref(event), note, when, now, KILL_SERIES_S, 0.0)
            ]
            vmi = _vmi_ref(event)
            if vmi is not None:
                actions.append(self._occurrence(OOM_KILLED, "Kill", vmi, note, when, now, KILL_SERIES_S, 0.0))
            return [a for a in actions if a is not None]
        if kind == schema.NEAR_OOM and event.get("phase") == schema.SUMMARY:
            return self._near_oom(event, namespace, pod, now, wall)
        return []

    def forget(self, namespace: str, name: str) -> None:
        """The Event `name` could not be created: its repeats must not patch a missing object."""
        for key, series in list(self._series.items()):
            if series.namespace == namespace and series.name == name:
                del self._series[key]

    def _near_oom(
        self, event: dict[str, Any], namespace: str, pod: str, now: float, wall: str
    ) -> list[Action]:
        interval = event.get("interval_s")
        gap = 2.5 * float(interval) if isinstance(interval, int | float) and interval > 0 else 30.0
        run = self._reclaim.get((namespace, pod))
        if run is None or now - run.last > gap:
            run = self._reclaim[(namespace, pod)] = _Reclaim(now, now)
            self._bound(self._reclaim)
        else:
            run.last = now
            run.intervals += 1
        if run.intervals < MIN_INTERVALS or now - run.first < SUSTAINED_S:
            return []
        note = near_oom_note(event, run.intervals, now - run.first)
        action = self._occurrence(
            NEAR_OOM, "Reclaim", _pod_ref(event), note, wall, now, SERIES_IDLE_S, NEAR_OOM_PATCH_EVERY_S
        )
        return [action] if action is not None else []

    def _occurrence(
        self,
        reason: str,
        action: str,
        regarding: dict[str, str],
        note: str,
        when: str,
        now: float,
        series_gap_s: float,
        patch_every_s: float,
    ) -> Action | None:
        key = (regarding["kind"], regarding["namespace"], regarding["name"], reason)
        series = self._series.get(key)
        if series is not None and now - series.last_seen <= series_gap_s:
            series.count += 1
            series.last_seen = now
            if now - series.last_patch < patch_every_s:
                return None  # counted; the next update carries it
            series.last_patch = now
            body: dict[str, Any] = {"series": {"count": series.count, "lastObservedTime": when}}
            return Action("patch", reason, series.namespace, series.name, body)
        name = _event_name(regarding["name"])
        self._series[key] = _Series(name, regarding["namespace"], now, now, last_patch=now)
        self._bound(self._series)
        body = {  # events.k8s.io/v1 Event
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": regarding["namespace"]},
            "eventTime": when,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.node[:128],
            "action": action,
            "reason": reason,
            "type": "Warning",
            "regarding": regarding,
            "note": note,
        }
        return Action("create", reason, regarding["namespace"], name, body)

    @staticmethod
    def _bound(table: dict[Any, Any]) -> None:
        while len(table) > MAX_SERIES:
            del table[next(iter(table))]


def _pod_ref(event: dict[str, Any]) -> dict[str, str]:
    ref = {"apiVersion": "v1", "kind": "Pod", "namespace": event["namespace"], "name": event["pod"]}
    if isinstance(event.get("pod_uid"), str):
        ref["uid"] = event["pod_uid"]
    return ref


def _vmi_ref(event: dict[str, Any]) -> dict[str, str] | None:
    """The VirtualMachineInstance a KubeVirt VM pod runs: its owner, else the VM's name."""
    owner = event.get("owner")
    name = None
    if (
        isinstance(owner, dict)
        and owner.get("kind") == "VirtualMachineInstance"
        and isinstance(owner.get("name"), str)
    ):
        name = owner["name"]
    elif isinstance(event.get("vm"), str) and event.get("pod_uid") is not None:
        namespace, _, vmi = event["vm"].partition("/")
        name = vmi if namespace == event["namespace"] and vmi else None
    if name is None:
        return None
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "namespace": event["namespace"],
        "name": name,
    }


def _event_name(regarding_name: str) -> str:
    """`<object>.<16 hex>`, as kubelet names its Events; within a DNS subdomain's 253 characters."""
    return f"{regarding_name[: _MAX_NAME - _SUFFIX_LEN]}.{secrets.token_hex(8)}"
