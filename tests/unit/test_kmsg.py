"""The kernel-log parser: OOM reports in, schema events out; /dev/kmsg records and clock."""

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer.schema import MEMCG_OOM, OOM_KILL, blank_event
from tracer.sources.kmsg import KILLED_LINE_FIELDS, KmsgReader, OomReportParser, parse_kmsg_record

KIB = 1024
KTIME0 = 5_000_000_000
KTIME_STEP = 1_000

# --- Fixtures: kernel reports as journald / dmesg printed them -----------------

# Seed example 1 (Harvester, SLE 5.14). The seed elides the Killed line; this one
# is made up from the task table (total_vm 4457263 pages, rss 4201766 pages,
# pgtables_bytes 34439168).
HARVESTER_5_14 = """\
Feb 03 19:57:08 ** kernel: virt-launcher invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=986
Feb 03 19:57:08 ** kernel: CPU: 40 PID: 40785 Comm: virt-launcher Tainted: G          I    X    5.14.21-150400.24.60-default #1 SLE15-SP4 9096397fa6646928cc6d185ba417f2af65b536f1
...
Feb 03 19:57:08 ** kernel: memory: usage 17024340kB, limit 17024340kB, failcnt 1243
Feb 03 19:57:08 ** kernel: memory+swap: usage 17024340kB, limit 9007199254740988kB, failcnt 0
Feb 03 19:57:08 ** kernel: kmem: usage 143556kB, limit 9007199254740988kB, failcnt 0
Feb 03 19:57:08 ** kernel: Memory cgroup stats for /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice:
...
Feb 03 19:57:08 ** kernel: Tasks state (memory values in pages):
Feb 03 19:57:08 ** kernel: [  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name
Feb 03 19:57:08 ** kernel: [  38886]     0 38886      243        1    28672        0          -998 pause
Feb 03 19:57:08 ** kernel: [  38917]     0 38917   310400     6921   192512        0           986 virt-launcher-m
Feb 03 19:57:08 ** kernel: [  38934]     0 38934  1200940    25126   954368        0           986 virt-launcher
Feb 03 19:57:08 ** kernel: [  38951]     0 38951   386525     8247   466944        0           986 libvirtd
Feb 03 19:57:08 ** kernel: [  38952]     0 38952    33619     3940   290816        0           986 virtlogd
Feb 03 19:57:08 ** kernel: [  39079]   107 39079  4457263  4201766 34439168        0           986 qemu-system-x86
Feb 03 19:57:08 ** kernel: oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d.scope,mems_allowed=0-1,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice/cri-containerd-0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d.scope,task=qemu-system-x86,pid=39079,uid=107
Feb 03 19:57:08 ** kernel: Memory cgroup out of memory: Killed process 39079 (qemu-system-x86) total-vm:17829052kB, anon-rss:16794392kB, file-rss:12668kB, shmem-rss:4kB, UID:107 pgtables:33632kB oom_score_adj:986
"""  # noqa: E501

# Seed example 2 (Harvester, SLE 5.3.18): a trigger thread whose comm has a space
# and a slash; a Killed line without UID, pgtables and oom_score_adj. The
# "kubepods-urstable" typo in task_memcg is the seed's, kept verbatim.
HARVESTER_5_3 = """\
[Thu May  9 14:52:38 2024] CPU 11/KVM invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=830
[Thu May  9 14:52:38 2024] CPU: 60 PID: 70888 Comm: CPU 11/KVM Not tainted 5.3.18-150300.59.101-default #1 SLE15-SP3
...
[Thu May  9 14:52:38 2024] memory: usage 67579904kB, limit 67579904kB, failcnt 67391
[Thu May  9 14:52:38 2024] memory+swap: usage 0kB, limit 9007199254740988kB, failcnt 0
[Thu May  9 14:52:38 2024] kmem: usage 633636kB, limit 9007199254740988kB, failcnt 0
...
[Thu May  9 14:52:38 2024] Tasks state (memory values in pages):
[Thu May  9 14:52:38 2024] [  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name
[Thu May  9 14:52:38 2024] [  70675]     0 70675      243        1    28672        0          -998 pause
[Thu May  9 14:52:38 2024] [  70728]     0 70728   310400     5467   188416        0           830 virt-launcher-m
[Thu May  9 14:52:38 2024] [  70746]     0 70746  1242373    25104  1073152        0           830 virt-launcher
[Thu May  9 14:52:38 2024] [  70762]     0 70762   455279    14110   770048        0           830 libvirtd
[Thu May  9 14:52:38 2024] [  70763]     0 70763    37704     3916   339968        0           830 virtlogd
[Thu May  9 14:52:38 2024] [  70870]   107 70870 18302464 16718510 135278592        0           830 qemu-system-x86
[Thu May  9 14:52:38 2024] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-100093783c22a3ae1a42e21dd887b7c26eef52d56ba44c7273ef54507b6efe7c.scope,mems_allowed=0-3,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice,task_memcg=/kubepods.slice/kubepods-urstable.slice/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice/cri-containerd-100093783c22a3ae1a42e21dd887b7c26eef52d56ba44c7273ef54507b6efe7c.scope,task=qemu-system-x86,pid=70870,uid=107
[Thu May  9 14:52:38 2024] Memory cgroup out of memory: Killed process 70870 (qemu-system-x86) total-vm:73209856kB, anon-rss:66852088kB, file-rss:21948kB, shmem-rss:4kB
[Thu May  9 14:52:38 2024] oom_reaper: reaped process 70870 (qemu-system-x86), now anon-rss:0kB, file-rss:132kB, shmem-rss:4kB
"""  # noqa: E501

