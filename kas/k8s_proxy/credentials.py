"""Parsing of the proxy's bearer credentials (PROTOCOL.md §10.2).

`Authorization: Bearer ci:<agent id>:<CI job token>` or `Bearer pat:<agent id>:<personal access token>`.
Exactly one Authorization header; the `Bearer ` prefix is case-sensitive with one space; the rest is split
on the first `:` (type), then on the first `:` again (decimal agent id, token). An empty token is rejected.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kas.k8s_proxy.errors import ProxyError
from kas.secret import Secret

_BEARER: Final = "Bearer "
_DECIMAL = re.compile(r"^[0-9]{1,19}$")
_INT64_MAX: Final = 2**63 - 1


class CredentialKind(enum.Enum):
    """Which GitLab credential the client presented."""

    CI_JOB = "ci"
    PERSONAL_ACCESS_TOKEN = "pat"  # noqa: S105 (the credential type prefix, not a password)


@dataclass(frozen=True)
class ProxyCredential:
    """A parsed credential; the token stays wrapped so it cannot reach logs or error messages."""

    kind: CredentialKind
    agent_id: int
    token: Secret


def parse_authorization(values: Sequence[str]) -> ProxyCredential:
    """The credential in the request's Authorization header values; ProxyError(401) if unusable.

    Error messages describe the shape problem only, never the header's text.
    """
    if not values:
        raise ProxyError.unauthorized("no valid credentials provided")
    if len(values) > 1:
        raise ProxyError.unauthorized("more than one Authorization header")
    header = values[0]
    if not header.startswith(_BEARER):
        raise ProxyError.unauthorized("Authorization header: expecting Bearer token")
    kind_text, sep, rest = header[len(_BEARER) :].partition(":")
    if not sep:
        raise ProxyError.unauthorized("Authorization header: invalid value")
    kind = _KINDS.get(kind_text)
    if kind is None:
        raise ProxyError.unauthorized("Authorization header: unknown token type")
    id_text, sep, token = rest.partition(":")
    if not sep or not _DECIMAL.match(id_text) or int(id_text) > _INT64_MAX:
        raise ProxyError.unauthorized("Authorization header: invalid agent id")
    if not token:
        raise ProxyError.unauthorized("Authorization header: empty token")
    return ProxyCredential(kind, int(id_text), Secret(token.encode()))


_KINDS: Final = {kind.value: kind for kind in CredentialKind}
