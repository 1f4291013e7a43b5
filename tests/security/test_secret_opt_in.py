"""Finding 11 (confused deputy): a tenant who may create a GitLabAgent chooses its kas, so the operator
sends a Secret's value there only when the Secret opted in to that agent; the status never lists the key
names of a Secret. Finding 13: kasHeaders values and proxy credentials come from such Secrets too.

Pure mapping tests (no servers): the hostile tenant's GitLabAgent names a Secret it cannot read.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agent_operator.api import GitLabAgentSpec
from agent_operator.mapping import (
    ALLOWED_AGENTS_ANNOTATION,
    AgentKey,
    Missing,
    RefKind,
    SourceKind,
    SourceRef,
    Unresolved,
    credential_sources,
    resolve,
    sources_of,
    token_from_secret,
)
from agent_operator.sources import kept_of_source
from agent_runtime.secret import Secret
from agent_runtime.spec import WorkerSpec
from agent_runtime.transport.proxy import parse_proxy_url

NS = "team-a"
AGENT = AgentKey(NS, "mallory")
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9." + "p" * 60  # a ServiceAccount token: what the tenant wants to steal
AGENT_TOKEN = "glagent-" + "t" * 40


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def spec(**fields: Any) -> GitLabAgentSpec:
    return GitLabAgentSpec.model_validate(
        {"kasAddress": "wss://kas.attacker.example", "tokenSecretRef": {"name": "victim"}, **fields}
    )


def secret(
    name: str, data: dict[str, str], *, allowed: str | None = None, type_: str = "Opaque"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if allowed is not None:
        meta["annotations"] = {ALLOWED_AGENTS_ANNOTATION: allowed}
    return {"metadata": meta, "type": type_, "data": {k: b64(v) for k, v in data.items()}}


def sa_token_secret(allowed: str | None = None) -> dict[str, Any]:
    data = {"token": SA_TOKEN, "ca.crt": "-----BEGIN CERTIFICATE-----", "namespace": NS}
    return secret("victim", data, allowed=allowed, type_="kubernetes.io/service-account-token")


def _shown(missing: Missing) -> str:
    return missing.reason + missing.message + missing.hint


def test_a_service_account_token_secret_is_never_used_even_when_annotated() -> None:
    for allowed in (None, "mallory", "*"):
        result = token_from_secret(sa_token_secret(allowed), AGENT, spec())
        assert isinstance(result, Missing)
        assert result.reason == "SecretTypeRefused"
        assert SA_TOKEN not in _shown(result)


def test_a_secret_that_did_not_opt_in_is_refused_with_the_command_that_opts_it_in() -> None:
    result = token_from_secret(secret("victim", {"token": SA_TOKEN}), AGENT, spec())

    assert isinstance(result, Missing)
    assert result.reason == "SecretNotOptedIn"
    assert "team-a/victim" in result.message
    assert "kubectl -n team-a annotate secret victim agentk.dev/allowed-agents=mallory" in result.hint
    assert SA_TOKEN not in _shown(result)


def test_a_secret_for_other_agents_is_refused_and_the_hint_keeps_their_names() -> None:
    result = token_from_secret(secret("victim", {"token": SA_TOKEN}, allowed="alice, bob"), AGENT, spec())

    assert isinstance(result, Missing)
    assert result.reason == "SecretNotOptedIn"
    assert "--overwrite" in result.hint
    assert "alice" not in _shown(result)  # who else uses it is none of this tenant's business


@pytest.mark.parametrize("allowed", ["mallory", "alice,mallory", " alice , mallory ", "*"])
def test_an_opted_in_secret_is_used(allowed: str) -> None:
    obj = secret("victim", {"token": AGENT_TOKEN}, allowed=allowed)
    assert token_from_secret(obj, AGENT, spec()) == Secret(AGENT_TOKEN)


def test_the_opt_in_names_whole_agent_names_only() -> None:
    for allowed in ("mallory-2", "mall", "mallory.x", ""):
        obj = secret("victim", {"token": AGENT_TOKEN}, allowed=allowed)
        assert isinstance(token_from_secret(obj, AGENT, spec()), Missing), allowed


def test_the_status_never_lists_the_key_names_of_a_secret() -> None:
    # Opted in, but the spec names a key that is not there: only that key is named.
    obj = secret("victim", {"tls.key": "x", "db-password": "y"}, allowed="mallory")
    result = token_from_secret(obj, AGENT, spec())

    assert isinstance(result, Missing)
    assert result.reason == "KeyNotFound"
    assert "'token'" in result.message
    assert "tls.key" not in _shown(result)
    assert "db-password" not in _shown(result)


def test_keys_of_a_secret_that_did_not_opt_in_are_not_even_probed() -> None:
    # The key named in the spec is missing, but the refusal is the opt-in: no key oracle for the tenant.
    spec_other_key = spec(tokenSecretRef={"name": "victim", "key": "guess"})
    result = token_from_secret(secret("victim", {"token": SA_TOKEN}), AGENT, spec_other_key)
    assert isinstance(result, Missing)
    assert result.reason == "SecretNotOptedIn"


def _objects(*secrets: dict[str, Any]) -> dict[SourceRef, Any]:
    return {SourceRef(SourceKind.SECRET, NS, s["metadata"]["name"]): s for s in secrets}


TOKEN_SECRET = secret("victim", {"token": AGENT_TOKEN}, allowed="mallory")


def test_header_values_come_from_opted_in_secrets() -> None:
    headers = [
        {"name": "X-Tenant", "value": "team-a"},
        {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}}},
    ]
    gateway = secret("gateway", {"api-key": "k3y-value\n"}, allowed="mallory")

    worker = resolve(AGENT, spec(kasHeaders=headers), _objects(TOKEN_SECRET, gateway))

    assert isinstance(worker, WorkerSpec)
    assert worker.kas_headers == (("X-Tenant", "team-a"), ("X-Api-Key", "k3y-value"))
    assert "k3y-value" not in repr(worker)


def test_a_header_from_a_secret_that_did_not_opt_in_stops_the_agent() -> None:
    headers = [{"name": "X-Steal", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
    db = secret("db", {"password": "hunter2"})

    result = resolve(AGENT, spec(kasHeaders=headers), _objects(TOKEN_SECRET, db))

    assert isinstance(result, Unresolved)
    assert result.kind is RefKind.CREDENTIAL
    assert result.missing.reason == "SecretNotOptedIn"
    assert "spec.kasHeaders[0].valueFrom" in result.missing.message
    assert "hunter2" not in _shown(result.missing)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\x00b", ""])
def test_a_header_value_with_control_characters_is_refused(value: str) -> None:
    headers = [{"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "k"}}}]
    gateway = secret("gateway", {"k": value}, allowed="mallory")

    result = resolve(AGENT, spec(kasHeaders=headers), _objects(TOKEN_SECRET, gateway))

    assert isinstance(result, Unresolved)
    assert result.missing.reason in ("SecretInvalid", "SecretEmpty")


def test_proxy_credentials_come_from_an_opted_in_basic_auth_secret() -> None:
    proxy = {"url": "http://proxy.internal:3128", "credentialsSecretRef": {"name": "proxy-login"}}
    login = secret(
        "proxy-login",
        {"username": "svc agent", "password": "p@ss:w/rd%"},
        allowed="mallory",
        type_="kubernetes.io/basic-auth",
    )

    worker = resolve(AGENT, spec(proxy=proxy), _objects(TOKEN_SECRET, login))

    assert isinstance(worker, WorkerSpec)
    assert worker.proxy is not None
    parsed = parse_proxy_url(worker.proxy.url)
    assert (parsed.host, parsed.port) == ("proxy.internal", 3128)
    expected = "Basic " + base64.b64encode(b"svc agent:p@ss:w/rd%").decode()
    assert parsed.authorization == expected
    assert "p@ss" not in repr(worker)
    assert "p%40ss" not in repr(worker)


def test_proxy_credentials_from_a_secret_that_did_not_opt_in_are_refused() -> None:
    proxy = {"url": "http://proxy.internal:3128", "credentialsSecretRef": {"name": "proxy-login"}}
    login = secret("proxy-login", {"username": "u", "password": "p"})

    result = resolve(AGENT, spec(proxy=proxy), _objects(TOKEN_SECRET, login))

    assert isinstance(result, Unresolved)
    assert result.missing.reason == "SecretNotOptedIn"
    assert "spec.proxy.credentialsSecretRef" in result.missing.message


def test_every_secret_whose_value_leaves_the_cluster_needs_the_opt_in_and_is_watched() -> None:
    full = spec(
        kasHeaders=[{"name": "X-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "k"}}}],
        proxy={"url": "http://proxy:3128", "credentialsSecretRef": {"name": "proxy-login"}},
        caCert={"configMapKeyRef": {"name": "kas-ca"}},
    )
    secrets = {SourceRef(SourceKind.SECRET, NS, n) for n in ("victim", "gateway", "proxy-login")}

    assert credential_sources(NS, full) == secrets
    assert sources_of(NS, full) == secrets | {SourceRef(SourceKind.CONFIG_MAP, NS, "kas-ca")}


def test_the_cache_keeps_the_opt_in_annotation_and_no_other() -> None:
    obj = secret("victim", {"token": AGENT_TOKEN}, allowed="mallory")
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = AGENT_TOKEN

    kept = kept_of_source(obj)

    assert kept["metadata"]["annotations"] == {ALLOWED_AGENTS_ANNOTATION: "mallory"}
    assert AGENT_TOKEN not in str(kept["metadata"])
