"""The first stage of the pipeline: kernel cgroup ids → cgroup paths → tags, plus node and time.

Runs per event, so it never walks the filesystem itself: the resolver answers from its
cache and rescans at most once a second on a miss.
"""

from collections.abc import Callable
from typing import Any, Protocol

from tracer import schema
from tracer.resolve.tags import tags_for_path
from tracer.timefmt import WallClock

# (id field in the decoded event, path field in the schema), per kind; the first pair names
# the cgroup the event's tags describe.
_PATHS = {
    schema.NEAR_OOM: (("memcg_id", "memcg"), ("trigger_memcg_id", "trigger_memcg")),
    schema.MEMCG_OOM: (("oom_memcg_id", "oom_memcg"), ("trigger_memcg_id", "trigger_memcg")),
    schema.OOM_KILL: (
        ("task_memcg_id", "task_memcg"),
        ("oom_memcg_id", "oom_memcg"),
        ("trigger_memcg_id", "trigger_memcg"),
    ),
}
# Ids that are only a means to a path: not part of the published schema.
_INTERNAL_IDS = ("trigger_memcg_id",)


class PathResolver(Protocol):
    def path(self, cgroup_id: int) -> str | None: ...

    def rescan(self) -> int: ...


class ResolveStage:
    def __init__(
        self,
        resolver: PathResolver,
        node: str,
        clock: WallClock,
        runtime_tags: Callable[[str | None], dict[str, str] | None] | None = None,
    ) -> None:
        self._resolver = resolver
        self._node = node
        self._clock = clock
        # Tags the path alone cannot establish (ctr's /<namespace>/<id>): asked only when the
        # path gave no runtime.
        self._runtime_tags = runtime_tags

    def start(self) -> None:
        """One walk of the hierarchy before the first event, so existing cgroups resolve at once."""
        self._resolver.rescan()

    def close(self) -> None:
        """Nothing to release."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        """Adds node, ts, cgroup paths and tags. Paths already present (kmsg) are kept."""
        event["node"] = self._node
        if event.get("ktime_ns") is not None and event.get("ts") is None:
            event["ts"] = self._clock.rfc3339(event["ktime_ns"])
        pairs = _PATHS[event["event"]]
        for id_field, path_field in pairs:
            cgroup_id = event.get(id_field)
            if event.get(path_field) is None and cgroup_id is not None:
                event[path_field] = self._resolver.path(cgroup_id)
        for field in _INTERNAL_IDS:
            event.pop(field, None)
        path = event.get(pairs[0][1])
        tags = tags_for_path(path)
        if tags["runtime"] is None and tags["pod_uid"] is None and self._runtime_tags is not None:
            tags.update(self._runtime_tags(path) or {})
        event.update(tags)
        return event
