"""SubjectAccessReviews: may this agent's ServiceAccount impersonate X? Answers are cached briefly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent_runtime.clock import Clock
from agent_runtime.kube import KubeAccess
from agent_runtime.modules.kubernetes_api.identity import ResourceCheck, service_account_groups
from agent_runtime.spec import ServiceAccountRef

_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
_TIMEOUT_S = 10.0
"""Our bound on one review."""


class AccessReviewError(Exception):
    """The review itself could not be made (API server unreachable, the operator lacks RBAC)."""


@dataclass(frozen=True)
class Verdict:
    """The answer of one review."""

    allowed: bool
    """The ServiceAccount may do it."""
    reason: str
    """The authorizer's reason (may be empty)."""


class AccessReviewer:
    """Asks the API server, with the process's own credentials; caches verdicts for `ttl` seconds."""

    def __init__(self, kube: KubeAccess, clock: Clock, ttl: float) -> None:
        self._kube = kube
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[tuple[ServiceAccountRef, ResourceCheck], tuple[float, Verdict]] = {}

    async def check(self, sa: ServiceAccountRef, check: ResourceCheck) -> Verdict:
        """May `sa` impersonate as described by `check`?"""
        key = (sa, check)
        now = self._clock.now()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        verdict = await self._review(sa, check)
        if len(self._cache) > 4096:  # bounded: drop expired entries, then everything if still large
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) > 4096:
                self._cache.clear()
        self._cache[key] = (now + self._ttl, verdict)
        return verdict

    async def _review(self, sa: ServiceAccountRef, check: ResourceCheck) -> Verdict:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": sa.username,
                "groups": service_account_groups(sa),
                "resourceAttributes": check.attributes(),
            },
        }
        kube = self._kube
        headers = {**kube.auth_headers(), "Content-Type": "application/json", "Accept": "application/json"}
        try:
            async with kube.session.post(
                kube.url(_PATH),
                data=json.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
            ) as response:
                text = await response.text()
                if response.status != 201 and response.status != 200:
                    raise AccessReviewError(f"SubjectAccessReview: HTTP {response.status}: {text[:300]}")
                result: Any = json.loads(text)
        except TimeoutError as e:  # str() of aiohttp's timeout is empty: say what happened
            raise AccessReviewError(f"SubjectAccessReview: no answer within {_TIMEOUT_S:g} s") from e
        except (aiohttp.ClientError, ValueError) as e:
            raise AccessReviewError(f"SubjectAccessReview failed: {e}") from e
        status = result.get("status", {}) if isinstance(result, dict) else {}
        return Verdict(allowed=bool(status.get("allowed")), reason=str(status.get("reason", "")))
