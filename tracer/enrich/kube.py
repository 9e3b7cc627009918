"""Kubernetes metadata for events of pod cgroups: namespace, pod and container names, labels, owner.

Two sources fill one cache, keyed by pod UID and by container ID:

- `KubeletSource`: the kubelet's `/pods` on this node (node-local, cheap at any cluster
  size), polled every `resync_s` and on a miss. Plain HTTPS from the standard library:
  one GET of a PodList needs no client library.
- `ApiServerSource`: a list, then a watch, of the pods with `spec.nodeName=<node>`,
  through the official `kubernetes` client (in-cluster service account or kubeconfig,
  every auth plugin kubeconfig allows). A 410 Gone relists; 401/403 are logged as what
  they are and retried with backoff.

The event path (`KubeStage`) never waits for the network longer than `timeout_s`: on a
miss it asks for a refresh (one list in flight per source, whatever the number of pods
missed: no thundering herd in an OOM storm), waits for it up to the deadline of the first
event that missed, and then emits with what is known. A deleted pod stays named for
`grace_s`, so a kill just before the pod went is still attributed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from tracer.enrich.vm import PodHint

DEFAULT_ALLOWLIST: Final = (
    "app.kubernetes.io/name",
    "kubevirt.io/*",
    "vm.kubevirt.io/name",
    "harvesterhci.io/vmName",
)
DEFAULT_TIMEOUT_S: Final = 0.1
DEFAULT_GRACE_S: Final = 300.0
DEFAULT_RESYNC_S: Final = 30.0
DEFAULT_KUBELET_URL: Final = "https://127.0.0.1:10250"
SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A pod that a finished refresh did not find is not refreshed for again before this.
MISS_RETRY_S: Final = 10.0
# Server-side length of one watch request; the client reconnects from the last version.
WATCH_TIMEOUT_S: Final = 300
REQUEST_TIMEOUT_S: Final = 5.0
MAX_BACKOFF_S: Final = 30.0
# A kubelet /pods answer larger than this is not one (250 pods x ~20 KiB is ~5 MiB).
MAX_RESPONSE_BYTES: Final = 64 << 20
# Bounds on what one pod may put into an event.
MAX_KEYS: Final = 32
MAX_VALUE_CHARS: Final = 1024

# Reasons an event went out without names (label values of the failures metric).
TIMEOUT: Final = "timeout"  # the refresh did not answer in time
NOT_FOUND: Final = "not_found"  # the source answered and does not know the pod
UNAVAILABLE: Final = "unavailable"  # the source cannot be reached or answered garbage
UNAUTHORIZED: Final = "unauthorized"  # 401: credentials rejected
FORBIDDEN: Final = "forbidden"  # 403: not allowed to list pods
ERROR: Final = "error"  # a bug of ours, logged
REASONS: Final = (TIMEOUT, NOT_FOUND, UNAVAILABLE, UNAUTHORIZED, FORBIDDEN, ERROR)
STAGES: Final = ("kube", "vm", "memsnap", "overhead")

_CONTAINER_ID: Final = re.compile(r"(?:[a-z0-9.+-]{1,32}://)?([0-9a-f]{64})", re.ASCII)
_QOS: Final = {"Guaranteed": "guaranteed", "Burstable": "burstable", "BestEffort": "besteffort"}


def enrichment_failures(registry: CollectorRegistry) -> Counter:
    """`oomtrace_enrichment_failures_total{stage,reason}`, every known series present from the start."""
    counter = Counter(
        "oomtrace_enrichment_failures_total",
        "Events emitted without the names an enrichment stage should have added, by stage and reason.",
        ["stage", "reason"],
        registry=registry,
    )
    for reason in REASONS:
        counter.labels("kube", reason)
    for stage in STAGES[1:]:
        counter.labels(stage, ERROR)
    return counter


class KubeError(Exception):
    """Kubernetes access that cannot work as configured (bad kubeconfig, no cluster): exit 2."""


class Allowlist:
    """Label/annotation keys to copy into events: exact keys or shell-style globs (`kubevirt.io/*`)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p.strip() for p in patterns if p.strip())
        for pattern in self.patterns:
            if len(pattern) > 317 or any(c.isspace() or not c.isprintable() for c in pattern):
                raise ValueError(f"not a label key pattern: {pattern!r}")

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        return cls(text.split(","))

    def matches(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.patterns)

    def select(self, mapping: object) -> dict[str, str]:
        if not isinstance(mapping, Mapping):
            return {}
        chosen: dict[str, str] = {}
        for key in sorted(k for k in mapping if isinstance(k, str)):
            value = mapping[key]
            if isinstance(value, str) and self.matches(key):
                chosen[key] = value[:MAX_VALUE_CHARS]
                if len(chosen) >= MAX_KEYS:
                    break
        return chosen