# Captured on the development machine (6.18, cgroup v1 memory controller): the
# newer "CPU: n UID: n PID:" stack-dump header and the v1 stat dump.
DEVBOX_6_18 = """\
[  256.317994] python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
[  256.318027] CPU: 1 UID: 0 PID: 4388 Comm: python3 Not tainted 6.18.44-fc-v595 #1 PREEMPT(none)
[  256.318154] Call Trace:
[  256.318652]  <TASK>
[  256.318714]  dump_stack_lvl+0x57/0x80
[  256.318903]  dump_header+0x43/0x1c0
[  256.318919]  oom_kill_process.cold+0x8/0x8a
[  256.318923]  out_of_memory+0x214/0x500
[  256.319191]  mem_cgroup_out_of_memory+0xc0/0x110
[  256.319995]  </TASK>
[  256.320026] memory: usage 32768kB, limit 32768kB, failcnt 956
[  256.320035] memory+swap: usage 32768kB, limit 9007199254740988kB, failcnt 0
[  256.320037] kmem: usage 164kB, limit 9007199254740988kB, failcnt 0
[  256.320039] Memory cgroup stats for /oomproto:
[  256.320076] cache 98304
[  256.320079] rss 33288192
[  256.320162] Tasks state (memory values in pages):
[  256.320163] [  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name
[  256.320165] [   4388]     0  4388    10566     9620     8094     1526         0   122880        0             0 python3
[  256.320169] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomproto,task_memcg=/oomproto,task=python3,pid=4388,uid=0
[  256.320194] Memory cgroup out of memory: Killed process 4388 (python3) total-vm:42264kB, anon-rss:32376kB, file-rss:6104kB, shmem-rss:0kB, UID:0 pgtables:120kB oom_score_adj:0
"""  # noqa: E501

# A global (whole-machine) OOM in 6.x wording: show_mem() instead of the memcg
# lines, ",global_oom" instead of oom_memcg=, and "Out of memory:" on the kill.
GLOBAL_6_8 = """\
[  812.441822] stress invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0
[  812.441829] CPU: 0 UID: 1000 PID: 2345 Comm: stress Not tainted 6.8.0-45-generic #45-Ubuntu
[  812.441833] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3-debian-1.16.3-2 04/01/2014
[  812.441834] Call Trace:
[  812.441841]  <TASK>
[  812.441843]  dump_stack_lvl+0x76/0xa0
[  812.441960]  </TASK>
[  812.441962] Mem-Info:
[  812.441965] active_anon:1937 inactive_anon:470118 isolated_anon:0
[  812.441990] Free swap  = 0kB
[  812.441991] Total swap = 0kB
[  812.441992] 524158 pages RAM
[  812.441994] Tasks state (memory values in pages):
[  812.441995] [  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name
[  812.442001] [   2345]  1000  2345   496143   470912   470528      384         0  3829760        0             0 stress
[  812.442003] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice/user-1000.slice/session-3.scope,task=stress,pid=2345,uid=1000
[  812.442014] Out of memory: Killed process 2345 (stress) total-vm:1984572kB, anon-rss:1882112kB, file-rss:1536kB, shmem-rss:0kB, UID:1000 pgtables:3740kB oom_score_adj:0
[  812.442431] oom_reaper: reaped process 2345 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB
"""  # noqa: E501

_LOG_PREFIX_RE = re.compile(r"^(?:\w{3} \d\d \d\d:\d\d:\d\d \S+ kernel: |\[[^\]]*\d\] )")

KILL_6X = (
    "Memory cgroup out of memory: Killed process 900 (stress) total-vm:8kB, anon-rss:4kB, file-rss:2kB,"
    " shmem-rss:1kB, UID:1000 pgtables:12kB oom_score_adj:-17"
)


