"""Receiver mode's objects: one generic Flux Receiver (and its token Secret) per GitRepository in scope.

Upstream agentk's shape (PROTOCOL.md §17.5), with §17.13's problems left out:
- names carry the agent id (`gitlab-<agent id>-<gitrepository>`, at most 63 characters, a digest suffix when
  cut): two agents covering one GitRepository own one Receiver each instead of fighting over one;
- labels name the agent (`agent.gitlab.com/id`, `app.kubernetes.io/managed-by`), so the agent lists and
  removes exactly its own objects; the annotation `agent.gitlab.com/project` names the project as upstream;
- the Secret's token is random (upstream's is empty, which makes the webhook path guessable) and written
  once: the Secret is created when absent, never read, so the agent needs no `get`/`list` on Secrets;
- no `spec.interval` (Flux's default, not upstream's 5 minutes), objects re-applied only when new or
  changed, not on every resourceVersion change.
Both point at the GitRepository with a controller ownerReference (the cluster's garbage collector removes
them with it); the agent also removes them itself when the GitRepository leaves its scope (deleted, URL
changed) while it leads. Every request is sent as the agent (its ServiceAccount impersonated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from agent_runtime.kube import KubeAccess
from agent_runtime.modules.flux.access import identity_headers
from agent_runtime.modules.flux.gitrepositories import GROUP as SOURCE_GROUP
from agent_runtime.modules.flux.gitrepositories import VERSION as SOURCE_VERSION
from agent_runtime.modules.flux.gitrepositories import Target
from agent_runtime.spec import ServiceAccountRef

log = logging.getLogger(__name__)

GROUP: Final = "notification.toolkit.fluxcd.io"
VERSION: Final = "v1"
PLURAL: Final = "receivers"
AGENT_LABEL: Final = "agent.gitlab.com/id"
PROJECT_ANNOTATION: Final = "agent.gitlab.com/project"
MANAGED_BY: Final = ("app.kubernetes.io/managed-by", "gitlab-agent-operator")
FIELD_MANAGER: Final = "gitlab-agent-flux"
NAME_LIMIT: Final = 63
_TIMEOUT_S: Final = 10.0


def receiver_name(agent_id: int, gitrepository: str) -> str:
    """`gitlab-<agent id>-<name>`; cut to 63 characters with a digest of the whole name when longer."""
    name = f"gitlab-{agent_id}-{gitrepository}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: NAME_LIMIT - 9].rstrip('-.')}-{digest}"


def secret_name(receiver: str) -> str:
    """The Receiver's token Secret."""
    return f"{receiver}-token"


def receiver_path(namespace: str, name: str = "") -> str:
    """API path of a namespace's Receivers (or of one)."""
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def _owner(target: Target) -> list[dict[str, Any]]:
    if not target.uid:
        return []
    return [
        {
            "apiVersion": f"{SOURCE_GROUP}/{SOURCE_VERSION}",
            "kind": "GitRepository",
            "name": target.name,
            "uid": target.uid,
            "controller": True,
        }
    ]


def _metadata(name: str, target: Target, agent_id: int) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": target.namespace,
        "labels": {AGENT_LABEL: str(agent_id), MANAGED_BY[0]: MANAGED_BY[1]},
        "ownerReferences": _owner(target),
    }


def receiver_object(target: Target, agent_id: int) -> dict[str, Any]:
    """The Receiver applied for `target`."""
    name = receiver_name(agent_id, target.name)
    metadata = _metadata(name, target, agent_id)
    metadata["annotations"] = {PROJECT_ANNOTATION: target.project}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Receiver",
        "metadata": metadata,
        "spec": {
            "type": "generic",
            "resources": [
                {
                    "apiVersion": f"{SOURCE_GROUP}/{SOURCE_VERSION}",
                    "kind": "GitRepository",
                    "name": target.name,
                }
            ],
            "secretRef": {"name": secret_name(name)},
        },
    }


def secret_object(target: Target, agent_id: int) -> dict[str, Any]:
    """The token Secret created (once) for `target`'s Receiver."""
    name = secret_name(receiver_name(agent_id, target.name))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, target, agent_id),
        "stringData": {"token": secrets.token_hex(32)},
    }


