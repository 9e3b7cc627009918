"""The failure counter every enrichment stage shares: events emitted without what a stage adds.

`oomtrace_enrichment_failures_total{stage,reason}`. The Kubernetes stage has a reason for each
way a pod source can fail; the other stages count only their own bugs (`reason="error"`).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter

# Reasons an event went out without names (label values of the failures metric).
TIMEOUT: Final = "timeout"  # the refresh did not answer in time
NOT_FOUND: Final = "not_found"  # the source answered and does not know the pod
UNAVAILABLE: Final = "unavailable"  # the source cannot be reached or answered garbage
UNAUTHORIZED: Final = "unauthorized"  # 401: credentials rejected
FORBIDDEN: Final = "forbidden"  # 403: not allowed to list pods
ERROR: Final = "error"  # a bug of ours, logged
REASONS: Final = (TIMEOUT, NOT_FOUND, UNAVAILABLE, UNAUTHORIZED, FORBIDDEN, ERROR)
STAGES: Final = ("kube", "vm", "memsnap", "overhead")


def enrichment_failures(registry: CollectorRegistry) -> Counter:
    """`oomtrace_enrichment_failures_total{stage,reason}`, every known series present from the start."""
    counter = Counter(
        "oomtrace_enrichment_failures_total",
        "Events emitted without the names an enrichment stage should have added, by stage and reason.",
        ["stage", "reason"],
        registry=registry,
    )
    for reason in REASONS:
        counter.labels("kube", reason)
    for stage in STAGES[1:]:
        counter.labels(stage, ERROR)
    return counter
