"""Flags of sharding (`--sharding` and its companions), parsed into ShardingSettings."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_LEASE_DURATION_S: Final = 8.0
"""Our choice: a killed replica's agents run elsewhere about this long after its last renewal (plus up to
half a second to notice and the time to connect): the 15 s target with room to spare. Shorter leases
mean more renewals (one every quarter) and less patience with a slow API server."""
_GROUP: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
"""A group names Leases and is a label value: lower-case DNS label characters, at most 40."""
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ShardingFlagError(Exception):
    """A sharding flag is invalid."""


@dataclass(frozen=True)
class ShardingSettings:
    """How this replica shares the GitLabAgents with the others."""

    namespace: str
    """Where the member and claim Leases live: the operator's own namespace."""
    group: str
    """The replicas that share agents: one operator installation (its namespace scope by default)."""
    lease_duration: float
    """Seconds a member Lease lives without renewal; a dead replica's agents move after this long."""


def add_sharding_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The flags, with defaults from the environment."""
    parser.add_argument(
        "--sharding",
        action="store_true",
        default=environ.get("GAO_SHARDING", "").strip() == "true",
        help="share the GitLabAgents with the other replicas started with --sharding (each agent runs on "
        "one of them; Leases in the operator's namespace); excludes --peering (GAO_SHARDING=true)",
    )
    parser.add_argument(
        "--shard-namespace",
        default=environ.get("GAO_SHARD_NAMESPACE", "").strip() or environ.get("POD_NAMESPACE", "").strip(),
        metavar="NAMESPACE",
        help="namespace of the sharding Leases (default: $POD_NAMESPACE, else the pod's own namespace; "
        "GAO_SHARD_NAMESPACE)",
    )
    parser.add_argument(
        "--shard-group",
        default=environ.get("GAO_SHARD_GROUP", "").strip(),
        metavar="NAME",
        help="replicas with the same group share agents (default: derived from the --namespace scope, so "
        "two installations in one namespace never mix; GAO_SHARD_GROUP)",
    )
    parser.add_argument(
        "--shard-lease-duration",
        default=environ.get("GAO_SHARD_LEASE_DURATION", "").strip() or str(DEFAULT_LEASE_DURATION_S),
        metavar="SECONDS",
        help="how long a replica's member Lease lives without renewal; its agents move after that "
        f"(default {DEFAULT_LEASE_DURATION_S:g}; GAO_SHARD_LEASE_DURATION)",
    )


def parse_sharding(args: argparse.Namespace, namespaces: tuple[str, ...]) -> ShardingSettings | None:
    """ShardingSettings when --sharding is on, else None."""
    if not args.sharding:
        return None
    if args.peering:
        raise ShardingFlagError("--sharding and --peering exclude each other")
    namespace = args.shard_namespace or _own_namespace()
    if not namespace:
        raise ShardingFlagError("--sharding needs --shard-namespace (or $POD_NAMESPACE) outside a pod")
    try:
        duration = float(args.shard_lease_duration)
    except ValueError:
        raise ShardingFlagError("--shard-lease-duration must be a number of seconds") from None
    if not 2 <= duration <= 300:
        raise ShardingFlagError("--shard-lease-duration must be between 2 and 300 seconds")
    group = args.shard_group or default_group(namespaces)
    if not _GROUP.match(group):
        raise ShardingFlagError("--shard-group must be lower-case letters, digits and '-', at most 40")
    return ShardingSettings(namespace=namespace, group=group, lease_duration=duration)


def default_group(namespaces: tuple[str, ...]) -> str:
    """`gao-all` for a cluster-wide operator, else `gao-` and a hash of its namespaces."""
    if not namespaces:
        return "gao-all"
    return "gao-" + hashlib.sha256(",".join(sorted(namespaces)).encode()).hexdigest()[:12]


def _own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""
