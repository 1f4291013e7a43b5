"""kas pieces without servers: configuration, JWTs, agents file, config parsing, the tunnel registry."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from kas import jwt
from kas.agent_configuration import ConfigError, parse_configuration_file
from kas.agents import AgentDirectory, AgentInfo, AgentsFileError, parse_agents
from kas.config import KasConfig, load_config
from kas.redis_keys import le8, live_value
from kas.secret import Secret
from kas.tunnel_call import CallError
from kas.tunnels.registry import KasShuttingDownError, LocalTunnelCall, Tunnel, TunnelRegistry, TunnelState

SERVICES = {"gitlab.agent.kubernetes_api.rpc.KubernetesApi": frozenset({"MakeRequest"})}
SVC, METHOD = "gitlab.agent.kubernetes_api.rpc.KubernetesApi", "MakeRequest"


class _Written:
    """A Connect stream's write side that records frames, or fails after `fail_after` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[str] = []
        self._fail_after = fail_after

    async def write(self, frame: tunnel_rpc.ConnectResponse) -> None:
        if self._fail_after is not None and len(self.frames) >= self._fail_after:
            raise RuntimeError("the stream is over")
        self.frames.append(str(frame.WhichOneof("msg")))


def _claimed(written: _Written) -> LocalTunnelCall:
    registry = TunnelRegistry()
    tunnel = Tunnel(1, SERVICES, written.write)
    registry.add(tunnel)
    found = registry.try_find(1, SVC, METHOD)
    assert found is tunnel
    return tunnel.start(METHOD, {})


async def test_call_frames_go_out_in_order_request_info_first() -> None:
    written = _Written()
    call = _claimed(written)
    assert written.frames == []  # nothing is written until the caller acts
    await call.send(b"header")
    await call.send(b"trailer")
    await call.close_send()
    assert written.frames == ["request_info", "message", "message", "close_send"]


async def test_a_listening_call_still_sends_request_info() -> None:
    written = _Written()
    call = _claimed(written)
    call.agent_gone("test over")
    event = await call.receive()
    assert written.frames == ["request_info"]
    assert isinstance(event, CallError)


async def test_a_failed_write_drops_later_frames_and_wakes_the_handler() -> None:
    written = _Written(fail_after=1)
    call = _claimed(written)
    call.tunnel.changed.clear()
    await call.send(b"header")
    assert call.write_failed
    assert call.tunnel.changed.is_set()
    await call.send(b"more")
    await call.close_send()
    assert written.frames == ["request_info"]


async def test_a_cancelled_call_writes_nothing_more() -> None:
    written = _Written()
    call = _claimed(written)
    await call.send(b"header")
    await call.cancel()
    await call.send(b"late")
    assert written.frames == ["request_info", "message"]


def test_connection_age_values_derive_from_max_connection_age() -> None:
    listen = KasConfig.model_validate({"agent": {"listen": {"max_connection_age": "2h"}}}).agent.listen
    assert listen.grpc_max_connection_age == pytest.approx(24 * 60)
    assert listen.grpc_max_connection_age_grace == pytest.approx(78 * 60)
    assert listen.age_context == pytest.approx(36 * 60)


def test_config_file_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "kas.yaml").write_text("agents:\n  file: agents.yaml\nagent:\n  tunnel_find_timeout: 500ms\n")
    config = load_config(tmp_path / "kas.yaml")
    assert config.agents.file == tmp_path / "agents.yaml"
    assert config.agent.tunnel_find_timeout == pytest.approx(0.5)


def test_unknown_kas_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="bogus"):
        KasConfig.model_validate({"agent": {"bogus": 1}})


def test_jwt_round_trip_and_rejections() -> None:
    secret = jwt.load_secret(base64.b64encode(b"k" * 32))
    claims = jwt.verify(jwt.encode(secret), secret)
    assert claims["iss"] == claims["aud"] == "gitlab-kas"
    assert claims["exp"] - claims["iat"] == 5
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.verify(jwt.encode(Secret(b"other")), secret)
    with pytest.raises(jwt.JwtError, match="audience"):
        jwt.verify(jwt.encode(secret, audience="gitlab"), secret)
    with pytest.raises(jwt.JwtError, match="expired"):
        jwt.verify(jwt.encode(secret, lifetime=-1), secret)


def test_agents_file_errors_never_show_tokens() -> None:
    token = "super-secret-token-value"
    with pytest.raises(AgentsFileError) as err:
        parse_agents({"agents": [{"id": "x", "name": "a", "project_path": "p", "tokens": [token]}]})
    assert token not in str(err.value)
    agents = parse_agents({"agents": [{"id": 1, "name": "a", "project_path": "p", "tokens": [token]}]})
    assert token not in repr(agents)


def test_agent_directory_reloads_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents: [{id: 1, name: a, project_path: g/p, tokens: [t1]}]\n")
    directory = AgentDirectory(path)
    assert directory.authenticate("t1") == AgentInfo(1, "a", "g/p")
    path.write_text("agents: [{id: 1, name: a, project_path: g/p, tokens: [t2, t3]}]\n")
    assert directory.reload()
    assert directory.authenticate("t1") is None
    assert directory.authenticate("t3") is not None


def test_configuration_parsing() -> None:
    parsed = parse_configuration_file(b"ci_access:\n  groups:\n    - id: g\n", 1000)
    assert parsed.ci_access.groups[0].id == "g"
    assert parse_configuration_file(b"", 10).ByteSize() == 0
    with pytest.raises(ConfigError, match="colour"):
        parse_configuration_file(b"observability:\n  colour: red\n", 1000)
    with pytest.raises(ConfigError, match="maximum"):
        parse_configuration_file(b"x" * 11, 10)
    with pytest.raises(ConfigError, match="mapping"):
        parse_configuration_file(b"- a\n", 100)


def test_redis_formats() -> None:
    assert le8(-2) == b"\xfe" + b"\xff" * 7
    from agent_proto.gitlab.agent.redistool import redistool_pb2

    expired = redistool_pb2.ExpiringValue(expires_at=int(time.time()) - 1, value=b"x").SerializeToString()
    assert live_value(expired) is None


async def test_registry_queues_then_hands_over_and_puts_back() -> None:
    firsts: list[int] = []
    registry = TunnelRegistry(on_first_tunnel=firsts.append)
    waiting = asyncio.create_task(registry.find(1, SVC, METHOD), name="waiter")
    await asyncio.sleep(0)
    tunnel = Tunnel(1, SERVICES, _Written().write)
    registry.add(tunnel)
    assert await waiting is tunnel
    assert tunnel.state is TunnelState.RESERVED
    assert firsts == [1]
    registry.put_back(tunnel)
    assert registry.counts() == (1, 1, 0)
    assert registry.try_find(1, SVC, "Other") is None
    assert registry.try_find(1, SVC, METHOD) is tunnel


async def test_cancelled_waiter_leaves_no_trace_and_shutdown_fails_waiters() -> None:
    registry = TunnelRegistry()
    waiting = asyncio.create_task(registry.find(1, SVC, METHOD), name="waiter")
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert registry.counts() == (0, 0, 0)
    waiting = asyncio.create_task(registry.find(1, SVC, METHOD), name="waiter2")
    await asyncio.sleep(0)
    registry.shutdown()
    with pytest.raises(KasShuttingDownError):
        await waiting
