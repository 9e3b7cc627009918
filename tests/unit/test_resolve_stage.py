import re
import time
from datetime import datetime
from typing import Any

import pytest

from tracer import schema
from tracer.resolve.stage import ResolveStage
from tracer.resolve.tags import tags_for_path
from tracer.timefmt import WallClock

UID = "968a06fb-9ab9-4819-8caf-0392ddff3d9b"
CID = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d"
POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
CONTAINER = f"{POD}/cri-containerd-{CID}.scope"
SHELL = "/user.slice/user-0.slice/session-1.scope"
PATHS = {10: POD, 11: CONTAINER, 12: SHELL}
RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class FakeResolver:
    def __init__(self, paths: dict[int, str]) -> None:
        self.paths = paths
        self.asked: list[int] = []

    def path(self, cgroup_id: int) -> str | None:
        self.asked.append(cgroup_id)
        return self.paths.get(cgroup_id)

    def rescan(self) -> int:
        self.rescans = getattr(self, "rescans", 0) + 1
        return len(self.paths)


class FixedClock(WallClock):
    """Wall time = ktime + 1_700_000_000 s."""

    def refresh(self) -> None:
        self._offset_ns = 1_700_000_000 * 1_000_000_000


def resolve_stage(paths: dict[int, str] | None = None) -> tuple[ResolveStage, FakeResolver]:
    resolver = FakeResolver(PATHS if paths is None else paths)
    return ResolveStage(resolver, "node-1", FixedClock()), resolver


def event(kind: str, **fields: Any) -> dict[str, Any]:
    e = schema.blank_event(kind)
    e.update({"tier": "fentry", "ktime_ns": 5_000_000_000, "trigger_memcg_id": 12, **fields})
    return e


def test_near_oom_paths_are_resolved_and_tagged_from_its_memcg() -> None:
    e, _ = resolve_stage()
    out = e(event(schema.NEAR_OOM, memcg_id=10))
    assert (out["memcg"], out["trigger_memcg"]) == (POD, SHELL)
    assert {k: out[k] for k in schema.TAG_FIELDS} == tags_for_path(POD)
    assert out["pod_uid"] == UID


def test_memcg_oom_is_tagged_from_the_oom_memcg_not_the_trigger() -> None:
    e, _ = resolve_stage()
    out = e(event(schema.MEMCG_OOM, oom_memcg_id=10, trigger_memcg_id=11))
    assert (out["oom_memcg"], out["trigger_memcg"]) == (POD, CONTAINER)
    assert out["cgroup"] == POD
    assert out["container_id"] is None


def test_oom_kill_is_tagged_from_the_victims_memcg_with_the_oom_memcg_resolved_too() -> None:
    e, _ = resolve_stage()
    out = e(event(schema.OOM_KILL, task_memcg_id=11, oom_memcg_id=10))
    assert (out["task_memcg"], out["oom_memcg"], out["trigger_memcg"]) == (CONTAINER, POD, SHELL)
    assert {k: out[k] for k in schema.TAG_FIELDS} == tags_for_path(CONTAINER)
    assert (out["pod_uid"], out["container_id"], out["runtime"]) == (UID, CID, "containerd")


@pytest.mark.parametrize("kind", schema.KINDS)
def test_trigger_memcg_id_is_internal_and_removed(kind: str) -> None:
    e, _ = resolve_stage()
    out = e(event(kind))
    assert "trigger_memcg_id" not in out
    assert set(out) == set(schema.blank_event(kind))


@pytest.mark.parametrize("kind", schema.KINDS)
def test_published_ids_stay_in_the_event(kind: str) -> None:
    ids = {
        schema.NEAR_OOM: {"memcg_id": 10},
        schema.MEMCG_OOM: {"oom_memcg_id": 10},
        schema.OOM_KILL: {"task_memcg_id": 11},
    }
    e, _ = resolve_stage()
    out = e(event(kind, **ids[kind]))
    assert {k: out[k] for k in ids[kind]} == ids[kind]


def test_unknown_ids_are_not_looked_up_and_leave_paths_and_tags_none() -> None:
    e, resolver = resolve_stage()
    out = e(event(schema.OOM_KILL, trigger_memcg_id=None))
    assert resolver.asked == []
    assert (out["task_memcg"], out["oom_memcg"], out["trigger_memcg"]) == (None, None, None)
    assert all(out[k] is None for k in schema.TAG_FIELDS)


def test_id_the_resolver_cannot_find_gives_a_none_path() -> None:
    e, resolver = resolve_stage(paths={})
    out = e(event(schema.MEMCG_OOM, oom_memcg_id=99))
    assert 99 in resolver.asked
    assert out["oom_memcg"] is None and out["cgroup"] is None


def test_kmsg_events_keep_the_paths_the_kernel_printed() -> None:
    e, resolver = resolve_stage(paths={10: "/resolved/differently"})
    kmsg = schema.blank_event(schema.OOM_KILL)
    kmsg.update(tier="kmsg", ktime_ns=5_000_000_000, task_memcg=CONTAINER, oom_memcg=POD, oom_memcg_id=10)
    out = e(kmsg)
    assert (out["task_memcg"], out["oom_memcg"]) == (CONTAINER, POD)
    assert resolver.asked == []
    assert out["container_id"] == CID


def test_node_is_set_on_every_event() -> None:
    e, _ = resolve_stage()
    assert e(event(schema.NEAR_OOM))["node"] == "node-1"


def test_ts_is_rfc3339_utc_with_microseconds_and_z() -> None:
    e, _ = resolve_stage()
    out = e(event(schema.NEAR_OOM, ktime_ns=5_123_456_789))
    assert out["ts"] == "2023-11-14T22:13:25.123456Z"  # 1_700_000_005.123456789 s


def test_ts_already_set_is_kept() -> None:
    e, _ = resolve_stage()
    assert e(event(schema.NEAR_OOM, ts="2020-01-01T00:00:00.000000Z"))["ts"] == "2020-01-01T00:00:00.000000Z"


def test_without_ktime_there_is_no_ts() -> None:
    e, _ = resolve_stage()
    assert e(event(schema.NEAR_OOM, ktime_ns=None))["ts"] is None


def test_enrich_completes_the_event_it_is_given() -> None:
    e, _ = resolve_stage()
    original = event(schema.NEAR_OOM, memcg_id=10)
    assert e(original) is original


def test_wall_clock_maps_monotonic_now_to_wall_now() -> None:
    clock = WallClock()
    stamp = clock.rfc3339(time.monotonic_ns())
    assert RFC3339_Z.fullmatch(stamp)
    now = time.time()
    expected = {time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) for t in (now - 1, now)}
    assert stamp[:19] in expected


def test_wall_clock_keeps_leading_zeros_of_the_fraction() -> None:
    clock = WallClock()
    clock._offset_ns = 0
    assert clock.rfc3339(1_000_042_000) == "1970-01-01T00:00:01.000042Z"


def test_wall_clock_refresh_follows_a_stepped_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = WallClock()
    before = clock.rfc3339(time.monotonic_ns())
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3600 * 1_000_000_000)
    clock.refresh()
    after = clock.rfc3339(time.monotonic_ns())
    step = parse(after) - parse(before)
    assert 3599 < step.total_seconds() < 3601


def parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_starting_the_stage_walks_the_hierarchy_once_so_existing_cgroups_resolve_at_once() -> None:
    stage, resolver = resolve_stage({10: "/a"})
    stage.start()
    assert resolver.rescans == 1