def messages(log: str) -> list[str]:
    """The kernel's messages, without the journald or dmesg prefix."""
    return [_LOG_PREFIX_RE.sub("", line) for line in log.splitlines()]


def ktime(lines: list[str], needle: str) -> int:
    """The ktime feed_all() gives the first line containing `needle`."""
    return KTIME0 + KTIME_STEP * next(i for i, line in enumerate(lines) if needle in line)


def feed_all(lines: Iterable[str], parser: OomReportParser | None = None) -> list[dict[str, Any]]:
    parser = parser or OomReportParser()
    events: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        events += parser.feed(line, KTIME0 + KTIME_STEP * i)
    return events


def event(kind: str, **fields: Any) -> dict[str, Any]:
    expected = blank_event(kind)
    expected["tier"] = "kmsg"
    unknown = set(fields) - set(expected)
    assert not unknown, f"not in the schema: {unknown}"
    expected.update(fields)
    return expected


def summary(pid: int, *, task: str = "stress", constraint: str = "CONSTRAINT_MEMCG") -> str:
    return (
        f"oom-kill:constraint={constraint},nodemask=(null),cpuset=/,mems_allowed=0,"
        f"oom_memcg=/pod,task_memcg=/pod/ctr,task={task},pid={pid},uid=0"
    )


def killed(pid: int, comm: str = "stress") -> str:
    return (
        f"Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:8kB, anon-rss:4kB,"
        " file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0"
    )


def header(comm: str = "stress", pid: int = 900) -> list[str]:
    return [
        f"{comm} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        f"CPU: 1 PID: {pid} Comm: {comm} Not tainted 6.1.0-26-amd64 #1 Debian 6.1.112-1",
        "memory: usage 65536kB, limit 65536kB, failcnt 42",
    ]


# --- Whole reports ---------------------------------------------------------------

BURSTABLE = "/kubepods.slice/kubepods-burstable.slice"
POD_968A = f"{BURSTABLE}/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice"
POD_EF91 = f"{BURSTABLE}/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice"
CTR_0F32 = "cri-containerd-0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d.scope"


def test_harvester_5_14_report_yields_memcg_oom_then_oom_kill_field_by_field() -> None:
    lines = messages(HARVESTER_5_14)
    task_memcg = f"{POD_968A}/{CTR_0F32}"

    assert feed_all(lines) == [
        event(
            MEMCG_OOM,
            ktime_ns=ktime(lines, "invoked oom-killer"),
            oom_memcg=POD_968A,
            usage_bytes=17024340 * KIB,
            limit_bytes=17024340 * KIB,
            failcnt=1243,
            gfp_mask="0xcc0",
            order=0,
            trigger_pid=40785,
            trigger_comm="virt-launcher",
        ),
        event(
            OOM_KILL,
            ktime_ns=ktime(lines, "Killed process"),
            victim_pid=39079,
            victim_comm="qemu-system-x86",
            victim_uid=107,
            total_vm_bytes=17829052 * KIB,
            anon_rss_bytes=16794392 * KIB,
            file_rss_bytes=12668 * KIB,
            shmem_rss_bytes=4 * KIB,
            pgtables_bytes=33632 * KIB,
            oom_score_adj=986,
            task_memcg=task_memcg,
            oom_memcg=POD_968A,
            constraint="memcg",
            trigger_pid=40785,
            trigger_comm="virt-launcher",
        ),
    ]


def test_harvester_5_3_report_takes_victim_uid_from_the_summary_when_the_kill_line_lacks_it() -> None:
    lines = messages(HARVESTER_5_3)
    task_memcg = (
        "/kubepods.slice/kubepods-urstable.slice"
        "/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice"
        "/cri-containerd-100093783c22a3ae1a42e21dd887b7c26eef52d56ba44c7273ef54507b6efe7c.scope"
    )

    assert feed_all(lines) == [
        event(
            MEMCG_OOM,
            ktime_ns=ktime(lines, "invoked oom-killer"),
            oom_memcg=POD_EF91,
            usage_bytes=67579904 * KIB,
            limit_bytes=67579904 * KIB,
            failcnt=67391,
            gfp_mask="0xcc0",
            order=0,
            trigger_pid=70888,
            trigger_comm="CPU 11/KVM",
        ),
        event(
            OOM_KILL,
            ktime_ns=ktime(lines, "Killed process"),
            victim_pid=70870,
            victim_comm="qemu-system-x86",
            victim_uid=107,
            total_vm_bytes=73209856 * KIB,
            anon_rss_bytes=66852088 * KIB,
            file_rss_bytes=21948 * KIB,
            shmem_rss_bytes=4 * KIB,
            task_memcg=task_memcg,
            oom_memcg=POD_EF91,
            constraint="memcg",
            trigger_pid=70888,
            trigger_comm="CPU 11/KVM",
        ),
    ]


