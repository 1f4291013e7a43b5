"""Command line and environment of `python -m agent_operator`.

Every flag has an environment variable (GAO_*), so a Deployment can set either. Errors name the flag.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent_operator.policy_flags import AdmissionLimits, PolicyFlagError, add_policy_flags, parse_policy
from agent_operator.sharding.settings import (
    ShardingFlagError,
    ShardingSettings,
    add_sharding_flags,
    parse_sharding,
)
from agent_runtime.policy import TenantPolicy
from agent_runtime.telemetry.endpoints import parse_listen_address
from agent_runtime.versions import KubernetesSupport

DEFAULT_DRAIN_GRACE_S: Final = 10.0
"""Our choice: in-flight tunnelled requests get this long when an agent is removed or the pod stops.
Keep terminationGracePeriodSeconds well above it (the Deployment uses 60 s)."""


class UsageError(Exception):
    """A flag or environment variable is invalid."""


@dataclass(frozen=True)
class OperatorSettings:
    """Validated process settings."""

    namespaces: tuple[str, ...] | None
    """Namespaces whose GitLabAgents this operator handles; None = all namespaces."""
    peering: str | None
    """kopf peering object name; None = standalone (no peering)."""
    peering_priority: int
    """kopf peering priority: the highest live priority runs, all others pause."""
    observability_address: str
    """`host:port` of /metrics, /liveness, /readiness."""
    kubernetes_support: KubernetesSupport
    """Supported Kubernetes minors (KubernetesVersionSupported condition)."""
    drain_grace: float
    """Seconds in-flight tunnel requests get when a worker stops."""
    kubeconfig: str | None
    """Explicit kubeconfig; None = in-cluster, else $KUBECONFIG / ~/.kube/config."""
    context: str | None
    """kubeconfig context."""
    log_level: str
    """Root log level."""
    instance: str
    """This process's name in Events (reportingInstance) and kopf peering: the pod name."""
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    """What each tenant's agent may do in the shared pod (destinations, budgets, impersonation)."""
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    """Limits on GitLabAgent resources themselves (agents per namespace)."""
    sharding: ShardingSettings | None = None
    """Share the GitLabAgents with other replicas (--sharding); None = this process runs all of them."""


def _env(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = environ.get(name, "").strip()
    return value or default


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The flags, with defaults from the environment."""
    parser = argparse.ArgumentParser(
        prog="gitlab-agent-operator",
        description="Runs GitLabAgent resources (agentk.dev/v1alpha1) as GitLab agent tunnel workers.",
    )
    env_namespaces = [n for n in (_env(environ, "GAO_NAMESPACES") or "").split(",") if n.strip()]
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n.strip() for n in env_namespaces],
        help="handle GitLabAgents of this namespace only; repeatable (GAO_NAMESPACES, comma-separated)",
    )
    parser.add_argument(
        "--all-namespaces",
        action="store_true",
        default=_env(environ, "GAO_ALL_NAMESPACES") == "true",
        help="handle GitLabAgents of every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--peering",
        default=_env(environ, "GAO_PEERING"),
        metavar="NAME",
        help="coordinate replicas through the kopf peering object NAME (created when missing); "
        "default: standalone (GAO_PEERING)",
    )
    parser.add_argument(
        "--peering-priority",
        type=int,
        default=_env(environ, "GAO_PEERING_PRIORITY"),
        help="kopf peering priority; default: random, so exactly one replica runs (GAO_PEERING_PRIORITY)",
    )
    parser.add_argument(
        "--observability-address",
        default=_env(environ, "GAO_OBSERVABILITY_ADDRESS", ":8080"),
        help="listen address of /metrics, /liveness, /readiness (default :8080; GAO_OBSERVABILITY_ADDRESS)",
    )
    default_range = KubernetesSupport()
    parser.add_argument(
        "--kubernetes-supported-range",
        default=_env(
            environ, "GAO_KUBERNETES_SUPPORTED_RANGE", f"{default_range.oldest}-{default_range.newest}"
        ),
        metavar="MIN-MAX",
        help="supported Kubernetes minors, e.g. 1.35-1.37 (GAO_KUBERNETES_SUPPORTED_RANGE)",
    )
    parser.add_argument(
        "--drain-grace",
        default=_env(environ, "GAO_DRAIN_GRACE", str(DEFAULT_DRAIN_GRACE_S)),
        metavar="SECONDS",
        help="time in-flight tunnel requests get when an agent stops (GAO_DRAIN_GRACE)",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig (default: in-cluster, else $KUBECONFIG)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument(
        "--log-level", default=_env(environ, "GAO_LOG_LEVEL", "INFO"), help="INFO, DEBUG, ..."
    )
    add_policy_flags(parser, environ)
    add_sharding_flags(parser, environ)
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> OperatorSettings:
    """Parse and validate; UsageError names the flag (argparse itself exits on unknown flags)."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    namespaces = tuple(dict.fromkeys(n.strip() for n in args.namespace if n.strip()))
    if namespaces and args.all_namespaces:
        raise UsageError("--namespace and --all-namespaces exclude each other")
    try:
        parse_listen_address(args.observability_address)
    except ValueError as exc:
        raise UsageError(f"--observability-address: {exc}") from None
    try:
        support = KubernetesSupport.parse(args.kubernetes_supported_range)
    except ValueError as exc:
        raise UsageError(f"--kubernetes-supported-range: {exc}") from None
    try:
        grace = float(args.drain_grace)
    except ValueError:
        raise UsageError("--drain-grace must be a number of seconds") from None
    if not 0 <= grace <= 3600:
        raise UsageError("--drain-grace must be between 0 and 3600 seconds")
    priority = args.peering_priority
    if priority is None:
        priority = random.randint(1, 2**31 - 1)  # noqa: S311 - breaking ties between replicas, not crypto
    try:
        policy, limits = parse_policy(args)
    except PolicyFlagError as exc:
        raise UsageError(str(exc)) from None
    try:
        sharding = parse_sharding(args, namespaces)
    except ShardingFlagError as exc:
        raise UsageError(str(exc)) from None
    instance = _env(environ, "POD_NAME") or socket.gethostname()
    return OperatorSettings(
        namespaces=namespaces or None,
        peering=args.peering or None,
        peering_priority=int(priority),
        observability_address=args.observability_address,
        kubernetes_support=support,
        drain_grace=grace,
        kubeconfig=args.kubeconfig,
        context=args.context,
        log_level=str(args.log_level).upper(),
        instance=instance,
        policy=policy,
        limits=limits,
        sharding=sharding,
    )
