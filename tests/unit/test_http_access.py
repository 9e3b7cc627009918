"""`oomtrace run --http-auth/--http-token-file/--http-tls-*` and `oomtrace watch --token-file/
--kubeconfig/--ca-file`, end to end: the daemon `oomtrace run` builds (tracer.cli.run.build_daemon)
serves real sockets; only its event source is a stand-in (no root, no BPF).

--http-auth kubernetes talks to tests/fake_kube.py, which answers TokenReview and
SubjectAccessReview in their documented authentication.k8s.io/v1 and authorization.k8s.io/v1
shapes (no API server can run here), through the real `kubernetes` client.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.alerting.prometheus import PrometheusServer, free_port
from tests.fake_kube import FakeKube, kubeconfig, running
from tests.unit.test_cli import one_error_line, run_main
from tracer import schema
from tracer.cli.flags import build_parser
from tracer.cli.run import build_daemon, run_config
from tracer.cli.watch import watch
from tracer.daemon import Daemon
from tracer.errors import EXIT_USAGE
from tracer.http import tls as tls_module

READER = "reader-token"
PROMETHEUS = "system:serviceaccount:monitoring:prometheus"


class IdleSource:
    """Stands in for the BPF source: attached at once, publishes only what a test hands it."""

    status = "test source"

    def open(self) -> None: ...

    def poll(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)

    def every_interval(self) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def serving(*flags: str, address: str | None = None) -> Iterator[tuple[Daemon, str]]:
    """`oomtrace run FLAGS` with its HTTP server up; yields the daemon and its host:port."""
    port = free_port()
    address = address or f"127.0.0.1:{port}"
    args = build_parser().parse_args(["run", "--metrics-address", address, *flags])
    daemon = build_daemon(run_config(args), args, stdout=io.StringIO())
    daemon.source = IdleSource()
    # Daemon.run's SIGTERM handler can only be set from the main thread: this one runs elsewhere.
    with mock.patch("tracer.daemon.signal.signal"):
        thread = threading.Thread(target=daemon.run, daemon=True, name="daemon-loop")
        thread.start()
        while not daemon.attached and thread.is_alive():
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while not daemon.attached:
        assert time.monotonic() < deadline and thread.is_alive(), "the daemon did not start"
        time.sleep(0.02)
    try:
        yield daemon, f"127.0.0.1:{address.rpartition(':')[2]}"
    finally:
        daemon.stop.requested = True
        thread.join(10)
        assert not thread.is_alive()


def get(
    where: str, path: str, token: str | None = None, scheme: str = "http", ca: Path | None = None
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(f"{scheme}://{where}{path}", method="GET")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            body = response.read(200_000) if path != "/events" else b""
            return response.status, body.decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def results(daemon: Daemon) -> dict[str, float]:
    return {
        result: daemon.registry.get_sample_value("oomtrace_http_requests_total", {"result": result}) or 0
        for result in ("allowed", "unauthenticated", "forbidden", "unavailable")
    }


@pytest.fixture(autouse=True)
def no_oomtrace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OOMTRACE_") or name in ("NODE_NAME", "KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
            monkeypatch.delenv(name)


# --- token file: the plain host's scheme ------------------------------------------------------


def test_token_file_refuses_without_the_token_and_serves_with_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with serving("--http-auth", "token-file", "--http-token-file", str(token)) as (daemon, where):
        for path in ("/metrics", "/events"):
            status, body, headers = get(where, path)
            assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="oomtrace"', path
            assert "oomtrace_" not in body
        assert get(where, "/metrics", "wrong-token")[0] == 401
        status, body, _ = get(where, "/metrics", "s3cret-token")
        assert status == 200 and "oomtrace_http_requests_total" in body
        assert get(where, "/events", "s3cret-token")[0] == 200
        assert get(where, "/healthz")[0] == 200  # kubelet's probes carry no token
        assert results(daemon) == {"allowed": 2, "unauthenticated": 3, "forbidden": 0, "unavailable": 0}


def test_the_default_serves_anyone_and_warns_only_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    with serving() as (daemon, where):
        assert get(where, "/metrics")[0] == 200
        assert daemon.authorizer is None
    assert "open to anyone" not in capsys.readouterr().err
    with serving(address=f":{free_port()}") as (daemon, where):
        assert get(where, "/metrics")[0] == 200
    warning = [line for line in capsys.readouterr().err.splitlines() if "open to anyone" in line]
    assert len(warning) == 1 and '"level": "warning"' in warning[0]


def test_a_loopback_address_is_not_reachable_from_the_hosts_other_addresses() -> None:
    # The plain-host recipe (docs/deploy.md): --metrics-address 127.0.0.1:9700 and no auth.
    others = [a for a in local_addresses() if not a.startswith("127.")]
    assert others, "this test needs a non-loopback IPv4 address on the host (ip -4 addr)"
    with serving() as (_daemon, where):
        port = int(where.rpartition(":")[2])
        assert get(where, "/metrics")[0] == 200
        for address in others:
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.settimeout(5)
                s.connect((address, port))


def test_a_real_prometheus_scrapes_with_its_token_file_and_is_refused_without_it(tmp_path: Path) -> None:
    # Debian's prometheus (scripts/install.sh), `authorization: credentials_file` as in
    # docs/deploy.md's plain-host recipe. Two tracers: one holds Prometheus's token, one another.
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.write_text("prometheus-scrape-token\n")
    theirs.write_text("some-other-token\n")
    with (
        serving("--http-auth", "token-file", "--http-token-file", str(ours)) as (good, good_at),
        serving("--http-auth", "token-file", "--http-token-file", str(theirs)) as (bad, bad_at),
        PrometheusServer(
            tmp_path / "prometheus", {"groups": []}, {good_at: {}, bad_at: {}}, bearer_token_file=ours
        ) as prometheus,
    ):
        deadline = time.monotonic() + 30
        up: dict[str, str] = {}
        while len(up) < 2 and time.monotonic() < deadline:
            up = {r["metric"]["instance"]: r["value"][1] for r in prometheus.query("up")}
            time.sleep(0.5)
        scraped = prometheus.query('oomtrace_http_requests_total{result="allowed"}')
        targets = prometheus.api("targets")["activeTargets"]
    assert up == {good_at: "1", bad_at: "0"}, prometheus.log()
    assert [r["metric"]["instance"] for r in scraped] == [good_at]
    (refused,) = (t for t in targets if t["labels"]["instance"] == bad_at)
    assert "401" in refused["lastError"]
    assert results(good)["unauthenticated"] == 0 and results(bad)["allowed"] == 0


def local_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


# --- kubernetes: TokenReview + SubjectAccessReview ----------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    with running() as fake:
        fake.user(READER, PROMETHEUS, ("system:serviceaccounts",))
        fake.user("nosy-token", "system:serviceaccount:default:nosy", ("system:serviceaccounts",))
        fake.grant(PROMETHEUS, "/metrics")
        fake.grant(PROMETHEUS, "/events")
        yield fake, kubeconfig(tmp_path / "kubeconfig", fake.url, fake.token)


def test_kubernetes_auth_serves_the_granted_refuses_the_rest_and_an_outage(
    api: tuple[FakeKube, Path],
) -> None:
    fake, config = api
    with serving("--http-auth", "kubernetes", "--kubeconfig", str(config)) as (daemon, where):
        assert get(where, "/metrics")[0] == 401
        assert get(where, "/metrics", "made-up")[0] == 401
        assert get(where, "/metrics", "nosy-token")[0] == 403
        assert get(where, "/metrics", READER)[0] == 200
        assert get(where, "/events", READER)[0] == 200
        reviews = [r["path"].rsplit("/", 1)[1] for r in fake.requests]
        assert reviews.count("tokenreviews") >= 3 and "subjectaccessreviews" in reviews
        fake.forbidden = True  # the API server refuses the reviews (its RBAC lost): nothing can be checked
        status, body, _ = get(where, "/metrics", "nosy-token-2")
        assert status == 503 and "oomtrace_" not in body
        assert get(where, "/healthz")[0] == 200  # refused and counted, never a crash
        assert get(where, "/metrics", READER)[0] == 200  # still cached from a minute's grant
        counted = results(daemon)
    assert counted == {"allowed": 3, "unauthenticated": 2, "forbidden": 1, "unavailable": 1}


def test_a_hung_or_unreachable_api_server_refuses_with_503_and_healthz_still_answers(tmp_path: Path) -> None:
    with socket.socket() as hung, socket.socket() as dead:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # accepts connections (the kernel does) and never answers
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        for server in (hung, dead):
            url = f"http://127.0.0.1:{server.getsockname()[1]}"
            config = kubeconfig(tmp_path / "kubeconfig", url, "sa-token")
            with serving("--http-auth", "kubernetes", "--kubeconfig", str(config)) as (daemon, where):
                answers: list[int] = []

                def ask(into: list[int] = answers, at: str = where) -> None:
                    into.append(get(at, "/metrics", READER)[0])

                waiting = threading.Thread(target=ask)
                waiting.start()
                assert get(where, "/healthz")[0] == 200  # not behind the review that waits
                waiting.join(30)
                assert answers == [503]
                assert results(daemon)["unavailable"] == 1


def test_watch_sends_the_kubeconfig_users_token(api: tuple[FakeKube, Path], tmp_path: Path) -> None:
    fake, config = api
    fake.user("alice-token", "alice")
    fake.grant("alice", "/events")
    user = kubeconfig(tmp_path / "alice", "https://unused.invalid", "alice-token")
    with serving("--http-auth", "kubernetes", "--kubeconfig", str(config)) as (daemon, where):
        out, err, code = watch_one(daemon, [where, "--json", "--kubeconfig", str(user)])
    assert code == 0, err
    assert '"event": "oom_kill"' in out


# --- TLS ------------------------------------------------------------------------------------------


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def peer_subject(where: str, ca: Path) -> str:
    host, _, port = where.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection((host, int(port)), 5)
    with context.wrap_socket(raw, server_hostname=host) as secured:
        cert = secured.getpeercert()
    assert cert is not None
    return str(dict(x[0] for x in cert["subject"])["commonName"])


def test_tls_serves_https_only_and_picks_up_a_rotated_certificate(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path / "live", "first")
    token = tmp_path / "token"
    token.write_text("t0ken")
    flags = ["--http-tls-cert", str(cert), "--http-tls-key", str(key)]
    with serving(*flags, "--http-auth", "token-file", "--http-token-file", str(token)) as (daemon, where):
        assert get(where, "/metrics", "t0ken", scheme="https", ca=cert)[0] == 200
        assert get(where, "/metrics", scheme="https", ca=cert)[0] == 401
        assert get(where, "/healthz", scheme="https", ca=cert)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, http_errors())):
            get(where, "/healthz")  # plain http gets no answer from a TLS port
        assert peer_subject(where, cert) == "first"
        # cert-manager rotates by replacing the files: the next connection gets the new pair.
        new_cert, new_key = make_pair(tmp_path / "next", "second")
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        assert peer_subject(where, cert) == "second"
        out, err, code = watch_one(
            daemon, [f"https://{where}", "--json", "--token-file", str(token), "--ca-file", str(cert)]
        )
    assert code == 0, err
    assert '"event": "oom_kill"' in out


def test_a_tls_stream_stays_open_while_read_and_is_let_go_when_its_client_hangs_up(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, "tls")
    with serving("--http-tls-cert", str(cert), "--http-tls-key", str(key)) as (daemon, where):
        host, _, port = where.rpartition(":")
        context = ssl.create_default_context(cafile=str(cert))
        client = context.wrap_socket(socket.create_connection((host, int(port)), 5), server_hostname=host)
        client.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n")
        head = client.recv(4096)
        assert head.startswith(b"HTTP/1.0 200"), head
        time.sleep(1.5)  # past the server's hang-up checks: a TLS client that only reads stays
        assert daemon.registry.get_sample_value("oomtrace_stream_clients") == 1
        event: dict[str, Any] = schema.blank_event(schema.OOM_KILL)
        event.update(ktime_ns=time.monotonic_ns(), victim_comm="late", victim_pid=2, victim_tgid=2)
        daemon.pipeline.publish(event)
        daemon.pipeline.flush()
        received = b""
        while b'"victim_comm": "late"' not in received:
            received += client.recv(65536)
        client.close()
        deadline = time.monotonic() + 10
        while daemon.registry.get_sample_value("oomtrace_stream_clients") != 0:
            assert time.monotonic() < deadline, "the server kept a stream whose client hung up"
            time.sleep(0.1)


def http_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


def test_a_half_rotated_pair_keeps_serving_the_last_good_one(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, "first")
    server_tls = tls_module.ServerTls(cert, key)
    first = server_tls.context()
    other_cert, _other_key = make_pair(tmp_path / "other", "second")
    shutil.copy(other_cert, cert)  # the new certificate is there, its key not yet
    assert server_tls.context() is first
    cert.write_text("not a certificate")
    assert server_tls.context() is first


# --- watch ------------------------------------------------------------------------------------------


def watch_one(daemon: Daemon, argv: list[str]) -> tuple[str, str, int]:
    """`oomtrace watch ARGV --count 1` while the daemon publishes a kill."""
    args = build_parser().parse_args(["watch", *argv, "--count", "1"])
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(watch(args, out, err)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while thread.is_alive() and time.monotonic() < deadline:
        if "connected to" in err.getvalue():
            event: dict[str, Any] = schema.blank_event(schema.OOM_KILL)
            event.update(ktime_ns=time.monotonic_ns(), victim_comm="victim", victim_pid=1, victim_tgid=1)
            daemon.pipeline.publish(event)
            daemon.pipeline.flush()
        thread.join(0.2)
    assert not thread.is_alive(), err.getvalue()
    return out.getvalue(), err.getvalue(), result[0]


def test_watch_sends_its_token_file_and_without_one_is_told_what_to_give(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("w4tch")
    with serving("--http-auth", "token-file", "--http-token-file", str(token)) as (daemon, where):
        out, err, code = watch_one(daemon, [where, "--json", "--token-file", str(token)])
        assert code == 0 and '"event": "oom_kill"' in out, err
        args = build_parser().parse_args(["watch", where])
        errors = io.StringIO()
        assert watch(args, io.StringIO(), errors) == EXIT_USAGE
        line = one_error_line(errors.getvalue())
        assert "(401)" in line and "--token-file or --kubeconfig" in line
        (tmp_path / "bad").write_text("nope")
        args = build_parser().parse_args(["watch", where, "--token-file", str(tmp_path / "bad")])
        errors = io.StringIO()
        assert watch(args, io.StringIO(), errors) == EXIT_USAGE
        assert "the token was not accepted" in one_error_line(errors.getvalue())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: No such file"),
        (["--ca-file", "/etc/hostname"], "--ca-file is for https:// addresses"),
        (["https://127.0.0.1:1", "--ca-file", "/nonexistent/ca"], "--ca-file /nonexistent/ca"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig"),
    ],
)
def test_bad_watch_credentials_are_one_line_and_exit_2(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(["watch", *argv])
    errors = io.StringIO()
    assert watch(args, io.StringIO(), errors) == EXIT_USAGE
    assert message in one_error_line(errors.getvalue())


def test_watch_refuses_a_kubeconfig_without_a_bearer_token(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],'
        ' "users": [{"name": "u", "user": {"username": "a", "password": "b"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}'
    )
    args = build_parser().parse_args(["watch", "--kubeconfig", str(config)])
    errors = io.StringIO()
    assert watch(args, io.StringIO(), errors) == EXIT_USAGE
    assert "no bearer token" in one_error_line(errors.getvalue())


# --- bad flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-auth", "token-file"], "--http-token-file goes with --http-auth token-file"),
        (["--http-token-file", "/etc/hostname"], "--http-token-file goes with --http-auth token-file"),
        (["--http-auth", "token-file", "--http-token-file", "/nonexistent"], "/nonexistent: No such file"),
        (["--http-auth", "token-file", "--http-token-file", "/dev/null"], "holds no token"),
        (["--http-auth", "kubernetes"], "--http-auth kubernetes: --kube apiserver: not in a cluster"),
        (["--http-auth", "bearer"], "invalid choice: 'bearer'"),
        (["--http-tls-cert", "/etc/hostname"], "--http-tls-cert and --http-tls-key go together"),
        (["--http-tls-cert", "/etc/hostname", "--http-tls-key", "/etc/hostname"], "not a matching PEM"),
        (["--http-tls-cert", "/nonexistent", "--http-tls-key", "/nonexistent"], "No such file"),
    ],
)
def test_bad_access_flags_are_one_line_and_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["run", "--metrics-address", "127.0.0.1:0", *flags]) == EXIT_USAGE
    assert message in one_error_line(capsys.readouterr().err)


def test_a_bad_scheme_in_the_environment_is_a_usage_error_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OOMTRACE_HTTP_AUTH", "basic")
    assert run_main(["run", "--metrics-address", "127.0.0.1:0"]) == EXIT_USAGE
    assert "OOMTRACE_HTTP_AUTH" in one_error_line(capsys.readouterr().err)
