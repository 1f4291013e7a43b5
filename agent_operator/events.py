"""Kubernetes Events on GitLabAgents (core/v1, with the resource as involvedObject).

Recording an Event is best effort: a failure is logged and never stops the caller. Messages are built by
the operator from safe parts only (no token can reach them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiohttp

from agent_operator.api import API_VERSION, KIND
from agent_operator.kube_api import KubeApi, core_path
from agent_operator.logs import resource_extra
from agent_operator.status_mapping import EventSpec

log = logging.getLogger(__name__)

COMPONENT: Final = "gitlab-agent-operator"
_MAX_MESSAGE: Final = 1024


@dataclass(frozen=True)
class ObjectRef:
    """The GitLabAgent an Event is about."""

    namespace: str
    """Namespace."""
    name: str
    """Name."""
    uid: str
    """metadata.uid (so the Event follows this incarnation of the resource only)."""


class EventRecorder:
    """Posts Events; `emit()` never raises."""

    def __init__(self, api: KubeApi, instance: str) -> None:
        self._api = api
        self._instance = instance

    async def emit(self, ref: ObjectRef, event: EventSpec, at: datetime | None = None) -> None:
        """Record one Event on `ref`, as happened `at` (default: now)."""
        now = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "reason": event.reason,
            "message": event.message[:_MAX_MESSAGE],
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": f"agentk.dev/{COMPONENT}",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        extra = {**resource_extra(ref.namespace, ref.name), "reason": event.reason}
        try:
            answer = await self._api.post(core_path(ref.namespace, "events"), body, decode=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not record an event: %s", type(exc).__name__, extra=extra)
            return
        if not answer.ok:
            log.warning("could not record an event: %s", answer.reason(), extra=extra)
