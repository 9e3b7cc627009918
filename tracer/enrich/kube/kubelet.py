"""Pods from the kubelet's `/pods` on this node: node-local, cheap at any cluster size.

Plain HTTPS from the standard library: one GET of a PodList needs no client library.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from tracer.enrich.failures import UNAVAILABLE
from tracer.enrich.kube.cache import PodCache
from tracer.enrich.kube.pods import Allowlist, parse_pod_list
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

DEFAULT_RESYNC_S: Final = 30.0
DEFAULT_KUBELET_URL: Final = "https://127.0.0.1:10250"


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
        self._complain = Complaints(log or log_nothing)
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
        self._refresher = Refresher("oomtrace-kubelet", self.refresh, resync_s)

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
            raise http_failure("kubelet", self._url, err.code, "nodes/proxy") from None
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
