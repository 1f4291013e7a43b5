"""The status writer of a sharded replica: writes the status of the agents this replica owns only.

Every replica reconciles every agent, so every replica learns each agent's facts; the owner alone writes
its status (with `status.replica`, its own name: the REPLICA column of `kubectl get gla -o wide`). The
facts of the others are kept (small), so that an agent that becomes ours is written at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent_operator.api import GitLabAgentStatus
from agent_operator.events import ObjectRef
from agent_operator.mapping import AgentKey
from agent_operator.status_mapping import AgentFacts
from agent_operator.status_writer import StatusWriter


@dataclass
class _Known:
    ref: ObjectRef
    facts: AgentFacts
    stored_json: str | None
    """The status read from the resource, as JSON (a model costs several KiB per agent)."""


class ShardedStatusWriter(StatusWriter):
    """A StatusWriter that tracks only the agents `owns` says this replica owns."""

    def __init__(self, *args: Any, replica: str, owns: Callable[[str], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replica = replica
        self._owns = owns
        self._known: dict[AgentKey, _Known] = {}
        self._finalized_seen: set[AgentKey] = set()
        """Resources seen with kopf's finalizer: an agent that becomes ours need not wait for it again
        (StatusWriter forgets it with the entry)."""

    def track(
        self, key: AgentKey, ref: ObjectRef, facts: AgentFacts, stored: GitLabAgentStatus | None
    ) -> None:
        """New facts for a resource: written if this replica owns it, else kept for when it does."""
        facts = replace(facts, replica=self._replica)
        known = self._known.get(key)
        if known is None or known.ref.uid != ref.uid:
            stored_json = stored.model_dump_json() if stored is not None else None
            known = self._known[key] = _Known(ref, facts, stored_json)
        else:
            known.ref, known.facts = ref, facts
        if self._owns(key.worker_id):
            self._track_owned(key, known)

    def finalized(self, key: AgentKey) -> None:
        """kopf's finalizer is on the resource (remembered also while another replica owns it)."""
        self._finalized_seen.add(key)
        super().finalized(key)

    def forget(self, key: AgentKey) -> None:
        """The resource is gone (or handed to a peering replica): forget it entirely."""
        self._known.pop(key, None)
        self._finalized_seen.discard(key)
        super().forget(key)

    def _track_owned(self, key: AgentKey, known: _Known) -> None:
        super().track(key, known.ref, known.facts, _parse(known.stored_json))
        if key in self._finalized_seen:
            super().finalized(key)

    def ownership_changed(self) -> None:
        """The member set changed: start writing the agents that became ours, stop the others."""
        for key, known in list(self._known.items()):
            if self._owns(key.worker_id):
                self._track_owned(key, known)
            else:
                super().forget(key)


def _parse(text: str | None) -> GitLabAgentStatus | None:
    return GitLabAgentStatus.model_validate_json(text) if text is not None else None
