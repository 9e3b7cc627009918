import io
import json
import re
from typing import Any

import pytest

from tracer import schema
from tracer.diagnostics import stderr_log
from tracer.sinks.stdout import StdoutSink

RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def published(kind: str, **fields: Any) -> dict[str, Any]:
    e = schema.blank_event(kind)
    e.update(
        {"ts": "2026-01-01T00:00:00.000001Z", "node": "node-1", "tier": "fentry", "ktime_ns": 1, **fields}
    )
    return e


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def write_one(out: io.StringIO | None, event: dict[str, object]) -> None:
    sink = StdoutSink(out)
    sink.write(event)
    sink.flush()


@pytest.mark.parametrize("kind", schema.KINDS)
def test_one_event_is_exactly_one_json_line_with_every_field(kind: str) -> None:
    out = io.StringIO()
    event = published(kind)
    write_one(out, event)
    (line,) = lines(out)
    assert json.loads(line) == event


@pytest.mark.parametrize("kind", schema.KINDS)
def test_event_ts_node_and_tier_come_first_then_the_schema_order(kind: str) -> None:
    out = io.StringIO()
    write_one(out, published(kind))
    keys = list(json.loads(lines(out)[0]))
    assert keys[:4] == ["event", "ts", "node", "tier"]
    rest = [k for k in schema.blank_event(kind) if k not in keys[:4]]
    assert keys[4:] == rest


def test_key_order_does_not_depend_on_the_order_fields_were_set() -> None:
    out = io.StringIO()
    shuffled = dict(reversed(list(published(schema.OOM_KILL).items())))
    write_one(out, shuffled)
    assert list(json.loads(lines(out)[0]))[:4] == ["event", "ts", "node", "tier"]


def test_each_event_is_written_on_its_own_line() -> None:
    out = io.StringIO()
    writer = StdoutSink(out)
    for kind in schema.KINDS:
        writer.write(published(kind, trigger_comm="multi\nline"))
    writer.flush()
    assert [json.loads(line)["event"] for line in lines(out)] == list(schema.KINDS)
    assert json.loads(lines(out)[0])["trigger_comm"] == "multi\nline"


def test_write_does_not_change_the_event() -> None:
    event = published(schema.NEAR_OOM)
    before = dict(event)
    StdoutSink(io.StringIO()).write(event)
    assert event == before


def test_unknown_kind_is_a_value_error_and_writes_nothing() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError, match="not an event kind: 'oom'"):
        StdoutSink(out).write({"event": "oom", "ts": None})
    assert out.getvalue() == ""


def test_lines_wait_for_flush_and_leave_in_one_write() -> None:
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    sink = StdoutSink(Recording())
    sink.write(published(schema.NEAR_OOM))
    sink.write(published(schema.OOM_KILL))
    assert writes == []
    sink.flush()
    sink.flush()  # nothing new: no empty write
    assert len(writes) == 1
    assert [json.loads(x)["event"] for x in writes[0].splitlines()] == ["near_oom", "oom_kill"]


def test_close_writes_what_is_still_buffered() -> None:
    out = io.StringIO()
    sink = StdoutSink(out)
    sink.write(published(schema.OOM_KILL))
    sink.close()
    assert json.loads(out.getvalue())["event"] == "oom_kill"


def test_diagnostics_are_json_lines_with_ts_level_and_msg_first() -> None:
    out = io.StringIO()
    log = stderr_log(out)
    log.info("probe", probe="oom_kill", tier="fentry")
    log.warning("events lost in the kernel", count=3)
    log.error("undecodable record")
    records = [json.loads(line) for line in lines(out)]
    assert [list(r)[:3] for r in records] == [["ts", "level", "msg"]] * 3
    assert [(r["level"], r["msg"]) for r in records] == [
        ("info", "probe"),
        ("warning", "events lost in the kernel"),
        ("error", "undecodable record"),
    ]
    assert records[0]["probe"] == "oom_kill" and records[1]["count"] == 3
    assert all(RFC3339_Z.fullmatch(r["ts"]) for r in records)


def test_diagnostics_never_write_to_the_event_stream(capsys: pytest.CaptureFixture[str]) -> None:
    stderr_log().info("hello")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["msg"] == "hello"


def test_events_go_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    write_one(None, published(schema.NEAR_OOM))
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "near_oom"
    assert captured.err == ""


def test_stdout_and_the_event_stream_send_one_rendering_of_each_event() -> None:
    # A kill with its snapshot takes tens of µs to render, on the way to its line: the daemon
    # renders it once, and /events sends exactly the text stdout wrote.
    from unittest import mock

    from tracer.cli.flags import build_parser
    from tracer.cli.run import build_daemon, run_config
    from tracer.sinks.stream.query import EventFilter

    args = build_parser().parse_args(["run", "--metrics-address", "127.0.0.1:0"])
    out = io.StringIO()
    daemon = build_daemon(run_config(args), args, stdout=out)
    assert daemon.stream is not None
    first = daemon.stream.last_id
    kill = published(schema.OOM_KILL, victim_pid=4242, victim_comm="qemu-kvm")
    with mock.patch("tracer.sinks.event_json.json.dumps", wraps=json.dumps) as dumps:
        daemon.pipeline.publish(kill)
        daemon.pipeline.flush()
    assert dumps.call_count == 1
    _, replay, _ = daemon.stream.subscribe(EventFilter(), after_id=first)
    (line,) = lines(out)
    assert [entry.json for entry in replay] == [line]
    assert json.loads(line)["victim_pid"] == 4242
