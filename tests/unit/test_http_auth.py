"""Who may read /metrics and /events (tracer/http/auth.py, the HTTP server's check).

The Kubernetes scheme is tested against tests/fake_kube.py, which answers TokenReview and
SubjectAccessReview in the documented authentication.k8s.io/v1 and authorization.k8s.io/v1
shapes (no API server can run here), through the real `kubernetes` client.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_kube import FakeKube, kubeconfig, running
from tracer.enrich.kube import api_client
from tracer.http import auth
from tracer.http.server import start_http_server

READER = "reader-token"


def header(token: str) -> str:
    return f"Bearer {token}"


@pytest.mark.parametrize(
    "value",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "Bearer a b", "Bearer \x1b[2J", "x" * 20000],
)
def test_anything_but_a_bearer_token_is_no_token(value: str | None) -> None:
    assert auth.bearer(value) is None


def test_a_token_file_admits_its_token_only_and_follows_rotation(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("s3cret\n")
    check = auth.TokenFileAuth(file)
    assert check.check(header("s3cret"), "/metrics") is auth.ALLOW
    assert check.check(header("s3cre"), "/metrics") is auth.NO_TOKEN
    assert check.check(None, "/metrics") is auth.NO_TOKEN
    file.write_text("rotated-and-longer\n")
    assert check.check(header("s3cret"), "/metrics") is auth.NO_TOKEN
    assert check.check(header("rotated-and-longer"), "/metrics") is auth.ALLOW
    file.unlink()
    assert check.check(header("rotated-and-longer"), "/metrics") is auth.UNAVAILABLE


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_a_token_file_with_no_token_is_refused_at_start(tmp_path: Path, content: str | None) -> None:
    file = tmp_path / "token"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ValueError, match="--http-token-file"):
        auth.TokenFileAuth(file)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeKube, auth.ApiReviews]]:
    with running() as fake:
        fake.user(READER, "system:serviceaccount:monitoring:prometheus", ("system:serviceaccounts",))
        fake.user("other-token", "system:serviceaccount:default:nosy")
        fake.grant("system:serviceaccount:monitoring:prometheus", "/metrics")
        client = api_client(kubeconfig(tmp_path / "kubeconfig", fake.url, fake.token))
        yield fake, auth.ApiReviews(client, timeout_s=1.0)


def test_kubernetes_tokens_are_reviewed_and_access_checked_per_path(api: tuple[FakeKube, Any]) -> None:
    _fake, reviews = api
    check = auth.KubernetesAuth(reviews)
    assert check.check(header(READER), "/metrics") is auth.ALLOW
    assert check.check(header(READER), "/events") is auth.FORBIDDEN  # granted /metrics only
    assert check.check(header("other-token"), "/metrics") is auth.FORBIDDEN
    assert check.check(header("made-up"), "/metrics") is auth.NO_TOKEN
    assert check.check(None, "/metrics") is auth.NO_TOKEN


def test_answers_are_cached_briefly_and_an_outage_is_not(api: tuple[FakeKube, Any]) -> None:
    fake, reviews = api
    now = [100.0]
    check = auth.KubernetesAuth(reviews, clock=lambda: now[0])
    assert check.check(header(READER), "/metrics") is auth.ALLOW
    asked = len(fake.requests)
    assert check.check(header(READER), "/metrics") is auth.ALLOW
    assert len(fake.requests) == asked  # from the cache
    now[0] += auth.ALLOWED_TTL_S + 1
    fake.forbidden = True  # the reviews are refused (the service account lost its RBAC)
    assert check.check(header(READER), "/metrics") is auth.UNAVAILABLE
    assert check.check(header(READER), "/metrics") is auth.UNAVAILABLE  # asked again, not cached


def test_the_cache_never_holds_a_token(api: tuple[FakeKube, Any]) -> None:
    _fake, reviews = api
    check = auth.KubernetesAuth(reviews)
    check.check(header(READER), "/metrics")
    assert READER not in repr(check._cache) and READER.encode() not in b"".join(k[0] for k in check._cache)


def test_an_unreachable_api_server_refuses_with_503_and_counts_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    client = api_client(kubeconfig(tmp_path / "kubeconfig", dead, "t"))
    registry = CollectorRegistry()
    check = auth.Counted(auth.KubernetesAuth(auth.ApiReviews(client, timeout_s=0.5)), registry)
    assert check.check(header(READER), "/metrics") is auth.UNAVAILABLE
    assert registry.get_sample_value("oomtrace_http_requests_total", {"result": "unavailable"}) == 1


# --- the server enforces it ----------------------------------------------------------------


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", header(token))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def test_the_server_refuses_unauthenticated_serves_authorised_and_keeps_healthz_open(
    api: tuple[FakeKube, Any],
) -> None:
    _fake, reviews = api
    registry = CollectorRegistry()
    check = auth.Counted(auth.KubernetesAuth(reviews), registry)
    with start_http_server("127.0.0.1:0", registry, lambda: (True, "ok"), authorizer=check) as server:
        status, body, headers = get(server.port, "/metrics")
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert "oomtrace_" not in body
        status, body, _ = get(server.port, "/metrics", "other-token")
        assert status == 403 and "oomtrace_" not in body
        status, body, _ = get(server.port, "/metrics", READER)
        assert status == 200 and "oomtrace_http_requests_total" in body
        assert get(server.port, "/healthz")[0] == 200  # kubelet's probes carry no token
    for result, n in (("unauthenticated", 1), ("forbidden", 1), ("allowed", 1)):
        assert registry.get_sample_value("oomtrace_http_requests_total", {"result": result}) == n
