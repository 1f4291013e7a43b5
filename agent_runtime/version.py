"""The version strings this engine presents: AgentMeta, User-Agent, Via (PROTOCOL.md §3.5, §5, §7.3)."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Final

from agent_runtime.constants import AGENT_COMMIT_PREFIX, AGENTK_PROTOCOL_VERSION


def _short_commit() -> str:
    # A build sets GAO_BUILD_COMMIT (short git SHA); a source checkout falls back to the package version.
    explicit = os.environ.get("GAO_BUILD_COMMIT", "").strip()
    if explicit:
        return explicit[:12]
    try:
        return metadata.version("gitlab-agent-operator")
    except metadata.PackageNotFoundError:
        return "dev"


AGENT_VERSION: Final = AGENTK_PROTOCOL_VERSION
"""AgentMeta.version."""
AGENT_COMMIT: Final = AGENT_COMMIT_PREFIX + _short_commit()
"""AgentMeta.commit_id."""
AGENT_PRODUCT: Final = f"gitlab-agent/{AGENT_VERSION}/{AGENT_COMMIT}"
"""`gitlab-agent/<version>/<commit>`: User-Agent towards kas and the Via product token (§3.5, §7.3)."""
