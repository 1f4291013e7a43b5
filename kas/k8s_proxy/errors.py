"""Errors the proxy answers itself, as Kubernetes `Status` objects kubectl prints clearly (§10.7).

Every message starts with "GitLab Agent Server: " so users can tell kas's refusals from the cluster's.
Messages never contain tokens: callers pass fixed texts and ids only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

MESSAGE_PREFIX: Final = "GitLab Agent Server: "
UNAUTHORIZED_HEADER: Final = "Gitlab-Unauthorized"
"""Set to "true" on kas's own 401s, so clients can tell them from a cluster's 401."""
NO_TUNNEL_MESSAGE: Final = "Agent connection not found. Is agent up to date and connected?"

# metav1.StatusReason values for the codes this proxy produces; others fall back to the HTTP reason text.
_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class ProxyError(Exception):
    """A refusal answered before any response byte was written."""

    code: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def bad_request(cls, message: str) -> ProxyError:
        return cls(400, f"Bad request: {message}")

    @classmethod
    def unauthorized(cls, message: str) -> ProxyError:
        return cls(401, f"Unauthorized: {message}", {UNAUTHORIZED_HEADER: "true"})

    @classmethod
    def forbidden(cls, message: str) -> ProxyError:
        return cls(403, f"Forbidden: {message}")

    @classmethod
    def not_found(cls, message: str) -> ProxyError:
        return cls(404, f"Not found: {message}")

    @classmethod
    def bad_gateway(cls, message: str) -> ProxyError:
        return cls(502, message)


def status_reason(code: int) -> str:
    """The Status `reason` for an HTTP code."""
    if code in _REASONS:
        return _REASONS[code]
    try:
        return HTTPStatus(code).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


def wants_text(accept: str, path: str) -> bool:
    """Whether an error is better sent as text/plain than as a JSON Status.

    client-go reads API discovery responses (`/api`, `/apis`, aggregated discovery) as raw bytes and shows
    an error body only when it is text; a JSON Status there turns into "unknown". Every other request
    gets the Status object, which client-go decodes and kubectl prints with its message.
    """
    return "g=apidiscovery.k8s.io" in accept or path.rstrip("/") in _DISCOVERY_PATHS


_DISCOVERY_PATHS: Final = frozenset({"/api", "/apis", ""})


def text_body(message: str) -> bytes:
    return (MESSAGE_PREFIX + message + "\n").encode()


def status_body(code: int, message: str) -> bytes:
    """A `v1.Status` (status Failure) as JSON, the media type every Kubernetes client decodes."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": MESSAGE_PREFIX + message,
        "reason": status_reason(code),
        "code": code,
    }
    return json.dumps(status).encode()
