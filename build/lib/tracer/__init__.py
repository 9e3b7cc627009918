"""oomtrace: eBPF tracer for memcg OOMs, OOM kills and near-OOM charge failures."""

__version__ = "0.1.0"
