"""Cgroup id → cgroup path, for ids the BPF programs read from the kernel.

A cgroup's id is its kernfs node id, which is also the inode number of its directory on
both cgroup v1 and v2 (kernel >= 5.5). So walking a hierarchy with os.scandir and
recording each directory's inode gives the map, with no privileges beyond reading it.

Layouts (detected from files under the given root, so tests can use plain directories):
  v2:     cgroup2 at the root (`cgroup.controllers` there).
  v1:     one directory per controller; memory cgroup ids refer to `memory/`.
  hybrid: v1 plus cgroup2 at `unified/` (whose ids, from bpf_get_current_cgroup_id(), are not
          memory cgroups: the programs read the memory cgroup itself where BTF allows).
"""

import ctypes
import functools
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

DEFAULT_ROOT: Final = "/sys/fs/cgroup"
# Deeper than any real hierarchy (kind-in-pod nests ~10 levels); stops a runaway walk.
MAX_DEPTH: Final = 32
# Ids of removed cgroups kept resolvable, oldest dropped first: an event for a cgroup
# removed right after its OOM still gets its path, and pod churn cannot grow memory forever.
MAX_REMOVED: Final = 16384


# A cgroup id is also the kernfs file handle of its directory (FILEID_KERNFS), so
# open_by_handle_at() opens a cgroup by id, and /proc/self/fd names its path: one
# lookup instead of a walk. Needs CAP_DAC_READ_SEARCH; any failure just means "unknown".
_FILEID_KERNFS: Final = 0xFE
_libc = ctypes.CDLL(None, use_errno=True)


@functools.lru_cache(maxsize=8)
def _real_path(root: str) -> str:
    """A mounted hierarchy's root resolves to the same path while it is mounted; resolving it
    costs a stat per component, half of a new cgroup's lookup."""
    return os.path.realpath(root)


def path_by_handle(root: str, cgroup_id: int) -> str | None:
    """Path of cgroup `cgroup_id` below the hierarchy mounted at `root`, or None."""
    if not 0 < cgroup_id < 2**64:
        return None
    handle = ctypes.create_string_buffer(struct.pack("<IiQ", 8, _FILEID_KERNFS, cgroup_id))
    try:
        mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fd = _libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
        if fd < 0:
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(mount_fd)
    base = _real_path(root)
    if target == base:
        return "/"
    if not target.startswith(base + "/"):
        return None  # another mount of the same hierarchy: not a path we can name
    return target[len(base) :]


class _Hierarchy:
    """The id → path map of one mounted hierarchy, refreshed by rate-limited walks."""

    def __init__(self, root: str, min_rescan_interval_s: float, clock: Callable[[], float]) -> None:
        self.root = root
        self._interval = min_rescan_interval_s
        self._clock = clock
        self._live: dict[int, str] = {}
        self._removed: OrderedDict[int, str] = OrderedDict()
        self._last_walk: float | None = None
        self.walks = 0

    def path(self, cgroup_id: int) -> str | None:
        found = self._cached(cgroup_id)
        if found is not None:
            return found
        # A cgroup made since the last walk: ask the kernel for that one id (no walk).
        found = path_by_handle(self.root, cgroup_id)
        if found is not None:
            self._live[cgroup_id] = found
            return found
        now = self._clock()
        # One walk per interval at most: during an OOM storm, misses must stay cheap.
        if self._last_walk is not None and now - self._last_walk < self._interval:
            return None
        self.rescan()
        return self._cached(cgroup_id)

    def _cached(self, cgroup_id: int) -> str | None:
        found = self._live.get(cgroup_id)
        return found if found is not None else self._removed.get(cgroup_id)

    def rescan(self) -> int:
        self._last_walk = self._clock()
        self.walks += 1
        fresh = walk(self.root)
        for cgroup_id, path in self._live.items():
            if cgroup_id not in fresh:
                self._keep_removed(cgroup_id, path)
        for cgroup_id in fresh.keys() & self._removed.keys():
            # The id is back (a reused inode, or a directory moved back in): the walk wins.
            del self._removed[cgroup_id]
        self._live = fresh
        return len(fresh)

    def _keep_removed(self, cgroup_id: int, path: str) -> None:
        self._removed[cgroup_id] = path
        self._removed.move_to_end(cgroup_id)
        while len(self._removed) > MAX_REMOVED:
            self._removed.popitem(last=False)


