"""kas refusing a real Worker (forbidden, deleted agent, rejected configuration), and the GitLabAgent status
the operator makes of the Worker's own snapshot (not a hand-built one)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from agent_operator.api import ConditionStatus, ConditionType, GitLabAgentStatus
from agent_operator.api import Phase as AgentPhase
from agent_operator.status_mapping import AgentFacts, compute_status
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_runtime.errors import hint_for
from agent_runtime.spec import ErrorReason, Phase, WorkerSnapshot
from agent_runtime.transport.channel import KasTransport
from tests.integration.runtime.conftest import BOTH_TRANSPORTS, WorkerFactory, eventually
from tests.integration.runtime.fake_kas import AGENT_ID, FakeKas

FACTS = AgentFacts(
    generation=1, kas_address="grpc://127.0.0.1", service_account="ns/agent", service_account_found=True
)


def _status(snapshot: WorkerSnapshot) -> GitLabAgentStatus:
    return compute_status(FACTS, snapshot, None, datetime.now(UTC))


def _condition(status: GitLabAgentStatus, type_: ConditionType) -> tuple[ConditionStatus, str]:
    found = status.condition(type_)
    assert found is not None, type_
    return found.status, found.reason


@BOTH_TRANSPORTS
@pytest.mark.parametrize(
    ("code", "details", "reason"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "forbidden", ErrorReason.PERMISSION_DENIED),
        (grpc.StatusCode.NOT_FOUND, "agent not found", ErrorReason.AGENT_NOT_FOUND),
    ],
)
async def test_kas_refusing_the_agent_fails_it_with_the_reason_and_no_retry_storm(
    kas: FakeKas,
    start_worker: WorkerFactory,
    code: grpc.StatusCode,
    details: str,
    reason: ErrorReason,
    transport: KasTransport,
) -> None:
    kas.refusal = (code, details)
    worker = start_worker(transport=transport)
    await eventually(lambda: worker.snapshot.phase is Phase.FAILED)
    error = worker.snapshot.last_error
    assert error is not None
    assert error.reason is reason
    assert error.hint == hint_for(reason) != ""
    status = _status(worker.snapshot)
    assert status.phase is AgentPhase.FAILED
    assert _condition(status, ConditionType.CONNECTED) == (ConditionStatus.FALSE, reason.value)
    assert _condition(status, ConditionType.READY)[0] is ConditionStatus.FALSE
    before = kas.rejected
    await asyncio.sleep(3)
    assert kas.rejected - before <= 4  # the AuthGate holds every module back while the backoff runs


async def test_a_configuration_the_worker_rejects_degrades_the_agent(
    kas: FakeKas, start_worker: WorkerFactory
) -> None:
    """Tunnels and Register work without a configuration: the agent is Degraded, not Failed."""
    config = agentcfg_pb2.AgentConfiguration(agent_id=AGENT_ID, gitlab_external_url="https://[::1")
    kas.config_responses = [
        config_rpc.ConfigurationResponse(configuration=config, commit_id="bad1").SerializeToString()
    ]
    worker = start_worker()
    await eventually(
        lambda: worker.snapshot.phase is Phase.DEGRADED and worker.snapshot.registered, within=30
    )
    error = worker.snapshot.last_error
    assert error is not None
    assert error.reason is ErrorReason.CONFIGURATION_REJECTED
    assert "configuration bad1: gitlab_external_url" in error.message
    status = _status(worker.snapshot)
    assert status.phase is AgentPhase.DEGRADED
    assert _condition(status, ConditionType.CONNECTED) == (ConditionStatus.TRUE, "Connected")
    assert _condition(status, ConditionType.CONFIGURATION_RECEIVED) == (
        ConditionStatus.FALSE,
        "ConfigurationRejected",
    )
    assert _condition(status, ConditionType.READY)[0] is ConditionStatus.FALSE
