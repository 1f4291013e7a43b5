"""Auth, GetConfiguration and Register against a running kas over real gRPC."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.entity import entity_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from kas.server import KasServer
from kas.testing import write_agent_config
from tests.integration.kas.agentk import Tunnel, auth, get_configuration, read_config, register, register_call
from tests.integration.kas.conftest import AGENT, OTHER


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong-token"),), (("authorization", f"Basic {AGENT.token}"),)],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_auth_failures_are_unauthenticated(
    kas: KasServer, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register_call(channel)(rpc_pb2.RegisterRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # the same connection keeps serving a correct token
    await register(channel, AGENT.token, pod_id=1)


async def test_lowercase_bearer_scheme_is_accepted(kas: KasServer, channel: grpc.aio.Channel) -> None:
    from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2

    await register_call(channel)(
        rpc_pb2.RegisterRequest(pod_id=3), metadata=(("authorization", f"bearer {AGENT.token}"),)
    )


async def test_unauthenticated_tunnel(kas: KasServer, channel: grpc.aio.Channel) -> None:
    tunnel = Tunnel(channel, "nope")
    assert await tunnel.status() == grpc.StatusCode.UNAUTHENTICATED
    assert kas.registry.counts() == (0, 0, 0)


async def test_configuration_delivery_and_live_edit(kas: KasServer, channel: grpc.aio.Channel) -> None:
    config_dir = kas.config.agent_configuration.directory
    assert config_dir is not None
    write_agent_config(config_dir, AGENT, "observability:\n  logging:\n    level: debug\n")
    call = get_configuration(channel, AGENT.token)
    first = await read_config(call)
    cfg = first.configuration
    assert (cfg.agent_id, cfg.project_id, cfg.project_path) == (42, 7, "group/project")
    assert cfg.gitlab_external_url
    assert first.commit_id
    assert cfg.observability.logging.level == 1  # debug
    write_agent_config(config_dir, AGENT, "ci_access:\n  projects:\n    - id: group/app\n")
    second = await read_config(call, 1.5)
    assert second.commit_id != first.commit_id
    assert [p.id for p in second.configuration.ci_access.projects] == ["group/app"]
    call.cancel()


async def test_same_commit_is_not_sent_again(kas: KasServer, channel: grpc.aio.Channel) -> None:
    first = await read_config(get_configuration(channel, OTHER.token))
    assert first.configuration.agent_id == OTHER.id  # missing file = empty configuration
    call = get_configuration(channel, OTHER.token, commit_id=first.commit_id)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(call.read()), 0.5)
    call.cancel()


async def test_unknown_key_is_failed_precondition(kas: KasServer, channel: grpc.aio.Channel) -> None:
    config_dir = kas.config.agent_configuration.directory
    assert config_dir is not None
    write_agent_config(config_dir, AGENT, "observability:\n  logging:\n    levle: debug\n")
    call = get_configuration(channel, AGENT.token)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), 5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert details.startswith("Config: ")
    assert "levle" in details


async def test_register_appears_in_tracker_endpoint(kas: KasServer, channel: grpc.aio.Channel) -> None:
    await register(channel, AGENT.token, pod_id=1234, pod_name="agentk-abc")
    body = await asyncio.to_thread(_get_json, f"{kas.observability_url}/api/connected_agents")
    (entry,) = body["agents"]
    assert entry["agent_id"] == 42
    assert entry["connection_id"] == 1234
    assert entry["agent_meta"]["pod_name"] == "agentk-abc"
    metrics = await asyncio.to_thread(_get_text, f"{kas.observability_url}/metrics")
    assert "connected_agents_count 1.0" in metrics
    assert await asyncio.to_thread(_get_text, f"{kas.observability_url}/readiness") == ""


async def test_malformed_and_oversized_frames_fail_only_their_stream(
    kas: KasServer, channel: grpc.aio.Channel
) -> None:
    good = Tunnel(channel, AGENT.token)
    raw: Any = channel.stream_stream("/gitlab.agent.reverse_tunnel.rpc.ReverseTunnel/Connect")
    bad = raw(metadata=(("authorization", f"Bearer {AGENT.token}"),))
    await bad.write(b"\xff\xff\xff")
    assert await bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong_first = Tunnel(channel, AGENT.token)
    wrong_first.queue.get_nowait()
    wrong_first.send(tunnel_rpc.ConnectRequest(header=tunnel_rpc.Header()))
    assert await wrong_first.status() == grpc.StatusCode.INVALID_ARGUMENT
    huge = raw(metadata=(("authorization", f"Bearer {AGENT.token}"),))
    await huge.write(b"\x0a" + b"\x00" * (5 * 1024 * 1024))
    assert await huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the well-behaved tunnel on the same connection is still registered
    for _ in range(100):
        if kas.registry.counts()[0] == 1:
            break
        await asyncio.sleep(0.01)
    assert kas.registry.counts()[0] == 1
    good.close_send()


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
        return str(response.read().decode())


def _get_json(url: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(_get_text(url)))


def _unused(path: Path) -> None:  # keep Path imported for type hints in helpers
    del path


async def test_a_burst_of_rpcs_beyond_grpc_cores_pending_default_is_served(kas: KasServer) -> None:
    """2000 RPCs at once (500 agents starting: four each): grpc core would cancel those beyond 1000."""
    meta = entity_pb2.AgentMeta(version="v16.5.0", commit_id="abc", pod_namespace="ns", pod_name="agentk-0")
    request = registrar_rpc.RegisterRequest(agent_meta=meta, pod_id=1)
    async with grpc.aio.insecure_channel(kas.agent_address) as channel:
        call = register_call(channel)
        calls = [call(request, metadata=auth(AGENT.token), timeout=60) for _ in range(2000)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []


async def test_configuration_streams_show_live_then_ended(kas: KasServer, channel: grpc.aio.Channel) -> None:
    """/api/agent_streams: one entry per GetConfiguration stream, live while it is open (an agent run
    twice shows two live streams), ended with its end time once it closed."""
    url = f"{kas.observability_url}/api/agent_streams?agent_id={AGENT.id}"
    first, second = get_configuration(channel, AGENT.token), get_configuration(channel, AGENT.token)
    await read_config(first)
    await read_config(second)
    body = await asyncio.to_thread(_get_json, url)
    assert [s["ended"] for s in body["live"]] == [None, None]
    assert body["ended"] == []
    first.cancel()
    for _ in range(100):  # kas notices the cancellation within a few ms
        body = await asyncio.to_thread(_get_json, url)
        if body["ended"]:
            break
        await asyncio.sleep(0.02)
    (ended,) = body["ended"]
    (live,) = body["live"]
    assert ended["agent_id"] == live["agent_id"] == AGENT.id
    assert ended["started"] <= ended["ended"]
    second.cancel()
