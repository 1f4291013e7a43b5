"""A burst of token Secret reads against the real API server (agent_operator/secret_batches.py): one list of
their namespace answers most of them, each read gets the Secret a GET would have given (or None for one
that does not exist), a single read stays a GET, a namespace listed one page only and a list given up
fall back to GETs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from agent_operator.kube_api import ApiResponse, KubeApi, core_path
from agent_operator.mapping import ALLOWED_AGENTS_ANNOTATION, SourceKind, SourceRef, opted_in
from agent_operator.secret_batches import BATCH_FROM, LISTS_IN_FLIGHT
from agent_operator.secret_prefetch import PREFETCH_MAX_FACTOR
from agent_operator.sources import Sources
from agent_runtime.kube import KubeAccess, load_kube_access
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration

TOKENS = 30
TOKEN_NAMES: Final = tuple(f"token-{i}" for i in range(TOKENS))
"""The opted-in token Secrets the `namespace` fixture creates."""


class CountingApi(KubeApi):
    """KubeApi that records the path of every GET (reads and list pages)."""

    def __init__(self, kube: KubeAccess) -> None:
        super().__init__(kube)
        self.gets: list[str] = []

    async def get(self, path: str) -> ApiResponse:
        self.gets.append(path)
        return await super().get(path)


Api = TypeVar("Api", bound=CountingApi)


def _create_secrets(
    k8s_cluster: LocalCluster, namespace: str, names: Sequence[str], opted_in_to: str
) -> None:
    for name in names:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "annotations": {ALLOWED_AGENTS_ANNOTATION: opted_in_to}},
            "data": {"token": base64.b64encode(f"token of {name}".encode()).decode()},
        }
        status, info = k8s_cluster.request("POST", core_path(namespace, "secrets"), secret)
        assert status == 201, info


@pytest.fixture
def namespace(k8s_cluster: LocalCluster, request: pytest.FixtureRequest) -> str:
    name = f"batches-{abs(hash(request.node.name)) % 10**8}"
    k8s_cluster.create_namespace(name)
    _create_secrets(k8s_cluster, name, TOKEN_NAMES, "agent")
    return name


@pytest.fixture
def crowded(k8s_cluster: LocalCluster, namespace: str) -> str:
    """`namespace` with 100 Secrets of others beside the tokens: more than a burst's page holds."""
    _create_secrets(k8s_cluster, namespace, [f"other-{i}" for i in range(100)], "someone-else")
    return namespace


@contextlib.asynccontextmanager
async def _sources(
    admin_kubeconfig: Path, namespace: str, api_type: type[Api]
) -> AsyncIterator[tuple[Sources, Api]]:
    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    api = api_type(kube)
    try:
        yield Sources(api, [namespace]), api
    finally:
        await api.close()
        await kube.close()


def _admit(obj: Any) -> bool:
    return opted_in(obj, "agent")


def _secret_ref(namespace: str, name: str) -> SourceRef:
    return SourceRef(SourceKind.SECRET, namespace, name)


async def _read_all(sources: Sources, namespace: str, names: Sequence[str]) -> list[Any]:
    async with asyncio.timeout(30):
        return await asyncio.gather(*(sources.read(_secret_ref(namespace, name), _admit) for name in names))


def _token(obj: Any) -> str:
    return base64.b64decode(obj["data"]["token"]).decode()


def _lists(api: CountingApi, namespace: str) -> list[str]:
    return [path for path in api.gets if path.startswith(core_path(namespace, "secrets") + "?")]


async def test_a_burst_of_reads_is_answered_by_a_few_lists(admin_kubeconfig: Path, namespace: str) -> None:
    names = [*TOKEN_NAMES, "missing-1", "missing-2"]
    async with _sources(admin_kubeconfig, namespace, CountingApi) as (sources, api):
        found = await _read_all(sources, namespace, names)
    assert [_token(obj) for obj in found[:TOKENS]] == [f"token of {name}" for name in names[:TOKENS]]
    assert found[TOKENS:] == [None, None]  # not in a whole list: they do not exist
    lists = _lists(api, namespace)
    assert 1 <= len(lists) <= 3, api.gets
    assert len(api.gets) - len(lists) == BATCH_FROM, api.gets  # the first reads GET, the rest joined lists


async def test_a_single_read_is_a_get(admin_kubeconfig: Path, namespace: str) -> None:
    async with _sources(admin_kubeconfig, namespace, CountingApi) as (sources, api):
        (found,) = await _read_all(sources, namespace, ["token-7"])
    assert _token(found) == "token of token-7"
    assert api.gets == [core_path(namespace, "secrets", "token-7")]


