"""Finding 11, the read path: a Secret that has not opted in to the agent reading it is read once and
left alone: never labelled for the watch (so never cached with its data, and never changed by the
operator on a tenant's say-so). An opted-in one is labelled after its agent started, on the version read."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from agent_operator.kube_api import ApiResponse, KubeApi
from agent_operator.mapping import ALLOWED_AGENTS_ANNOTATION, SourceKind, SourceRef, opted_in
from agent_operator.sources import SourceError, Sources
from tests.security.budget_support import eventually

SOURCE = SourceRef(SourceKind.SECRET, "team-a", "deployer-token")


class RecordingApi:
    """The two calls Sources.read makes, answered from a fixed object."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        self.calls: list[tuple[str, str]] = []
        self.patches: list[Any] = []

    async def get(self, path: str) -> ApiResponse:
        self.calls.append(("GET", path))
        return ApiResponse(self.status, self.body)

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        del decode
        self.calls.append(("PATCH", path))
        self.patches.append(body)
        labelled = dict(self.body)
        labelled["metadata"] = {**self.body["metadata"], **body["metadata"]}
        return ApiResponse(200, labelled)


def _secret(annotations: dict[str, str]) -> dict[str, Any]:
    meta = {"name": SOURCE.name, "namespace": SOURCE.namespace, "annotations": annotations}
    return {"metadata": meta, "type": "Opaque", "data": {"token": "c2VjcmV0"}}


def _sources(api: RecordingApi) -> Sources:
    return Sources(cast(KubeApi, api), ["team-a"])


async def test_a_secret_that_did_not_opt_in_is_not_labelled() -> None:
    api = RecordingApi(200, _secret({"kubectl.kubernetes.io/last-applied-configuration": "{}"}))

    found = await _sources(api).read(SOURCE, lambda obj: opted_in(obj, "mallory"))

    assert [verb for verb, _ in api.calls] == ["GET"]
    assert found is not None
    assert found["metadata"].get("annotations") is None  # the cache's view: no other annotations


async def test_an_opted_in_secret_is_labelled_for_the_watch_once_read() -> None:
    secret = _secret({ALLOWED_AGENTS_ANNOTATION: "mallory"})
    secret["metadata"]["resourceVersion"] = "41"
    api = RecordingApi(200, secret)
    sources = _sources(api)

    found = await sources.read(SOURCE, lambda obj: opted_in(obj, "mallory"))
    again = await sources.read(SOURCE, lambda obj: opted_in(obj, "mallory"))  # before the label: no read

    assert [verb for verb, _ in api.calls] == ["GET"]
    assert found is not None
    assert again is not None
    assert again["data"] == found["data"]

    async def quiet() -> None:
        return None

    labeller = asyncio.create_task(sources.label_deferred(quiet), name="test-labels")
    try:
        await eventually(lambda: len(api.calls) == 2)
    finally:
        labeller.cancel()
        await asyncio.gather(labeller, return_exceptions=True)
    assert [verb for verb, _ in api.calls] == ["GET", "PATCH"]
    # The label goes on the version that was read and admitted, or not at all.
    assert api.patches == [{"metadata": {"labels": {"agentk.dev/watched": "true"}, "resourceVersion": "41"}}]


async def test_a_missing_secret_is_none_and_a_refusal_is_an_error() -> None:
    assert await _sources(RecordingApi(404, {})).read(SOURCE, lambda obj: True) is None
    with pytest.raises(SourceError) as refused:
        await _sources(RecordingApi(403, {"message": "forbidden"})).read(SOURCE, lambda obj: True)
    assert refused.value.status == 403


async def test_without_admit_the_first_read_is_the_label_patch() -> None:
    api = RecordingApi(200, _secret({}))
    await _sources(api).read(SOURCE)
    assert [verb for verb, _ in api.calls] == ["PATCH"]


async def test_a_secret_labelled_by_an_earlier_run_is_read_not_patched() -> None:
    """The cache holds it without data (nobody referred to it since the operator started): one GET,
    which also checks the opt-in, and no second request to label what is labelled."""
    api = RecordingApi(200, _secret({ALLOWED_AGENTS_ANNOTATION: "mallory"}))
    sources = _sources(api)
    cached = {"metadata": {"name": SOURCE.name, "namespace": SOURCE.namespace}, "dataWithheld": True}
    sources._cached = lambda source: cached if source == SOURCE else None  # type: ignore[method-assign]

    found = await sources.read(SOURCE, lambda obj: opted_in(obj, "mallory"))

    assert [verb for verb, _ in api.calls] == ["GET"]
    assert found is not None
    assert SOURCE in sources.referenced()
