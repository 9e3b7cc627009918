"""What `oomtrace run --loki-*` configures: the push URL, auth, TLS and batching, checked up front.

Every check is here, so a bad setting is one usage error before anything starts; the sink
can take a LokiConfig as valid. The flags themselves are in tracer/sinks/loki/flags.py.
"""

from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from tracer import __version__

PUSH_PATH: Final = "/loki/api/v1/push"
ENCODINGS: Final = ("protobuf", "json")

_SIZE = re.compile(r"\s*([0-9]+)\s*(|b|B|k|K|KB|KiB|M|MB|MiB|G|GB|GiB)\s*")
_SIZE_UNITS: Final = {"": 1, "b": 1, "B": 1, "k": 1 << 10, "K": 1 << 10, "KB": 1 << 10, "KiB": 1 << 10}
_SIZE_UNITS.update({"M": 1 << 20, "MB": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GiB": 1 << 30})


def parse_size(text: str) -> int:
    """`1048576`, `512KiB`, `1MiB`, `1G` → bytes (binary units); ValueError otherwise."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (expected bytes, or a number with KiB, MiB or GiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class LokiConfig:
    url: str  # the push endpoint, or a base URL to which PUSH_PATH is added
    tenant: str | None = None  # X-Scope-OrgID
    username: str | None = None  # basic auth, with password
    password: str | None = None
    bearer_token: str | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    encoding: str = "protobuf"
    batch_bytes: int = 1 << 20  # a batch is sent when it would grow past this...
    batch_wait_s: float = 1.0  # ...or when its first entry is this old
    buffer_bytes: int = 8 << 20  # everything not yet delivered, batches and the open one
    timeout_s: float = 10.0  # per request
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0  # a longer Retry-After is cut to this
    close_timeout_s: float = 5.0  # how long close() may spend delivering what is buffered

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--loki-url: expected http(s)://host[:port][/path], got {self.url!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"--loki-url: bad port in {self.url!r}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"--loki-url: no query or fragment expected in {self.url!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"--loki-encoding: expected one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("--loki-username and --loki-password go together (basic auth)")
        if self.username is not None and self.bearer_token is not None:
            raise ValueError("--loki-bearer-token and --loki-username/--loki-password are exclusive")
        if self.tenant is not None and not self.tenant.strip():
            raise ValueError("--loki-tenant is empty")
        for name, value in (
            ("tenant", self.tenant),
            ("username", self.username),
            ("password", self.password),
            ("bearer-token", self.bearer_token),
        ):
            if value is not None and any(c in value for c in "\r\n"):
                raise ValueError(f"--loki-{name} contains a line break")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"--loki-ca-file: no such file: {self.ca_file}")
        if (self.ca_file is not None or self.insecure_skip_verify) and parts.scheme != "https":
            raise ValueError("--loki-ca-file and --loki-insecure-skip-verify need an https:// --loki-url")
        if self.batch_bytes <= 0:
            raise ValueError("--loki-batch-bytes must be > 0")
        if not self.batch_wait_s > 0:
            raise ValueError("--loki-batch-wait must be > 0")
        if self.buffer_bytes < self.batch_bytes:
            raise ValueError(
                f"--loki-buffer-bytes ({self.buffer_bytes}) must be at least --loki-batch-bytes "
                f"({self.batch_bytes})"
            )
        for name in ("timeout_s", "min_backoff_s", "max_backoff_s", "close_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Loki {name} must be > 0")
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError) as err:
                raise ValueError(f"--loki-ca-file: cannot load {self.ca_file}: {err}") from None

    @property
    def push_url(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path if parts.path not in ("", "/") else PUSH_PATH
        return f"{parts.scheme}://{parts.netloc}{path}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "https":
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/x-protobuf" if self.encoding == "protobuf" else "application/json",
            "User-Agent": f"oomtrace/{__version__}",
        }
        if self.tenant is not None:
            headers["X-Scope-OrgID"] = self.tenant
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        elif self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        return headers
