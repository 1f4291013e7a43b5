"""May this agent patch GitRepositories in a namespace? Asked as the agent, not assumed.

The check is a SelfSubjectAccessReview sent with the same identity the trigger's patch uses: the agent's
ServiceAccount impersonated by name (as the kubernetes_api module does for tunnelled requests), or the
process's own credentials when the worker has no ServiceAccount (the single-agent CLI). So the verdict
is the one the API server applies to the patch itself, which stays the real enforcement: the check only
keeps namespaces the agent may not touch out of the project list and the counts. Verdicts are cached for
`ttl` seconds; an error counts as "no" until the next check.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import aiohttp

from agent_runtime import constants as c
from agent_runtime.clock import Clock
from agent_runtime.kube import KubeAccess
from agent_runtime.modules.flux.gitrepositories import GROUP, PLURAL
from agent_runtime.spec import ServiceAccountRef

log = logging.getLogger(__name__)

_PATH: Final = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_TIMEOUT_S: Final = 10.0


def identity_headers(identity: ServiceAccountRef | None) -> dict[str, str]:
    """Impersonate the agent's ServiceAccount by name (the API server adds its groups)."""
    return {c.IMPERSONATE_USER: identity.username} if identity is not None else {}


class PatchPermission:
    """Cached answers to "may the agent patch gitrepositories (or `resource` of `group`) in namespace N?"."""

    def __init__(
        self,
        kube: KubeAccess,
        identity: ServiceAccountRef | None,
        clock: Clock,
        ttl: float,
        *,
        group: str = GROUP,
        resource: str = PLURAL,
    ) -> None:
        self._group = group
        self._resource = resource
        self._kube = kube
        self._identity = identity
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[str, tuple[float, bool]] = {}

    async def allowed(self, namespace: str) -> bool:
        """The (cached) verdict for `namespace`."""
        now = self._clock.now()
        hit = self._cache.get(namespace)
        if hit is not None and hit[0] > now:
            return hit[1]
        verdict = await self._review(namespace)
        self._cache[namespace] = (now + self._ttl, verdict)
        return verdict

    def forget_others(self, namespaces: set[str]) -> None:
        """Drop verdicts of namespaces no longer of interest (keeps the cache bounded)."""
        self._cache = {ns: v for ns, v in self._cache.items() if ns in namespaces}

    async def _review(self, namespace: str) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "patch",
                    "group": self._group,
                    "resource": self._resource,
                }
            },
        }
        kube = self._kube
        headers = {
            **kube.auth_headers(),
            **identity_headers(self._identity),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            async with kube.session.post(
                kube.url(_PATH),
                data=json.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
            ) as response:
                text = await response.text()
                if response.status not in (200, 201):
                    log.warning("SelfSubjectAccessReview: HTTP %d: %s", response.status, text[:300])
                    return False
                result: Any = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("SelfSubjectAccessReview failed: %s: %s", type(e).__name__, e)
            return False
        status = result.get("status") if isinstance(result, dict) else None
        return isinstance(status, dict) and status.get("allowed") is True
