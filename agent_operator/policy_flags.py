"""The operator's tenant-isolation flags (docs/security.md): what a GitLabAgent's tenant may make the pod do.

Each flag has a GAO_* environment variable. Defaults are the safe ones: public kas hosts over TLS only,
verified certificates, `gitlab:` identities only, bounded budgets.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent_runtime.modules.flux.webhook import BaseUrl, WebhookUrlError
from agent_runtime.policy import (
    DEFAULT_IMPERSONATION_PREFIXES,
    FLUX_WEBHOOK_SERVICE_URL,
    DestinationPolicy,
    ImpersonationPolicy,
    TenantBudget,
    TenantPolicy,
    TunnelBudget,
)

DEFAULT_MAX_AGENTS_PER_NAMESPACE: Final = 50
"""Our choice: one team rarely needs more; an admin raises it with --max-agents-per-namespace."""
_DEFAULT_BUDGET = TunnelBudget()
_DEFAULT_TENANT_BUDGET = TenantBudget()


class PolicyFlagError(ValueError):
    """A policy flag is invalid; the message names the flag."""


@dataclass(frozen=True)
class AdmissionLimits:
    """Operator-level limits on GitLabAgent resources themselves."""

    max_agents_per_namespace: int = DEFAULT_MAX_AGENTS_PER_NAMESPACE
    """GitLabAgents run per namespace; the rest report `Ready=False` (`NamespaceAgentLimit`). 0 = no cap."""


def _env(environ: Mapping[str, str], name: str, default: str = "") -> str:
    return environ.get(name, "").strip() or default


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return _env(environ, name).lower() == "true"


def add_policy_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Add the isolation flags to `parser`, with defaults from the environment."""
    group = parser.add_argument_group("tenant isolation (docs/security.md)")
    group.add_argument(
        "--allowed-kas-hosts",
        default=_env(environ, "GAO_ALLOWED_KAS_HOSTS"),
        metavar="LIST",
        help="comma-separated kas/proxy hosts agents may dial: names, *.domain, CIDRs; "
        "empty = any public host (GAO_ALLOWED_KAS_HOSTS)",
    )
    group.add_argument(
        "--flux-webhook-receiver-urls",
        default=_env(environ, "GAO_FLUX_WEBHOOK_RECEIVER_URLS", FLUX_WEBHOOK_SERVICE_URL),
        metavar="LIST",
        help="comma-separated base URLs the Flux receiver mode may POST to (exact http(s) URLs; the agent "
        "configuration picks one, anything else is refused) (GAO_FLUX_WEBHOOK_RECEIVER_URLS)",
    )
    group.add_argument(
        "--allow-private-kas",
        action="store_true",
        default=_flag(environ, "GAO_ALLOW_PRIVATE_KAS"),
        help="allow kas/proxy addresses in loopback, link-local and private ranges (GAO_ALLOW_PRIVATE_KAS)",
    )
    group.add_argument(
        "--allow-plaintext-kas",
        action="store_true",
        default=_flag(environ, "GAO_ALLOW_PLAINTEXT_KAS"),
        help="allow grpc:// and ws:// kas addresses (GAO_ALLOW_PLAINTEXT_KAS)",
    )
    group.add_argument(
        "--allow-insecure-skip-tls-verify",
        action="store_true",
        default=_flag(environ, "GAO_ALLOW_INSECURE_SKIP_TLS_VERIFY"),
        help="allow spec.insecureSkipTLSVerify (GAO_ALLOW_INSECURE_SKIP_TLS_VERIFY)",
    )
    group.add_argument(
        "--impersonation-prefixes",
        default=_env(environ, "GAO_IMPERSONATION_PREFIXES", ",".join(DEFAULT_IMPERSONATION_PREFIXES)),
        metavar="LIST",
        help="comma-separated prefixes every user and group kas asks to impersonate must have; "
        "system:* is always refused (default gitlab:; GAO_IMPERSONATION_PREFIXES)",
    )
    _int_flag(
        group,
        environ,
        "--max-inflight-requests-per-agent",
        _DEFAULT_BUDGET.max_inflight_requests,
        "requests from kas one agent serves at once: it offers kas at most this many tunnels "
        "(spec.tunnels.max is capped to it), the rest wait in kas; also its API server connections",
    )
    _int_flag(
        group,
        environ,
        "--max-buffered-bytes-per-agent",
        _DEFAULT_BUDGET.max_buffered_bytes,
        "request bytes from kas one agent holds for the API server, over all its tunnels; "
        "when reached, reading from kas pauses",
    )
    _int_flag(
        group,
        environ,
        "--max-inflight-requests-per-namespace",
        _DEFAULT_TENANT_BUDGET.max_inflight_requests,
        "tunnels (idle or serving) all the agents of one namespace hold open at once; "
        "each agent keeps its minIdle of them, the rest wait in kas",
    )
    _int_flag(
        group,
        environ,
        "--max-buffered-bytes-per-namespace",
        _DEFAULT_TENANT_BUDGET.max_buffered_bytes,
        "request bytes from kas all the agents of one namespace hold for the API server; "
        "when reached, reading pauses for every agent of that namespace",
    )
    _int_flag(
        group, environ, "--max-agents-per-namespace", DEFAULT_MAX_AGENTS_PER_NAMESPACE, "count, 0 = no cap"
    )


