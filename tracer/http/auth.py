"""Who may read /metrics and /events: they carry pod names, labels and VM names.

Three schemes (`--http-auth`); /healthz stays open for kubelet's probes:

- `none`: anyone who can reach the address (plain hosts: bind it to loopback).
- `token-file`: `Authorization: Bearer <token>` must equal the file's token (re-read when the
  file changes, so it can be rotated).
- `kubernetes`: the bearer token is checked with the API server as kube-rbac-proxy does — a
  TokenReview says who it is, a SubjectAccessReview whether that user may `get` the path
  (a non-resource URL: grant `nonResourceURLs: ["/metrics", "/events"]`). Answers are cached
  briefly; an API server that cannot answer means refused (503), counted, never a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter

NONE: Final = "none"
TOKEN_FILE: Final = "token-file"
KUBERNETES: Final = "kubernetes"
SCHEMES: Final = (NONE, TOKEN_FILE, KUBERNETES)
ALLOWED_TTL_S: Final = 60.0
DENIED_TTL_S: Final = 10.0
REVIEW_TIMEOUT_S: Final = 5.0
MAX_CACHED: Final = 1024
MAX_TOKEN_BYTES: Final = 16384


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 to serve; 401, 403 or 503 to refuse with
    reason: str  # the result label and the one-line answer


ALLOW: Final = Verdict(200, "allowed")
NO_TOKEN: Final = Verdict(401, "unauthenticated")
FORBIDDEN: Final = Verdict(403, "forbidden")
UNAVAILABLE: Final = Verdict(503, "unavailable")


class Authorizer(Protocol):
    def check(self, authorization: str | None, path: str) -> Verdict: ...


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization or len(authorization) > MAX_TOKEN_BYTES:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return (
        token if scheme.lower() == "bearer" and token and token.isprintable() and " " not in token else None
    )


class Counted:
    """Counts every verdict in oomtrace_http_requests_total{result} around another authorizer."""

    def __init__(self, inner: Authorizer, registry: CollectorRegistry) -> None:
        self._inner = inner
        self._counter = Counter(
            "oomtrace_http_requests",
            "Requests for /metrics and /events by the authorization's result (allowed, "
            "unauthenticated, forbidden, unavailable: the token could not be checked)",
            ["result"],
            registry=registry,
        )

    def check(self, authorization: str | None, path: str) -> Verdict:
        try:
            verdict = self._inner.check(authorization, path)
        except Exception:  # a checker's bug refuses, it does not crash the handler
            verdict = UNAVAILABLE
        self._counter.labels(verdict.reason).inc()
        return verdict


class TokenFileAuth:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = b""
        self._load()  # a missing or empty file is the operator's to fix at start: ValueError

    def _load(self) -> None:
        try:
            stat = self._path.stat()
            data = self._path.read_bytes()[:MAX_TOKEN_BYTES].strip()
        except OSError as err:
            raise ValueError(f"--http-token-file {self._path}: {err.strerror}") from None
        if not data:
            raise ValueError(f"--http-token-file {self._path}: the file holds no token")
        self._token, self._stamp = data, (stat.st_mtime_ns, stat.st_size)

    def check(self, authorization: str | None, path: str) -> Verdict:
        token = bearer(authorization)
        if token is None:
            return NO_TOKEN
        with self._lock:
            try:
                stat = self._path.stat()
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._load()
            except (OSError, ValueError):
                return UNAVAILABLE  # rotated away mid-way: refuse until it is back
            expected = self._token
        return ALLOW if hmac.compare_digest(token.encode(), expected) else NO_TOKEN


class Reviews(Protocol):
    """The two API calls: who a token is, and whether they may get a path."""

    def token_review(self, token: str) -> dict[str, Any]: ...

    def access_review(self, user: dict[str, Any], path: str) -> dict[str, Any]: ...


class KubernetesAuth:
    def __init__(self, reviews: Reviews, clock: Callable[[], float] = time.monotonic) -> None:
        self._reviews = reviews
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[bytes, str], tuple[float, Verdict]] = OrderedDict()

    def check(self, authorization: str | None, path: str) -> Verdict:
        token = bearer(authorization)
        if token is None:
            return NO_TOKEN
        key = (hashlib.sha256(token.encode()).digest(), path)  # never keep the token itself
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        verdict = self._review(token, path)
        if verdict is not UNAVAILABLE:  # an outage is not remembered: the next request asks again
            ttl = ALLOWED_TTL_S if verdict is ALLOW else DENIED_TTL_S
            with self._lock:
                self._cache[key] = (now + ttl, verdict)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        return verdict

    def _review(self, token: str, path: str) -> Verdict:
        try:
            status = self._reviews.token_review(token).get("status") or {}
            if not status.get("authenticated"):
                return NO_TOKEN
            user = status.get("user") or {}
            allowed = (self._reviews.access_review(user, path).get("status") or {}).get("allowed")
        except Exception:  # unreachable, timed out, refused (the SA lacks create on the reviews)
            return UNAVAILABLE
        return ALLOW if allowed is True else FORBIDDEN


class ApiReviews:
    """TokenReview and SubjectAccessReview through the official `kubernetes` client."""

    def __init__(self, api_client: Any, timeout_s: float = REVIEW_TIMEOUT_S) -> None:
        from kubernetes import client as k8s

        # dict bodies, raw responses: no models
        self._authentication: Any = k8s.AuthenticationV1Api(api_client)
        self._authorization: Any = k8s.AuthorizationV1Api(api_client)
        self._timeout = timeout_s

    def _read(self, response: Any) -> dict[str, Any]:
        try:
            parsed = json.loads(response.data)
        finally:
            response.release_conn()
        if not isinstance(parsed, dict):
            raise ValueError("not a review")
        return parsed

    def token_review(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        return self._read(
            self._authentication.create_token_review(
                body, _preload_content=False, _request_timeout=self._timeout
            )
        )

    def access_review(self, user: dict[str, Any], path: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "nonResourceAttributes": {"path": path, "verb": "get"},
        }
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return self._read(
            self._authorization.create_subject_access_review(
                body, _preload_content=False, _request_timeout=self._timeout
            )
        )
