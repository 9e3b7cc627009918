"""One line per event for people: who, what, how much; ANSI colour only where asked for."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TextIO

from tracer.schema import MEMCG_OOM, NEAR_OOM, OOM_KILL, SUMMARY
from tracer.timefmt import parse_rfc3339

_RESET: Final = "\x1b[0m"
_STYLE: Final = {
    "time": "\x1b[2m",  # dim
    "who": "\x1b[1m",  # bold
    OOM_KILL: "\x1b[1;31m",  # bold red
    MEMCG_OOM: "\x1b[31m",  # red
    NEAR_OOM: "\x1b[33m",  # yellow
}


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal could act on (C0/C1 controls such as ESC, DEL,
    bidi and other format characters, line separators) written as a visible escape: comms,
    pod names and labels are chosen by whoever runs the workload, and must not drive the
    reader's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _visible(c) for c in text)


def _visible(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def use_colour(mode: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """--color: always / never; auto: a terminal and no NO_COLOR (https://no-color.org)."""
    if mode != "auto":
        return mode == "always"
    if environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def human_bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _clock(ts: object) -> str:
    """The event's time of day in the local zone, to the millisecond."""
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromtimestamp(parse_rfc3339(ts))
            return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return "--:--:--.---"


def who(event: Mapping[str, Any]) -> str:
    """Whom the event is about: namespace/pod/container when enrichment named them, else the
    pod uid and container id from the cgroup path, a host runtime's container or machine, a
    systemd unit, or the cgroup."""
    namespace, pod, container = event.get("namespace"), event.get("pod"), event.get("container")
    if namespace or pod:
        text = f"{namespace or '?'}/{pod or '?'}" + (f"/{container}" if container else "")
    elif event.get("pod_uid"):
        text = f"pod:{str(event['pod_uid'])[:8]}"
        if event.get("container_id"):
            text += f"/{str(event['container_id'])[:12]}"
    elif event.get("container_id"):
        namespace = f"{event['runtime_namespace']}/" if event.get("runtime_namespace") else ""
        text = f"{event.get('runtime') or 'container'}:{namespace}{str(event['container_id'])[:12]}"
    elif event.get("machine"):
        text = f"{event.get('runtime') or 'machine'}:{event['machine']}"
    elif event.get("unit"):
        text = str(event["unit"])
    elif event.get("cgroup"):
        text = str(event["cgroup"])
    else:
        text = "-"
    if event.get("vm"):
        text += f" vm:{event['vm']}"
    return text


def _task(event: Mapping[str, Any], prefix: str) -> str | None:
    pid = event.get(f"{prefix}_pid")
    if pid is None:
        return None
    return f"{event.get(f'{prefix}_comm') or '?'}[{pid}]"


def _usage(event: Mapping[str, Any]) -> str | None:
    if event.get("usage_bytes") is None:
        return None
    return f"usage={human_bytes(event['usage_bytes'])}/{human_bytes(event.get('limit_bytes'))}"


def details(event: Mapping[str, Any]) -> str:
    kind = event.get("event")
    parts: list[str | None] = []
    if kind == OOM_KILL:
        victim = _task(event, "victim")
        parts.append(f"killed {victim}" if victim else "killed ?")
        for field in ("anon_rss_bytes", "file_rss_bytes", "shmem_rss_bytes"):
            if event.get(field) is not None:
                parts.append(f"{field.removesuffix('_bytes')}={human_bytes(event[field])}")
        for field in ("oom_score_adj", "constraint"):
            if event.get(field) is not None:
                parts.append(f"{field}={event[field]}")
        if event.get("trigger_pid") not in (None, event.get("victim_pid")):
            parts.append(f"trigger={_task(event, 'trigger')}")
    elif kind == MEMCG_OOM:
        parts.append(_usage(event))
        for field in ("failcnt", "order", "gfp_mask"):
            if event.get(field) is not None:
                parts.append(f"{field}={event[field]}")
        trigger = _task(event, "trigger")
        parts.append(f"trigger={trigger}" if trigger else None)
    elif kind == NEAR_OOM and event.get("phase") == SUMMARY:
        interval = event.get("interval_s")
        parts.append(f"{interval:g}s:" if isinstance(interval, int | float) else "summary:")
        if event.get("reclaim_calls") is not None:
            reclaim = f"reclaims={event['reclaim_calls']}"
            if event.get("reclaim_time_ns") is not None:
                reclaim += f" ({event['reclaim_time_ns'] / 1e6:.1f}ms)"
            parts.append(reclaim)
        if event.get("reclaimed_bytes") is not None:
            parts.append(f"reclaimed={human_bytes(event['reclaimed_bytes'])}")
        if event.get("charge_failures") is not None:
            parts.append(f"charge_failures={event['charge_failures']}")
        parts.append(_usage(event))
    elif kind == NEAR_OOM:
        parts.append("first charge failure:")
        parts.append(_usage(event))
        trigger = _task(event, "trigger")
        parts.append(f"trigger={trigger}" if trigger else None)
    return " ".join(p for p in parts if p)


def render(event: Mapping[str, Any], colour: bool = False) -> str:
    """One line: local time, kind, whom it is about, what happened."""

    def paint(style: str, text: str) -> str:
        return f"{_STYLE[style]}{text}{_RESET}" if colour and style in _STYLE else text

    # Everything taken from the event is made terminal-safe before our own colours go around it.
    kind = terminal_safe(str(event.get("event")))
    when = paint("time", _clock(event.get("ts")))
    line = f"{when}  {paint(kind, f'{kind:<9}')}  {paint('who', terminal_safe(who(event)))}"
    rest = terminal_safe(details(event))
    return f"{line}  {rest}" if rest else line


