"""Which near_oom records a later OOM record may overtake on the way out.

In a storm one poll hands over dozens of new cgroups' first near_oom records (each a first pod
lookup and VM scan) together with kills. A kill published behind all of them waits for that
work (50-cgroup storms, single runs, not an interleaved A/B: kill lines p50 64-76 ms in kernel
order against 24-29 ms with kills first). Lines of one cgroup's story stay in the kernel's
order: near_oom, memcg_oom, oom_kill. So a kill overtakes only near_oom records of cgroups it
cannot be part of: neither cgroup's parent is the other or above it, so they are not one cgroup,
one subtree, or siblings (two containers of one pod). An id whose path is unknown overtakes
nothing.
"""

from collections.abc import Callable
from typing import Any, Final

_NEAR_OOM_IDS: Final = ("memcg_id", "trigger_memcg_id")
_OOM_IDS: Final = ("oom_memcg_id", "task_memcg_id", "trigger_memcg_id")


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


def _within(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


class Lineage:
    """`overtakes(oom)`: which near_oom records that OOM record may overtake, from the resolver's
    id → path lookup (the ResolveStage's own, so a path looked up here is cached for the stage)."""

    def __init__(self, path: Callable[[int], str | None]) -> None:
        self._path = path

    def _paths(self, event: dict[str, Any], fields: tuple[str, ...]) -> list[str] | None:
        ids = [event.get(f) for f in fields]
        paths = [self._path(i) for i in ids if isinstance(i, int)]
        if not paths or None in paths:
            return None
        return [p for p in paths if p is not None]

    def overtakes(self, oom: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
        """A test for the near_oom records waiting when `oom` arrives; its paths are looked up once."""
        ours = self._paths(oom, _OOM_IDS)

        def test(near_oom: dict[str, Any]) -> bool:
            near = self._paths(near_oom, _NEAR_OOM_IDS)
            if near is None or ours is None:
                return False
            return not any(_within(o, _parent(n)) or _within(n, _parent(o)) for n in near for o in ours)

        return test