@dataclass
class AgentRequests:
    """HTTP requests to the API server as the agent."""

    kube: KubeAccess
    identity: ServiceAccountRef | None

    async def send(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """(HTTP status, JSON answer or None); status 0 = no answer."""
        kube = self.kube
        headers = {**kube.auth_headers(), **identity_headers(self.identity), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            async with kube.session.request(
                method,
                kube.url(path),
                data=json.dumps(body) if body is not None else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
            ) as response:
                text = await response.text()
                if response.status == 401:
                    kube.invalidate_credentials()
                try:
                    return response.status, json.loads(text) if text else None
                except ValueError:
                    return response.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def webhook_path(self, namespace: str, receiver: str) -> str:
        """The Receiver's status.webhookPath ("" when absent or unreadable)."""
        status, obj = await self.send("GET", receiver_path(namespace, receiver))
        if status != 200 or not isinstance(obj, dict):
            return ""
        path = (obj.get("status") or {}).get("webhookPath")
        return path if isinstance(path, str) else ""


@dataclass
class ReceiverSync:
    """Keeps one agent's Receivers equal to its scope, for one leadership."""

    requests: AgentRequests
    agent_id: int
    applied: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(namespace, Receiver) → (GitRepository uid, project) last applied."""
    namespaces: set[str] = field(default_factory=set)
    """Namespaces that may hold this agent's Receivers (swept on each sync until none is left)."""
    errors: int = 0
    """Requests that failed in the last sync."""
    statuses: set[int] = field(default_factory=set)
    """Their HTTP statuses (0 = no answer)."""

    async def sync(self, targets: tuple[Target, ...]) -> None:
        """Create or update the Receivers of `targets`; delete this agent's others in the namespaces swept."""
        self.errors = 0
        self.statuses = set()
        desired = {(t.namespace, receiver_name(self.agent_id, t.name)): t for t in targets}
        for namespace in sorted(self.namespaces | {ns for ns, _ in desired}):
            present = await self._list(namespace)
            if present is None:
                continue
            for name in sorted(present):
                if (namespace, name) not in desired:
                    await self._delete(namespace, name)
            for key in [k for k in self.applied if k[0] == namespace and k[1] not in present]:
                del self.applied[key]  # gone behind our back: apply it again
            if not any(ns == namespace for ns, _ in desired):
                self.namespaces.discard(namespace)
        for key, target in sorted(desired.items()):
            if self.applied.get(key) != (target.uid, target.project) and await self._apply(target):
                self.applied[key] = (target.uid, target.project)
                self.namespaces.add(target.namespace)

    async def _list(self, namespace: str) -> set[str] | None:
        selector = urllib.parse.quote(f"{AGENT_LABEL}={self.agent_id}")
        status, answer = await self.requests.send(
            "GET", f"{receiver_path(namespace)}?labelSelector={selector}"
        )
        if status != 200 or not isinstance(answer, dict):
            self._failed("list Receivers", namespace, status)
            return None
        items = answer.get("items") or []
        return {str(i["metadata"]["name"]) for i in items if isinstance(i, dict) and i.get("metadata")}

    async def _apply(self, target: Target) -> bool:
        receiver = receiver_object(target, self.agent_id)
        secret = secret_object(target, self.agent_id)
        send = self.requests.send
        status, _ = await send("POST", f"/api/v1/namespaces/{target.namespace}/secrets", secret)
        if status not in (201, 409):  # 409: it exists, its token stays
            self._failed("create the Receiver's Secret", target.namespace, status)
            return False
        name = receiver["metadata"]["name"]
        status, _ = await send(
            "PATCH",
            f"{receiver_path(target.namespace, name)}?fieldManager={FIELD_MANAGER}&force=true",
            receiver,
            "application/apply-patch+yaml",  # JSON is YAML
        )
        if status not in (200, 201):
            self._failed(f"apply Receiver {name}", target.namespace, status)
            return False
        return True

    async def _delete(self, namespace: str, name: str) -> None:
        for path in (
            receiver_path(namespace, name),
            f"/api/v1/namespaces/{namespace}/secrets/{secret_name(name)}",
        ):
            status, _ = await self.requests.send("DELETE", path)
            if status not in (200, 202, 404):
                self._failed(f"delete {path.rsplit('/', 2)[-2]} {name}", namespace, status)
        self.applied.pop((namespace, name), None)

    def _failed(self, what: str, namespace: str, status: int) -> None:
        self.errors += 1
        self.statuses.add(status)
        log.warning("Unable to %s in namespace %s: HTTP %s", what, namespace, status or "error")
