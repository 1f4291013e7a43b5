"""A first start's token Secrets from one list per namespace (agent_operator/secret_prefetch.py), and
Sources.read handing each out once instead of a GET."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from agent_operator import sources as sources_module
from agent_operator.kube_api import ApiResponse, KubeApi
from agent_operator.mapping import ALLOWED_AGENTS_ANNOTATION, SourceKind, SourceRef, opted_in
from agent_operator.secret_prefetch import PREFETCH_MIN_SECRETS, prefetch_secrets
from agent_operator.sources import Sources

pytestmark = pytest.mark.asyncio


def _secret(namespace: str, name: str) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": namespace,
        "resourceVersion": "5",
        "annotations": {
            ALLOWED_AGENTS_ANNOTATION: name,
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        },
    }
    return {"metadata": meta, "type": "Opaque", "data": {"token": "dA=="}}


class ListingApi:
    """Lists `secrets` per namespace in pages of `page` (with remainingItemCount), GETs them one by one."""

    def __init__(self, secrets: dict[str, list[dict[str, Any]]], page: int = 500) -> None:
        self.secrets, self.page = secrets, page
        self.calls: list[str] = []

    async def get(self, path: str) -> ApiResponse:
        self.calls.append(path)
        parts = urlsplit(path)
        namespace = parts.path.split("/")[4]
        items = self.secrets.get(namespace, [])
        if not parts.path.endswith("/secrets"):
            name = parts.path.rsplit("/", 1)[1]
            found = [s for s in items if s["metadata"]["name"] == name]
            return ApiResponse(200, found[0]) if found else ApiResponse(404, {})
        start = int(parse_qs(parts.query).get("continue", ["0"])[0])
        chunk, rest = items[start : start + self.page], items[start + self.page :]
        meta: dict[str, Any] = {"continue": str(start + self.page)} if rest else {}
        if rest:
            meta["remainingItemCount"] = len(rest)
        return ApiResponse(200, {"items": chunk, "metadata": meta})


def _refs(namespace: str, count: int) -> set[SourceRef]:
    return {SourceRef(SourceKind.SECRET, namespace, f"token-{i}") for i in range(count)}


async def test_a_namespace_with_many_referred_secrets_is_listed_once_and_only_those_kept() -> None:
    big = [_secret("big", f"token-{i}") for i in range(40)] + [_secret("big", "unrelated")]
    few = [_secret("few", f"token-{i}") for i in range(3)]
    api = ListingApi({"big": big, "few": few}, page=25)
    wanted = _refs("big", 40) | _refs("few", 3)

    found = await prefetch_secrets(cast(KubeApi, api), wanted)

    assert set(found) == _refs("big", 40)  # "few" has fewer than PREFETCH_MIN_SECRETS: read one by one
    assert [urlsplit(c).path for c in api.calls] == ["/api/v1/namespaces/big/secrets"] * 2  # two pages
    assert PREFETCH_MIN_SECRETS > 3


async def test_a_namespace_of_mostly_other_secrets_stops_after_its_first_page() -> None:
    others = [_secret("crowded", f"other-{i}") for i in range(200)]
    mine = [_secret("crowded", f"token-{i}") for i in range(20)]
    api = ListingApi({"crowded": mine + others}, page=10)

    found = await prefetch_secrets(cast(KubeApi, api), _refs("crowded", 20))

    assert len(api.calls) == 1
    assert set(found) == {SourceRef(SourceKind.SECRET, "crowded", f"token-{i}") for i in range(10)}


async def _prefetched(api: ListingApi) -> tuple[Sources, list[SourceRef]]:
    """Sources of 20 GitLabAgents listed at start in namespace `big`, its Secrets listed."""
    sources = Sources(cast(KubeApi, api), ["big"])
    refs = sorted(_refs("big", 20))
    sources.expect({ref: frozenset({ref.name}) for ref in refs})
    await sources.prefetch()
    return sources, refs


async def test_a_prefetched_secret_is_read_once_without_a_get_and_keeps_only_the_opt_in() -> None:
    api = ListingApi({"big": [_secret("big", f"token-{i}") for i in range(20)]})
    sources, refs = await _prefetched(api)
    listed = len(api.calls)

    first = await sources.read(refs[0], lambda obj: opted_in(obj, refs[0].name))
    assert len(api.calls) == listed  # no GET
    assert first is not None
    assert first["metadata"]["annotations"] == {ALLOWED_AGENTS_ANNOTATION: refs[0].name}

    refused = await sources.read(refs[1], lambda obj: opted_in(obj, "someone-else"))
    assert refused is not None
    assert len(api.calls) == listed
    again = await sources.read(refs[1], lambda obj: opted_in(obj, "someone-else"))  # handed out once
    assert again is not None
    assert len(api.calls) == listed + 1


async def test_what_is_not_read_in_time_is_dropped_by_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sharded replica runs a share of the agents: the Secrets of the others are never read here."""
    api = ListingApi({"big": [_secret("big", f"token-{i}") for i in range(20)]})
    sources, refs = await _prefetched(api)
    listed = len(api.calls)
    sources.keep_data_of(frozenset(refs), frozenset())  # in time: all kept
    assert await sources.read(refs[0], lambda obj: True) is not None
    assert len(api.calls) == listed

    monkeypatch.setattr(sources_module, "PREFETCH_KEPT_S", -1.0)
    await sources.prefetch()  # listed again, kept for no time at all
    listed = len(api.calls)
    sources.keep_data_of(frozenset(refs), frozenset())
    assert await sources.read(refs[1], lambda obj: True) is not None
    assert len(api.calls) == listed + 1  # read with a GET: the list's copy was dropped
