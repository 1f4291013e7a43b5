"""Which projects an agent may see (the reference kas's stand-in for Rails' verify_project_access)."""

from __future__ import annotations

import pytest

from kas.agents import AgentDirectory, AgentsFileError

DOCUMENT = """
agents:
  - {id: 1, name: a, project_path: Group/Agents, tokens: [t1], projects: [group/App]}
  - {id: 2, name: b, project_path: group/b, tokens: [t2]}
public_projects: [group/docs]
"""


@pytest.fixture
def directory() -> AgentDirectory:
    found = AgentDirectory()
    found.load_text(DOCUMENT)
    return found


@pytest.mark.parametrize(
    ("agent_id", "path", "allowed"),
    [
        (1, "group/agents", True),  # its configuration project, any case
        (1, "GROUP/APP", True),  # granted in `projects`
        (1, "group/docs", True),  # public
        (1, "group/b", False),  # another agent's configuration project
        (2, "group/app", False),  # granted to agent 1 only
        (2, "group/b", True),
        (2, "group/b/sub", False),  # no prefix matching
        (3, "group/docs", False),  # unknown agent: nothing, not even public projects
    ],
)
def test_may_access(directory: AgentDirectory, agent_id: int, path: str, allowed: bool) -> None:
    assert directory.may_access(agent_id, path) is allowed


def test_a_reload_replaces_the_grants(directory: AgentDirectory) -> None:
    directory.load_text(
        DOCUMENT.replace("projects: [group/App]", "projects: []").replace("[group/docs]", "[]")
    )
    assert not directory.may_access(1, "group/app")
    assert not directory.may_access(1, "group/docs")
    assert directory.may_access(1, "group/agents")


@pytest.mark.parametrize(
    "change",
    [
        ("projects: [group/App]", "projects: group/App"),
        ("public_projects: [group/docs]", "public_projects: 7"),
    ],
    ids=["projects-not-a-list", "public-not-a-list"],
)
def test_malformed_grants_are_refused_and_the_old_ones_kept(
    directory: AgentDirectory, change: tuple[str, str]
) -> None:
    with pytest.raises(AgentsFileError):
        directory.load_text(DOCUMENT.replace(*change))
    assert directory.may_access(1, "group/app")
    assert directory.may_access(2, "group/docs")
