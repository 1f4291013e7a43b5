"""AgentMeta: what kas stores from Register and GitLab's UI shows for each agent "pod" (PROTOCOL.md §5)."""

from __future__ import annotations

import socket
from pathlib import Path

from agent_proto.gitlab.agent.entity import entity_pb2
from agent_runtime.constants import AGENTK_PROTOCOL_VERSION
from agent_runtime.module_context import AgentInfo
from agent_runtime.version import AGENT_COMMIT, AGENT_VERSION


def test_the_downward_api_names_the_pod(tmp_path: Path) -> None:
    env = {"POD_NAMESPACE": "gitlab-agent-operator", "POD_NAME": "operator-7d9f-abcde", "HOSTNAME": "x"}

    info = AgentInfo.for_this_process(AGENT_VERSION, AGENT_COMMIT, env, tmp_path / "absent")

    assert (info.pod_namespace, info.pod_name) == ("gitlab-agent-operator", "operator-7d9f-abcde")
    assert 0 <= info.pod_id < 2**63


def test_without_the_downward_api_the_service_account_namespace_and_the_host_name(tmp_path: Path) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("agents\n")

    in_pod = AgentInfo.for_this_process(
        AGENT_VERSION, AGENT_COMMIT, {"HOSTNAME": "operator-0"}, namespace_file
    )
    outside = AgentInfo.for_this_process(AGENT_VERSION, AGENT_COMMIT, {}, tmp_path / "absent")

    assert (in_pod.pod_namespace, in_pod.pod_name) == ("agents", "operator-0")
    assert (outside.pod_namespace, outside.pod_name) == ("", socket.gethostname())


def test_meta_says_protocol_level_and_operator_release() -> None:
    info = AgentInfo.for_this_process(AGENT_VERSION, AGENT_COMMIT, {"POD_NAMESPACE": "ns", "POD_NAME": "p"})
    version = entity_pb2.KubernetesVersion(
        major="1", minor="37", git_version="v1.37.2", platform="linux/amd64"
    )

    meta = info.meta(version)

    assert meta.version == AGENTK_PROTOCOL_VERSION  # what GitLab's skew check compares
    assert meta.commit_id.startswith("gao-")  # tells an operator agent from GitLab's agentk builds
    assert meta.commit_id != "gao-"
    assert meta.kubernetes_version.git_version == "v1.37.2"
    assert info.meta().HasField("kubernetes_version")  # present but empty outside Register (§5)
