"""The kernel's own OOM report, parsed line by line into memcg_oom and oom_kill events.

Three uses: the oracle the kernel tests compare BPF events against, the
`--source kmsg` fallback, and the baseline the benchmarks measure against.
Wording covered: kernels 5.4 to 6.18 (mm/oom_kill.c, mm/memcontrol.c,
lib/dump_stack.c).
"""

import re
from dataclasses import dataclass
from typing import Any, Final

from tracer.schema import CONSTRAINTS, KMSG, MEMCG_OOM, OOM_KILL, blank_event

# Digit runs are bounded: int() refuses strings over 4300 digits, and no kernel
# counter printed here has more than 20.
_N: Final = r"[0-9]{1,20}"

# "<comm> invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=986"
# (4.x also printed "nodemask=..." between gfp_mask and order). The comm comes
# first, so the fixed-format tail after the last "invoked oom-killer: " decides.
_INVOKED_RE: Final = re.compile(
    r"(?P<comm>.*) invoked oom-killer: gfp_mask=(?P<gfp_mask>0x[0-9a-fA-F]{1,16})\([^)]*\),"
    r"(?: nodemask=[^,]*,)? order=(?P<order>-?[0-9]{1,4}), oom_score_adj=-?[0-9]{1,5}",
    re.ASCII | re.DOTALL,  # a comm may hold newlines (see _one_comm_line)
)
# dump_stack(): "CPU: 40 PID: 40785 Comm: virt-launcher Tainted: ..."; newer kernels
# print "CPU: 1 UID: 0 PID: ...". PID is the thread id, not the tgid.
_CPU_RE: Final = re.compile(
    rf"CPU: [0-9]{{1,6}} (?:UID: {_N} )?PID: (?P<pid>[0-9]{{1,10}}) Comm: (?P<rest>.*)", re.ASCII | re.DOTALL
)
# Printed for memcg OOMs only, on cgroup v1 and v2 alike.
_MEMORY_RE: Final = re.compile(
    rf"memory: usage (?P<usage>{_N})kB, limit (?P<limit>{_N})kB, failcnt (?P<failcnt>{_N})", re.ASCII
)
_STATS_RE: Final = re.compile(r"Memory cgroup stats for (?P<memcg>/.*?):?")
# dump_oom_summary(): "oom-kill:constraint=...,nodemask=...,cpuset=...,mems_allowed=...,
# oom_memcg=...|global_oom,task_memcg=...,task=<comm>,pid=<pid>,uid=<uid>". cpuset,
# mems_allowed and the memcg parts are absent without CONFIG_CPUSETS / CONFIG_MEMCG.
_SUMMARY_HEAD_RE: Final = re.compile(r"oom-kill:constraint=(CONSTRAINT_[A-Z_]{1,20}),nodemask=", re.ASCII)
_SUMMARY_TAIL_RE: Final = re.compile(rf",pid=([0-9]{{1,10}}),uid=({_N})\Z", re.ASCII)
_MEMS_RE: Final = re.compile(r"[0-9,-]*", re.ASCII)
# After each key, the keys that may come next, in the kernel's fixed order.
_SUMMARY_NEXT: Final[dict[str, tuple[str, ...]]] = {
    "nodemask": ("cpuset", "oom_memcg", "global_oom", "task_memcg", "task"),
    "cpuset": ("mems_allowed",),
    "mems_allowed": ("oom_memcg", "global_oom", "task_memcg", "task"),
    "oom_memcg": ("task_memcg", "task"),
    "global_oom": ("task_memcg", "task"),
    "task_memcg": ("task",),
}
# __oom_kill_process(). The prefix is "Memory cgroup out of memory", "Out of memory"
# or "Out of memory (oom_kill_allocating_task)" (none before 4.19). Older kernels (e.g. 5.3) end the
# line at shmem-rss. The comm may hold spaces and parentheses; the fixed-format
# tail after it decides where it ends.
_KILLED_RE: Final = re.compile(
    rf"(?:[^:]*: )?Killed process (?P<pid>[0-9]{{1,10}}) \((?P<comm>.*)\) total-vm:(?P<total_vm>{_N})kB,"
    rf" anon-rss:(?P<anon_rss>{_N})kB, file-rss:(?P<file_rss>{_N})kB, shmem-rss:(?P<shmem_rss>{_N})kB"
    rf"(?:, UID:(?P<uid>{_N}))?(?: pgtables:(?P<pgtables>{_N})kB)?"
    r"(?: oom_score_adj:(?P<adj>-?[0-9]{1,5}))?",
    re.ASCII | re.DOTALL,
)
# The oom_kill fields a "Killed process" line alone gives (UID, pgtables and oom_score_adj on
# kernels that print them): what any reader of the kernel log learns of every kill.
KILLED_LINE_FIELDS: Final = (
    "victim_pid",
    "victim_comm",
    "victim_uid",
    "total_vm_bytes",
    "anon_rss_bytes",
    "file_rss_bytes",
    "shmem_rss_bytes",
    "pgtables_bytes",
    "oom_score_adj",
)
# Longer than any real oom-kill: line (two cgroup paths of at most 4 KiB each).
_MAX_SUMMARY: Final = 16384
_NO_VICTIM: Final = "Out of memory and no killable processes..."


