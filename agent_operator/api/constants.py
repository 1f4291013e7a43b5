"""Names of the GitLabAgent API: group, version, kind, and the status condition vocabulary.

These strings are the public API of the operator: renaming one is a breaking change for every cluster
that stores GitLabAgent objects, for `kubectl get gla`, and for GitOps tools that read the conditions.
"""

from __future__ import annotations

import enum
from typing import Final

# The resource shows exactly the runtime's phases and the wire flavours agent_proto knows: one definition
# of each, re-exported here so the API package reads as one vocabulary.
from agent_proto.flavor import WireFlavor as WireFlavor
from agent_runtime.spec import FluxMode as FluxMode
from agent_runtime.spec import Phase as Phase

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
    SERVICE_ACCOUNT_FOUND = "ServiceAccountFound"
    """The ServiceAccount named by spec.serviceAccountName exists (every tunnelled request runs as it)."""
    FLUX = "Flux"
    """The Flux integration works as set up: True while it watches (or another replica does), False
    with the reason when Flux is missing, kas does not serve it, or it is disabled."""
    RECONCILING = "Reconciling"
    """kstatus: True while the agent connects (or reconnects after a change); kstatus reads InProgress."""
    STALLED = "Stalled"
    """kstatus: True while the agent cannot work until its spec, a Secret or GitLab changes (Failed)."""


class ConditionStatus(enum.StrEnum):
    """The three values of a condition's status, as in every Kubernetes API."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
