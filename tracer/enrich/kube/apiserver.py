"""Pods from the API server: a list, then a watch, of the pods with `spec.nodeName=<node>`.

Through the official `kubernetes` client (in-cluster service account or kubeconfig, every
auth plugin kubeconfig allows), imported only when this source is built: a host without
--kube apiserver never loads it. A 410 Gone relists; 401/403 are logged as what they are
and retried with backoff.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from tracer.enrich.failures import UNAVAILABLE
from tracer.enrich.kube.cache import PodCache
from tracer.enrich.kube.pods import Allowlist, optional_str, parse_pod, parse_pod_list
from tracer.enrich.kube.source import (
    MAX_RESPONSE_BYTES,
    REQUEST_TIMEOUT_S,
    SERVICE_ACCOUNT,
    Complaints,
    Flight,
    KubeError,
    Log,
    Refresher,
    SourceFailure,
    http_failure,
    log_nothing,
)

# Server-side length of one watch request; the client reconnects from the last version.
WATCH_TIMEOUT_S: Final = 300
MAX_BACKOFF_S: Final = 30.0


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
        self._log = log or log_nothing
        self._complain = Complaints(self._log)
        self._clock = clock
        self._watch_timeout = watch_timeout_s
        self._stop = threading.Event()
        self._response: Any = None
        self._refresher = Refresher("oomtrace-apiserver-list", self._relist, None)
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
            failure = http_failure(
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
            failure = http_failure(
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
        new_version = optional_str(meta.get("resourceVersion")) if isinstance(meta, dict) else None
        if kind in ("ADDED", "MODIFIED"):
            pod = parse_pod(obj, self._allow)
            if pod is not None:
                self._cache.upsert(pod)
        elif kind == "DELETED":
            uid = optional_str(meta.get("uid")) if isinstance(meta, dict) else None
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
