"""Start-up checks with one clear message each: the CRD is installed, RBAC allows what the operator does,
the peering object exists (created when missing), and the cluster's version for the status.

Exit codes (see __main__): 2 = something must be installed first (CRD), 3 = RBAC is missing,
4 = the API server cannot be reached or refused the credentials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from agent_operator.api import CRD_NAME, GROUP, PLURAL, VERSION
from agent_operator.kube_api import KubeApi
from agent_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

EXIT_MISSING_CRD: Final = 2
EXIT_MISSING_RBAC: Final = 3
EXIT_NO_API: Final = 4


class PreflightError(Exception):
    """A start-up check failed; `exit_code` tells __main__ how to exit."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Permission:
    """One thing the operator must be allowed to do."""

    verb: str
    """RBAC verb."""
    group: str
    """API group ("" = core)."""
    resource: str
    """Resource (plural)."""
    subresource: str = ""
    """Subresource, e.g. status."""
    why: str = ""
    """What it is needed for (shown when missing)."""

    def describe(self, namespace: str | None) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        qualified = f"{resource}.{self.group}" if self.group else resource
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        return f"{self.verb} {qualified} {where}"


REQUIRED: Final = (
    Permission("list", GROUP, PLURAL, why="kopf lists GitLabAgents"),
    Permission("watch", GROUP, PLURAL, why="kopf watches GitLabAgents"),
    Permission("patch", GROUP, PLURAL, why="kopf's finalizer and annotations"),
    Permission("patch", GROUP, PLURAL, "status", why="writing status"),
    Permission("list", "", "secrets", why="watching labelled token Secrets"),
    Permission("watch", "", "secrets", why="watching labelled token Secrets"),
    Permission("patch", "", "secrets", why="labelling referenced Secrets for the watch"),
    Permission("list", "", "configmaps", why="watching labelled CA ConfigMaps"),
    Permission("watch", "", "configmaps", why="watching labelled CA ConfigMaps"),
    Permission("patch", "", "configmaps", why="labelling referenced ConfigMaps for the watch"),
    Permission("create", "", "events", why="Events on GitLabAgents"),
    Permission("impersonate", "", "serviceaccounts", why="acting as each agent's ServiceAccount"),
)
CLUSTER_REQUIRED: Final = (
    Permission("list", "apiextensions.k8s.io", "customresourcedefinitions", why="kopf's resource discovery"),
    Permission("watch", "apiextensions.k8s.io", "customresourcedefinitions", why="kopf's resource discovery"),
    Permission("create", "authorization.k8s.io", "subjectaccessreviews", why="checking CI impersonation"),
)
PEERING_REQUIRED: Final = (
    Permission("get", "kopf.dev", "clusterkopfpeerings", why="kopf peering"),
    Permission("list", "kopf.dev", "clusterkopfpeerings", why="kopf peering"),
    Permission("watch", "kopf.dev", "clusterkopfpeerings", why="kopf peering"),
    Permission("patch", "kopf.dev", "clusterkopfpeerings", why="kopf peering keep-alives"),
)


async def check_api(api: KubeApi) -> str:
    """The API server answers and accepts our credentials; returns its gitVersion."""
    answer = await api.get("/version")
    if answer.status in (401, 403):
        raise PreflightError(
            f"the API server refused the operator's credentials ({answer.reason()})", EXIT_NO_API
        )
    if not answer.ok or not isinstance(answer.body, dict):
        raise PreflightError(f"GET /version failed: {answer.reason()}", EXIT_NO_API)
    return str(answer.body.get("gitVersion", ""))


async def check_crd(api: KubeApi) -> None:
    """The GitLabAgent kind is served (discovery is readable by every authenticated user)."""
    answer = await api.get(f"/apis/{GROUP}/{VERSION}")
    served = (
        answer.ok
        and isinstance(answer.body, dict)
        and any(r.get("name") == PLURAL for r in answer.body.get("resources") or [])
    )
    if answer.status == 404 or (answer.ok and not served):
        raise PreflightError(
            f"the CustomResourceDefinition {CRD_NAME} is not installed: apply crds/ "
            "(kubectl apply -k crds/, or the whole manifests/ base) and start the operator again",
            EXIT_MISSING_CRD,
        )
    if not answer.ok:
        raise PreflightError(f"discovery of {GROUP}/{VERSION} failed: {answer.reason()}", EXIT_NO_API)


async def _allowed(api: KubeApi, permission: Permission, namespace: str | None) -> bool | None:
    attributes = {
        "verb": permission.verb,
        "group": permission.group,
        "resource": permission.resource,
        "subresource": permission.subresource,
        "namespace": namespace or "",
    }
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = await api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    if not answer.ok or not isinstance(answer.body, dict):
        return None  # cannot ask: the real requests will tell
    return bool((answer.body.get("status") or {}).get("allowed"))


SHARDING_REQUIRED: Final = tuple(
    Permission(verb, "coordination.k8s.io", "leases", why="--sharding (member and claim Leases)")
    for verb in ("list", "watch", "create", "update", "patch", "delete", "deletecollection")
)
"""In the namespace of the sharding Leases (manifests/rbac-namespace.yaml)."""


async def check_rbac(api: KubeApi, settings: OperatorSettings) -> None:
    """Every permission the operator needs, in every namespace it handles; one line per missing one."""
    scopes: list[str | None] = [None] if settings.namespaces is None else list(settings.namespaces)
    checks: list[tuple[Permission, str | None]] = [(p, ns) for p in REQUIRED for ns in scopes]
    checks += [(p, None) for p in CLUSTER_REQUIRED]
    if settings.peering is not None and settings.namespaces is None:
        checks += [(p, None) for p in PEERING_REQUIRED]
    if settings.sharding is not None:
        checks += [(p, settings.sharding.namespace) for p in SHARDING_REQUIRED]
    missing: list[str] = []
    for permission, namespace in checks:
        if await _allowed(api, permission, namespace) is False:
            missing.append(f"cannot {permission.describe(namespace)} (needed for {permission.why})")
    if missing:
        raise PreflightError(
            "missing RBAC: " + "; ".join(missing) + ". Grant them to the operator's ServiceAccount "
            "(see manifests/rbac-cluster.yaml)",
            EXIT_MISSING_RBAC,
        )


async def ensure_peering(api: KubeApi, settings: OperatorSettings) -> None:
    """Create the kopf peering object when missing (kopf pauses forever without it)."""
    name = settings.peering
    if name is None:
        return
    targets: list[tuple[str, str, str | None]]
    if settings.namespaces is None:
        targets = [("/apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", None)]
    else:
        targets = [
            (f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", "KopfPeering", ns)
            for ns in settings.namespaces
        ]
    for collection, kind, namespace in targets:
        answer = await api.get(f"{collection}/{name}")
        if answer.ok:
            continue
        metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
        created = await api.post(
            collection, {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": metadata}
        )
        if created.ok or created.status == 409:
            log.info("created the kopf peering object", extra={"peering": name, "kind": kind})
            continue
        if created.status == 404:
            raise PreflightError(
                f"--peering needs the {kind} CustomResourceDefinition (kopf.dev): apply "
                "manifests/kopf-peering-crd.yaml",
                EXIT_MISSING_CRD,
            )
        if created.status == 403:
            raise PreflightError(
                f"missing RBAC: cannot create {kind.lower()}s.kopf.dev named {name} "
                "(create it once by hand, or grant create)",
                EXIT_MISSING_RBAC,
            )
        raise PreflightError(f"creating the {kind} {name} failed: {created.reason()}", EXIT_NO_API)
