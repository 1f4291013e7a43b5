"""Request and response header rewriting between the HTTP client and the agent (§7.4, §10.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from multidict import CIMultiDict

from agent_proto.http_headers import clean_hop_by_hop

# Credentials of kas itself, and the browser-session inputs: never forwarded to the agent.
_REQUEST_DROP: Final = frozenset({"Host", "Authorization", "Cookie", "Gitlab-Agent-Id", "X-Csrf-Token"})
_QUERY_DROP: Final = frozenset({"gitlab-agent-id", "gitlab-csrf-token"})
_CORS_PREFIX: Final = "Access-Control-"


def grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(name, value) pairs, as an HTTP library lists them, into name -> values in arrival order."""
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return out


def request_header(client_header: Iterable[tuple[str, str]], via: str) -> dict[str, list[str]]:
    """The header map sent to the agent: canonical keys, hop-by-hop and kas credentials removed, Via added."""
    cleaned = clean_hop_by_hop(grouped(client_header))
    header = {k: v for k, v in cleaned.items() if k not in _REQUEST_DROP}
    header.setdefault("Via", []).append(via)
    return header


def request_query(client_query: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Decoded query parameters minus kas's own (browser-session) parameters."""
    return grouped((k, v) for k, v in client_query if k not in _QUERY_DROP)


def merge_response_header(
    preset: CIMultiDict[str], agent_header: Mapping[str, Sequence[str]], via: str
) -> CIMultiDict[str]:
    """kas's headers (`preset`, e.g. CORS) + the agent's, as GitLab's kas merges them.

    Headers kas already set win; the cluster's CORS headers are dropped; `Vary` values are merged;
    hop-by-hop headers are removed (an `Upgrade` survives, with `Connection: upgrade`); `Via` is appended.
    """
    merged = CIMultiDict(preset)
    for key, values in clean_hop_by_hop(agent_header).items():
        if key.startswith(_CORS_PREFIX) or key == "Server":
            continue
        if key == "Vary":
            present = {v.strip().lower() for item in merged.getall("Vary", []) for v in item.split(",")}
            for value in values:
                if value.strip().lower() not in present:
                    merged.add("Vary", value)
            continue
        if key in merged:
            continue
        for value in values:
            merged.add(key, value)
    merged.add("Via", via)
    return merged
