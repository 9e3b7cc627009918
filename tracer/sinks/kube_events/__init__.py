"""Kubernetes Events for what oomtrace saw (`oomtrace run --kube apiserver --kube-events`).

An `OOMKilled` Event on the victim's pod — and for a KubeVirt VM also on its
VirtualMachineInstance — for every `oom_kill`, and a `NearOOM` Warning when a pod's reclaim
at its limit is sustained: events.k8s.io/v1, reportingController `oomtrace`, the node as
reportingInstance. Repeats are aggregated into the Event's `series` as kubelet does, never
one Event per charge failure. A background thread posts; the event loop only queues.
"""

from tracer.sinks.kube_events.notes import REPORTING_CONTROLLER, kill_note, near_oom_note
from tracer.sinks.kube_events.series import Action, EventPlanner
from tracer.sinks.kube_events.sink import KubeEventsSink
from tracer.sinks.kube_events.writer import ApiEventWriter, EventWriteError

__all__ = [
    "REPORTING_CONTROLLER", "Action", "ApiEventWriter", "EventPlanner", "EventWriteError", "KubeEventsSink",
    "kill_note", "near_oom_note",
]  # fmt: skip