class CgroupResolver:
    """Maps memory cgroup ids to paths relative to their hierarchy root ("/" for the root).

    Lookups come from a cache; a miss asks the kernel for that one id, then walks the
    hierarchy again, at most once per `min_rescan_interval_s` (misses in between return
    None). Unknown ids give None, never a wrong path.

    Removed cgroups: an id keeps its last known path after a walk no longer finds it, until
    a walk finds that inode elsewhere or MAX_REMOVED newer removals push it out. On 64-bit
    kernels a kernfs id is a cyclic 32-bit counter plus a generation in the high bits, so ids
    are not reused in practice; where ino_t is 32 bits they can be, after the counter wraps.

    Not thread-safe: use it from the thread that handles events.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        min_rescan_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        root = os.fspath(root)
        if os.path.isfile(os.path.join(root, "cgroup.controllers")):
            # Checked first: on v2 a cgroup may be named "memory"; that is not a v1 hierarchy.
            self.layout, memory = "v2", root
        elif os.path.isdir(os.path.join(root, "memory")):
            memory = os.path.join(root, "memory")
            unified = os.path.isfile(os.path.join(root, "unified", "cgroup.controllers"))
            self.layout = "hybrid" if unified else "v1"
        elif os.path.isfile(os.path.join(root, "unified", "cgroup.controllers")):
            # v1 without a memory controller (cgroup_disable=memory): the v2 ids are all there is.
            self.layout, memory = "hybrid", os.path.join(root, "unified")
        else:
            raise ValueError(f"no cgroup hierarchy found at {root!r} (no cgroup.controllers, no memory/)")
        self._memory = _Hierarchy(memory, min_rescan_interval_s, clock)

    @property
    def memory_root(self) -> str:
        """Directory of the hierarchy that memory cgroup ids (memcg ids) refer to."""
        return self._memory.root

    def path(self, cgroup_id: int) -> str | None:
        """Path of a memory cgroup id, e.g. from a struct mem_cgroup's css.cgroup->kn->id."""
        return self._memory.path(cgroup_id)

    def rescan(self) -> int:
        """Walk the memory hierarchy now, ignoring the rate limit; returns cgroups found."""
        return self._memory.rescan()

    @property
    def walks(self) -> int:
        """Walks of the memory hierarchy so far: what the rate limit bounds."""
        return self._memory.walks


def walk(root: str, max_depth: int = MAX_DEPTH) -> dict[int, str]:
    """Inode → path ("/" for `root`) of every directory under `root`, symlinks not followed."""
    try:
        found = {os.stat(root).st_ino: "/"}
    except OSError:
        return {}
    stack = [(root, "", 0)]
    while stack:
        directory, rel, depth = stack.pop()
        if depth >= max_depth:
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    # is_dir(follow_symlinks=False) and inode() come from getdents: no stat per entry.
                    if entry.is_dir(follow_symlinks=False):
                        child = f"{rel}/{entry.name}"
                        found[entry.inode()] = child
                        stack.append((entry.path, child, depth + 1))
        except OSError:
            # Removed mid-walk, or unreadable: skip that subtree, keep the rest.
            continue
    return found


def path_of_pid(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> str | None:
    """The memory cgroup path of a process from /proc/<pid>/cgroup, or None if it is gone.

    Paths there are relative to the reader's cgroup namespace: run in the host's, or they
    won't match the kernel's. Paths outside that namespace (they start with "/..") give None.
    """
    if pid <= 0:
        return None
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        # ENOENT or ESRCH: the process exited; EACCES: not ours to read.
        return None
    unified: str | None = None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if "memory" in controllers.split(","):
            return _in_namespace(path)
        if hierarchy == "0" and controllers == "":
            unified = path
    return _in_namespace(unified) if unified is not None else None


def _in_namespace(path: str) -> str | None:
    if not path.startswith("/") or path == "/.." or path.startswith("/../"):
        return None
    return path
