"""The GitLabAgent API (group agentk.dev, version v1alpha1): pydantic models and the CRD built from them.

`spec` is what users write; `status` is what the operator reports. The CRD in crds/ is generated from
these models by scripts/gen-crd (`make crds`), so the apiserver and the operator validate alike.
"""

from agent_operator.api.constants import (
    API_VERSION,
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ConditionStatus,
    ConditionType,
    Phase,
    WireFlavor,
)
from agent_operator.api.resource import GitLabAgent
from agent_operator.api.spec import (
    CaCertRef,
    FluxSpec,
    GitLabAgentSpec,
    HeaderValueSource,
    KasHeader,
    KeyRef,
    ProxySpec,
    SecretKeyRef,
    SecretRef,
    TokenSecretRef,
    TunnelsSpec,
)
from agent_operator.api.status import (
    Condition,
    FluxStatus,
    GitLabAgentStatus,
    LastError,
    TunnelCounts,
    tunnels_summary,
)

__all__ = [
    "API_VERSION",
    "CATEGORIES",
    "CRD_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "CaCertRef",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "FluxSpec",
    "FluxStatus",
    "GitLabAgent",
    "GitLabAgentSpec",
    "GitLabAgentStatus",
    "HeaderValueSource",
    "KasHeader",
    "KeyRef",
    "LastError",
    "Phase",
    "ProxySpec",
    "SecretKeyRef",
    "SecretRef",
    "TokenSecretRef",
    "TunnelCounts",
    "TunnelsSpec",
    "WireFlavor",
    "tunnels_summary",
]