def test_6_18_report_with_uid_in_the_stack_dump_header_is_parsed() -> None:
    lines = messages(DEVBOX_6_18)

    assert feed_all(lines) == [
        event(
            MEMCG_OOM,
            ktime_ns=ktime(lines, "invoked oom-killer"),
            oom_memcg="/oomproto",
            usage_bytes=32768 * KIB,
            limit_bytes=32768 * KIB,
            failcnt=956,
            gfp_mask="0xcc0",
            order=0,
            trigger_pid=4388,
            trigger_comm="python3",
        ),
        event(
            OOM_KILL,
            ktime_ns=ktime(lines, "Killed process"),
            victim_pid=4388,
            victim_comm="python3",
            victim_uid=0,
            total_vm_bytes=42264 * KIB,
            anon_rss_bytes=32376 * KIB,
            file_rss_bytes=6104 * KIB,
            shmem_rss_bytes=0,
            pgtables_bytes=120 * KIB,
            oom_score_adj=0,
            task_memcg="/oomproto",
            oom_memcg="/oomproto",
            constraint="memcg",
            trigger_pid=4388,
            trigger_comm="python3",
        ),
    ]


def test_global_oom_yields_one_oom_kill_with_constraint_global_and_no_oom_memcg() -> None:
    lines = messages(GLOBAL_6_8)

    assert feed_all(lines) == [
        event(
            OOM_KILL,
            ktime_ns=ktime(lines, "Killed process"),
            victim_pid=2345,
            victim_comm="stress",
            victim_uid=1000,
            total_vm_bytes=1984572 * KIB,
            anon_rss_bytes=1882112 * KIB,
            file_rss_bytes=1536 * KIB,
            shmem_rss_bytes=0,
            pgtables_bytes=3740 * KIB,
            oom_score_adj=0,
            task_memcg="/user.slice/user-1000.slice/session-3.scope",
            oom_memcg=None,
            constraint="global",
            trigger_pid=2345,
            trigger_comm="stress",
        )
    ]


def test_every_event_has_exactly_the_schema_fields() -> None:
    for log in (HARVESTER_5_14, HARVESTER_5_3, DEVBOX_6_18, GLOBAL_6_8):
        for ev in feed_all(messages(log)):
            assert set(ev) == set(blank_event(ev["event"]))


def test_two_reports_in_a_row_each_keep_their_own_header() -> None:
    lines = messages(HARVESTER_5_14) + messages(HARVESTER_5_3)

    kills = [ev for ev in feed_all(lines) if ev["event"] == OOM_KILL]

    assert [(k["victim_pid"], k["trigger_pid"], k["oom_memcg"]) for k in kills] == [
        (39079, 40785, POD_968A),
        (70870, 70888, POD_EF91),
    ]


# --- Rate-limited and mismatched headers -------------------------------------------


def test_kill_without_its_header_leaves_constraint_and_cgroups_unknown() -> None:
    # The kernel prints at most 10 headers per 5 s; the Killed line always.
    (kill,) = feed_all([KILL_6X])

    assert kill == event(
        OOM_KILL,
        ktime_ns=KTIME0,
        victim_pid=900,
        victim_comm="stress",
        victim_uid=1000,
        total_vm_bytes=8 * KIB,
        anon_rss_bytes=4 * KIB,
        file_rss_bytes=2 * KIB,
        shmem_rss_bytes=1 * KIB,
        pgtables_bytes=12 * KIB,
        oom_score_adj=-17,
    )
    # Exactly the fields a Killed line gives, the ones the kernel tests compare field by field.
    given = {k for k, v in kill.items() if v is not None} - {"event", "ktime_ns", "tier"}
    assert given == set(KILLED_LINE_FIELDS)


def test_header_for_one_pid_is_never_attached_to_the_kill_of_another() -> None:
    lines = [
        *header(),
        summary(111),
        "Memory cgroup out of memory: OOM victim 111 (stress) is already exiting. Skip killing the task",
        killed(222),  # another OOM whose header was rate-limited away
    ]

    (kill,) = [ev for ev in feed_all(lines) if ev["event"] == OOM_KILL]

    assert kill["victim_pid"] == 222
    assert {f: kill[f] for f in ("constraint", "oom_memcg", "task_memcg", "trigger_pid", "trigger_comm")} == {
        "constraint": None,
        "oom_memcg": None,
        "task_memcg": None,
        "trigger_pid": None,
        "trigger_comm": None,
    }