async def test_a_crowded_namespace_is_listed_one_page_and_the_rest_read_one_by_one(
    admin_kubeconfig: Path, crowded: str
) -> None:
    namespace, names = crowded, TOKEN_NAMES
    async with _sources(admin_kubeconfig, namespace, CountingApi) as (sources, api):
        found = await _read_all(sources, namespace, names)
    assert [_token(obj) for obj in found] == [f"token of {name}" for name in names]
    lists = _lists(api, namespace)
    # One list for the reads past the first GETs, one page of at most four Secrets per read it answers:
    # 130 Secrets are more than that, so the rest is not listed, and the reads the page missed GET.
    wanted = TOKENS - BATCH_FROM
    assert len(lists) == 1, lists
    assert f"limit={PREFETCH_MAX_FACTOR * wanted}" in lists[0]
    assert "continue" not in lists[0]
    page = set(sorted([*names, *(f"other-{i}" for i in range(100))])[: PREFETCH_MAX_FACTOR * wanted])
    missed = [name for name in names[BATCH_FROM:] if name not in page]  # the API server lists by name
    assert missed
    assert len(api.gets) - len(lists) == BATCH_FROM + len(missed)


async def test_the_reads_of_a_list_given_up_get_one_by_one(admin_kubeconfig: Path, namespace: str) -> None:
    names = [f"token-{i}" for i in range(10)]
    async with _sources(admin_kubeconfig, namespace, CountingApi) as (sources, api), asyncio.timeout(30):
        reads = [
            asyncio.create_task(
                sources.read(SourceRef(SourceKind.SECRET, namespace, name), _admit), name=name
            )
            for name in names
        ]
        await asyncio.sleep(0)  # every read has begun: the first GET, the next one leads a list
        leader = reads[BATCH_FROM]
        leader.cancel()
        done = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(done[BATCH_FROM], asyncio.CancelledError)
    rest = [obj for i, obj in enumerate(done) if i != BATCH_FROM]
    assert [_token(obj) for obj in rest] == [f"token of {n}" for i, n in enumerate(names) if i != BATCH_FROM]
    assert not _lists(api, namespace)
    assert len(api.gets) == len(names) - 1


class GatedApi(CountingApi):
    """CountingApi whose reads wait at the gate until the test opens it (the API server answers them
    then); `listing` counts the lists at the gate."""

    def __init__(self, kube: KubeAccess) -> None:
        super().__init__(kube)
        self.gate = asyncio.Event()
        self.listing = 0

    async def get(self, path: str) -> ApiResponse:
        is_list = "?" in path
        self.listing += is_list
        try:
            await self.gate.wait()
        finally:
            self.listing -= is_list
        return await super().get(path)


async def test_reads_that_come_while_a_list_is_in_flight_have_a_list_of_their_own(
    admin_kubeconfig: Path, namespace: str
) -> None:
    # Eight reads make a page of 32 Secrets: the namespace's 30 tokens are one page, a whole list.
    waves = [
        [f"token-{i}" for i in range(start, end)] for start, end in ((0, 4), (4, 12), (12, 20), (20, 28))
    ]
    async with (
        _sources(admin_kubeconfig, namespace, GatedApi) as (sources, api),
        asyncio.TaskGroup() as group,
        asyncio.timeout(30),
    ):
        reads = []
        for wave in waves:
            reads += [group.create_task(sources.read(_secret_ref(namespace, n), _admit)) for n in wave]
            for _ in range(5):
                await asyncio.sleep(0)  # this wave's reads are in: they GET or gather for a list
        # The first wave GETs (BATCH_FROM reads); the second lists, the third lists beside it, the
        # fourth gathers until one of those is done.
        assert api.listing == LISTS_IN_FLIGHT
        api.gate.set()
        found = await asyncio.gather(*reads)
    names = [name for wave in waves for name in wave]
    assert [_token(obj) for obj in found] == [f"token of {name}" for name in names]
    assert len(_lists(api, namespace)) == 3, api.gets
    assert len(api.gets) - 3 == BATCH_FROM, api.gets


async def test_a_batch_of_fewer_reads_than_a_list_is_worth_gets(
    admin_kubeconfig: Path, namespace: str
) -> None:
    names = [f"token-{i}" for i in range(BATCH_FROM + 2)]
    async with _sources(admin_kubeconfig, namespace, GatedApi) as (sources, api), asyncio.timeout(30):
        reads = [asyncio.create_task(sources.read(_secret_ref(namespace, n), _admit)) for n in names]
        for _ in range(5):
            await asyncio.sleep(0)
        api.gate.set()
        found = await asyncio.gather(*reads)
    assert [_token(obj) for obj in found] == [f"token of {name}" for name in names]
    assert not _lists(api, namespace), api.gets  # the two past the first GETs were too few to list
    assert len(api.gets) == len(names)


async def test_a_namespace_a_list_found_crowded_is_not_listed_again_for_a_while(
    admin_kubeconfig: Path, crowded: str
) -> None:
    namespace, names = crowded, TOKEN_NAMES
    async with _sources(admin_kubeconfig, namespace, CountingApi) as (sources, api):
        first = await _read_all(sources, namespace, names[:15])
        assert len(_lists(api, namespace)) == 1  # its page of 44 Secrets counted 130 in the namespace
        gets_before = len(api.gets)
        second = await _read_all(sources, namespace, names[15:])
    assert [_token(obj) for obj in first + second] == [f"token of {name}" for name in names]
    assert len(_lists(api, namespace)) == 1, api.gets  # a page of 44 would miss most again: they GET
    assert len(api.gets) - gets_before == len(names[15:])
