"""Creating and patching events.k8s.io/v1 Events through the official `kubernetes` client."""

from __future__ import annotations

import json
from typing import Any, Final

from tracer.enrich.kube.source import REQUEST_TIMEOUT_S

_VERBS: Final = {"create": "create", "patch": "patch"}


class EventWriteError(Exception):
    """A request the API server refused or never answered; `status` 0 when it did not answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiEventWriter:
    """Sends one Action; raises EventWriteError with a one-line reason."""

    def __init__(self, api_client: Any, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        from kubernetes import client as k8s

        self._api: Any = k8s.EventsV1Api(api_client)  # dict bodies, raw responses: no models
        self._host = str(api_client.configuration.host)
        self._timeout = timeout_s

    def send(self, verb: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if verb == "create":
                response = self._api.create_namespaced_event(
                    namespace, body, _preload_content=False, _request_timeout=self._timeout
                )
            else:
                # A JSON merge patch of the series alone (the client sends a dict as merge patch).
                response = self._api.patch_namespaced_event(
                    name, namespace, body, _preload_content=False, _request_timeout=self._timeout
                )
            # Read the answer to its end before the connection goes back to the pool: a reused
            # connection with an unread body would make the next answer unparseable.
            _ = response.data
            response.release_conn()
        except ApiException as err:
            status = int(err.status or 0)
            raise EventWriteError(status, _explain(status, verb, namespace, self._host, err)) from None
        except Exception as err:  # urllib3: refused, timed out, TLS
            raise EventWriteError(0, f"kubernetes API at {self._host} did not answer: {err}") from None


def _explain(status: int, verb: str, namespace: str, host: str, err: Any) -> str:
    if status in (401, 403):
        return (
            f"kubernetes API at {host} refused to {_VERBS[verb]} events in {namespace} ({status}):"
            " oomtrace's ClusterRole needs create and patch on events.k8s.io events"
        )
    try:
        message = json.loads(err.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"kubernetes API at {host}: {verb} event in {namespace} answered {status}: {message or err.reason}"