def test_header_is_used_by_one_kill_only_even_if_the_pid_comes_back() -> None:
    parser = OomReportParser()
    kills = feed_all([*header(), summary(111), killed(111)], parser)[1:]
    kills += parser.feed(killed(111), KTIME0 + 60_000_000_000)  # much later: a new kill

    assert [(k["victim_pid"], k["constraint"], k["oom_memcg"]) for k in kills] == [
        (111, "memcg", "/pod"),
        (111, None, None),
    ]


def test_memory_oom_group_kills_after_the_victim_carry_no_header() -> None:
    lines = [
        *header(),
        summary(111),
        killed(111),
        "Tasks in /pod/ctr are going to be killed due to memory.oom.group set",
        killed(112),
    ]

    kills = [ev for ev in feed_all(lines) if ev["event"] == OOM_KILL]

    assert [(k["victim_pid"], k["oom_memcg"]) for k in kills] == [(111, "/pod"), (112, None)]


def test_unreadable_invoked_line_discards_the_previous_header() -> None:
    lines = [*header(), "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KER", summary(111), killed(111)]

    events = feed_all(lines)

    # The summary still names the cgroups, but there is no trigger and no memcg_oom.
    assert [ev["event"] for ev in events] == [OOM_KILL]
    (kill,) = events
    assert (kill["oom_memcg"], kill["trigger_pid"], kill["trigger_comm"]) == ("/pod", None, None)


def test_stack_dump_of_another_task_inside_the_report_is_not_taken_for_the_trigger() -> None:
    invoked, cpu, memory = header(comm="stress", pid=900)
    lines = [invoked, "CPU: 0 PID: 17 Comm: kworker/0:1 Not tainted 6.1.0 #1", cpu, memory, summary(1)]

    (memcg_oom,) = feed_all(lines)

    assert memcg_oom["trigger_pid"] == 900


# --- Line variants -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        pytest.param(
            "Memory cgroup out of memory: Killed process 70870 (qemu-system-x86) total-vm:73209856kB,"
            " anon-rss:66852088kB, file-rss:21948kB, shmem-rss:4kB",
            {
                "victim_uid": None,
                "pgtables_bytes": None,
                "oom_score_adj": None,
                "anon_rss_bytes": 66852088 * KIB,
            },
            id="old-kernel-without-uid-pgtables-and-oom_score_adj",
        ),
        pytest.param(
            "Memory cgroup out of memory: Killed process 70888 (CPU 11/KVM) total-vm:8kB, anon-rss:4kB,"
            " file-rss:0kB, shmem-rss:0kB, UID:107 pgtables:4kB oom_score_adj:830",
            {"victim_comm": "CPU 11/KVM", "victim_uid": 107, "oom_score_adj": 830},
            id="comm-with-space-and-slash",
        ),
        pytest.param(
            "Out of memory: Killed process 7 (a (b) c) total-vm:8kB, anon-rss:4kB, file-rss:0kB,"
            " shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
            {"victim_comm": "a (b) c", "victim_pid": 7},
            id="comm-with-parentheses",
        ),
        pytest.param(
            "Out of memory: Killed process 7 (x) total-vm:1kB) total-vm:8kB, anon-rss:4kB, file-rss:0kB,"
            " shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
            {"victim_comm": "x) total-vm:1kB", "total_vm_bytes": 8 * KIB},
            id="comm-imitating-the-line",
        ),
        pytest.param(
            "Out of memory (oom_kill_allocating_task): Killed process 7 (x) total-vm:8kB, anon-rss:4kB,"
            " file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:-1000",
            {"victim_pid": 7, "oom_score_adj": -1000},
            id="oom_kill_allocating_task-prefix",
        ),
        pytest.param(
            "Killed process 7 (x) total-vm:8kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
            {"victim_pid": 7, "victim_uid": None},
            id="pre-4.19-line-without-prefix",
        ),
    ],
)
def test_kill_line_variants_are_parsed(line: str, fields: dict[str, Any]) -> None:
    (kill,) = feed_all([line])

    assert kill["event"] == OOM_KILL
    assert {name: kill[name] for name in fields} == fields


