"""What `oomtrace watch` proves itself with: a bearer token from a file or from a kubeconfig's
current user, and the CA bundle it trusts for https:// addresses."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from tracer.cli.watch.client import Endpoint, WatchError
from tracer.http.auth import MAX_TOKEN_BYTES  # the most the tracer reads of a token, and so do we

# Called before each connection: a rotated token is picked up at the next reconnect.
Token = Callable[[], str]


def read_token_file(path: Path) -> str:
    try:
        token = path.read_bytes()[:MAX_TOKEN_BYTES].decode("ascii").strip()
    except OSError as err:
        raise WatchError(f"--token-file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise WatchError(f"--token-file {path}: not a token (not ASCII text)") from None
    if not token or not token.isprintable() or " " in token:
        raise WatchError(f"--token-file {path}: the file holds no token")
    return token


def kubeconfig_token(path: Path) -> Token:
    """The token kubectl would send for this kubeconfig's current context (a `token`, a
    `tokenFile`, or an exec plugin's, refreshed as it expires)."""
    from tracer.enrich.kube import KubeError, api_client

    try:
        configuration = api_client(path).configuration
    except KubeError as err:
        raise WatchError(f"--kubeconfig: {err}") from None

    def token() -> str:
        try:
            # What the client puts in its Authorization header (refreshing an exec plugin's token).
            header = configuration.auth_settings().get("BearerToken") or {}
            value = str(header.get("value") or "")
        except Exception as err:  # an exec plugin that fails, a token file that went away
            raise WatchError(f"--kubeconfig {path}: cannot get a token: {err}") from None
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not rest.strip():
            raise WatchError(
                f"--kubeconfig {path}: its current user has no bearer token (client certificates "
                "prove who you are to the API server only; use a token, or --token-file)"
            )
        return rest.strip()

    token()  # a kubeconfig without a usable token is a usage error now, not at each reconnect
    return token


def credentials(token_file: Path | None, kubeconfig: Path | None) -> Token | None:
    if token_file is not None:
        read_token_file(token_file)
        return lambda: read_token_file(token_file)
    if kubeconfig is not None:
        return kubeconfig_token(kubeconfig)
    return None


def tls_context(endpoint: Endpoint, ca_file: Path | None) -> ssl.SSLContext | None:
    if endpoint.scheme != "https":
        if ca_file is not None:
            raise WatchError("--ca-file is for https:// addresses")
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise WatchError(f"--ca-file {ca_file}: {why}") from None
