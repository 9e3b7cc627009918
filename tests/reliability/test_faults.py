"""Faults: the tracer killed mid-storm, cgroups and pods and processes gone before their event is
read, and unwritable state. Each one either keeps the event right (or null, never wrong) or ends
in one clear line — and leaves nothing behind in the kernel.

"Before its event is read" is made certain by freezing the tracer (SIGSTOP): the kernel's
programs keep filling the ring buffer while the test removes the cgroup, reaps the victim or
deletes the pod, and only then is the tracer let go (SIGCONT) to decode and enrich.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.workload import MIB, Pool, Zygote
from tests.fake_kube import kubeconfig, pod, running
from tests.kernel.conftest import REPO, Tracer
from tracer.cli.sandbox import PodSandbox
from tracer.kernel import headers
from tracer.kernel.headers import HeadersError, find_headers

LIMIT = 16 * MIB
BPF_OBJECTS = {"prog_id": "prog", "map_id": "map", "link_id": "link", "btf_id": "btf"}


def _wait(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout_s}s")
        time.sleep(0.1)


def _kill_of(tracer: Tracer, pid: int, timeout_s: float = 15.0) -> dict[str, Any]:
    return tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == pid, timeout_s)


@contextmanager
def _frozen(tracer: Tracer) -> Iterator[None]:
    tracer.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        tracer.process.send_signal(signal.SIGCONT)


def _errors(tracer: Tracer) -> list[str]:
    return [line for line in tracer.stderr_lines if '"level": "error"' in line or "Traceback" in line]


# --- killed mid-storm ------------------------------------------------------------------------


def _bpf_ids_held_by(pid: int) -> set[tuple[str, int]]:
    """Every BPF program, map, link and BTF object the process holds a descriptor of."""
    held = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in BPF_OBJECTS:
                held.add((BPF_OBJECTS[key], int(value)))
    return held


def _bpf_ids_in_kernel() -> set[tuple[str, int]]:
    present = set()
    for kind in ("prog", "map", "link", "btf"):
        out = subprocess.run(
            ["bpftool", "-j", kind, "list"], check=True, capture_output=True, text=True
        ).stdout
        present |= {(kind, int(obj["id"])) for obj in json.loads(out or "[]")}
    return present


class Storm:
    """Cgroups OOMing over and over from a background thread until stopped."""

    def __init__(self, zygote: Zygote, pool: Pool) -> None:
        self.zygote, self.pool = zygote, pool
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tags = [self.zygote.spawn(s, "storm", 4 * LIMIT // MIB, wait_fork=False) for s in self.pool]
            self.pids += [self.zygote.wait(t).pid for t in tags]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.kernel
def test_sigkill_mid_storm_leaves_no_bpf_object_behind_and_a_restart_reattaches_and_reports(
    kernel_host: None, zygote: Zygote
) -> None:
    first = Tracer("--interval", "0.5")
    held = _bpf_ids_held_by(first.process.pid)
    assert {kind for kind, _id in held} >= {"prog", "map"}
    assert held <= _bpf_ids_in_kernel()
    with Pool(20, LIMIT) as pool:
        storm = Storm(zygote, pool)
        try:
            first.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_comm"] == "storm")
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
            # The kernel frees them once their last reference goes (deferred, RCU): shortly.
            _wait(lambda: not held & _bpf_ids_in_kernel(), 10, "BPF objects of the killed tracer freed")

            second = Tracer("--interval", "0.5")
            try:
                kill = second.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_comm"] == "storm")
                assert kill["task_memcg"] in pool.by_container()
                assert not _bpf_ids_held_by(second.process.pid) & held
            finally:
                storm.stop()
                held_second = _bpf_ids_held_by(second.process.pid)
                assert second.stop() == 0, "".join(second.stderr_lines)
        finally:
            storm.stop()
    _wait(lambda: not held_second & _bpf_ids_in_kernel(), 10, "BPF objects of the stopped tracer freed")


# --- gone before the event is read -------------------------------------------------------------


@pytest.fixture(scope="module")
def tracer(kernel_host: None) -> Iterator[Tracer]:
    t = Tracer("--interval", "0.5")
    yield t
    assert t.stop() == 0, "".join(t.stderr_lines)


@pytest.mark.kernel
def test_a_cgroup_removed_before_its_event_is_read_keeps_its_last_known_path_and_tags(
    tracer: Tracer, zygote: Zygote
) -> None:
    sandbox = PodSandbox(LIMIT).create()
    try:
        seen = zygote.wait(zygote.spawn(sandbox, "gone-cg-1", 64))
        assert _kill_of(tracer, seen.pid)["task_memcg"] == sandbox.container_path  # now known
        with _frozen(tracer):
            victim = zygote.wait(zygote.spawn(sandbox, "gone-cg-2", 64))
            sandbox.destroy()
            assert not sandbox.dir(sandbox.container_path).exists()
    finally:
        sandbox.destroy()
    kill = _kill_of(tracer, victim.pid)
    assert (kill["task_memcg"], kill["pod_uid"], kill["container_id"]) == (
        sandbox.container_path,
        sandbox.pod_uid,
        sandbox.container_id,
    )


@pytest.mark.kernel
def test_a_cgroup_never_seen_and_removed_before_its_event_is_read_is_null_never_wrong(
    tracer: Tracer, zygote: Zygote
) -> None:
    errors_before = len(_errors(tracer))
    with _frozen(tracer):
        sandbox = PodSandbox(LIMIT).create()
        try:
            victim = zygote.wait(zygote.spawn(sandbox, "gone-cg-new", 64))
        finally:
            sandbox.destroy()
    kill = _kill_of(tracer, victim.pid)
    assert kill["victim_comm"] == "gone-cg-new" and kill["anon_rss_bytes"] > 0
    # The id no longer names a directory: the path is unknown (null), or right; never another's.
    assert kill["task_memcg"] in (None, sandbox.container_path)
    assert kill["pod_uid"] in (None, sandbox.pod_uid)
    assert kill["container_id"] in (None, sandbox.container_id)
    assert _errors(tracer)[errors_before:] == []


@pytest.mark.kernel
def test_a_victim_reaped_before_its_event_is_read_is_reported_from_the_kernels_fields(
    tracer: Tracer, zygote: Zygote
) -> None:
    errors_before = len(_errors(tracer))
    with PodSandbox(LIMIT) as sandbox:
        with _frozen(tracer):
            victim = zygote.wait(zygote.spawn(sandbox, "gone-proc", 64))
            assert not Path(f"/proc/{victim.pid}").exists()
        kill = _kill_of(tracer, victim.pid)
    assert kill["victim_comm"] == "gone-proc"
    assert kill["anon_rss_bytes"] > 8 * MIB
    assert (kill["pod_uid"], kill["container_id"]) == (sandbox.pod_uid, sandbox.container_id)
    snapshot = kill["memory_snapshot"]
    if snapshot is not None:  # its victim row is the kernel's numbers: nothing read from /proc
        row = next(t for t in snapshot["tasks"] if t["pid"] == victim.pid)
        assert (row["comm"], row["anon_bytes"]) == ("gone-proc", kill["anon_rss_bytes"])
    assert _errors(tracer)[errors_before:] == []


@pytest.mark.kernel
def test_a_pod_deleted_from_kubernetes_before_its_oom_is_read_is_still_named(
    kernel_host: None, zygote: Zygote, tmp_path: Path
) -> None:
    with running() as api, PodSandbox(LIMIT) as sandbox:
        api.add(pod(sandbox.pod_uid, "doomed-0", "reliability", "node-1", {"app": sandbox.container_id}))
        config = kubeconfig(tmp_path / "kubeconfig", api.url, api.token)
        tracer = Tracer(
            "--interval", "0.5", "--node-name", "node-1", "--kube", "apiserver", "--kubeconfig", str(config)
        )  # fmt: skip
        try:
            with _frozen(tracer):
                victim = zygote.wait(zygote.spawn(sandbox, "gone-pod", 64))
                api.delete(sandbox.pod_uid)
            kill = _kill_of(tracer, victim.pid)
        finally:
            assert tracer.stop() == 0, "".join(tracer.stderr_lines)
    assert (kill["namespace"], kill["pod"], kill["container"]) == ("reliability", "doomed-0", "app")
    assert kill["pod_uid"] == sandbox.pod_uid


# --- unwritable state --------------------------------------------------------------------------


@contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _run_once(*args: str, stdout: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    return subprocess.run(
        [sys.executable, "-m", "tracer", "run", "--metrics-address", "none", "--duration", "1", *args],
        cwd=REPO,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def _own_headers() -> bool:
    return Path(f"/lib/modules/{os.uname().release}/build/include/linux/kconfig.h").exists()


@pytest.mark.kernel
@pytest.mark.parametrize("fs", ["read-only", "full"])
def test_a_headers_cache_on_an_unwritable_filesystem_is_one_clear_line_and_exit_2(
    kernel_host: None, tmp_path: Path, fs: str
) -> None:
    options = "ro,size=1m" if fs == "read-only" else "size=64k,nr_inodes=64"
    with _tmpfs(tmp_path / "mnt", options) as mnt:
        result = _run_once("--headers-cache", str(mnt / "cache"))
        left = sorted(p.name for p in (mnt / "cache").iterdir()) if (mnt / "cache").is_dir() else []
    if _own_headers():  # the cache is never used when the running kernel has its own headers
        assert result.returncode == 0, result.stderr
        return
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last.startswith("oomtrace: error: cannot build the merged kernel header tree in ")
    assert str(mnt / "cache") in last and "--headers-cache" in last
    assert "Traceback" not in result.stderr
    assert left == []  # no half-built tree left to fill the disk


def test_a_header_merge_that_fails_midway_removes_its_partial_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "usr/src"
    for half in ("linux-headers-6.1.0-56-common", "linux-headers-6.1.0-56-amd64"):
        (src / half / "include/linux").mkdir(parents=True)
        (src / half / "include/linux/kconfig.h").write_text("")
    real_merge = headers.merge_tree

    def merge_then_fail(halves: list[Path], into: Path) -> None:
        real_merge(halves, into.with_name("scratch"))
        (into.with_name(into.name + ".partial") / "include").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(headers, "merge_tree", merge_then_fail)
    with pytest.raises(HeadersError, match="No space left on device; give --headers-cache"):
        find_headers("6.18.0", tmp_path / "lib/modules", src, tmp_path / "cache", env={})
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["scratch"]


@pytest.mark.kernel
def test_stdout_on_a_full_filesystem_stops_the_tracer_with_one_clear_error_not_silent_drops(
    kernel_host: None, zygote: Zygote, tmp_path: Path
) -> None:
    with _tmpfs(tmp_path / "mnt", "size=4k") as mnt, open(mnt / "events.json", "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tracer", "run", "--metrics-address", "none", "--duration", "60"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        stderr: list[str] = []
        threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True).start()
        _wait(lambda: any('"msg": "tracing"' in line for line in stderr), 60, "tracer ready")
        with Pool(20, LIMIT) as pool:
            tags = [zygote.spawn(s, "full-disk", 64) for s in pool]
            assert all(zygote.wait(t).oom_killed for t in tags)
        code = process.wait(timeout=30)
    text = "".join(stderr)
    assert code == 1, text
    assert stderr[-1].strip() == "oomtrace: error: No space left on device"
    assert any('"msg": "cannot publish an event; stopping"' in line for line in stderr)
    assert "Traceback" not in text and "Exception ignored" not in text