@pytest.mark.parametrize(
    ("kernel_constraint", "constraint", "kinds"),
    [
        pytest.param("CONSTRAINT_MEMCG", "memcg", [MEMCG_OOM, OOM_KILL], id="memcg"),
        pytest.param("CONSTRAINT_NONE", "global", [OOM_KILL], id="global"),
        pytest.param("CONSTRAINT_CPUSET", "cpuset", [OOM_KILL], id="cpuset"),
        pytest.param("CONSTRAINT_MEMORY_POLICY", "memory_policy", [OOM_KILL], id="memory-policy"),
        pytest.param("CONSTRAINT_FUTURE_THING", None, [OOM_KILL], id="unknown-constraint"),
    ],
)
def test_constraint_is_named_and_only_memcg_ooms_yield_memcg_oom(
    kernel_constraint: str, constraint: str | None, kinds: list[str]
) -> None:
    events = feed_all([*header(), summary(900, constraint=kernel_constraint), killed(900)])

    assert [ev["event"] for ev in events] == kinds
    assert events[-1]["constraint"] == constraint


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        pytest.param(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=0,2-3,cpuset=a,b.scope,mems_allowed=0,2-3,"
            "oom_memcg=/x,y,task_memcg=/x,y/z,w,task=stress,pid=5,uid=0",
            {"oom_memcg": "/x,y", "task_memcg": "/x,y/z,w", "victim_uid": 0},
            id="commas-in-nodemask-cpuset-and-paths",
        ),
        pytest.param(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/pod,task_memcg=/pod/ctr,task=a,task=b,pid=1,pid=5,uid=0",
            {"oom_memcg": "/pod", "task_memcg": "/pod/ctr"},
            id="comm-imitating-keys-cannot-stretch-the-paths",
        ),
        pytest.param(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=stress,pid=5,uid=0",
            {"constraint": "global", "oom_memcg": None, "task_memcg": None},
            id="kernel-without-cpusets-and-memcg",
        ),
        pytest.param(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
            "task_memcg=/,task=stress,pid=5,uid=0",
            {"constraint": "global", "oom_memcg": None, "task_memcg": "/"},
            id="global-oom-in-the-root-cgroup",
        ),
    ],
)
def test_summary_line_is_split_by_its_known_keys(line: str, fields: dict[str, Any]) -> None:
    (kill,) = feed_all([line, killed(5)])

    assert {name: kill[name] for name in fields} == fields


def test_summary_line_split_by_interleaved_printk_is_put_back_together() -> None:
    lines = [
        *header(),
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=",
        "e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex",  # another CPU's printk
        "/pod",
        ",task_memcg=/pod/ctr",
        ",task=stress,pid=900,uid=0",
        killed(900),
    ]

    memcg_oom, kill = feed_all(lines)

    assert memcg_oom["oom_memcg"] == "/pod"
    assert (kill["oom_memcg"], kill["task_memcg"], kill["constraint"]) == ("/pod", "/pod/ctr", "memcg")


def test_memcg_oom_with_nothing_to_kill_is_still_reported() -> None:
    lines = [*header(), "Memory cgroup stats for /pod:", "Out of memory and no killable processes..."]

    (memcg_oom,) = feed_all(lines)

    assert (memcg_oom["event"], memcg_oom["oom_memcg"], memcg_oom["failcnt"]) == (MEMCG_OOM, "/pod", 42)


def test_sysrq_oom_with_order_minus_one_is_parsed() -> None:
    lines = [
        "kworker/0:1 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=-1, oom_score_adj=0",
        summary(5),
    ]
    parser = OomReportParser()
    feed_all(lines, parser)

    (kill,) = parser.feed(killed(5), None)

    assert (kill["trigger_comm"], kill["ktime_ns"]) == ("kworker/0:1", None)


def test_one_message_holding_several_lines_is_parsed_line_by_line() -> None:
    events = OomReportParser().feed("\n".join([*header(), summary(900), killed(900)]), 7)

    assert [(ev["event"], ev["ktime_ns"]) for ev in events] == [(MEMCG_OOM, 7), (OOM_KILL, 7)]


# --- Garbage -----------------------------------------------------------------------------