def _env_name(flag: str) -> str:
    return "GAO_" + flag.removeprefix("--").replace("-", "_").upper()


def _int_flag(
    group: argparse._ArgumentGroup, environ: Mapping[str, str], flag: str, default: int, unit: str
) -> None:
    env = _env_name(flag)
    group.add_argument(
        flag, default=_env(environ, env, str(default)), metavar="N", help=f"{unit}; default {default} ({env})"
    )


def _positive(args: argparse.Namespace, flag: str, *, zero_ok: bool = False) -> int:
    raw = getattr(args, flag.removeprefix("--").replace("-", "_"))
    try:
        value = int(raw)
    except ValueError:
        raise PolicyFlagError(f"{flag} must be a whole number, not {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise PolicyFlagError(f"{flag} must be {'0 or more' if zero_ok else 'at least 1'}")
    return value


def _split(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


def _check_host_pattern(pattern: str) -> str:
    if "/" in pattern:
        try:
            ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            raise PolicyFlagError(f"--allowed-kas-hosts: {pattern!r} is not a CIDR") from None
        return pattern
    host = pattern.removeprefix("*.")
    if not host or (any(ch in host for ch in "*/:@ ") and not _is_ip(host)):
        raise PolicyFlagError(f"--allowed-kas-hosts: {pattern!r} is not a host, *.domain or CIDR")
    return pattern.lower()


def _webhook_urls(value: str) -> tuple[str, ...]:
    urls = _split(value)
    for url in urls:
        try:
            BaseUrl.parse(url)
        except WebhookUrlError as e:
            raise PolicyFlagError(f"--flux-webhook-receiver-urls: {e}") from None
    return urls


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def parse_policy(args: argparse.Namespace) -> tuple[TenantPolicy, AdmissionLimits]:
    """The policy from parsed flags; PolicyFlagError names a bad flag."""
    prefixes = _split(args.impersonation_prefixes)
    if not prefixes:
        raise PolicyFlagError("--impersonation-prefixes must name at least one prefix")
    if any(p.startswith("system:") or "system:".startswith(p) for p in prefixes):
        raise PolicyFlagError("--impersonation-prefixes: system:* identities are never impersonated")
    policy = TenantPolicy(
        destinations=DestinationPolicy(
            allowed_hosts=tuple(_check_host_pattern(p) for p in _split(args.allowed_kas_hosts)),
            allow_private=bool(args.allow_private_kas),
            allow_plaintext=bool(args.allow_plaintext_kas),
            allow_insecure_skip_verify=bool(args.allow_insecure_skip_tls_verify),
            flux_webhook_urls=_webhook_urls(args.flux_webhook_receiver_urls),
        ),
        budget=TunnelBudget(
            max_inflight_requests=_positive(args, "--max-inflight-requests-per-agent"),
            max_buffered_bytes=_positive(args, "--max-buffered-bytes-per-agent"),
        ),
        tenant_budget=TenantBudget(
            max_inflight_requests=_positive(args, "--max-inflight-requests-per-namespace"),
            max_buffered_bytes=_positive(args, "--max-buffered-bytes-per-namespace"),
        ),
        impersonation=ImpersonationPolicy(allowed_prefixes=prefixes),
    )
    limits = AdmissionLimits(
        max_agents_per_namespace=_positive(args, "--max-agents-per-namespace", zero_ok=True)
    )
    return policy, limits
