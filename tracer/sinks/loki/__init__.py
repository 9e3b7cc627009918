"""A sink that pushes events straight to Grafana Loki (`oomtrace run --loki-url`).

Loki's documented push API, `POST /loki/api/v1/push`: by default a snappy-compressed
protobuf `logproto.PushRequest`, or the JSON form with `--loki-encoding json`. Each line is
the same JSON object the tracer prints on stdout, in a stream with few, bounded labels.

    flags.py       the --loki-* flags → a LokiConfig
    config.py      LokiConfig: URL, auth, TLS and batching, validated up front
    encoding.py    events → stream labels and entries → the protobuf+snappy or JSON push body
    sink.py        LokiSink: the bounded buffer, batching, the sender thread, retries
    push.py        one POST to Loki and what its answer means (retry, reject, Retry-After)
    accounting.py  the sink's counters, and its diagnostics when delivery fails or recovers
"""

from tracer.sinks.loki.accounting import DROP_REASONS
from tracer.sinks.loki.config import ENCODINGS, PUSH_PATH, LokiConfig, parse_size
from tracer.sinks.loki.encoding import (
    LABEL_NAMES,
    encode,
    encode_json,
    encode_protobuf,
    label_string,
    stream_labels,
    timestamp_ns,
)
from tracer.sinks.loki.flags import add_arguments, config_from_args
from tracer.sinks.loki.push import REQUEST_RESULTS, retry_after_s
from tracer.sinks.loki.sink import ENTRY_OVERHEAD_BYTES, LokiSink

__all__ = [
    "DROP_REASONS",
    "ENCODINGS",
    "ENTRY_OVERHEAD_BYTES",
    "LABEL_NAMES",
    "PUSH_PATH",
    "REQUEST_RESULTS",
    "LokiConfig",
    "LokiSink",
    "add_arguments",
    "config_from_args",
    "encode",
    "encode_json",
    "encode_protobuf",
    "label_string",
    "parse_size",
    "retry_after_s",
    "stream_labels",
    "timestamp_ns",
]
