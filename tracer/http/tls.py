"""TLS for the HTTP server, from a certificate and key the cluster provides (a cert-manager
Certificate, OpenShift's service CA, ... mounted from a Secret).

Those are rotated in place, so the files are looked at again for each connection (two stat
calls) and reloaded when they change. A rotation caught half-written keeps the last good pair
until the next connection finds a whole one.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class ServerTls:
    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self._lock = threading.Lock()
        self._stamps: tuple[tuple[int, int, int], ...] = ()
        try:
            self._context = self._load()  # at start a bad pair is the operator's to fix: ValueError
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"--http-tls-cert {cert} / --http-tls-key {key}: {_why(err)}") from None

    def _load(self) -> ssl.SSLContext:
        stamps = (_stamp(self._cert), _stamp(self._key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        self._stamps = stamps
        return context

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                if (_stamp(self._cert), _stamp(self._key)) != self._stamps:
                    self._context = self._load()
            except (OSError, ssl.SSLError):
                pass  # mid-rotation: the last good pair serves until a whole one is there
            return self._context


def _why(err: OSError | ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLError):
        return f"not a matching PEM certificate and key ({err.reason or err})"
    return err.strerror or str(err)
