"""GitLabAgent + Secret/ConfigMap data → WorkerSpec, and every way the referenced data can be unusable."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agent_operator.api import GitLabAgentSpec
from agent_operator.mapping import (
    AgentKey,
    Missing,
    SourceKind,
    SourceRef,
    ca_from_object,
    ca_source,
    sources_of,
    token_from_secret,
    worker_spec,
)
from agent_proto.flavor import WireFlavor
from agent_runtime.secret import Secret
from agent_runtime.spec import FluxMode, ProxySettings, ServiceAccountRef, TunnelSettings

TOKEN = "glagent-" + "s" * 40
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = AgentKey("team-a", "agent")


def spec(**fields: Any) -> GitLabAgentSpec:
    return GitLabAgentSpec.model_validate(
        {"kasAddress": "wss://kas.example.com", "tokenSecretRef": {"name": "tok"}, **fields}
    )


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def secret_obj(data: dict[str, str], allowed: str = "agent") -> dict[str, Any]:
    """A token Secret that opted in to the agent KEY (annotation agentk.dev/allowed-agents)."""
    annotations = {"agentk.dev/allowed-agents": allowed}
    return {"metadata": {"name": "tok", "namespace": "team-a", "annotations": annotations}, "data": data}


def test_minimal_spec_maps_to_agentk_defaults() -> None:
    worker = worker_spec(KEY, spec(), Secret(TOKEN), None)

    assert worker.id == "team-a/agent"
    assert worker.kas_address == "wss://kas.example.com"
    assert worker.token == Secret(TOKEN)
    assert worker.identity == ServiceAccountRef("team-a", "default")
    assert worker.tunnels == TunnelSettings(min_idle=2, max=500)
    assert worker.proxy is None
    assert worker.kas_headers == ()
    assert worker.flavor is WireFlavor.GITLAB
    assert worker.tls.ca_pem is None
    assert not worker.tls.insecure_skip_verify


def test_every_field_is_carried_over() -> None:
    full = spec(
        kasAddress="grpcs://kas.internal:8150",
        caCert={"configMapKeyRef": {"name": "ca", "key": "bundle.pem"}},
        tlsServerName="kas.example.com",
        insecureSkipTLSVerify=True,
        kasHeaders=[{"name": "X-Tenant", "value": "a"}, {"name": "X-Other", "value": "b c"}],
        proxy={"url": "http://proxy:3128", "noProxy": ".svc"},
        serviceAccountName="deployer",
        tunnels={"minIdle": 5, "max": 10},
        wireFlavor="plural",
    )

    worker = worker_spec(KEY, full, Secret(TOKEN), PEM)

    assert worker.tls.ca_pem == PEM
    assert worker.tls.server_name == "kas.example.com"
    assert worker.tls.insecure_skip_verify
    assert worker.kas_headers == (("X-Tenant", "a"), ("X-Other", "b c"))
    assert worker.proxy == ProxySettings("http://proxy:3128", ".svc")
    assert worker.identity == ServiceAccountRef("team-a", "deployer")
    assert worker.tunnels == TunnelSettings(min_idle=5, max=10)
    assert worker.flavor is WireFlavor.PLURAL


def test_only_a_token_change_is_a_reconnect_in_place() -> None:
    old = worker_spec(KEY, spec(), Secret(TOKEN), None)
    rotated = worker_spec(KEY, spec(), Secret(TOKEN + "x"), None)
    moved = worker_spec(KEY, spec(kasAddress="wss://other.example.com"), Secret(TOKEN), None)

    assert rotated.same_connection_as(old)
    assert rotated != old
    assert not moved.same_connection_as(old)


def test_equal_inputs_give_equal_specs() -> None:
    assert worker_spec(KEY, spec(), Secret(TOKEN), PEM) == worker_spec(KEY, spec(), Secret(TOKEN), PEM)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"token": b64(TOKEN)}, TOKEN),
        ({"token": b64(TOKEN + "\n")}, TOKEN),
        ({"token": b64(TOKEN + "\r\n")}, TOKEN),
        ({"token": b64(TOKEN), "other": b64("x")}, TOKEN),
    ],
)
def test_token_is_read_from_the_named_key(data: dict[str, str], expected: str) -> None:
    assert token_from_secret(secret_obj(data), KEY, spec()) == Secret(expected)


def test_token_key_is_configurable() -> None:
    custom = spec(tokenSecretRef={"name": "tok", "key": "agent-token"})
    assert token_from_secret(secret_obj({"agent-token": b64(TOKEN)}), KEY, custom) == Secret(TOKEN)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (None, "SecretNotFound"),
        (secret_obj({}), "KeyNotFound"),
        ({"metadata": {"annotations": {"agentk.dev/allowed-agents": "agent"}}}, "KeyNotFound"),
        (secret_obj({"other": b64(TOKEN)}), "KeyNotFound"),
        (secret_obj({"token": "!!not base64!!"}), "TokenUnreadable"),
        (secret_obj({"token": b64(b"\xff\xfe")}), "TokenInvalid"),
        (secret_obj({"token": ""}), "TokenEmpty"),
        (secret_obj({"token": b64("\n")}), "TokenEmpty"),
        (secret_obj({"token": b64("two words")}), "TokenInvalid"),
        (secret_obj({"token": b64("tok\x00en")}), "TokenInvalid"),
        (secret_obj({"token": b64("token\n\n")}), "TokenInvalid"),
    ],
)
def test_unusable_token_secrets_have_typed_reasons_and_hints(obj: dict[str, Any] | None, reason: str) -> None:
    result = token_from_secret(obj, KEY, spec())

    assert isinstance(result, Missing)
    assert result.reason == reason
    assert result.hint
    assert "team-a/tok" in result.message
    assert TOKEN not in result.message + result.hint


def test_key_not_found_names_only_the_key_the_spec_named() -> None:
    # The status is read by people who may not read the Secret: its other key names stay private.
    result = token_from_secret(secret_obj({"tokn": b64(TOKEN), "admin-password": b64("x")}), KEY, spec())
    assert isinstance(result, Missing)
    assert "'token'" in result.message
    for private in ("tokn", "admin-password", TOKEN, b64(TOKEN)):
        assert private not in result.message + result.hint


def test_sources_name_the_token_secret_and_the_ca_object() -> None:
    with_ca = spec(caCert={"secretKeyRef": {"name": "ca-secret"}})
    same = spec(caCert={"secretKeyRef": {"name": "tok", "key": "ca.crt"}})

    assert sources_of("ns", spec()) == {SourceRef(SourceKind.SECRET, "ns", "tok")}
    assert sources_of("ns", with_ca) == {
        SourceRef(SourceKind.SECRET, "ns", "tok"),
        SourceRef(SourceKind.SECRET, "ns", "ca-secret"),
    }
    assert sources_of("ns", same) == {SourceRef(SourceKind.SECRET, "ns", "tok")}


@pytest.mark.parametrize(
    ("ca", "obj", "expected"),
    [
        ({"secretKeyRef": {"name": "ca"}}, {"data": {"ca.crt": b64(PEM)}}, PEM),
        ({"configMapKeyRef": {"name": "ca"}}, {"data": {"ca.crt": PEM.decode()}}, PEM),
        ({"configMapKeyRef": {"name": "ca", "key": "b"}}, {"binaryData": {"b": b64(PEM)}}, PEM),
    ],
)
def test_ca_certificates_from_secret_or_config_map(
    ca: dict[str, Any], obj: dict[str, Any], expected: bytes
) -> None:
    source, key = ca_source("ns", spec(caCert=ca).ca_cert)  # type: ignore[arg-type]  # set above
    assert ca_from_object(obj, source, key) == expected


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (None, "CACertificateNotFound"),
        ({"data": {}}, "CACertificateNotFound"),
        ({"data": {"ca.crt": b64(b"not a certificate")}}, "CACertificateInvalid"),
    ],
)
def test_unusable_ca_objects(obj: dict[str, Any] | None, reason: str) -> None:
    source = SourceRef(SourceKind.SECRET, "ns", "ca")
    result = ca_from_object(obj, source, "ca.crt")
    assert isinstance(result, Missing)
    assert result.reason == reason
    assert "ns/ca" in result.message


def test_agent_key_round_trips() -> None:
    assert AgentKey.parse(str(KEY)) == KEY
    with pytest.raises(ValueError, match="namespace"):
        AgentKey.parse("no-slash")


def test_spec_flux_mode_reaches_the_worker_and_defaults_to_requested_at() -> None:
    assert worker_spec(KEY, spec(), Secret(TOKEN), None).flux_mode is FluxMode.REQUESTED_AT
    receiver = spec(flux={"mode": "receiver"})
    assert receiver.flux.enabled is True
    assert worker_spec(KEY, receiver, Secret(TOKEN), None).flux_mode is FluxMode.RECEIVER
    with pytest.raises(ValueError, match="requestedAt"):
        spec(flux={"mode": "webhook"})