# The pr_cont() parts that follow the first part of an oom-kill: line (mm/oom_kill.c
# dump_oom_victim(), cpuset_print_current_mems_allowed(), mem_cgroup_print_oom_context()).
_SUMMARY_PARTS: Final = (",cpuset=", ",mems_allowed=", ",oom_memcg=", ",global_oom", ",task_memcg=", ",task=")


def _one_comm_line(message: str) -> bool:
    """Whether a record holding newlines is one line that prints a comm.

    prctl(PR_SET_NAME) takes any byte but NUL, so a comm may hold "\\n" (/dev/kmsg escapes it
    and the reader restores it). Such a record must be parsed whole, not split as the
    multi-line dumps (memcg stats) are: else a newline in a name would lose its kill.
    """
    return bool(
        _KILLED_RE.fullmatch(message)
        or _INVOKED_RE.fullmatch(message)
        or _CPU_RE.fullmatch(message)
        or (message.startswith(("oom-kill:", ",")) and _SUMMARY_TAIL_RE.search(message))
    )


def _continues_summary(partial: str, line: str) -> bool:
    """Whether `line` can be the next pr_cont() part of a split oom-kill: line.

    The parts start with one of _SUMMARY_PARTS or, after a "...memcg=" part, are a
    cgroup path. Another CPU's line that merely starts with "," is not one of them.
    """
    return line.startswith(_SUMMARY_PARTS) or (partial.endswith("memcg=") and line.startswith("/"))


def _summary_marker(key: str) -> str:
    return ",global_oom" if key == "global_oom" else f",{key}="


def _parse_summary(line: str) -> dict[str, str] | None:
    """The fields of an oom-kill: line by key, or None if it is not a whole one."""
    head = _SUMMARY_HEAD_RE.match(line)
    tail = _SUMMARY_TAIL_RE.search(line, head.end()) if head else None
    if head is None or tail is None:
        return None
    body = line[head.end() : tail.start()]
    fields = {"constraint": head[1], "pid": tail[1], "uid": tail[2]}
    key, start = "nodemask", 0
    while key != "task":
        # A value ends at the nearest key that may follow it. The cpuset name and
        # the paths may hold commas; and since the comm (printed last, chosen by
        # any process) is reached last, a ",task=" in it cannot stretch a path.
        found = [
            (pos, nxt) for nxt in _SUMMARY_NEXT[key] if (pos := body.find(_summary_marker(nxt), start)) >= 0
        ]
        if not found:
            return None
        pos, nxt = min(found)
        fields[key] = body[start:pos]
        key, start = nxt, pos + len(_summary_marker(nxt))
    fields["task"] = body[start:]
    if fields.get("global_oom", "") or not _MEMS_RE.fullmatch(fields.get("mems_allowed", "")):
        return None
    return fields


# PAGE_COUNTER_MAX (LONG_MAX / PAGE_SIZE) pages as the kernel prints them with 4 KiB pages:
# 9007199254740988kB. Anything this large means "max".
_UNLIMITED_BYTES = 9007199254740988 * 1024