GARBAGE = [
    pytest.param("", id="empty"),
    pytest.param("   \t ", id="blank"),
    pytest.param("stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), ord", id="truncated-invoked"),
    pytest.param("CPU: 1 PID: ", id="truncated-cpu"),
    pytest.param("memory: usage 65536kB, limit 6553", id="truncated-memory"),
    pytest.param(
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task=x,pi",
        id="truncated-summary",
    ),
    pytest.param(
        "Memory cgroup out of memory: Killed process 900 (stress) total-vm:8kB, anon-rss:4",
        id="truncated-kill",
    ),
    pytest.param(
        "Out of memory: Killed process abc (x) total-vm:8kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
        id="kill-with-non-numeric-pid",
    ),
    pytest.param(
        f"Out of memory: Killed process 1 (x) total-vm:{'9' * 5000}kB, anon-rss:4kB, file-rss:0kB,"
        " shmem-rss:0kB",
        id="kill-with-5000-digit-number",
    ),
    pytest.param(
        "Out of memory: Killed process ٣ (x) total-vm:8kB, anon-rss:4kB, file-rss:0kB, shmem-rss:0kB",
        id="kill-with-arabic-indic-digit",
    ),
    pytest.param("oom-kill:", id="bare-oom-kill"),
    pytest.param("\x00\x01\ufffd Killed process \x7f", id="binary-noise"),
    pytest.param("oom_reaper: reaped process 70870 (qemu-system-x86), now anon-rss:0kB", id="reaper"),
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_line_on_its_own_yields_nothing(line: str) -> None:
    assert OomReportParser().feed(line, KTIME0) == []


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_line_inside_a_report_yields_nothing(line: str) -> None:
    parser = OomReportParser()
    feed_all(header(), parser)

    assert parser.feed(line, KTIME0) == []


REAL_LINES = [
    line
    for log in (HARVESTER_5_14, HARVESTER_5_3, DEVBOX_6_18, GLOBAL_6_8)
    for line in messages(log)
    if line != "..."
]


def _mangled(line: str) -> st.SearchStrategy[str]:
    cut = st.integers(0, len(line))
    return st.one_of(
        cut.map(lambda i: line[:i]),
        st.tuples(cut, st.text(max_size=8)).map(lambda t: line[: t[0]] + t[1] + line[t[0] :]),
        st.just(line),
    )


@given(st.lists(st.one_of(st.text(), st.sampled_from(REAL_LINES).flatmap(_mangled)), max_size=60))
def test_parser_never_raises_and_only_emits_schema_events(lines: list[str]) -> None:
    parser = OomReportParser()
    for i, line in enumerate(lines):
        for ev in parser.feed(line, i):
            assert ev["event"] in (MEMCG_OOM, OOM_KILL)
            assert set(ev) == set(blank_event(ev["event"]))


# --- /dev/kmsg records ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "record"),
    [
        pytest.param(b"6,1234,5678901,-;hello world\n", (1234, 5678901000, "hello world"), id="plain"),
        pytest.param(
            b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n DEVICE=+net:lo\n",
            (339, 5140900000, "NET: Registered protocol family 10"),
            id="with-continuation-lines",
        ),
        pytest.param(b"4,12,34,c,caller=T123;a;b", (12, 34000, "a;b"), id="extra-header-fields"),
        pytest.param(b"6,1,2,-;", (1, 2000, ""), id="empty-message"),
        pytest.param(
            b"15,509,372532076,-;tab\\x09here back\\x5cslash \\xc3\\xa9 two\\x0alines\n",
            (509, 372532076000, "tab\there back\\slash é two\nlines"),
            id="kernel-escapes-undone",
        ),
        pytest.param(b"6,1,2,-;bad \\xff byte", (1, 2000, "bad \ufffd byte"), id="escaped-non-utf8"),
        pytest.param(b"6,1,2,-;bad \xfe byte", (1, 2000, "bad \ufffd byte"), id="raw-non-utf8"),
    ],
)
def test_kmsg_record_is_parsed(raw: bytes, record: tuple[int, int, str]) -> None:
    assert parse_kmsg_record(raw) == record


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\n", id="newline"),
        pytest.param(b"hello world\n", id="no-header"),
        pytest.param(b" SUBSYSTEM=net\n", id="continuation-line-alone"),
        pytest.param(b"6,1,2;no flags\n", id="three-fields"),
        pytest.param(b"6,1,2,-\n", id="no-semicolon"),
        pytest.param(b"a,b,c,-;x\n", id="not-numbers"),
        pytest.param(b"6,-1,2,-;x\n", id="negative-seq"),
        pytest.param(b"6," + b"9" * 5000 + b",2,-;x\n", id="5000-digit-seq"),
        pytest.param(b"\xff\xfe,\x00;\n", id="binary"),
    ],
)
def test_garbage_kmsg_record_is_none(raw: bytes) -> None:
    assert parse_kmsg_record(raw) is None


# --- KmsgReader on fixture files and FIFOs ----------------------------------------------------


def write_log(path: Path, *records: bytes) -> Path:
    path.write_bytes(b"".join(records))
    return path


def test_reader_returns_records_of_a_file_from_its_start(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "kmsg",
        b"6,1,100,-;first\n SUBSYSTEM=net\n",
        b"garbage\n",
        b"4,2,200,-;second\n",
    )

    with KmsgReader(str(log), from_start=True) as reader:
        assert reader.read_available() == [(1, 100_000, "first"), (2, 200_000, "second")]
        assert reader.read_available() == []
        assert reader.lost_records == 0


FAKE_KILL = (
    b"Memory cgroup out of memory: Killed process 4242 (sshd) total-vm:1kB, anon-rss:1kB, file-rss:0kB,"
    b" shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0"
)


