"""bcc oomkill-bpfcc's output as bench/peers.py reads it: the victims it saw, when, and the
"pages" figure it prints."""

from bench.peers import BccOomkill

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
