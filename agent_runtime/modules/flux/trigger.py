"""The trigger: ask Flux to reconcile a GitRepository now, as `flux reconcile source git` does.

A JSON merge patch sets `metadata.annotations["reconcile.fluxcd.io/requestedAt"]` to a fresh RFC 3339
timestamp; source-controller fetches when the value changes (PROTOCOL.md §17.13: no Receiver, no webhook
Secret, no notification-controller). The patch names the object's uid too: if the GitRepository was
replaced under the same name since the cache saw it, the API server refuses the patch instead of
triggering an object the agent never matched. It runs as the agent (its ServiceAccount impersonated),
bounded in time, retried a few times on 429/5xx and transport errors.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Final

import aiohttp

from agent_runtime.kube import KubeAccess
from agent_runtime.modules.flux.access import identity_headers
from agent_runtime.modules.flux.gitrepositories import GROUP, PLURAL, VERSION, Target
from agent_runtime.spec import ServiceAccountRef

REQUESTED_AT: Final = "reconcile.fluxcd.io/requestedAt"
"""Flux's annotation: any new value makes the controller reconcile the object now."""
FIELD_MANAGER: Final = "gitlab-agent-flux"
"""Who wrote the annotation, in the object's managedFields."""
_RETRYABLE: Final = frozenset({429, 500, 502, 503, 504})
_RETRY_DELAY_S: Final = 0.5


def requested_at(now: datetime) -> str:
    """The annotation value: RFC 3339 with nanosecond precision, as the flux CLI writes it."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def patch_body(target: Target, now: datetime) -> dict[str, object]:
    """The merge patch for one trigger."""
    metadata: dict[str, object] = {"annotations": {REQUESTED_AT: requested_at(now)}}
    if target.uid:
        metadata["uid"] = target.uid
    return {"metadata": metadata}


async def request_reconcile(
    kube: KubeAccess,
    identity: ServiceAccountRef | None,
    target: Target,
    *,
    timeout: float,  # noqa: ASYNC109 - per attempt, for the HTTP client (each retry gets its own)
    attempts: int,
) -> int:
    """Patch `target`; returns the last HTTP status (0 = no answer)."""
    path = (
        f"/apis/{GROUP}/{VERSION}/namespaces/{target.namespace}/{PLURAL}/{target.name}"
        f"?fieldManager={FIELD_MANAGER}"
    )
    status = 0
    for attempt in range(max(attempts, 1)):
        if attempt:
            await asyncio.sleep(_RETRY_DELAY_S * attempt)
        headers = {
            **kube.auth_headers(),
            **identity_headers(identity),
            "Content-Type": "application/merge-patch+json",
            "Accept": "application/json",
        }
        try:
            async with kube.session.patch(
                kube.url(path),
                data=json.dumps(patch_body(target, datetime.now(UTC))),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                status = response.status
                await response.read()
                if status == 401:
                    kube.invalidate_credentials()
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status != 0 and status not in _RETRYABLE:
            return status
    return status
