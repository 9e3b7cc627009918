"""containerd containers outside Kubernetes on the cgroupfs driver: `/<namespace>/<id>`.

`ctr run` puts a container in `/<namespace>/<container id>`, a shape any two-level cgroup
has, so the path alone establishes nothing. containerd's runtime-v2 shims keep a state
directory per running task, `<state root>/<namespace>/<id>`: only a path that has one is a
containerd container. (Under kubelet, containerd's containers are kubepods paths instead.)
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Final

from tracer.resolve.tags import CONTAINERD

DEFAULT_STATE_ROOT: Final = Path("/run/containerd/io.containerd.runtime.v2.task")
# containerd's own rules for namespaces and container ids (identifiers.Validate).
_NAMESPACE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,74}[A-Za-z0-9])?", re.ASCII)
_CONTAINER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,75}", re.ASCII)
_MAX_KNOWN: Final = 4096


class ContainerdTasks:
    """Tags a `/<namespace>/<id>` cgroup path as containerd's if the task's state directory exists."""

    def __init__(self, state_root: Path = DEFAULT_STATE_ROOT) -> None:
        self._root = state_root
        # A task's path stays its own once seen (ids are not reused while the cgroup exists).
        self._known: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def tags(self, path: str | None) -> dict[str, str] | None:
        """{container_id, runtime, runtime_namespace} for a containerd task's cgroup, else None."""
        if not path or not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        if len(parts) < 2 or not _NAMESPACE.fullmatch(parts[0]) or not _CONTAINER_ID.fullmatch(parts[1]):
            return None
        key = f"{parts[0]}/{parts[1]}"
        found = self._known.get(key)
        if found is None:
            if not os.path.isdir(self._root / parts[0] / parts[1]):
                return None
            found = (parts[0], parts[1])
            self._known[key] = found
            while len(self._known) > _MAX_KNOWN:
                self._known.popitem(last=False)
        return {"container_id": found[1], "runtime": CONTAINERD, "runtime_namespace": found[0]}