def _kib(text: str | None) -> int | None:
    return None if text is None else int(text) * 1024


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


@dataclass
class _Report:
    """The header of one OOM report, from "invoked oom-killer" to the oom-kill: line."""

    ktime_ns: int | None
    trigger_comm: str
    gfp_mask: str
    order: int
    trigger_pid: int | None = None
    usage_bytes: int | None = None
    limit_bytes: int | None = None
    failcnt: int | None = None
    stats_memcg: str | None = None
    memcg_oom_done: bool = False


@dataclass
class _Summary:
    """The oom-kill: line, waiting for the Killed line of the same pid."""

    victim_pid: int
    victim_uid: int
    constraint: str | None
    oom_memcg: str | None
    task_memcg: str | None
    report: _Report | None


class OomReportParser:
    """Turns kernel log messages, fed one at a time, into memcg_oom and oom_kill events.

    Pure and incremental: no I/O, no clock. The kernel prints one report at a time
    (under oom_lock), so one pending report is enough; other printk output may
    interleave and is ignored.
    """

    def __init__(self) -> None:
        self._report: _Report | None = None
        self._summary: _Summary | None = None
        # An oom-kill: line cut in two when another CPU printed between its pr_cont() parts.
        self._partial_summary: str | None = None
        # pid → ktime of its "Killed process" line: a memory.oom.group kill prints the chosen
        # victim's line twice (once as the victim, once as a group member) for one kill.
        self._recent_kills: dict[int, int | None] = {}

    def feed(self, message: str, ktime_ns: int | None) -> list[dict[str, Any]]:
        """Parse one message; return the events it completes. Never raises on bad input."""
        events: list[dict[str, Any]] = []
        # One record may hold several lines (e.g. the memcg stat dump).
        lines = [message] if "\n" in message and _one_comm_line(message) else message.split("\n")
        for line in lines:
            self._feed_line(line, ktime_ns, events)
        return events

    def _feed_line(self, line: str, ktime_ns: int | None, events: list[dict[str, Any]]) -> None:
        partial = self._partial_summary
        if partial is not None and _continues_summary(partial, line):
            self._partial_summary = None
            self._on_summary(partial + line, events)
        elif line.startswith("oom-kill:"):
            self._on_summary(line, events)
        elif " invoked oom-killer: " in line:
            self._on_invoked(line, ktime_ns)
        elif "Killed process " in line:
            self._on_killed(line, ktime_ns, events)
        elif self._report is not None:
            self._on_report_line(self._report, line, events)

    def _on_invoked(self, line: str, ktime_ns: int | None) -> None:
        # A new report ends the previous one, even when this line is unreadable:
        # its header must not leak into the new report's kill.
        self._report = None
        self._summary = None
        self._partial_summary = None
        m = _INVOKED_RE.fullmatch(line)
        if m is not None:
            self._report = _Report(
                ktime_ns=ktime_ns,
                trigger_comm=m["comm"],
                gfp_mask=m["gfp_mask"],
                order=int(m["order"]),
            )

    def _on_report_line(self, report: _Report, line: str, events: list[dict[str, Any]]) -> None:
        if line.startswith("CPU: "):
            m = _CPU_RE.fullmatch(line)
            # Only the trigger's own stack dump: the comm check keeps out a WARN
            # from another task that landed inside the report.
            if m and report.trigger_pid is None and m["rest"].startswith(report.trigger_comm + " "):
                report.trigger_pid = int(m["pid"])
        elif line.startswith("memory: "):
            m = _MEMORY_RE.fullmatch(line)
            if m and report.usage_bytes is None:
                report.usage_bytes = _kib(m["usage"])
                limit = _kib(m["limit"])
                # An unlimited cgroup prints PAGE_COUNTER_MAX pages in kB: no limit, not a number.
                report.limit_bytes = None if limit is not None and limit >= _UNLIMITED_BYTES else limit
                report.failcnt = int(m["failcnt"])
        elif line.startswith("Memory cgroup stats for "):
            m = _STATS_RE.fullmatch(line)
            if m and report.stats_memcg is None:
                report.stats_memcg = m["memcg"]
        elif line == _NO_VICTIM:
            # A memcg OOM with nothing to kill prints no oom-kill: line; the
            # stats line is then the only place that names the cgroup.
            if report.usage_bytes is not None:
                events.append(self._memcg_oom(report, report.stats_memcg))
            self._report = None

    def _on_summary(self, line: str, events: list[dict[str, Any]]) -> None:
        m = _parse_summary(line)
        if m is None:
            # The tail (",task=...,pid=...,uid=...") is one pr_cont(): without it
            # this may be the first part of a split line; with it, garbage.
            self._partial_summary = line if ",task=" not in line and len(line) < _MAX_SUMMARY else None
            return
        report, self._report = self._report, None
        constraint = CONSTRAINTS.get(m["constraint"])
        self._summary = _Summary(
            victim_pid=int(m["pid"]),
            victim_uid=int(m["uid"]),
            constraint=constraint,
            oom_memcg=m.get("oom_memcg"),
            task_memcg=m.get("task_memcg"),
            report=report,
        )
        if constraint == "memcg" and report is not None and not report.memcg_oom_done:
            report.memcg_oom_done = True
            events.append(self._memcg_oom(report, m.get("oom_memcg")))

    def _on_killed(self, line: str, ktime_ns: int | None, events: list[dict[str, Any]]) -> None:
        m = _KILLED_RE.fullmatch(line)
        if m is None:
            return
        victim_pid = int(m["pid"])
        if self._repeats_a_kill(victim_pid, ktime_ns):
            return
        # The summary belongs to the first kill after it. A different pid means its
        # own kill was skipped (victim already exiting) and this kill's header was
        # rate-limited away: attach nothing, and never to a later kill either.
        summary, self._summary = self._summary, None
        # A kill ends its report, even one whose oom-kill: line was lost.
        self._report = None
        self._partial_summary = None
        if summary is not None and summary.victim_pid != victim_pid:
            summary = None

        event = blank_event(OOM_KILL)
        event.update(
            ktime_ns=ktime_ns,
            tier=KMSG,
            victim_pid=victim_pid,
            victim_comm=m["comm"],
            victim_uid=_int(m["uid"]),
            total_vm_bytes=_kib(m["total_vm"]),
            anon_rss_bytes=_kib(m["anon_rss"]),
            file_rss_bytes=_kib(m["file_rss"]),
            shmem_rss_bytes=_kib(m["shmem_rss"]),
            pgtables_bytes=_kib(m["pgtables"]),
            oom_score_adj=_int(m["adj"]),
        )
        if summary is not None:
            event.update(
                constraint=summary.constraint,
                oom_memcg=summary.oom_memcg,
                task_memcg=summary.task_memcg,
            )
            if event["victim_uid"] is None:
                # Kernels before UID was added to the Killed line still print it here.
                event["victim_uid"] = summary.victim_uid
            if summary.report is not None:
                event.update(
                    trigger_pid=summary.report.trigger_pid,
                    trigger_comm=summary.report.trigger_comm,
                )
        events.append(event)

    def _repeats_a_kill(self, pid: int, ktime_ns: int | None) -> bool:
        """A second "Killed process" line for a pid within a few seconds is the same kill
        (memory.oom.group); a pid is not reused that fast."""
        window_ns = 5_000_000_000
        if ktime_ns is not None:
            self._recent_kills = {
                p: t for p, t in self._recent_kills.items() if t is not None and ktime_ns - t < window_ns
            }
        repeated = pid in self._recent_kills
        self._recent_kills[pid] = ktime_ns
        return repeated

    @staticmethod
    def _memcg_oom(report: _Report, oom_memcg: str | None) -> dict[str, Any]:
        event = blank_event(MEMCG_OOM)
        event.update(
            ktime_ns=report.ktime_ns,
            tier=KMSG,
            oom_memcg=oom_memcg,
            usage_bytes=report.usage_bytes,
            limit_bytes=report.limit_bytes,
            failcnt=report.failcnt,
            gfp_mask=report.gfp_mask,
            order=report.order,
            trigger_pid=report.trigger_pid,
            trigger_comm=report.trigger_comm,
        )
        return event
