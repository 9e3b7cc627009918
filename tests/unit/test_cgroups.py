import os
from pathlib import Path

import pytest

from tracer.resolve import cgroups
from tracer.resolve.cgroups import CgroupResolver, path_of_pid, walk

POD = "/kubepods/burstable/pod0b9e5a1c-3f2d-4e8a-9c71-2d5f6a7b8c9d"
CONTAINER = f"{POD}/{'a' * 64}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mkcg(hierarchy: Path, path: str) -> int:
    """Create a cgroup directory (and parents) in a fixture tree; return its id (inode)."""
    directory = hierarchy / path.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    return os.stat(directory).st_ino


def ino(hierarchy: Path, path: str) -> int:
    return os.stat(hierarchy / path.lstrip("/")).st_ino


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    mkcg(tmp_path, CONTAINER)
    mkcg(tmp_path, "/system.slice/foo.service")
    return tmp_path


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    for controller in ("cpu,cpuacct", "pids", "systemd"):
        mkcg(tmp_path, controller)
    mkcg(tmp_path / "memory", CONTAINER)
    return tmp_path


@pytest.fixture
def hybrid(v1: Path) -> Path:
    (v1 / "unified").mkdir()
    (v1 / "unified" / "cgroup.controllers").write_text("")
    mkcg(v1 / "unified", CONTAINER)
    return v1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_v2_root_is_the_memory_hierarchy(v2: Path) -> None:
    resolver = CgroupResolver(v2)
    assert resolver.layout == "v2"
    assert resolver.memory_root == str(v2)
    assert resolver.path(ino(v2, CONTAINER)) == CONTAINER


def test_v1_memory_directory_is_the_memory_hierarchy(v1: Path) -> None:
    resolver = CgroupResolver(v1)
    assert resolver.layout == "v1"
    assert resolver.memory_root == str(v1 / "memory")
    assert resolver.path(ino(v1 / "memory", CONTAINER)) == CONTAINER


def test_hybrid_host_resolves_memcg_ids_in_the_v1_memory_hierarchy(hybrid: Path) -> None:
    resolver = CgroupResolver(hybrid)
    assert resolver.layout == "hybrid"
    assert resolver.memory_root == str(hybrid / "memory")
    memory_id, unified_id = ino(hybrid / "memory", CONTAINER), ino(hybrid / "unified", CONTAINER)
    assert resolver.path(memory_id) == CONTAINER
    # A v2 id means nothing in the v1 memory hierarchy: unknown, never a wrong path.
    assert resolver.path(unified_id) is None


def test_v2_cgroup_named_memory_is_not_taken_for_a_v1_hierarchy(v2: Path) -> None:
    mkcg(v2, "/memory")
    assert CgroupResolver(v2).memory_root == str(v2)


