"""Reading /proc and cgroupfs for VM attribution: comms, the pod cgroup of a path, a cgroup's processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from tracer.resolve.tags import tags_for_path


def read_bytes(path: str | Path, limit: int = 4096) -> bytes | None:
    """Up to `limit` bytes of a /proc or cgroupfs file; None if it cannot be read. os.open/os.read:
    a kill's snapshot reads several files, and io objects cost more than the read itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_comm(proc_root: Path, pid: int) -> str | None:
    data = read_bytes(proc_root / str(pid) / "comm", 64)
    if data is None:
        return None
    return data.rstrip(b"\n").decode("utf-8", errors="replace")


def pod_cgroup(path: str | None) -> str | None:
    """The pod-level cgroup of a path inside a pod (the path itself for a pod cgroup)."""
    if not path:
        return None
    uid = tags_for_path(path)["pod_uid"]
    if uid is None:
        return None
    pod = path
    while True:
        parent = pod.rsplit("/", 1)[0] or "/"
        if parent == pod or tags_for_path(parent)["pod_uid"] != uid:
            return pod
        pod = parent


def pids_in(memory_root: Path, cgroup: str, limit: int = 65536) -> list[int]:
    """The processes in a cgroup and its descendants (cgroup.procs, tgids only)."""
    pids: list[int] = []
    for directory in _walk(memory_root / cgroup.lstrip("/")):
        data = read_bytes(directory / "cgroup.procs", 1 << 20)
        if data is None:
            continue
        for word in data.split():
            if word.isdigit():
                pids.append(int(word))
                if len(pids) >= limit:
                    return pids
    return pids


def _walk(top: Path, max_depth: int = 8) -> Iterator[Path]:
    stack = [(top, 0)]
    while stack:
        directory, depth = stack.pop()
        yield directory
        if depth >= max_depth:
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), depth + 1))
        except OSError:
            continue


