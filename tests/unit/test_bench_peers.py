"""The peers' output as bench/peers.py reads it: bcc oomkill-bpfcc's victims, when, and the
"pages" figure it prints; bpftrace's (the floor) victims and when, and its command."""

from bench.peers import BPFTRACE_PROGRAM, BccOomkill, BpftraceKills

# Lines as /usr/sbin/oomkill-bpfcc (bcc 0.26, Debian bpfcc-tools) printed them in a 6.1 VM.
BCC_LINES = [
    "Tracing OOM kills... Ctrl-C to stop.",
    '19:35:24 Triggered by PID 143 ("peer-spaced"), OOM kill of PID 143 ("peer-spaced"), 8192 pages, '
    "loadavg: 0.63 0.18 0.06 3/70 143",
    '19:35:31 Triggered by PID 201 ("peer-storm"), OOM kill of PID 200 ("peer-storm"), 8192 pages, '
    "loadavg: 1.10 0.30 0.10 52/120 201",
    '19:35:31 Triggered by PID 201 ("peer-storm"), OOM kill of PID 200 ("peer-storm"), 8192 pages, '
    "loadavg: 1.10 0.30 0.10 52/120 201",
]


def test_bcc_oomkill_lines_give_the_victim_pid_first_read_and_the_oom_domain_size() -> None:
    tool = BccOomkill(lines=[(1000 + i, line) for i, line in enumerate(BCC_LINES)])
    assert tool.kills() == {143: 1001, 200: 1002}  # the victim, not the trigger; first line wins
    assert tool.pages() == [8192]


def test_bpftrace_lines_give_each_victim_pid_first_read_and_skip_its_banner() -> None:
    lines = ["Attaching 1 probe...", "oom_kill 143", "oom_kill 200", "oom_kill 200", "oom_kill x"]
    tool = BpftraceKills(lines=[(1000 + i, line) for i, line in enumerate(lines)])
    assert tool.kills() == {143: 1001, 200: 1002}


def test_the_floor_is_bpftrace_on_mark_victim_printing_the_pid_line_buffered() -> None:
    command = BpftraceKills().command()
    assert command[:3] == ["/usr/bin/bpftrace", "-B", "line"]  # a line per kill, not a block at exit
    assert command[-1] == BPFTRACE_PROGRAM
    assert BPFTRACE_PROGRAM.startswith("tracepoint:oom:mark_victim ")
    assert "args->pid" in BPFTRACE_PROGRAM


def test_a_peer_that_is_not_installed_says_which_package_gives_it() -> None:
    class Missing(BpftraceKills):
        path = "/nonexistent/bpftrace"

    tool = Missing().start()
    assert tool.error == "/nonexistent/bpftrace is not installed (Debian package bpftrace)"
    assert tool.process is None
