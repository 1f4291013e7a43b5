"""Names of the GitLabAgent API: group, version, kind, and the status condition vocabulary.

These strings are the public API of the operator: renaming one is a breaking change for every cluster
that stores GitLabAgent objects, for `kubectl get gla`, and for GitOps tools that read the conditions.
"""

from __future__ import annotations

import enum
from typing import Final

GROUP: Final = "agentk.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "GitLabAgent"
LIST_KIND: Final = "GitLabAgentList"
PLURAL: Final = "gitlabagents"
SINGULAR: Final = "gitlabagent"
SHORT_NAMES: Final = ("gla",)
CATEGORIES: Final = ("gitlab",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"


class ConditionType(enum.StrEnum):
    """The condition types the operator maintains in `status.conditions`."""

    READY = "Ready"
    """Summary: the agent is connected and nothing needs attention (what GitOps health checks read)."""
    CONNECTED = "Connected"
    """The worker holds a working connection to kas."""
    CONFIGURATION_RECEIVED = "ConfigurationReceived"
    """kas sent the agent's configuration at least once on the current connection."""
    REGISTERED = "Registered"
    """The last Register call to kas succeeded."""
    VERSION_COMPATIBLE = "VersionCompatible"
    """kas's version is within GitLab's skew policy for this agent (same minor, or one either side)."""
    KUBERNETES_VERSION_SUPPORTED = "KubernetesVersionSupported"
    """The cluster's Kubernetes minor version is one GitLab supports."""
    TOKEN_AVAILABLE = "TokenAvailable"  # noqa: S105 (a condition type, not a password)
    """The Secret named by spec.tokenSecretRef exists and holds a non-empty token."""


class ConditionStatus(enum.StrEnum):
    """The three values of a condition's status, as in every Kubernetes API."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Phase(enum.StrEnum):
    """Coarse state of an agent, shown in the PHASE column."""

    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class WireFlavor(enum.StrEnum):
    """Which kas the agent talks to; selects the protobuf package prefix used on the wire."""

    GITLAB = "gitlab"
    PLURAL = "plural"
