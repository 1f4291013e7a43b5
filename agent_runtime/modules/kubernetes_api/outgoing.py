"""The HTTP request to send to the API server, built from kas's HttpRequest header (§7.3)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_runtime.constants import VIA_REQUEST_PROTOCOL
from agent_runtime.modules.kubernetes_api.hygiene import CleanRequest
from agent_runtime.version import AGENT_PRODUCT

_PATH_SAFE = "/:@!$&'()*+,;=-._~"
"""Characters kept as they are in the path; everything else is percent-encoded (as Go's url.URL does)."""


@dataclass(frozen=True)
class OutgoingRequest:
    """Method, target and headers of the request to the API server."""

    method: str
    """HTTP method (an RFC 7230 token: checked by hygiene)."""
    path_and_query: str
    """Encoded path (with the API server's base path) and query, e.g. /api/v1/pods?watch=1."""
    headers: tuple[tuple[str, str], ...]
    """All headers, repeated keys allowed, Via appended; no Host, framing or client credentials."""
    content_length: int | None
    """kas's content_length: None = absent (old kas), -1 = unknown, 0 = no body, >0 = exact size."""
    upgrade: bool
    """The client asked for an HTTP Upgrade (exec, attach, port-forward); `Connection` and `Upgrade`
    are then among `headers`."""


def encode_query(query: Mapping[str, prototool_pb2.Values]) -> str:
    """Go's url.Values.Encode: keys sorted, QueryEscape'd."""
    return urllib.parse.urlencode([(k, v) for k in sorted(query) for v in query[k].value])


def build_request(
    clean: CleanRequest,
    query: Mapping[str, prototool_pb2.Values],
    *,
    base_path: str,
    content_length: int | None,
    identity_headers: Sequence[tuple[str, str]],
    auth_headers: Mapping[str, str],
) -> OutgoingRequest:
    """The outgoing request from a request that passed hygiene.

    The process's credentials and `identity_headers` (Impersonate-*) come after the client's headers,
    and the caller has refused client Impersonate-* headers wherever it sets its own: the operator's
    identity headers are then the only ones of their kind on the wire.
    """
    headers = [(key, value) for key, values in clean.header.items() for value in values]
    headers += [(k, v) for k, v in auth_headers.items()]
    headers += list(identity_headers)
    if clean.upgrade is not None:
        headers += [("Connection", "Upgrade"), ("Upgrade", clean.upgrade)]
    headers.append(("Via", f"{VIA_REQUEST_PROTOCOL} {AGENT_PRODUCT}"))
    path = base_path.rstrip("/") + urllib.parse.quote(clean.url_path, safe=_PATH_SAFE)
    encoded_query = encode_query(query)
    return OutgoingRequest(
        method=clean.method,
        path_and_query=path + ("?" + encoded_query if encoded_query else ""),
        headers=tuple(headers),
        content_length=content_length,
        upgrade=clean.upgrade is not None,
    )


def response_via(major: int, minor: int) -> str:
    """The Via value appended to the response header (§7.3)."""
    return f"{major}.{minor} {AGENT_PRODUCT}"