@dataclass(frozen=True)
class PodMeta:
    uid: str
    namespace: str
    name: str
    node: str | None
    qos: str | None
    owner: dict[str, str] | None
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: dict[str, str]  # container ID (64 hex) → container name
    virt_launcher: bool = False
    vmi: str | None = None  # the VMI a virt-launcher pod runs (annotation kubevirt.io/domain)
    resource_version: str | None = field(default=None, compare=False)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_pod(obj: object, allow: Allowlist) -> PodMeta | None:
    """A v1 Pod (JSON as the API and the kubelet send it) → PodMeta; None if it names no pod."""
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid, namespace, name = _str(meta.get("uid")), _str(meta.get("namespace")), _str(meta.get("name"))
    if uid is None or namespace is None or name is None:
        return None
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    assert isinstance(spec, Mapping) and isinstance(status, Mapping)
    containers: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        statuses = status.get(key)
        if not isinstance(statuses, list):
            continue
        for cs in statuses:
            if not isinstance(cs, Mapping) or _str(cs.get("name")) is None:
                continue
            for ids in (
                cs,
                cs.get("lastState", {}).get("terminated")
                if isinstance(cs.get("lastState"), Mapping)
                else None,
            ):
                cid = _str(ids.get("containerID")) if isinstance(ids, Mapping) else None
                m = _CONTAINER_ID.fullmatch(cid) if cid else None
                if m is not None:
                    containers.setdefault(m.group(1), cs["name"])
    owner = None
    refs = meta.get("ownerReferences")
    if isinstance(refs, list):
        for ref in refs:
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                kind, ref_name = _str(ref.get("kind")), _str(ref.get("name"))
                if kind and ref_name:
                    owner = {"kind": kind, "name": ref_name}
                break
    raw_labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    raw_annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    assert isinstance(raw_labels, Mapping) and isinstance(raw_annotations, Mapping)
    virt_launcher = raw_labels.get("kubevirt.io") == "virt-launcher"
    vmi = _str(raw_annotations.get("kubevirt.io/domain")) if virt_launcher else None
    qos = status.get("qosClass")
    return PodMeta(
        uid=uid,
        namespace=namespace,
        name=name,
        node=_str(spec.get("nodeName")),
        qos=_QOS.get(qos) if isinstance(qos, str) else None,
        owner=owner,
        labels=allow.select(raw_labels),
        annotations=allow.select(raw_annotations),
        containers=containers,
        virt_launcher=virt_launcher,
        vmi=vmi,
        resource_version=_str(meta.get("resourceVersion")),
    )


def parse_pod_list(obj: object, allow: Allowlist) -> tuple[list[PodMeta], str | None]:
    """A v1 PodList → its pods and its resourceVersion. ValueError if it is not a PodList."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("items"), list):
        raise ValueError("not a PodList (no items)")
    meta = obj.get("metadata")
    version = _str(meta.get("resourceVersion")) if isinstance(meta, Mapping) else None
    pods = [p for p in (parse_pod(item, allow) for item in obj["items"]) if p is not None]
    return pods, version


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


# --- sources ----------------------------------------------------------------------------------


class Flight:
    """One refresh: done when it finished; `error` is a REASONS value if it failed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class SourceFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# (level, message, fields): "info" or "error", as the daemon's diagnostics log takes them.
Log = Callable[[str, str, dict[str, Any]], None]


class _Refresher:
    """Runs `refresh` in its own thread: on request (single flight: requests made while one is
    pending share it) and every `period_s` if given."""

    def __init__(self, name: str, refresh: Callable[[], None], period_s: float | None) -> None:
        self._refresh = refresh
        self._period = period_s
        self._cond = threading.Condition()
        self._pending: Flight | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> Flight:
        with self._cond:
            if self._pending is None:
                self._pending = Flight()
                self._cond.notify()
            return self._pending

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._pending is None and not self._stopped:
                    self._cond.wait(self._period)
                    if self._pending is None and self._period is None and not self._stopped:
                        continue
                if self._stopped:
                    if self._pending is not None:
                        self._pending.error = UNAVAILABLE
                        self._pending.done.set()
                    return
                flight, self._pending = self._pending, None
            try:
                self._refresh()
            except SourceFailure as failure:
                if flight is not None:
                    flight.error = failure.reason
            except Exception:
                if flight is not None:
                    flight.error = ERROR
            if flight is not None:
                flight.done.set()


