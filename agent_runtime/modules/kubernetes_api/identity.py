"""Who a tunnelled request acts as (PROTOCOL.md §7.5, plus the operator's per-agent ServiceAccount).

Standalone (no ServiceAccount) we follow agentk's table: own credentials; kas's impersonation config; or
the client's own Impersonate-* headers; both at once = nested impersonation, rejected. Whatever kas asks
to impersonate must also pass the process's ImpersonationPolicy (only `gitlab:` names by default, never
`system:`), because kas may be a tenant's own server.

With a ServiceAccount the worker's "REST config" impersonates that account, so:
  - plain request              → impersonate the ServiceAccount;
  - client Impersonate-* headers → nested impersonation, rejected (as agentk with --as);
  - kas's impersonation config  → allowed only if the ServiceAccount itself may impersonate every part
    of that identity (SubjectAccessReview, cached briefly); then the identity is impersonated directly.
    Otherwise the HTTP client gets a 403 Status saying which part was refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_proto.flavor import ImpersonationConfig
from agent_runtime import constants as c
from agent_runtime.policy import ImpersonationPolicy
from agent_runtime.spec import ServiceAccountRef

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def service_account_groups(sa: ServiceAccountRef) -> list[str]:
    """The groups Kubernetes gives a ServiceAccount's tokens."""
    return ["system:serviceaccounts", f"system:serviceaccounts:{sa.namespace}", "system:authenticated"]


def policy_refusal(imp: ImpersonationConfig, policy: ImpersonationPolicy) -> str | None:
    """Why the process's policy refuses to impersonate `imp` (a user name or group outside the allowed
    prefixes, or any `system:` one), or None when it may be tried (RBAC still decides)."""
    names = [("user", imp.username)] if imp.username else []
    names += [("group", group) for group in imp.groups]
    for kind, name in names:
        if name.startswith(policy.refused_prefixes):
            return f'{kind} "{name}" is never impersonated for kas (refused prefix)'
        if not name.startswith(policy.allowed_prefixes):
            allowed = ", ".join(policy.allowed_prefixes)
            return f'{kind} "{name}" is outside the operator\'s impersonation prefixes ({allowed})'
    return None


def impersonation_headers(imp: ImpersonationConfig) -> list[tuple[str, str]]:
    """Impersonate-* headers for an identity."""
    out: list[tuple[str, str]] = []
    if imp.username:
        out.append((c.IMPERSONATE_USER, imp.username))
    if imp.uid:
        out.append((c.IMPERSONATE_UID, imp.uid))
    out += [(c.IMPERSONATE_GROUP, g) for g in imp.groups]
    for key, values in imp.extra.items():
        out += [(c.IMPERSONATE_EXTRA_PREFIX + _escape_extra_key(key), v) for v in values]
    return out


def _escape_extra_key(key: str) -> str:
    # Kubernetes percent-encodes extra keys in header names (legal header token characters are kept).
    allowed = set("!#$&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return "".join(ch if ch in allowed else "".join(f"%{b:02X}" for b in ch.encode()) for ch in key)


@dataclass(frozen=True)
class ResourceCheck:
    """One `impersonate` permission to verify (a SubjectAccessReview's resourceAttributes)."""

    resource: str
    """users, groups, uids, serviceaccounts or userextras."""
    name: str
    """The impersonated value."""
    group: str = ""
    """API group: "" for users/groups/serviceaccounts, authentication.k8s.io for uids/userextras."""
    subresource: str = ""
    """The extra key for userextras."""
    namespace: str = ""
    """Namespace of an impersonated ServiceAccount."""

    def describe(self) -> str:
        """Human text for the 403 message."""
        if self.resource == "userextras":
            return f'user extra "{self.subresource}"="{self.name}"'
        if self.resource == "serviceaccounts":
            return f'serviceaccount "{self.namespace}/{self.name}"'
        return f'{self.resource.removesuffix("s")} "{self.name}"'

    def attributes(self) -> dict[str, str]:
        """resourceAttributes of the review."""
        attrs = {"verb": "impersonate", "group": self.group, "resource": self.resource, "name": self.name}
        if self.subresource:
            attrs["subresource"] = self.subresource
        if self.namespace:
            attrs["namespace"] = self.namespace
        return attrs


def checks_for(imp: ImpersonationConfig) -> list[ResourceCheck]:
    """Every permission needed to impersonate `imp` (as the API server's impersonation filter checks)."""
    checks: list[ResourceCheck] = []
    if imp.username.startswith(SERVICE_ACCOUNT_PREFIX) and imp.username.count(":") == 3:
        _, _, ns, name = imp.username.split(":")
        checks.append(ResourceCheck("serviceaccounts", name, namespace=ns))
    elif imp.username:
        checks.append(ResourceCheck("users", imp.username))
    checks += [ResourceCheck("groups", g) for g in imp.groups]
    if imp.uid:
        checks.append(ResourceCheck("uids", imp.uid, group="authentication.k8s.io"))
    for key, values in imp.extra.items():
        checks += [
            ResourceCheck("userextras", v, group="authentication.k8s.io", subresource=key) for v in values
        ]
    return checks
