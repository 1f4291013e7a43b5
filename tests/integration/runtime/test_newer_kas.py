"""What a newer kas (GitLab 17-18) sends, against the Worker: fields we do not know, opaque commit ids and
structured tokens (PROTOCOL.md §13.1: wire evolution is additive; §18)."""

from __future__ import annotations

from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_runtime.spec import Phase
from tests.integration.runtime.conftest import WorkerFactory, eventually
from tests.integration.runtime.fake_kas import AGENT_ID, FakeKas

STRUCTURED_TOKEN = "glagent-" + "Zm9vYmFyYmF6cXV4" * 4 + ".01.1a2b3c4d5"
"""A GitLab 18 structured agent token (`glagent-<base64>.01.<suffix>`): opaque to the agent."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _unknown(number: int, payload: bytes) -> bytes:
    """A length-delimited field with a number our .proto files do not have, as a newer kas sends."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _newer_configuration(commit: str) -> bytes:
    # `protected_branches_only` (17.3) and `user_access` style additions: numbers we do not know, at
    # every level. Python's protobuf keeps unknown fields when parsing, so they survive nesting here.
    project = agentcfg_pb2.CiAccessProjectCF.FromString(
        agentcfg_pb2.CiAccessProjectCF(id="group/app").SerializeToString() + _varint(5 << 3) + _varint(1)
    )
    config = agentcfg_pb2.AgentConfiguration.FromString(
        agentcfg_pb2.AgentConfiguration(
            agent_id=AGENT_ID,
            project_path="group/agents",
            ci_access=agentcfg_pb2.CiAccessCF(projects=[project]),
        ).SerializeToString()
        + _unknown(42, b"user_access: {access_as: {agent: {}}}")
    )
    response = config_rpc.ConfigurationResponse(configuration=config, commit_id=commit).SerializeToString()
    return response + _unknown(77, b"git_ref") + _varint(78 << 3) + _varint(7)


async def test_unknown_fields_and_a_commit_id_that_is_no_sha_are_accepted(
    kas: FakeKas, start_worker: WorkerFactory
) -> None:
    # kas 17.7+ sends the text `ref not found` as the commit when the configuration branch is missing.
    kas.config_responses = [_newer_configuration("ref not found")]

    worker = start_worker()

    await eventually(lambda: worker.snapshot.configuration_received)
    snap = worker.snapshot
    assert snap.config_commit == "ref not found"
    assert snap.agent_id == AGENT_ID
    assert snap.last_error is None
    assert snap.phase is Phase.CONNECTED


async def test_a_structured_glagent_token_is_sent_as_it_is(kas: FakeKas, start_worker: WorkerFactory) -> None:
    kas.token = STRUCTURED_TOKEN

    worker = start_worker(token=STRUCTURED_TOKEN)

    await eventually(lambda: worker.snapshot.registered and worker.snapshot.configuration_received)
    assert kas.rejected == 0
    assert worker.snapshot.phase is Phase.CONNECTED
