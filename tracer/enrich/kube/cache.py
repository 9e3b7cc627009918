"""This node's pods by UID and by container ID, as the pod sources last saw them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from tracer.enrich.kube.pods import PodMeta

DEFAULT_GRACE_S: Final = 300.0


class PodCache:
    """Pods by UID and by container ID. Deleted pods stay for `grace_s`. Thread-safe."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, PodMeta] = {}
        self._deleted: dict[str, float] = {}  # uid → when it was seen gone
        self._by_container: dict[str, str] = {}  # container ID → pod UID

    def upsert(self, pod: PodMeta, listed_at: float | None = None) -> None:
        """Add or update a pod. From a list begun at `listed_at`, a pod deleted since is not revived."""
        with self._lock:
            gone = self._deleted.get(pod.uid)
            if gone is not None and listed_at is not None and gone >= listed_at:
                return
            self._deleted.pop(pod.uid, None)
            old = self._pods.get(pod.uid)
            if old is not None:
                for cid in old.containers.keys() - pod.containers.keys():
                    # Keep ids of exited containers: a kill is reported after the container is gone.
                    pod.containers.setdefault(cid, old.containers[cid])
            self._pods[pod.uid] = pod
            for cid in pod.containers:
                self._by_container[cid] = pod.uid

    def delete(self, uid: str) -> None:
        with self._lock:
            if uid in self._pods:
                self._deleted.setdefault(uid, self._clock())
            self._expire()

    def replace(self, pods: list[PodMeta], listed_at: float) -> None:
        """The full list of this node's pods, as of a list begun at `listed_at`."""
        seen = {p.uid for p in pods}
        for pod in pods:
            self.upsert(pod, listed_at)
        now = self._clock()
        with self._lock:
            for uid in self._pods.keys() - seen:
                self._deleted.setdefault(uid, now)
            self._expire()

    def _expire(self) -> None:
        now = self._clock()
        for uid, gone in list(self._deleted.items()):
            if now - gone >= self._grace:
                del self._deleted[uid]
                pod = self._pods.pop(uid, None)
                if pod is not None:
                    for cid in pod.containers:
                        if self._by_container.get(cid) == uid:
                            del self._by_container[cid]

    def lookup(self, pod_uid: str | None, container_id: str | None) -> tuple[PodMeta | None, str | None]:
        """(pod, container name); either None when not known."""
        with self._lock:
            self._expire()
            pod = None
            if container_id is not None:
                owner = self._by_container.get(container_id)
                pod = self._pods.get(owner) if owner is not None else None
            if pod is None and pod_uid is not None:
                pod = self._pods.get(pod_uid)
            name = pod.containers.get(container_id) if pod is not None and container_id else None
            return pod, name

    def deleted(self, uid: str) -> bool:
        """Whether the pod is known to be gone (and still named until its grace ends)."""
        with self._lock:
            return uid in self._deleted

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)
