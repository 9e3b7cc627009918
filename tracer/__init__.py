"""oomtrace: eBPF tracer for memcg OOMs, OOM kills and near-OOM charge failures.

The pipeline, one package per stage (README, "How it works"):

    kernel/   what the kernel allows, the BPF program text, loading it (the only bcc user)
    sources/  events from the ring buffer and the near-OOM maps, or from /dev/kmsg
    decode    BPF records (bpf/oomtrace.h) → events with kernel ids
    resolve/  cgroup id → path → pod, container, runtime tags
    enrich/   Kubernetes names, VM attribution, memory snapshot, overhead advice
    sinks/    stdout, Prometheus metrics, the /events stream, Loki
    http/     /metrics, /healthz, /events
    cli/      the command line, and the composition root that builds it all (cli/run.py)

The names below are the package's public API, imported on first use: `import tracer` alone
loads none of the pipeline.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # the event schema and its vocabulary
    "KINDS": "tracer.schema",
    "NEAR_OOM": "tracer.schema",
    "MEMCG_OOM": "tracer.schema",
    "OOM_KILL": "tracer.schema",
    "blank_event": "tracer.schema",
    # the pipeline and what runs it
    "Pipeline": "tracer.pipeline",
    "Stage": "tracer.pipeline",
    "Sink": "tracer.pipeline",
    "Daemon": "tracer.daemon",
    "RunConfig": "tracer.daemon",
    "build_daemon": "tracer.cli.run",
    # the stages' building blocks, usable on their own
    "Decoder": "tracer.decode",
    "CgroupResolver": "tracer.resolve.cgroups",
    "tags_for_path": "tracer.resolve.tags",
    "OomReportParser": "tracer.sources.kmsg",
    "KmsgReader": "tracer.sources.kmsg",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
