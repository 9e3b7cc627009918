"""Workloads for the benchmarks and the reliability suite: many real OOMs, cheaply and safely.

`Zygote` is a small single-threaded Python process that forks allocators on request. A fork
costs about a millisecond where a fresh interpreter costs 50 ms or more, which is what makes
hundreds of OOMs a second reachable on a 2-core machine. Each child moves itself into the
cgroups it is given, names itself (its comm is what the kernel reports), then touches
anonymous memory in 1 MiB chunks at a given rate (optionally after reading a file into page
cache), and either gets OOM-killed or exits after holding its memory for a while.

Safety, by construction: every child stops at ALLOCATION_CAP_MIB whatever it is asked for;
cgroups come from tracer.cli.sandbox.PodSandbox (limit written before any process moves in,
never inside a kubelet's tree); `Pool` refuses more than MAX_IN_FLIGHT_BYTES of limits.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.cli.sandbox import PodSandbox

MIB = 1 << 20
ALLOCATION_CAP_MIB = 1024
MAX_LIMIT_BYTES = 256 * MIB  # per cgroup
MAX_IN_FLIGHT_BYTES = 4 << 30  # sum of the limits of the cgroups of one pool

# The zygote: reads JSON commands on stdin, forks, reports forks and exits on stdout.
_ZYGOTE = r"""
import ctypes, json, mmap, os, select, signal, sys, time
CAP = CAP_MIB << 20
CHUNK = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
out = sys.stdout

def say(**fields):
    out.write(json.dumps(fields) + "\n")
    out.flush()

