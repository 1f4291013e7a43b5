"""CORS for browser access to the proxy (PROTOCOL.md §10.8)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from multidict import CIMultiDict

ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
MAX_AGE_SECONDS: Final = 86400


class OriginRefusedError(Exception):
    """The request carries an Origin that is not allowed: answered with 403 and an empty body."""


def cors_headers(request_header: Mapping[str, str], allowed_origins: Collection[str]) -> CIMultiDict[str]:
    """Headers to add to the response (none without Origin); OriginRefusedError for a foreign Origin."""
    origin = request_header.get("Origin")
    headers: CIMultiDict[str] = CIMultiDict()
    if origin is None:
        return headers
    if origin not in allowed_origins:
        raise OriginRefusedError(origin)
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Vary"] = "Origin"
    return headers


def is_preflight(method: str, request_header: Mapping[str, str]) -> bool:
    """A browser's OPTIONS preflight, which kas answers itself (it carries no credentials)."""
    return (
        method == "OPTIONS"
        and "Origin" in request_header
        and "Access-Control-Request-Method" in request_header
    )


def preflight_headers(request_header: Mapping[str, str], base: CIMultiDict[str]) -> CIMultiDict[str]:
    """The answer to an allowed preflight: `base` (from cors_headers) plus methods, headers and max age."""
    headers = CIMultiDict(base)
    requested = request_header.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    return headers
