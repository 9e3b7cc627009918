"""Listen addresses of the HTTP server (/metrics, /healthz, /events) and oomtrace's port."""

import ipaddress
import re
from typing import Final

# Where `oomtrace run` serves and `oomtrace watch` looks, unless told otherwise.
DEFAULT_PORT: Final = 9700
DEFAULT_LISTEN: Final = f":{DEFAULT_PORT}"

_PORT: Final = re.compile(r"[0-9]{1,5}")


def parse_address(address: str) -> tuple[str, int]:
    """Split `host:port`, `:port` or `[v6addr]:port` into (host, port); host "" means all interfaces."""
    usage = f"bad listen address {address!r}: expected host:port, :port or [ipv6]:port"
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(usage)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad listen address {address!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(usage)
        if ":" in host:
            raise ValueError(f"bad listen address {address!r}: put an IPv6 address in brackets, [addr]:port")
        if any(c.isspace() or c in "[]/" for c in host):
            raise ValueError(usage)
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"bad listen address {address!r}: port must be a number from 0 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for a bound host only this machine can reach (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