def _quiet(_level: str, _message: str, _fields: dict[str, Any]) -> None:
    pass


class _Complaints:
    """Logs each distinct problem at most once a minute: a down API must not flood stderr."""

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, message: str, **fields: Any) -> None:
        now = self._clock()
        if now - self._last.get(message, -1e9) >= 60.0:
            self._last[message] = now
            self._log("error", message, fields)


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def close(self) -> None: ...

    def request_refresh(self) -> Flight: ...


class KubeletSource:
    """The kubelet's `/pods` (a PodList of this node's pods), polled and refreshed on a miss."""

    name = "kubelet"

    def __init__(
        self,
        cache: PodCache,
        allow: Allowlist,
        url: str = DEFAULT_KUBELET_URL,
        *,
        token_file: Path | None = SERVICE_ACCOUNT / "token",
        ca_file: Path | None = None,
        insecure: bool = False,
        resync_s: float = DEFAULT_RESYNC_S,
        log: Log | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KubeError(f"--kubelet-url: expected http(s)://host[:port], got {url!r}")
        self._url = url.rstrip("/") + "/pods"
        self._cache = cache
        self._allow = allow
        self._token_file = token_file
        self._clock = clock
        self._complain = _Complaints(log or _quiet)
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if insecure:
                self._context = (
                    ssl._create_unverified_context()
                )  # --kubelet-insecure-tls, as the operator chose
            else:
                try:
                    self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
                except (OSError, ssl.SSLError) as err:
                    raise KubeError(f"--kubelet-ca {ca_file}: {err}") from None
        self._refresher = _Refresher("oomtrace-kubelet", self.refresh, resync_s)

    def start(self) -> None:
        self._refresher.request()
        self._refresher.start()

    def close(self) -> None:
        self._refresher.stop()

    def request_refresh(self) -> Flight:
        return self._refresher.request()

    def refresh(self) -> None:
        started = self._clock()
        try:
            pods, _version = parse_pod_list(json.loads(self._get()), self._allow)
        except SourceFailure as failure:
            self._complain(str(failure), url=self._url)
            raise
        except ValueError as err:
            self._complain(f"kubelet sent something that is not a PodList: {err}", url=self._url)
            raise SourceFailure(UNAVAILABLE, str(err)) from None
        self._cache.replace(pods, started)

    def _get(self) -> bytes:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        token = self._token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(
                request, timeout=REQUEST_TIMEOUT_S, context=self._context
            ) as response:
                body: bytes = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            raise _http_failure("kubelet", self._url, err.code, "nodes/proxy") from None
        except (OSError, ValueError) as err:  # refused, timed out, TLS, bad URL
            reason = getattr(err, "reason", err)
            raise SourceFailure(UNAVAILABLE, f"kubelet at {self._url} is unreachable: {reason}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise SourceFailure(UNAVAILABLE, f"kubelet answer over {MAX_RESPONSE_BYTES} bytes")
        return body

    def _token(self) -> str | None:
        # Read every time: projected service-account tokens are rotated on disk.
        if self._token_file is None:
            return None
        try:
            return self._token_file.read_text().strip() or None
        except OSError:
            return None


def _http_failure(what: str, where: str, status: int, permission: str) -> SourceFailure:
    if status == 401:
        return SourceFailure(
            UNAUTHORIZED,
            f"{what} at {where} rejected oomtrace's credentials (401 Unauthorized): "
            "check the service-account token or the kubeconfig",
        )
    if status == 403:
        return SourceFailure(
            FORBIDDEN,
            f"{what} at {where} forbids oomtrace to read pods (403 Forbidden): "
            f"grant its service account {permission}",
        )
    return SourceFailure(UNAVAILABLE, f"{what} at {where} answered HTTP {status}")


def api_client(
    kubeconfig: Path | None,
    service_account: Path = SERVICE_ACCOUNT,
    environ: Mapping[str, str] = os.environ,
) -> Any:
    """An ApiClient of the official `kubernetes` client.

    --kubeconfig if given; else the in-cluster service account (KUBERNETES_SERVICE_HOST/PORT,
    its token, re-read as it rotates, and CA); else $KUBECONFIG. KubeError if none works.
    """
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    try:
        # The kubernetes client's config loaders carry no annotations.
        if kubeconfig is not None:
            if not kubeconfig.is_file():
                raise KubeError(f"--kubeconfig {kubeconfig}: no such file")
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        elif environ.get("KUBERNETES_SERVICE_HOST"):
            InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(service_account / "token"),
                cert_filename=str(service_account / "ca.crt"),
                environ=environ,
            ).load_and_set(configuration)
        elif environ.get("KUBECONFIG"):
            config.load_kube_config(config_file=environ["KUBECONFIG"], client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            raise KubeError(
                "--kube apiserver: not in a cluster (no KUBERNETES_SERVICE_HOST) and no --kubeconfig"
            )
    except config.ConfigException as err:
        raise KubeError(f"kubernetes client configuration: {err}") from None
    except KubeError:
        raise
    except Exception as err:  # unreadable or malformed YAML, bad certificate data, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KubeError(f"kubernetes client configuration: {first}") from None
    return client.ApiClient(configuration)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class ApiServerSource:
    """This node's pods from the API server: list, then watch from the list's resourceVersion."""

    name = "apiserver"

    def __init__(
        self,
        cache: PodCache,
        allow: Allowlist,
        client: Any,
        node: str,
        *,
        log: Log | None = None,
        clock: Callable[[], float] = time.monotonic,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        from kubernetes import client as k8s

        self._api = k8s.CoreV1Api(client)
        self._host = str(client.configuration.host)
        self._cache = cache
        self._allow = allow
        self._selector = f"spec.nodeName={node}"
        self._node = node
        self._log = log or _quiet
        self._complain = _Complaints(self._log)
        self._clock = clock
        self._watch_timeout = watch_timeout_s
        self._stop = threading.Event()
        self._response: Any = None
        self._refresher = _Refresher("oomtrace-apiserver-list", self._relist, None)
        self._thread = threading.Thread(target=self._run, name="oomtrace-apiserver-watch", daemon=True)
        self.lists = 0  # for tests and logs: full lists done
        self.synced = threading.Event()  # set after the first list

    def start(self) -> None:
        self._refresher.start()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._refresher.stop()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # unblocks the watch thread's read
                response.shutdown()

    def request_refresh(self) -> Flight:
        return self._refresher.request()

    def _relist(self) -> None:
        self._list()

    def _list(self) -> str | None:
        from kubernetes.client.exceptions import ApiException

        started = self._clock()
        try:
            # _preload_content=False: the raw urllib3 response (JSON, no model objects).
            response: Any = self._api.list_pod_for_all_namespaces(
                field_selector=self._selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
            body = response.data
        except ApiException as err:
            failure = _http_failure(
                "kubernetes API", self._host, int(err.status or 0), "get, list and watch on pods"
            )
            if not err.status:
                failure = SourceFailure(
                    UNAVAILABLE, f"kubernetes API at {self._host} is unreachable: {err.reason}"
                )
            self._complain(str(failure))
            raise failure from None
        except Exception as err:  # urllib3: refused, timed out, TLS
            failure = SourceFailure(UNAVAILABLE, f"kubernetes API at {self._host} is unreachable: {err}")
            self._complain(str(failure))
            raise failure from None
        try:
            pods, version = parse_pod_list(json.loads(body), self._allow)
        except ValueError as err:
            self._complain(f"kubernetes API sent something that is not a PodList: {err}")
            raise SourceFailure(UNAVAILABLE, str(err)) from None
        self._cache.replace(pods, started)
        self.lists += 1
        if not self.synced.is_set():
            self.synced.set()
            self._log(
                "info", "kubernetes pods listed", {"source": self.name, "node": self._node, "pods": len(pods)}
            )
            if not pods:
                self._complain(
                    "no pods on this node: is --node-name (NODE_NAME) the Kubernetes node name?",
                    node=self._node,
                )
        return version

    def _run(self) -> None:
        version: str | None = None
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                backoff = 1.0
            except _Gone:
                version = None  # the history we resumed from is gone: list again, at once
            except SourceFailure:
                version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as err:
                if self._stop.is_set():
                    return
                self._complain(f"kubernetes watch failed: {err}")
                version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _watch(self, version: str | None) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response: Any = self._api.list_pod_for_all_namespaces(
                field_selector=self._selector,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT_S, self._watch_timeout + 30),
            )
        except ApiException as err:
            if err.status == 410:
                raise _Gone() from None
            failure = _http_failure(
                "kubernetes API", self._host, int(err.status or 0), "get, list and watch on pods"
            )
            self._complain(str(failure))
            raise failure from None
        self._response = response
        try:
            for line in _lines(response):
                version = self._apply(line, version)
                if self._stop.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return version

    def _apply(self, line: bytes, version: str | None) -> str | None:
        try:
            event = json.loads(line)
        except ValueError:
            return version
        if not isinstance(event, dict):
            return version
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Gone()
            raise SourceFailure(UNAVAILABLE, f"kubernetes watch error: {obj}")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        new_version = _str(meta.get("resourceVersion")) if isinstance(meta, dict) else None
        if kind in ("ADDED", "MODIFIED"):
            pod = parse_pod(obj, self._allow)
            if pod is not None:
                self._cache.upsert(pod)
        elif kind == "DELETED":
            uid = _str(meta.get("uid")) if isinstance(meta, dict) else None
            if uid is not None:
                self._cache.delete(uid)
        return new_version or version


def _lines(response: Any) -> Iterator[bytes]:
    """Lines of a streamed watch response (one JSON event per line)."""
    pending = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
        if len(pending) > MAX_RESPONSE_BYTES:
            raise SourceFailure(UNAVAILABLE, "watch event over the size limit")
    if pending.strip():
        yield pending


# --- the pipeline stage -----------------------------------------------------------------------


@dataclass
class _Miss:
    flight: Flight
    deadline: float
    asked_at: float


class KubeStage:
    """Adds namespace, pod, container, labels, annotations, owner (and qos if the path had none)."""

    def __init__(
        self,
        cache: PodCache,
        source: Source | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        failures: Counter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self._source = source
        self._timeout = timeout_s
        self._failures = failures
        self._clock = clock
        self._misses: dict[str, _Miss] = {}

    def start(self) -> None:
        """Starts the pod source this stage answers from (its list and watch threads)."""
        if self._source is not None:
            self._source.start()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    def pod_hint(self, pod_uid: str) -> PodHint | None:
        """For the VM stage: what the pod's labels say about a VM (no waiting)."""
        pod, _ = self.cache.lookup(pod_uid, None)
        if pod is None:
            return None
        vm = f"{pod.namespace}/{pod.vmi}" if pod.virt_launcher and pod.vmi else None
        return PodHint(pod.virt_launcher, vm)

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        uid, cid = event.get("pod_uid"), event.get("container_id")
        if uid is None and cid is None:
            return event
        try:
            pod, container = self.cache.lookup(uid, cid)
            reason = None
            if pod is None or (cid is not None and container is None):
                flight = self._refresh(str(cid or uid))
                pod, container = self.cache.lookup(uid, cid)
                if pod is None or (cid is not None and container is None):
                    reason = _reason(flight)
        except Exception:
            pod, container, reason = None, None, ERROR
        if reason is not None and self._failures is not None:
            self._failures.labels("kube", reason).inc()
        if pod is None:
            return event
        event["namespace"] = pod.namespace
        event["pod"] = pod.name
        event["container"] = container
        event["labels"] = dict(pod.labels)
        event["annotations"] = dict(pod.annotations)
        event["owner"] = dict(pod.owner) if pod.owner else None
        if event.get("qos") is None:
            event["qos"] = pod.qos
        return event

    def _refresh(self, key: str) -> Flight | None:
        """Ask for (or join) a refresh for `key` and wait for it, never past the first asker's deadline."""
        if self._source is None:
            return None
        now = self._clock()
        miss = self._misses.get(key)
        if miss is None or (miss.flight.done.is_set() and now - miss.asked_at >= MISS_RETRY_S):
            miss = _Miss(self._source.request_refresh(), now + self._timeout, now)
            self._misses[key] = miss
            if len(self._misses) > 4096:
                self._misses = {k: m for k, m in self._misses.items() if now - m.asked_at < MISS_RETRY_S}
        remaining = miss.deadline - now
        if remaining > 0:
            miss.flight.done.wait(remaining)
        return miss.flight


def _reason(flight: Flight | None) -> str:
    if flight is None:
        return NOT_FOUND
    if not flight.done.is_set():
        return TIMEOUT
    return flight.error or NOT_FOUND
