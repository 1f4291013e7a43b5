"""The HTTP request to send to the API server, built from kas's HttpRequest header (§7.3)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_runtime.constants import VIA_REQUEST_PROTOCOL
from agent_runtime.modules.kubernetes_api.frames import header_lists
from agent_runtime.modules.kubernetes_api.identity import has_impersonation_headers
from agent_runtime.version import AGENT_PRODUCT

_DROPPED = frozenset({"Authorization", "Host", "Content-Length"})
"""Never copied from the client: we authenticate ourselves; Host and length are set by the sender."""


@dataclass(frozen=True)
class OutgoingRequest:
    """Method, target and headers of the request to the API server."""

    method: str
    """HTTP method."""
    path_and_query: str
    """Encoded path (with the API server's base path) and query, e.g. /api/v1/pods?watch=1."""
    headers: tuple[tuple[str, str], ...]
    """All headers, repeated keys allowed, Via appended; no Host/Content-Length."""
    content_length: int | None
    """kas's content_length: None = absent (old kas), -1 = unknown, 0 = no body, >0 = exact size."""
    upgrade: bool
    """The client asked for an HTTP Upgrade (exec, attach, port-forward)."""


def encode_query(query: Mapping[str, prototool_pb2.Values]) -> str:
    """Go's url.Values.Encode: keys sorted, QueryEscape'd."""
    return urllib.parse.urlencode([(k, v) for k in sorted(query) for v in query[k].value])


def build_request(
    request: prototool_pb2.HttpRequest,
    *,
    base_path: str,
    content_length: int | None,
    identity_headers: Sequence[tuple[str, str]],
    auth_headers: Mapping[str, str],
) -> OutgoingRequest:
    """The outgoing request; identity_headers (Impersonate-*) replace the client's own when non-empty."""
    client = header_lists(request.header)
    drop_client_impersonation = bool(identity_headers) and has_impersonation_headers(client)
    headers: list[tuple[str, str]] = []
    for key, values in client.items():
        if key in _DROPPED or (drop_client_impersonation and key.startswith("Impersonate-")):
            continue
        headers += [(key, v) for v in values]
    headers += [(k, v) for k, v in auth_headers.items()]
    headers += list(identity_headers)
    headers.append(("Via", f"{VIA_REQUEST_PROTOCOL} {AGENT_PRODUCT}"))
    path = base_path.rstrip("/") + urllib.parse.quote(request.url_path, safe="/:@!$&'()*+,;=-._~")
    query = encode_query(request.query)
    return OutgoingRequest(
        method=request.method,
        path_and_query=path + ("?" + query if query else ""),
        headers=tuple(headers),
        content_length=content_length,
        upgrade="Upgrade" in client,
    )


def response_via(major: int, minor: int) -> str:
    """The Via value appended to the response header (§7.3)."""
    return f"{major}.{minor} {AGENT_PRODUCT}"
