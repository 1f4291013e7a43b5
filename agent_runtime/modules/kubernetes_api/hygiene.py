"""Request hygiene: kas's HttpRequest made safe to send to the API server, for both request paths.

kas is chosen by the tenant who owns the GitLabAgent, so every field of a tunnelled request is attacker
input (docs/security.md). GitLab's kas sends Go-canonical, cleaned headers; nothing here relies on it.
This is the one place that re-establishes what the API server must be able to trust:

- the method is an RFC 7230 token, the path starts with `/`;
- header names are RFC 7230 tokens, in Go's canonical form (so `impersonate-user` and
  `Impersonate-User` are the same header for every check after this one);
- header values carry no CR, LF, NUL or other control characters (no header or request injection);
- connection-level and credential headers are dropped in any spelling: hop-by-hop, whatever
  `Connection` names, `Host`, `Authorization`, `Content-Length`, `Transfer-Encoding`, `TE`, `Trailer`,
  `Proxy-*`. The sender sets framing and credentials itself, so a body can never be read two ways
  (request smuggling) and the operator's token is the only credential on the wire;
- `Upgrade` is kept apart: it selects the upgrade path, which writes `Connection: Upgrade` itself;
- any `Impersonate-*` header, in any spelling, is reported, so the caller can refuse it as nested
  impersonation where the agent acts as a ServiceAccount.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.http_headers import HOP_BY_HOP_HEADERS, canonical_header_key

_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""One or more of _TOKEN_CHARS (fullmatch): a regular expression, as every header of every request is
checked and a character-by-character loop cost ~50 us per request."""
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters other than HTAB."""
_UPGRADE_CHARS: Final = _TOKEN_CHARS | frozenset("/, \t")
"""An Upgrade value is a list of protocol tokens with optional `/version` (RFC 7230 §6.7)."""
_MAX_METHOD: Final = 32
_MAX_NAME: Final = 256
_MAX_PATH: Final = 16 * 1024

DROPPED_HEADERS: Final = HOP_BY_HOP_HEADERS | {"Host", "Authorization", "Content-Length"}
"""Canonical names never copied from kas's request (besides whatever `Connection` names)."""
_DROPPED_PREFIXES: Final = ("Proxy-",)
IMPERSONATE_PREFIX: Final = "Impersonate-"


class RequestRejectedError(ValueError):
    """kas's request is malformed or unsafe; the message says which part (never a header's value)."""


@dataclass(frozen=True)
class CleanRequest:
    """kas's request after hygiene."""

    method: str
    """An RFC 7230 token, as sent."""
    url_path: str
    """Starts with `/`; percent-encoding happens when the URL is built."""
    header: dict[str, list[str]]
    """Canonical names, safe values, no connection-level or credential headers, no `Upgrade`."""
    upgrade: str | None
    """The `Upgrade` value when the client asked for one (exec, attach, port-forward), else None."""
    impersonates: bool
    """The client sent its own `Impersonate-*` headers (kept in `header`; the caller decides)."""


def is_token(value: str) -> bool:
    """RFC 7230 token: one or more tchar."""
    return _TOKEN.fullmatch(value) is not None


def _safe_value(value: str) -> bool:
    # field-value = VCHAR / obs-text / SP / HTAB: refuse every other control character (CR, LF, NUL...).
    return _CONTROL.search(value) is None


def _merge(header: Mapping[str, prototool_pb2.Values]) -> dict[str, list[str]]:
    """Canonical names, values merged in order; refuses bad names and values."""
    merged: dict[str, list[str]] = {}
    for name, values in header.items():
        if len(name) > _MAX_NAME or not is_token(name):
            raise RequestRejectedError(f"header name {name[:64]!r} is not an HTTP token")
        key = canonical_header_key(name)
        for value in values.value:
            if not _safe_value(value):
                raise RequestRejectedError(f"header {key} has a value with control characters")
        merged.setdefault(key, []).extend(values.value)
    return merged


def _connection_named(values: Sequence[str]) -> set[str]:
    return {canonical_header_key(t.strip()) for v in values for t in v.split(",") if is_token(t.strip())}


def _upgrade_value(values: Sequence[str] | None) -> str | None:
    if values is None:
        return None
    value = ", ".join(v.strip() for v in values if v.strip())
    if not value or any(ch not in _UPGRADE_CHARS for ch in value):
        raise RequestRejectedError("the Upgrade header is not a list of protocol tokens")
    return value


def clean_request(request: prototool_pb2.HttpRequest) -> CleanRequest:
    """kas's request made safe; RequestRejectedError says what was refused."""
    if len(request.method) > _MAX_METHOD or not is_token(request.method):
        raise RequestRejectedError(f"method {request.method[:_MAX_METHOD]!r} is not an HTTP token")
    if not request.url_path.startswith("/") or len(request.url_path) > _MAX_PATH:
        raise RequestRejectedError("the URL path must start with '/' (and be at most 16 KiB)")
    merged = _merge(request.header)
    upgrade = _upgrade_value(merged.get("Upgrade"))
    drop = DROPPED_HEADERS | _connection_named(merged.get("Connection", []))
    header = {
        key: values
        for key, values in merged.items()
        if key not in drop and not key.startswith(_DROPPED_PREFIXES)
    }
    return CleanRequest(
        method=request.method,
        url_path=request.url_path,
        header=header,
        upgrade=upgrade,
        # Before the drop: a hop-by-hop `Impersonate-*` is still a client asking to impersonate.
        impersonates=any(key.startswith(IMPERSONATE_PREFIX) for key in merged),
    )
