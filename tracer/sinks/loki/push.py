"""One push to Loki: a POST over a kept-alive HTTP(S) connection, and what the answer means.

429 and 5xx are worth retrying (a Retry-After header, when given, says when); any other 4xx
is Loki rejecting the batch for good; no answer at all is a network error.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from tracer.sinks.loki.config import LokiConfig

REQUEST_RESULTS: Final = ("success", "rate_limited", "server_error", "rejected", "network_error")
# Loki answers a push with an empty body or a short error; more than this is not read.
MAX_RESPONSE_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Response:
    result: str  # one of REQUEST_RESULTS, or "encode_error" for a batch never sent
    status: int | None = None
    retry_after_s: float | None = None
    detail: str = ""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) in seconds from now; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class PushConnection:
    """POSTs push bodies to the configured endpoint, reusing one connection while it lasts."""

    def __init__(self, config: LokiConfig) -> None:
        url = urlsplit(config.push_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._path = url.path
        self._timeout_s = config.timeout_s
        self._ssl = config.ssl_context()
        self._headers = config.headers()
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout_s, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        """From another thread: cut the socket of a request in progress, so that it ends now."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def post(self, body: bytes, give_up: Callable[[], bool]) -> Response:
        """One push; `give_up()` true means no time is left for a retry on a fresh connection."""
        # A kept-alive connection the server has since closed fails at once: one fresh retry.
        for fresh in (self._conn is None, True):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                reply = conn.getresponse()
                detail = reply.read(MAX_RESPONSE_BYTES)
                if not reply.isclosed() or reply.getheader("Connection", "").lower() == "close":
                    self.close()
            except Exception as err:  # OSError, HTTPException, ssl errors: all mean "not delivered"
                self.close()
                if fresh or give_up() or not isinstance(err, ConnectionError):
                    return Response("network_error", detail=describe_error(err))
                continue
            return _classify(reply.status, reply.getheader("Retry-After"), detail)
        raise AssertionError("unreachable")


def _classify(status: int, retry_after: str | None, body: bytes) -> Response:
    detail = body[:200].decode("utf-8", "replace").strip()
    if 200 <= status < 300:
        return Response("success", status)
    if status == 429:
        return Response("rate_limited", status, retry_after_s(retry_after), detail)
    if status >= 500:
        return Response("server_error", status, retry_after_s(retry_after), detail)
    return Response("rejected", status, None, detail)


def describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
