"""Deferred watch labels (agent_operator/deferred_labels.py): they wait for the status writes (at most
LABEL_YIELD_S), go on the version read or report a change, and a failed write is tried again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from agent_operator import deferred_labels
from agent_operator.deferred_labels import DeferredLabels
from agent_operator.kube_api import ApiResponse, KubeApi
from agent_operator.mapping import SourceKind, SourceRef
from tests.security.budget_support import eventually

pytestmark = pytest.mark.asyncio

A = SourceRef(SourceKind.SECRET, "team-a", "token-a")
B = SourceRef(SourceKind.SECRET, "team-a", "token-b")


class ScriptedApi:
    """Answers each merge patch with the next status of `answers` (200 with a new version)."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.patches: list[tuple[str, Any]] = []

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        del decode
        self.patches.append((path, body))
        status = self.answers.pop(0) if self.answers else 200
        return ApiResponse(status, {"metadata": {"resourceVersion": "99"}} if status == 200 else {})


class Recorded:
    def __init__(self) -> None:
        self.labelled: list[tuple[SourceRef, str]] = []
        self.changed: list[SourceRef] = []


def _labels(api: ScriptedApi, recorded: Recorded) -> DeferredLabels:
    return DeferredLabels(
        cast(KubeApi, api),
        {"agentk.dev/watched": "true"},
        lambda source, version: recorded.labelled.append((source, version)),
        recorded.changed.append,
    )


def _obj(version: str) -> dict[str, Any]:
    return {"metadata": {"name": "x", "resourceVersion": version}, "data": {"token": "dA=="}}


class Gate:
    """A `quiet` that returns only once opened (the status writes are done)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self) -> None:
        await self.open.wait()


@pytest.fixture
async def running() -> AsyncIterator[tuple[ScriptedApi, Recorded, DeferredLabels, Gate]]:
    api, recorded, gate = ScriptedApi(), Recorded(), Gate()
    labels = _labels(api, recorded)
    task = asyncio.create_task(labels.run(gate), name="test-deferred-labels")
    yield api, recorded, labels, gate
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_labels_wait_for_the_status_writes_then_go_on_the_version_read(
    running: tuple[ScriptedApi, Recorded, DeferredLabels, Gate],
) -> None:
    api, recorded, labels, gate = running
    labels.add(A, _obj("7"))
    await asyncio.sleep(0.1)
    assert api.patches == []
    assert labels.get(A) == _obj("7")  # answered as read meanwhile
    gate.open.set()
    await eventually(lambda: recorded.labelled == [(A, "99")])
    assert api.patches == [
        (
            "/api/v1/namespaces/team-a/secrets/token-a",
            {"metadata": {"labels": {"agentk.dev/watched": "true"}, "resourceVersion": "7"}},
        )
    ]
    assert labels.get(A) is None
    assert len(labels) == 0


async def test_a_label_stops_yielding_after_its_deadline(
    running: tuple[ScriptedApi, Recorded, DeferredLabels, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, recorded, labels, _ = running
    monkeypatch.setattr(deferred_labels, "LABEL_YIELD_S", 0.2)
    labels.add(A, _obj("7"))
    await eventually(lambda: recorded.labelled == [(A, "99")], within=5)


@pytest.mark.parametrize("status", [404, 409])
async def test_a_secret_gone_or_changed_since_its_read_is_a_change(status: int) -> None:
    api, recorded, gate = ScriptedApi(status), Recorded(), Gate()
    gate.open.set()
    labels = _labels(api, recorded)
    labels.add(A, _obj("7"))
    task = asyncio.create_task(labels.run(gate), name="test-deferred-labels")
    try:
        await eventually(lambda: recorded.changed == [A])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert recorded.labelled == []
    assert len(labels) == 0


async def test_a_failed_write_is_tried_again_and_a_discarded_one_never_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deferred_labels, "RETRY_S", 0.05)
    api, recorded, gate = ScriptedApi(503), Recorded(), Gate()
    gate.open.set()
    labels = _labels(api, recorded)
    labels.add(A, _obj("7"))
    labels.add(B, _obj("8"))
    labels.discard(B)  # its agent went before the label
    task = asyncio.create_task(labels.run(gate), name="test-deferred-labels")
    try:
        await eventually(lambda: recorded.labelled == [(A, "99")])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [path for path, _ in api.patches] == ["/api/v1/namespaces/team-a/secrets/token-a"] * 2
