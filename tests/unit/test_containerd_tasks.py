"""ctr's `/<namespace>/<id>` cgroups are containerd's only when containerd has that task."""

from pathlib import Path

import pytest

from tests.unit.test_resolve_stage import FakeResolver, FixedClock, event
from tracer import schema
from tracer.resolve.containerd import ContainerdTasks
from tracer.resolve.stage import ResolveStage

CID = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d"


@pytest.fixture
def tasks(tmp_path: Path) -> ContainerdTasks:
    # The runtime-v2 shim's state directory of a running task, <root>/<namespace>/<id>.
    (tmp_path / "oomtrace-test" / "c1").mkdir(parents=True)
    (tmp_path / "default" / CID).mkdir(parents=True)
    return ContainerdTasks(tmp_path)


@pytest.mark.parametrize(
    ("path", "namespace", "container"),
    [("/oomtrace-test/c1", "oomtrace-test", "c1"), (f"/default/{CID}/sub", "default", CID)],
    ids=["ctr name", "nerdctl id with a sub-cgroup"],
)
def test_a_running_tasks_cgroup_is_tagged_with_namespace_and_id(
    tasks: ContainerdTasks, path: str, namespace: str, container: str
) -> None:
    assert tasks.tags(path) == {
        "container_id": container,
        "runtime": "containerd",
        "runtime_namespace": namespace,
    }


@pytest.mark.parametrize(
    "path",
    [
        "/oomtrace-test/c2",
        "/oomtrace-test",
        "/system.slice/foo.service",
        "/../etc",
        "/default/..",
        "relative/c1",
        "",
        None,
    ],
)
def test_a_path_without_a_task_is_not_containerds(tasks: ContainerdTasks, path: str | None) -> None:
    assert tasks.tags(path) is None


def test_a_task_seen_once_stays_tagged_after_its_state_is_removed(tmp_path: Path) -> None:
    # The shim removes the state when the task exits; a late event of that kill keeps its tags.
    state = tmp_path / "ns" / "c1"
    state.mkdir(parents=True)
    tasks = ContainerdTasks(tmp_path)
    assert tasks.tags("/ns/c1") is not None
    state.rmdir()
    assert tasks.tags("/ns/c1") is not None
    assert tasks.tags("/ns/c9") is None


def test_the_resolve_stage_asks_only_when_the_path_named_no_runtime(tasks: ContainerdTasks) -> None:
    asked: list[str | None] = []

    def runtime_tags(path: str | None) -> dict[str, str] | None:
        asked.append(path)
        return tasks.tags(path)

    paths = {1: "/oomtrace-test/c1", 2: f"/docker/{CID}"}
    stage = ResolveStage(FakeResolver(paths), "node-1", FixedClock(), runtime_tags)
    ctr = stage(event(schema.OOM_KILL, task_memcg_id=1, oom_memcg_id=1))
    assert (ctr["runtime"], ctr["runtime_namespace"], ctr["container_id"]) == (
        "containerd",
        "oomtrace-test",
        "c1",
    )
    docker = stage(event(schema.OOM_KILL, task_memcg_id=2, oom_memcg_id=2))
    assert (docker["runtime"], docker["runtime_namespace"], docker["container_id"]) == ("docker", None, CID)
    assert asked == ["/oomtrace-test/c1"]