def test_v1_host_without_memory_controller_resolves_through_unified(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    cg = mkcg(tmp_path / "unified", "/system.slice")
    resolver = CgroupResolver(tmp_path)
    assert resolver.memory_root == str(tmp_path / "unified")
    assert resolver.path(cg) == "/system.slice"


def test_root_without_any_cgroup_hierarchy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no cgroup hierarchy"):
        CgroupResolver(tmp_path)


def test_hierarchy_root_resolves_to_slash(v2: Path) -> None:
    assert CgroupResolver(v2).path(os.stat(v2).st_ino) == "/"


def test_known_id_is_served_from_cache_without_rescanning(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    assert resolver.path(ino(v2, CONTAINER)) == CONTAINER
    clock.now += 3600
    assert resolver.path(ino(v2, POD)) == POD
    assert resolver.path(ino(v2, "/system.slice/foo.service")) == "/system.slice/foo.service"
    assert resolver.walks == 1


def test_miss_rescans_once_and_finds_a_cgroup_created_since(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    resolver.rescan()
    clock.now += 1.0
    new = mkcg(v2, f"{POD}/{'b' * 64}")
    assert resolver.path(new) == f"{POD}/{'b' * 64}"
    assert resolver.walks == 2


def test_id_unknown_after_rescan_resolves_to_none(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    assert resolver.path(2**63 + 12345) is None
    assert resolver.walks == 1


def test_misses_within_the_rescan_interval_do_not_walk_again(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, min_rescan_interval_s=5.0, clock=clock)
    resolver.rescan()
    new = mkcg(v2, "/system.slice/bar.service")
    for _ in range(1000):  # an OOM storm for a cgroup created after the last walk
        assert resolver.path(new) is None
        clock.now += 0.004
    assert resolver.walks == 1
    clock.now += 1.0
    assert resolver.path(new) == "/system.slice/bar.service"
    assert resolver.walks == 2


def test_deleted_directory_keeps_its_cached_path(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    gone = ino(v2, CONTAINER)
    assert resolver.path(gone) == CONTAINER
    (v2 / CONTAINER.lstrip("/")).rmdir()
    clock.now += 10
    resolver.rescan()
    assert resolver.path(gone) == CONTAINER
    assert resolver.walks == 2


def test_rescan_follows_a_cgroup_whose_directory_moved(v2: Path, clock: FakeClock) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    moved = ino(v2, CONTAINER)
    assert resolver.path(moved) == CONTAINER
    (v2 / CONTAINER.lstrip("/")).rename(v2 / "system.slice" / "moved")  # same inode, another path
    resolver.rescan()
    assert resolver.path(moved) == "/system.slice/moved"


def test_an_id_back_in_the_hierarchy_takes_the_path_the_walk_finds(
    tmp_path_factory: pytest.TempPathFactory, v2: Path, clock: FakeClock
) -> None:
    resolver = CgroupResolver(v2, clock=clock)
    back = ino(v2, CONTAINER)
    assert resolver.path(back) == CONTAINER
    outside = tmp_path_factory.mktemp("outside") / "away"  # same filesystem, not the hierarchy
    (v2 / CONTAINER.lstrip("/")).rename(outside)
    resolver.rescan()
    assert resolver.path(back) == CONTAINER  # gone: its last path is kept
    outside.rename(v2 / "system.slice" / "back")
    resolver.rescan()
    assert resolver.path(back) == "/system.slice/back"


def test_removed_ids_are_kept_only_up_to_a_bound(
    v2: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "MAX_REMOVED", 3)
    ids = [mkcg(v2, f"/gone-{n}") for n in range(1, 6)]
    resolver = CgroupResolver(v2, clock=clock)
    resolver.rescan()
    for n in range(1, 6):  # removed one by one, oldest first
        (v2 / f"gone-{n}").rmdir()
        resolver.rescan()
    assert [resolver.path(cgroup_id) for cgroup_id in ids] == [None, None, "/gone-3", "/gone-4", "/gone-5"]


def test_walk_does_not_follow_symlinks(tmp_path: Path) -> None:
    mkcg(tmp_path, "/real/child")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert sorted(walk(str(tmp_path)).values()) == ["/", "/real", "/real/child"]


def test_walk_stops_at_the_depth_bound(tmp_path: Path) -> None:
    mkcg(tmp_path, "/a/b/c/d")
    assert sorted(walk(str(tmp_path), max_depth=2).values()) == ["/", "/a", "/a/b"]


def test_walk_ids_are_the_directory_inodes(v2: Path) -> None:
    assert walk(str(v2))[ino(v2, POD)] == POD


def test_walk_of_a_missing_root_finds_nothing(tmp_path: Path) -> None:
    assert walk(str(tmp_path / "absent")) == {}


def write_proc(proc: Path, pid: int, text: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)


V1_PROC = f"""12:pids:/system.slice/foo.service
11:cpu,cpuacct:/system.slice/foo.service
4:memory:{CONTAINER}
1:name=systemd:/system.slice/foo.service
"""
COMBINED_PROC = f"5:blkio,memory:{CONTAINER}\n1:name=systemd:/\n"
HYBRID_PROC = f"4:memory:{CONTAINER}\n1:name=systemd:/\n0::/system.slice/containerd.service\n"
V2_PROC = f"0::{CONTAINER}\n"
NAMESPACED_PROC = "0::/../../kubepods/besteffort/pod0b9e5a1c-3f2d-4e8a-9c71-2d5f6a7b8c9d\n"
PATH_WITH_COLON_PROC = "0::/system.slice/a:b.service\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(V1_PROC, CONTAINER, id="v1 memory line"),
        pytest.param(COMBINED_PROC, CONTAINER, id="v1 memory co-mounted with another controller"),
        pytest.param(HYBRID_PROC, CONTAINER, id="hybrid: the v1 memory line wins over 0::"),
        pytest.param(V2_PROC, CONTAINER, id="v2 line"),
        pytest.param(PATH_WITH_COLON_PROC, "/system.slice/a:b.service", id="colon inside the path"),
        pytest.param(NAMESPACED_PROC, None, id="path outside our cgroup namespace"),
        pytest.param("1:name=systemd:/\n", None, id="no memory controller and no v2 line"),
        pytest.param("", None, id="empty file"),
    ],
)
def test_path_of_pid_reads_the_memory_cgroup_from_proc(
    tmp_path: Path, text: str, expected: str | None
) -> None:
    write_proc(tmp_path, 4242, text)
    assert path_of_pid(4242, proc_root=tmp_path) == expected


def test_path_of_vanished_pid_is_none(tmp_path: Path) -> None:
    assert path_of_pid(4242, proc_root=tmp_path) is None


@pytest.mark.parametrize("pid", [0, -1], ids=["zero", "negative"])
def test_path_of_impossible_pid_is_none(tmp_path: Path, pid: int) -> None:
    assert path_of_pid(pid, proc_root=tmp_path) is None


def test_path_of_own_pid_from_the_real_proc_is_a_cgroup_path() -> None:
    path = path_of_pid(os.getpid())
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    assert path is not None
    assert path.startswith("/")
    assert any(line.endswith(f":{path}") for line in lines)
