"""The daemon's life on a real kernel: probes attach, /metrics and /healthz answer, and
nothing stays loaded after it exits."""

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.kernel.conftest import REPO, Tracer
from tests.kernel.test_oom_events import MIB, _oom
from tracer.cli.sandbox import PodSandbox

CGROUP_ROOTS = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/unified")]


def _prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], check=True, capture_output=True, text=True).stdout
    return {prog["id"] for prog in json.loads(out)}


def _prog_ids_held_by(pid: int) -> set[int]:
    """BPF programs a process holds open: its fdinfo names their ids (exact even while other
    tracers run on the machine)."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        for line in info.read_text().splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_after_oomtrace_exits_on_a_signal_none_of_its_bpf_programs_remain(sig: int) -> None:
    tracer = Tracer()
    ours = _prog_ids_held_by(tracer.process.pid)
    assert len(ours) >= 3  # mark_victim and the two reclaim tracepoints at least
    assert ours <= _prog_ids()

    assert tracer.stop(sig) == 0, "".join(tracer.stderr_lines)
    assert ours & _prog_ids() == set()
    assert any('"stopped; probes detached"' in line for line in tracer.stderr_lines)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode().strip()


def test_metrics_count_a_real_oom_kill_and_healthz_is_ok_while_attached() -> None:
    tracer = Tracer("--interval", "0.5")
    try:
        status, detail = _get(tracer.metrics_port, "/healthz")
        assert status == 200
        assert detail.startswith("ok: ") and "oom_kill=tracepoint" in detail
        assert "struct offsets: BTF" in detail
        with PodSandbox(limit_bytes=48 * MIB) as pod:
            pid = _oom(pod)
            tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
            tracer.wait_for(lambda e: e["event"] == "near_oom" and e["phase"] == "summary")
        status, text = _get(tracer.metrics_port, "/metrics")
    finally:
        assert tracer.stop() == 0
    assert status == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    assert samples['oomtrace_oom_kills_total{container="",namespace="",pod="",vm=""}'] >= 1
    assert samples['oomtrace_near_oom_reclaims_total{container="",namespace="",pod="",vm=""}'] >= 1
    assert (
        samples['oomtrace_probe_info{probe="oom_kill",target="raw oom/mark_victim",tier="tracepoint"}'] == 1
    )
    assert not any(key.endswith("_created") or "_created{" in key for key in samples)
    assert any(k.startswith("oomtrace_kernel_headers_info{") and v == 1 for k, v in samples.items())


def test_oomtrace_run_as_the_kernel_log_reader_reports_the_kill_with_pod_tags() -> None:
    tracer = Tracer("--source", "kmsg")
    try:
        with PodSandbox(limit_bytes=48 * MIB, limit_at="pod") as pod:
            pid = _oom(pod)
            kill = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
            oom = tracer.wait_for(lambda e: e["event"] == "memcg_oom" and e["oom_memcg"] == pod.pod_path)
    finally:
        assert tracer.stop() == 0
    assert kill["tier"] == oom["tier"] == "kmsg"
    assert kill["constraint"] == "memcg"
    assert kill["oom_memcg"] == pod.pod_path
    assert kill["task_memcg"] == pod.container_path
    assert kill["pod_uid"] == pod.pod_uid and kill["container_id"] == pod.container_id
    assert oom["limit_bytes"] == 48 * MIB and oom["pod_uid"] == pod.pod_uid


def test_without_btf_the_kill_is_still_reported_from_tracepoint_fields_and_the_cgroup_is_null() -> None:
    tracer = Tracer("--no-btf")
    try:
        with PodSandbox(limit_bytes=48 * MIB) as pod:
            pid = _oom(pod)
            kill = tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid)
    finally:
        assert tracer.stop() == 0
    assert kill["tier"] == "tracepoint"
    assert kill["victim_comm"] == "oomtrace-alloc"
    assert kill["anon_rss_bytes"] > 32 * MIB
    # This host's memory controller is on cgroup v1: without BTF the victim's memcg is unknown.
    assert kill["task_memcg"] is None and kill["pod_uid"] is None
    assert any("no kernel BTF" in line for line in tracer.stderr_lines)


def test_demo_shows_near_oom_then_oom_kill_and_removes_its_cgroup() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracer", "demo"], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    kinds = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert kinds.index("near_oom") < kinds.index("oom_kill")
    assert "oom_kill" in result.stderr  # the human account of the sequence
    assert not any(root.joinpath("oomtrace-demo").exists() for root in CGROUP_ROOTS)


def test_once_attached_the_compilers_memory_is_given_back() -> None:
    """bcc's LLVM heap and library pages are used only to compile (tracer/kernel/compiler_memory.py);
    the figures themselves are the benchmarks' (docs/benchmarks.md, start-up row)."""
    tracer = Tracer("--duration", "30")
    try:
        (released,) = (json.loads(line) for line in tracer.stderr_lines if "gave back the compiler" in line)
        assert released["compiler_paged_out"] is True  # MADV_PAGEOUT: Linux 5.4+
        # The heap is ours alone. The library pages are paged out only where no other process
        # maps them (this pytest process may have loaded bcc): RSS falls, by how much varies.
        assert released["anon_after_mib"] < 0.6 * released["anon_before_mib"], released
        assert released["rss_after_mib"] < released["rss_before_mib"], released
    finally:
        assert tracer.stop() == 0, "".join(tracer.stderr_lines)