def child(cmd):
    me = str(os.getpid())
    for procs in cmd["procs"]:
        with open(procs, "w") as f:
            f.write(me)
    libc.prctl(15, cmd["comm"].encode()[:15], 0, 0, 0)  # PR_SET_NAME
    cache = cmd.get("cache_file")
    if cache:
        # Page cache charged to this cgroup: dropped first, so it is ours that reads it in.
        fd = os.open(cache, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(CHUNK)
        while os.readv(fd, [buf]):
            pass
        os.close(fd)
    total = min(cmd["mib"] << 20, CAP)
    prefill = min(cmd.get("prefill_mib", 0) << 20, total)
    rate = cmd.get("rate_mibps") or 0.0
    region = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    done = 0
    start = time.monotonic()
    while done < total:
        if rate and done >= prefill:
            due = start + (done - prefill) / (rate * CHUNK)
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        elif done == prefill:
            start = time.monotonic()
        libc.memset(ctypes.c_void_p(base + done), 1, CHUNK)  # written, not just reserved: charged
        done += CHUNK
        if done == prefill:
            start = time.monotonic()
    time.sleep(cmd.get("hold_s", 0.0))
    os._exit(0)

buf = b""
children = {}
stdin = sys.stdin.fileno()
while True:
    ready, _, _ = select.select([stdin], [], [], 0.002 if children else 0.5)
    if ready:
        data = os.read(stdin, 65536)
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            cmd = json.loads(line)
            if cmd.get("op") == "kill":
                for pid in list(children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                continue
            pid = os.fork()
            if pid == 0:
                try:
                    child(cmd)
                finally:
                    os._exit(3)
            children[pid] = cmd["tag"]
            say(event="forked", tag=cmd["tag"], pid=pid, ns=time.monotonic_ns())
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        tag = children.pop(pid)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        say(event="exited", tag=tag, pid=pid, signal=sig, code=code, ns=time.monotonic_ns())
for pid in children:
    os.kill(pid, signal.SIGKILL)
""".replace("CAP_MIB", str(ALLOCATION_CAP_MIB))


@dataclass
class Child:
    tag: str
    pid: int
    forked_ns: int
    signal: int | None = None
    code: int | None = None
    exited_ns: int | None = None

    @property
    def oom_killed(self) -> bool:
        return self.signal == 9


class Zygote:
    """Forks allocator children into cgroups. Thread-safe for spawn()/wait()."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self._lock = threading.Lock()
        self._children: dict[str, Child] = {}
        self._forked: dict[str, queue.Queue[Child]] = {}
        self._cond = threading.Condition()
        self._seq = 0
        self._exited = 0
        threading.Thread(target=self._read, daemon=True, name="zygote-reader").start()

    @property
    def pid(self) -> int:
        """The zygote's own pid: its allocators are its children, so a cgroup it is moved to
        (e.g. a cpu one) is theirs from the fork on."""
        return self._process.pid

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            report = json.loads(line)
            with self._cond:
                if report["event"] == "forked":
                    self._children[report["tag"]] = Child(report["tag"], report["pid"], report["ns"])
                else:
                    child = self._children[report["tag"]]
                    child.signal, child.code, child.exited_ns = report["signal"], report["code"], report["ns"]
                    self._exited += 1
                self._cond.notify_all()

    def spawn(
        self,
        sandbox: PodSandbox,
        comm: str,
        mib: int,
        rate_mibps: float = 0.0,
        prefill_mib: int = 0,
        hold_s: float = 0.0,
        cache_file: Path | None = None,
        wait_fork: bool = True,
    ) -> str:
        """Fork a child into `sandbox`'s container cgroup; returns its tag (see child())."""
        with self._lock:
            self._seq += 1
            tag = f"c{self._seq}"
        procs = [str(sandbox.dir(sandbox.container_path, root) / "cgroup.procs") for root in sandbox.roots]
        command: dict[str, Any] = {
            "tag": tag,
            "procs": procs,
            "comm": comm,
            "mib": min(mib, ALLOCATION_CAP_MIB),
            "rate_mibps": rate_mibps,
            "prefill_mib": prefill_mib,
            "hold_s": hold_s,
            "cache_file": str(cache_file) if cache_file else None,
        }
        self._send(command)
        if wait_fork:
            self.child(tag)
        return tag

    def _send(self, command: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        with self._lock:
            self._process.stdin.write((json.dumps(command) + "\n").encode())

    def child(self, tag: str, timeout_s: float = 30.0) -> Child:
        """The child once forked."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while tag not in self._children:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    raise TimeoutError(f"zygote never forked {tag}")
            return self._children[tag]

    def wait(self, tag: str, timeout_s: float = 60.0) -> Child:
        """The child once it has exited (OOM-killed or not)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while tag not in self._children or self._children[tag].exited_ns is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"child {tag} did not exit within {timeout_s}s")
                self._cond.wait(left)
            return self._children[tag]

    @property
    def in_flight(self) -> int:
        """Children asked for and not exited yet (forked or still to be)."""
        return self._seq - self._exited

    def children(self) -> list[Child]:
        with self._cond:
            return list(self._children.values())

    def kill_all(self) -> None:
        self._send({"op": "kill"})

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.kill_all()
                assert self._process.stdin is not None
                self._process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def oom_kills_counted(sandbox: PodSandbox) -> int:
    """The kernel's own count of OOM kills of tasks in the container cgroup.

    cgroup v1: `oom_kill` in memory.oom_control; v2: `oom_kill` in memory.events.local (the
    container is a leaf, so local and hierarchical agree; local keeps ancestors out).
    """
    directory = sandbox.dir(sandbox.container_path)
    if sandbox.v1:
        text = (directory / "memory.oom_control").read_text()
    else:
        local = directory / "memory.events.local"
        text = (local if local.exists() else directory / "memory.events").read_text()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise ValueError(f"no oom_kill counter in {directory}")


def host_oom_kills() -> int:
    """Every OOM kill on the host so far (/proc/vmstat oom_kill)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise ValueError("no oom_kill in /proc/vmstat")


class Pool:
    """`n` pod-shaped cgroups with the same limit, created together and removed together."""

    def __init__(
        self, n: int, limit_bytes: int, limit_at: str = "container", driver: str = "systemd"
    ) -> None:
        if limit_bytes > MAX_LIMIT_BYTES:
            raise ValueError(f"limit {limit_bytes} over the {MAX_LIMIT_BYTES}-byte cap per cgroup")
        if n * limit_bytes > MAX_IN_FLIGHT_BYTES:
            raise ValueError(
                f"{n} cgroups of {limit_bytes} bytes exceed {MAX_IN_FLIGHT_BYTES} bytes in flight"
            )
        self.sandboxes = [PodSandbox(limit_bytes, limit_at=limit_at, driver=driver) for _ in range(n)]

    def __enter__(self) -> Pool:
        created = []
        try:
            for sandbox in self.sandboxes:
                sandbox.create()
                created.append(sandbox)
        except BaseException:
            for sandbox in created:
                sandbox.destroy()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for sandbox in self.sandboxes:
            sandbox.destroy()

    def __iter__(self) -> Iterator[PodSandbox]:
        return iter(self.sandboxes)

    def __len__(self) -> int:
        return len(self.sandboxes)

    def by_container(self) -> dict[str, PodSandbox]:
        return {s.container_path: s for s in self.sandboxes}

    def kernel_oom_kills(self) -> int:
        return sum(oom_kills_counted(s) for s in self.sandboxes)


def make_cache_file(path: Path, mib: int) -> Path:
    """A file of `mib` MiB on disk, out of the page cache (so a reader charges it anew)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size != mib * MIB:
        with open(path, "wb") as f:
            chunk = b"\xa5" * MIB
            for _ in range(mib):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return path
