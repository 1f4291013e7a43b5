"""The Leases sharding keeps in the operator's namespace: one member Lease per replica, one claim per
running agent. Each call is one request; transport errors (aiohttp.ClientError, TimeoutError) propagate.

    member  <group>-member-<replica>   spec.holderIdentity = the replica, renewed every few seconds
    claim   <group>-agent-<hash>       spec.holderIdentity = the replica whose worker runs the agent;
                                       annotation agentk.dev/agent = <namespace>/<name>

All carry the label agentk.dev/shard-group=<group> (one informer watches them all) and a role label;
claims also carry their holder as a label, so a replica that stops releases all of its claims at once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from agent_operator.kube_api import ApiResponse, KubeApi, group_path
from agent_runtime.kube import KubeAccess

log = logging.getLogger(__name__)

LEASES_API: Final = "coordination.k8s.io/v1"
GROUP_LABEL: Final = "agentk.dev/shard-group"
ROLE_LABEL: Final = "agentk.dev/shard-role"
HOLDER_LABEL: Final = "agentk.dev/shard-holder"
AGENT_ANNOTATION: Final = "agentk.dev/agent"
MEMBER: Final = "member"
CLAIM: Final = "claim"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


def label_value(text: str) -> str:
    """`text` when it is a valid label value, else a stable hash of it."""
    if _LABEL_VALUE.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def member_lease_name(group: str, member: str) -> str:
    """The member Lease of `member` (readable when the pod name allows it, which it always does)."""
    readable = _NOT_DNS.sub("-", member.lower()).strip("-.")
    if readable and len(readable) <= 200:
        return f"{group}-member-{readable}"
    return f"{group}-member-{hashlib.sha256(member.encode()).hexdigest()[:32]}"


def claim_lease_name(group: str, agent: str) -> str:
    """The claim Lease of agent `<namespace>/<name>` (a hash: the pair may exceed a name's 253 bytes)."""
    return f"{group}-agent-{hashlib.sha256(agent.encode()).hexdigest()[:32]}"


def micro_time(now: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseView:
    """What the sharding needs of one Lease (see `kept_of_lease`)."""

    name: str
    """metadata.name."""
    role: str
    """member or claim."""
    holder: str
    """spec.holderIdentity."""
    version: str
    """metadata.resourceVersion."""
    duration: float
    """spec.leaseDurationSeconds."""
    agent: str
    """The agent of a claim (annotation), "" for a member."""


def kept_of_lease(obj: dict[str, Any]) -> dict[str, Any]:
    """The informer's transform: only what `view` reads (a claim per agent: keep them small)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
            "labels": {ROLE_LABEL: (meta.get("labels") or {}).get(ROLE_LABEL, "")},
            "annotations": {AGENT_ANNOTATION: (meta.get("annotations") or {}).get(AGENT_ANNOTATION, "")},
        },
        "spec": {
            "holderIdentity": spec.get("holderIdentity") or "",
            "leaseDurationSeconds": spec.get("leaseDurationSeconds") or 0,
        },
    }


def view(obj: Any) -> LeaseView:
    """The LeaseView of a (transformed or whole) Lease object."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    return LeaseView(
        name=str(meta.get("name", "")),
        role=str((meta.get("labels") or {}).get(ROLE_LABEL, "")),
        holder=str(spec.get("holderIdentity") or ""),
        version=str(meta.get("resourceVersion", "")),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        agent=str((meta.get("annotations") or {}).get(AGENT_ANNOTATION, "")),
    )


def newer(version: str, than: str) -> bool:
    """Whether resourceVersion `version` is later than `than`. Versions are opaque to clients, but every
    API server backed by etcd hands out increasing integers; anything else counts as newer."""
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than


class LeaseApi:
    """The Lease requests of one replica (`me`) in `namespace`, group `group`.

    This replica's own member Lease (join, renew, leave) has a connection pool of its own; claims and
    reads of the others' member Leases share the second: a renewal queued behind a bring-up's status
    writes, a thousand claims or the reads that confirm a dead member for longer than the Lease lasts
    would make the others take this replica's agents while it still runs them (it fences itself first,
    see members.py, but all of its agents would move for nothing).
    """

    def __init__(self, kube: KubeAccess, namespace: str, group: str, me: str, duration: float) -> None:
        self._member_api = KubeApi(kube)
        self._api = KubeApi(kube)
        self.namespace = namespace
        """Where the Leases live (the operator's namespace)."""
        self.group = group
        """Replicas that share agents; one installation of the operator."""
        self.me = me
        """This replica's identity (the pod name)."""
        self._duration = duration
        self._member = member_lease_name(group, me)

    @property
    def selector(self) -> str:
        """Label selector of every Lease of the group."""
        return f"{GROUP_LABEL}={self.group}"

    def _path(self, name: str | None = None) -> str:
        return group_path(LEASES_API, self.namespace, "leases", name)

    def _lease(self, name: str, role: str, *, agent: str = "", version: str = "") -> dict[str, Any]:
        now = micro_time(datetime.now(UTC))
        labels = {GROUP_LABEL: self.group, ROLE_LABEL: role}
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": labels}
        if role == CLAIM:
            labels[HOLDER_LABEL] = label_value(self.me)
            meta["annotations"] = {AGENT_ANNOTATION: agent}
        if version:
            meta["resourceVersion"] = version
        spec = {
            "holderIdentity": self.me,
            "leaseDurationSeconds": max(1, round(self._duration)),
            "acquireTime": now,
            "renewTime": now,
        }
        return {"apiVersion": LEASES_API, "kind": "Lease", "metadata": meta, "spec": spec}

    # --- membership ---------------------------------------------------------------------------------
    async def join(self) -> bool:
        """Create this replica's member Lease, or renew the one a previous run with this name left."""
        answer = await self._member_api.post(self._path(), self._lease(self._member, MEMBER), decode=False)
        if answer.status == 409:
            return await self.renew()
        return _ok(answer, "create the member Lease")

    async def renew(self) -> bool:
        """Renew this replica's member Lease (False when the API server refused)."""
        patch = {"spec": {"renewTime": micro_time(datetime.now(UTC)), "holderIdentity": self.me}}
        answer = await self._member_api.merge_patch(self._path(self._member), patch, decode=False)
        if answer.status == 404:
            return await self.join()
        return _ok(answer, "renew the member Lease")

    async def leave(self) -> None:
        """Delete this replica's member Lease: the others take its share at once."""
        answer = await self._member_api.request("DELETE", self._path(self._member))
        _ok(answer, "delete the member Lease", 404)

    async def member_version(self, lease: str) -> str | None:
        """The current resourceVersion of member Lease `lease` (None when it is gone)."""
        answer = await self._api.get(self._path(lease))
        if answer.status == 404:
            return None
        if not answer.ok or not isinstance(answer.body, dict):
            raise LeaseError(f"cannot read Lease {lease}: {answer.reason()}")
        return view(answer.body).version

    async def delete_member(self, lease: str, version: str) -> None:
        """Delete the member Lease of a dead replica, unless it changed since `version`."""
        await self._delete(lease, version)

    # --- claims -------------------------------------------------------------------------------------
    async def claim(self, agent: str) -> str | None:
        """Create the claim of `agent`; its resourceVersion, or None when another replica holds it."""
        lease = self._lease(claim_lease_name(self.group, agent), CLAIM, agent=agent)
        answer = await self._api.post(self._path(), lease)
        if answer.status == 409:
            return None
        return _version(answer, "create a claim")

    async def take_over(self, agent: str, version: str) -> str | None:
        """Make the claim of `agent` ours, if it still is at `version`; the new version, or None."""
        name = claim_lease_name(self.group, agent)
        answer = await self._api.request(
            "PUT", self._path(name), self._lease(name, CLAIM, agent=agent, version=version)
        )
        if answer.status in (404, 409):
            return None
        return _version(answer, "take over a claim")

    async def release(self, agent: str, version: str) -> None:
        """Delete the claim of `agent` if it is still at `version` (ours)."""
        await self._delete(claim_lease_name(self.group, agent), version)

    async def release_all(self) -> None:
        """Delete every claim this replica holds (one request): after its workers stopped."""
        selector = f"{self.selector},{ROLE_LABEL}={CLAIM},{HOLDER_LABEL}={label_value(self.me)}"
        answer = await self._api.request("DELETE", f"{self._path()}?labelSelector={quote(selector, safe='')}")
        _ok(answer, "release the claims")

    async def close(self) -> None:
        """Close both connection pools."""
        await self._member_api.close()
        await self._api.close()

    async def _delete(self, name: str, version: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": version}}
        answer = await self._api.request("DELETE", self._path(name), body)
        _ok(answer, f"delete Lease {name}", 404, 409)  # gone already, or changed: not ours to delete


class LeaseError(Exception):
    """The API server answered a Lease request with an error."""


def _ok(answer: ApiResponse, what: str, *fine: int) -> bool:
    if answer.ok or answer.status in fine:
        return True
    log.warning("cannot %s: %s", what, answer.reason())
    return False


def _version(answer: ApiResponse, what: str) -> str | None:
    if answer.ok and isinstance(answer.body, dict):
        return view(answer.body).version
    raise LeaseError(f"cannot {what}: {answer.reason()}")
