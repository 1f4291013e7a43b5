"""The whole GitLabAgent object: apiVersion, kind, metadata, spec, status."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agent_operator.api.base import ApiModel
from agent_operator.api.spec import GitLabAgentSpec
from agent_operator.api.status import GitLabAgentStatus


class GitLabAgent(ApiModel):
    """One GitLab agent for Kubernetes, run by the operator: a connection to GitLab's agent server (kas)
    that serves CI/CD jobs and users reaching this cluster's Kubernetes API."""

    api_version: Literal["agentk.dev/v1alpha1"] = "agentk.dev/v1alpha1"
    """APIVersion of this object's schema: agentk.dev/v1alpha1."""
    kind: Literal["GitLabAgent"] = "GitLabAgent"
    """Kind of this object: GitLabAgent."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata: name, namespace, labels, annotations, ..."""
    spec: GitLabAgentSpec
    """Desired state of the agent."""
    status: GitLabAgentStatus | None = None
    """Observed state of the agent, written by the operator."""

    def to_manifest(self) -> dict[str, Any]:
        """The object as a Kubernetes manifest (defaults included, unset fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
