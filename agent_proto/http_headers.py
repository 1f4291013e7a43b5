"""HTTP header rules of the tunnel: Go's canonical key form (PROTOCOL.md §4.1) and hop-by-hop clean-up (§7.4).

Why: GitLab's agentk looks header keys up by exact string (`Upgrade`, `Impersonate-User`,
`Impersonate-Extra-…`), because Go stores them canonicalised. A Python kas must therefore send keys in
exactly that form, and both sides must drop the same hop-by-hop headers so that upgrades (exec, attach,
port-forward) survive the trip while connection-scoped headers do not leak through.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

HOP_BY_HOP_HEADERS = frozenset(
    {
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Te",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    }
)
"""Always removed by `clean_hop_by_hop` (canonical form), besides whatever `Connection` names."""


@functools.lru_cache(maxsize=1024)  # names repeat on every request; the bound caps odd ones
def canonical_header_key(name: str) -> str:
    """Canonical form of a header name, as Go's textproto.CanonicalMIMEHeaderKey gives it.

    The first letter and every letter after a hyphen are upper-cased, all other letters lower-cased:
    "content-type" -> "Content-Type", "impersonate-extra-foo" -> "Impersonate-Extra-Foo",
    "TE" -> "Te". A name containing anything but RFC 7230 token characters (a space, a colon,
    non-ASCII) is returned unchanged, as Go does.
    """
    if any(c not in _TOKEN_CHARS for c in name):
        return name
    out = []
    upper = True
    for c in name:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def _connection_tokens(values: Sequence[str]) -> set[str]:
    return {
        canonical_header_key(t.strip(" \t\r\n")) for v in values for t in v.split(",") if t.strip(" \t\r\n")
    }


def clean_hop_by_hop(header: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A copy of `header` without hop-by-hop headers, keys canonicalised (PROTOCOL.md §7.4).

    Removes every header named in `Connection` plus the fixed HOP_BY_HOP_HEADERS. If the input had an
    `Upgrade` header, it is kept and `Connection: upgrade` is set, so upgrade requests and 101 responses
    still work end to end. Keys that canonicalise to the same name are merged in input order.
    """
    merged: dict[str, list[str]] = {}
    for key, values in header.items():
        merged.setdefault(canonical_header_key(key), []).extend(values)
    drop = HOP_BY_HOP_HEADERS | _connection_tokens(merged.get("Connection", []))
    upgrade = merged.get("Upgrade")
    cleaned = {k: v for k, v in merged.items() if k not in drop}
    if upgrade is not None:
        cleaned["Upgrade"] = upgrade
        cleaned["Connection"] = ["upgrade"]
    return cleaned