def test_reader_skips_what_user_space_wrote_to_the_kernel_log(tmp_path: Path) -> None:
    # A process that writes a kernel-looking line to /dev/kmsg gets facility LOG_USER (1) or
    # higher: the kernel does not let user space write facility 0 ("<4>" is stored as 12).
    log = write_log(
        tmp_path / "kmsg",
        b"6,1,100,-;kernel line\n",
        b"12,2,200,-;" + FAKE_KILL + b"\n",
        b"190,3,300,-;" + FAKE_KILL + b"\n",  # local7.info
        b"3,4,400,-;kernel again\n",
    )
    with KmsgReader(str(log), from_start=True) as reader:
        assert reader.read_available() == [(1, 100_000, "kernel line"), (4, 400_000, "kernel again")]
        assert reader.lost_records == 0  # skipped, not lost
    with KmsgReader(str(log), from_start=True, kernel_only=False) as everything:
        assert [seq for seq, _, _ in everything.read_available()] == [1, 2, 3, 4]


def test_reader_starts_at_the_end_by_default(tmp_path: Path) -> None:
    log = write_log(tmp_path / "kmsg", b"6,1,100,-;old\n")

    with KmsgReader(str(log)) as reader:
        assert reader.read_available() == []


def test_reader_counts_records_missing_from_the_sequence_as_lost(tmp_path: Path) -> None:
    log = write_log(tmp_path / "kmsg", b"6,10,1,-;a\n", b"6,11,2,-;b\n", b"6,15,3,-;c\n")

    with KmsgReader(str(log), from_start=True) as reader:
        assert [seq for seq, _, _ in reader.read_available()] == [10, 11, 15]
        assert reader.lost_records == 3


def test_reader_of_a_fifo_waits_for_a_whole_record(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    with KmsgReader(str(fifo)) as reader:
        writer = os.open(fifo, os.O_WRONLY)
        try:
            assert reader.read_available() == []
            os.write(writer, b"6,1,100,-;half")
            assert reader.read_available() == []
            os.write(writer, b" and half\n")
            assert reader.read_available() == [(1, 100_000, "half and half")]
        finally:
            os.close(writer)


def fake_reads(monkeypatch: pytest.MonkeyPatch, results: list[bytes | OSError]) -> None:
    """os.read returns or raises each of `results` in turn, then EAGAIN."""
    pending: Iterator[bytes | OSError] = iter(results)

    def read(fd: int, size: int) -> bytes:
        result = next(pending, BlockingIOError())
        if isinstance(result, OSError):
            raise result
        return result

    monkeypatch.setattr(os, "read", read)


def test_reader_continues_after_epipe_and_counts_the_overwritten_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KmsgReader(str(write_log(tmp_path / "kmsg"))) as reader:
        fake_reads(monkeypatch, [b"6,10,1,-;a\n", BrokenPipeError(), b"6,15,2,-;b\n"])

        assert [msg for _, _, msg in reader.read_available()] == ["a", "b"]
        assert reader.lost_records == 4


def test_reader_counts_at_least_one_lost_record_for_epipe_on_its_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KmsgReader(str(write_log(tmp_path / "kmsg"))) as reader:
        fake_reads(monkeypatch, [BrokenPipeError(), b"6,15,2,-;b\n"])

        assert [msg for _, _, msg in reader.read_available()] == ["b"]
        assert reader.lost_records == 1


# --- The real /dev/kmsg (root) ---------------------------------------------------------------------


def test_oom_group_kill_printing_the_chosen_victim_twice_is_one_oom_kill() -> None:
    parser = OomReportParser()
    killed = (
        "Memory cgroup out of memory: Killed process {pid} (worker) total-vm:1000kB, anon-rss:800kB, "
        "file-rss:100kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0"
    )
    lines = [
        killed.format(pid=101),
        "Tasks in /pod/ctr are going to be killed due to memory.oom.group set",
        killed.format(pid=101),
        killed.format(pid=102),
        killed.format(pid=103),
    ]
    events = [e for i, line in enumerate(lines) for e in parser.feed(line, KTIME0 + i * KTIME_STEP)]
    assert [e["victim_pid"] for e in events] == [101, 102, 103]


def test_a_pid_killed_again_much_later_is_a_new_oom_kill() -> None:
    parser = OomReportParser()
    line = (
        "Memory cgroup out of memory: Killed process 7 (a) total-vm:1kB, anon-rss:1kB, "
        "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0"
    )
    first = parser.feed(line, KTIME0)
    second = parser.feed(line, KTIME0 + 60_000_000_000)
    assert len(first) == len(second) == 1
