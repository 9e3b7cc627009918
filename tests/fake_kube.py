"""A local stand-in for the Kubernetes API server and the kubelet, for tests that cannot run either.

Neither can be installed here, so this server speaks the documented shapes of the parts
oomtrace uses, over HTTP or HTTPS on 127.0.0.1:

- API server: `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>` answers a v1 PodList
  with `metadata.resourceVersion`; the same with `watch=true&resourceVersion=<rv>` streams
  one JSON watch event per line (chunked), ADDED / MODIFIED / DELETED, and, for a
  resourceVersion older than the kept history, the `ERROR` event with a 410 `Expired`
  Status that a real API server sends (HTTP 200, then the event). Bearer-token auth: a
  wrong token is `401 Unauthorized`, `forbidden = True` makes every request `403 Forbidden`; both
  answer a v1 Status object, as the real server does.
- kubelet: `GET /pods` answers a v1 PodList of every pod (the kubelet's own view, no
  resourceVersion), with the same bearer-token auth.
- Events (events.k8s.io/v1): `POST /apis/events.k8s.io/v1/namespaces/<ns>/events` creates an
  Event (201 with the object; 409 AlreadyExists for a name taken; 400 when the body's namespace
  is not the path's; 422 Invalid for a missing required field — eventTime, reportingController,
  reportingInstance, action, reason, regarding, type Normal/Warning, a note over 1 kB), and
  `PATCH .../events/<name>` with a merge or strategic-merge patch updates it (404 when there
  is none; 422 for a series count below 2). `forbid_events()` answers them 403 as RBAC
  would; `events_delay_s` makes them hang that long before answering.
- Reviews: `POST /apis/authentication.k8s.io/v1/tokenreviews` answers a TokenReview whose
  `status` says whether `spec.token` is one of `users` (and who), and `POST
  /apis/authorization.k8s.io/v1/subjectaccessreviews` one whose `status.allowed` says whether
  `spec.user` or one of `spec.groups` was granted `get` on `spec.nonResourceAttributes.path`
  (`grant()`); the caller itself needs the server's token, as for everything else.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def pod(
    uid: str,
    name: str,
    namespace: str = "default",
    node: str = "node-1",
    containers: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    qos: str = "Burstable",
) -> dict[str, Any]:
    """A v1 Pod as the API server serializes it (the fields oomtrace reads, and some it does not)."""
    statuses = [
        {
            "name": cname,
            "containerID": f"containerd://{cid}",
            "image": "registry.example/image:tag",
            "ready": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        }
        for cname, cid in (containers or {}).items()
    ]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": "0",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": labels or {},
        "annotations": annotations or {},
    }
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": owner[0], "name": owner[1], "uid": "o-" + uid, "controller": True}
        ]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": c, "image": "x"} for c in containers or {}]},
        "status": {"phase": "Running", "qosClass": qos, "containerStatuses": statuses},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKube:
    """The server and its state. Mutate pods with add/modify/delete; every change gets a new
    resourceVersion and a watch event."""

    def __init__(self, token: str = "test-token", tls_dir: Path | None = None) -> None:
        self.token = token
        self.pods: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.version = 100
        self.oldest_watchable = 0
        self.forbidden = False
        self.requests: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.closing = False
        self.list_delay_s = 0.0
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.events_forbidden = False
        self.events_delay_s = 0.0
        self.users: dict[str, dict[str, Any]] = {}  # token → TokenReview status.user
        self.grants: set[tuple[str, str]] = set()  # (user or group, non-resource path)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                if self.path.startswith(("/apis/authentication.k8s.io/", "/apis/authorization.k8s.io/")):
                    fake._handle_review(self)
                else:
                    fake._handle_event(self, "create")

            def do_PATCH(self) -> None:
                fake._handle_event(self, "patch")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        self.ca_file: Path | None = None
        if tls_dir is not None:
            self.ca_file = self._tls(tls_dir)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def _tls(self, directory: Path) -> Path:
        """A self-signed certificate for 127.0.0.1 (openssl), which is also its own CA."""
        import ssl

        cert, key = directory / "server.crt", directory / "server.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        return cert

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # --- state ----------------------------------------------------------------------------

    def _change(self, kind: str, obj: dict[str, Any]) -> None:
        with self.cond:
            self.version += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.version)
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = obj
            self.history.append((self.version, kind, obj))
            self.cond.notify_all()

    def add(self, obj: dict[str, Any]) -> None:
        self._change("ADDED", obj)

    def modify(self, obj: dict[str, Any]) -> None:
        self._change("MODIFIED", obj)

    def delete(self, uid: str) -> None:
        self._change("DELETED", self.pods[uid])

    def compact(self) -> None:
        """Forget the history: a watch resuming from any version seen so far gets 410 Gone."""
        with self.cond:
            self.oldest_watchable = self.version + 1
            self.history.clear()

    def expire_watches(self) -> None:
        """End open watches with the 410 ERROR event, as a real server does after compaction."""
        with self.cond:
            self.compact()
            self.history.append((-1, "ERROR", _status(410, "Expired", "too old resource version")))
            self.cond.notify_all()

    def lists(self) -> int:
        return sum(1 for r in self.requests if r["path"] in ("/api/v1/pods", "/pods") and not r["watch"])

    # --- HTTP -----------------------------------------------------------------------------

    def _send_json(self, h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        watch = query.get("watch") in ("true", "1")
        auth = h.headers.get("Authorization", "")
        self.requests.append({"path": parts.path, "query": query, "watch": watch, "auth": auth})
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            self._send_json(h, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if self.forbidden:
            user = "system:serviceaccount:oomtrace:oomtrace"
            message = f'pods is forbidden: User "{user}" cannot list resource "pods" at the cluster scope'
            self._send_json(h, 403, _status(403, "Forbidden", message))
            return
        if parts.path == "/pods":
            with self.cond:
                items = list(self.pods.values())
            self._send_json(h, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            return
        if parts.path != "/api/v1/pods":
            self._send_json(
                h, 404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        node = None
        selector = query.get("fieldSelector")
        if selector is not None:
            field, _, node = selector.partition("=")
            if field != "spec.nodeName":
                self._send_json(h, 400, _status(400, "BadRequest", f"field label not supported: {field}"))
                return
        if watch:
            self._watch(h, node, query)
            return
        time.sleep(self.list_delay_s)
        with self.cond:
            items = [p for p in self.pods.values() if node is None or p["spec"]["nodeName"] == node]
            version = str(self.version)
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }
        self._send_json(h, 200, body)

    def _handle_event(self, h: BaseHTTPRequestHandler, verb: str) -> None:
        body_bytes = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = urlsplit(h.path).path
        auth = h.headers.get("Authorization", "")
        self.requests.append({"path": path, "query": {}, "watch": False, "auth": auth, "verb": verb})
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            self._send_json(h, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        parts = path.split("/")
        # /apis/events.k8s.io/v1/namespaces/<ns>/events[/<name>]
        if (
            parts[1:4] != ["apis", "events.k8s.io", "v1"]
            or len(parts) not in (7, 8)
            or parts[4] != "namespaces"
        ):
            self._send_json(
                h, 404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        namespace = parts[5]
        if self.events_forbidden:
            user = "system:serviceaccount:oomtrace:oomtrace"
            message = (
                f'events.events.k8s.io is forbidden: User "{user}" cannot {verb} resource "events"'
                f' in API group "events.k8s.io" in the namespace "{namespace}"'
            )
            self._send_json(h, 403, _status(403, "Forbidden", message))
            return
        time.sleep(self.events_delay_s)
        try:
            body = json.loads(body_bytes)
        except ValueError:
            self._send_json(h, 400, _status(400, "BadRequest", "invalid JSON"))
            return
        if verb == "create" and len(parts) == 7:
            self._create_event(h, namespace, body)
        elif verb == "patch" and len(parts) == 8:
            kinds = ("application/merge-patch+json", "application/strategic-merge-patch+json")
            if h.headers.get("Content-Type", "").split(";")[0] not in kinds:
                self._send_json(h, 415, _status(415, "UnsupportedMediaType", "unsupported patch type"))
                return
            self._patch_event(h, namespace, parts[7], body)
        else:
            self._send_json(h, 405, _status(405, "MethodNotAllowed", "the server does not allow this method"))

    def _create_event(self, h: BaseHTTPRequestHandler, namespace: str, body: Any) -> None:
        meta = body.get("metadata") if isinstance(body, dict) else None
        if (
            not isinstance(meta, dict)
            or body.get("apiVersion") != "events.k8s.io/v1"
            or body.get("kind") != "Event"
        ):
            self._send_json(h, 400, _status(400, "BadRequest", "not an events.k8s.io/v1 Event"))
            return
        if meta.get("namespace", namespace) != namespace:
            message = "the namespace of the provided object does not match the namespace sent on the request"
            self._send_json(h, 400, _status(400, "BadRequest", message))
            return
        missing = [
            f
            for f in (
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
                "regarding",
            )
            if not body.get(f)
        ]
        if (
            missing
            or body.get("type") not in ("Normal", "Warning")
            or len(str(body.get("note", "")).encode()) > 1024
            or not meta.get("name")
        ):
            self._send_json(
                h, 422, _status(422, "Invalid", f"Event is invalid: {missing or 'type/note/name'}")
            )
            return
        with self.cond:
            key = (namespace, meta["name"])
            if key in self.events:
                self._send_json(
                    h, 409, _status(409, "AlreadyExists", f'events "{meta["name"]}" already exists')
                )
                return
            self.events[key] = body
        self._send_json(h, 201, body)

    def _patch_event(self, h: BaseHTTPRequestHandler, namespace: str, name: str, patch: Any) -> None:
        with self.cond:
            current = self.events.get((namespace, name))
            if current is None:
                self._send_json(h, 404, _status(404, "NotFound", f'events.events.k8s.io "{name}" not found'))
                return
            series = patch.get("series") if isinstance(patch, dict) else None
            if (
                not isinstance(series, dict)
                or not isinstance(series.get("count"), int)
                or series["count"] < 2
            ):
                self._send_json(h, 422, _status(422, "Invalid", "series.count: must be at least 2"))
                return
            current["series"] = series
        self._send_json(h, 200, current)

    def user(self, token: str, name: str, groups: tuple[str, ...] = ()) -> None:
        self.users[token] = {"username": name, "uid": f"uid-{name}", "groups": list(groups)}

    def grant(self, subject: str, path: str) -> None:
        self.grants.add((subject, path))

    def _handle_review(self, h: BaseHTTPRequestHandler) -> None:
        body_bytes = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = urlsplit(h.path).path
        auth = h.headers.get("Authorization", "")
        self.requests.append({"path": path, "query": {}, "watch": False, "auth": auth, "verb": "create"})
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            self._send_json(h, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if self.forbidden:
            self._send_json(h, 403, _status(403, "Forbidden", f"cannot create {path}"))
            return
        try:
            review = json.loads(body_bytes)
            spec = review["spec"]
        except (ValueError, KeyError, TypeError):
            self._send_json(h, 400, _status(400, "BadRequest", "not a review"))
            return
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" and review.get("kind") == "TokenReview":
            who = self.users.get(str(spec.get("token")))
            review["status"] = {"authenticated": True, "user": who} if who else {"authenticated": False}
        elif (
            path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
            and review.get("kind") == "SubjectAccessReview"
        ):
            attrs = spec.get("nonResourceAttributes") or {}
            subjects = [spec.get("user"), *(spec.get("groups") or [])]
            allowed = attrs.get("verb") == "get" and any(
                (s, attrs.get("path")) in self.grants for s in subjects
            )
            review["status"] = {"allowed": allowed}
        else:
            self._send_json(
                h, 404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        self._send_json(h, 201, review)

    def forbid_events(self) -> None:
        self.events_forbidden = True

    def events_about(self, kind: str, name: str) -> list[dict[str, Any]]:
        with self.cond:
            return [
                e
                for e in self.events.values()
                if e["regarding"]["kind"] == kind and e["regarding"]["name"] == name
            ]

    def _watch(self, h: BaseHTTPRequestHandler, node: str | None, query: dict[str, str]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        since = int(query.get("resourceVersion") or self.version)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "60"))
        try:
            with self.cond:
                if since < self.oldest_watchable:
                    send(
                        {
                            "type": "ERROR",
                            "object": _status(410, "Expired", f"too old resource version: {since}"),
                        }
                    )
                    h.wfile.write(b"0\r\n\r\n")
                    return
            sent = since
            while time.monotonic() < deadline:
                with self.cond:
                    if self.closing:
                        break
                    pending = [e for e in self.history if e[0] > sent or e[0] == -1]
                    if not pending:
                        self.cond.wait(0.1)
                        continue
                for version, kind, obj in pending:
                    if kind == "ERROR":
                        with self.cond:
                            self.history = [e for e in self.history if e[0] != -1]
                        send({"type": "ERROR", "object": obj})
                        h.wfile.write(b"0\r\n\r\n")
                        return
                    sent = max(sent, version)
                    if node is None or obj["spec"]["nodeName"] == node:
                        send({"type": kind, "object": obj})
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def kubeconfig(path: Path, server: str, token: str, ca_file: Path | None = None) -> Path:
    """A kubeconfig (YAML is a superset of JSON) for `server` with a bearer token."""
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": cluster}],
                "users": [{"name": "oomtrace", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "oomtrace"}}],
                "current-context": "fake",
            }
        )
    )
    return path


@contextmanager
def running(token: str = "test-token", tls_dir: Path | None = None) -> Iterator[FakeKube]:
    fake = FakeKube(token, tls_dir).start()
    try:
        yield fake
    finally:
        fake.close()
