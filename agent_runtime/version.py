"""The version strings this engine presents: AgentMeta, User-Agent, Via (PROTOCOL.md §3.5, §5, §7.3)."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Final

from agent_runtime.constants import AGENT_COMMIT_PREFIX, AGENTK_PROTOCOL_VERSION


def _commit_id() -> str:
    """`gao-<operator release>`, plus `-<commit>` when the build says which (GAO_BUILD_COMMIT).

    kas and GitLab's UI show AgentMeta.commit_id beside the version: the `gao-` prefix tells an operator
    agent from GitLab's agentk builds, and the release says which operator is running.
    """
    try:
        release = metadata.version("gitlab-agent-operator")
    except metadata.PackageNotFoundError:
        release = "dev"
    build = os.environ.get("GAO_BUILD_COMMIT", "").strip()[:12]
    return f"{AGENT_COMMIT_PREFIX}{release}-{build}" if build else f"{AGENT_COMMIT_PREFIX}{release}"


AGENT_VERSION: Final = AGENTK_PROTOCOL_VERSION
"""AgentMeta.version."""
AGENT_COMMIT: Final = _commit_id()
"""AgentMeta.commit_id."""
AGENT_PRODUCT: Final = f"gitlab-agent/{AGENT_VERSION}/{AGENT_COMMIT}"
"""`gitlab-agent/<version>/<commit>`: User-Agent towards kas and the Via product token (§3.5, §7.3)."""
