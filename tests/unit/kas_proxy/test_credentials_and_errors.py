"""Bearer credential parsing (§10.2), URL prefix handling (§10.1) and error bodies (§10.7)."""

from __future__ import annotations

import json

import pytest

from kas.k8s_proxy.credentials import CredentialKind, parse_authorization
from kas.k8s_proxy.errors import ProxyError, status_body, wants_text
from kas.k8s_proxy.gate import strip_prefix
from kas.k8s_proxy.settings import ProxySettings


def test_ci_job_credential() -> None:
    credential = parse_authorization(["Bearer ci:42:job:token:with:colons"])

    assert credential.kind is CredentialKind.CI_JOB
    assert credential.agent_id == 42
    assert credential.token.reveal() == b"job:token:with:colons"  # split on the first two colons only


def test_personal_access_token_credential() -> None:
    credential = parse_authorization(["Bearer pat:7:glpat-abc"])

    assert (credential.kind, credential.agent_id, credential.token.reveal()) == (
        CredentialKind.PERSONAL_ACCESS_TOKEN,
        7,
        b"glpat-abc",
    )


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "no valid credentials provided"),
        (["Bearer ci:1:a", "Bearer ci:1:b"], "more than one Authorization header"),
        (["bearer ci:1:secret-token"], "expecting Bearer token"),
        (["Bearer  ci:1:secret-token"], "unknown token type"),
        (["Basic Y2k6MTpzZWNyZXQ="], "expecting Bearer token"),
        (["Bearer secret-token"], "invalid value"),
        (["Bearer plrl:1:secret-token"], "unknown token type"),
        (["Bearer ci:abc:secret-token"], "invalid agent id"),
        (["Bearer ci:-1:secret-token"], "invalid agent id"),
        (["Bearer ci:99999999999999999999:secret-token"], "invalid agent id"),
        (["Bearer ci:1:"], "empty token"),
        (["Bearer ci:1"], "invalid agent id"),
    ],
)
def test_unusable_credentials_are_401_without_the_token(values: list[str], reason: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_authorization(values)

    assert caught.value.code == 401
    assert reason in caught.value.message
    assert caught.value.headers == {"Gitlab-Unauthorized": "true"}
    assert "secret" not in str(caught.value)


def test_token_is_redacted_in_repr() -> None:
    credential = parse_authorization(["Bearer ci:1:very-secret"])

    assert "very-secret" not in repr(credential)
    assert "very-secret" not in f"{credential.token}"


@pytest.mark.parametrize(
    ("configured", "prefix"),
    [
        ("/", "/"),
        ("", "/"),
        ("/k8s-proxy", "/k8s-proxy/"),
        ("/k8s-proxy/", "/k8s-proxy/"),
        ("k8s-proxy", "/k8s-proxy/"),
    ],
)
def test_prefix_always_ends_with_one_slash(configured: str, prefix: str) -> None:
    assert ProxySettings(url_path_prefix=configured).prefix == prefix


def test_strip_prefix_keeps_the_leading_slash() -> None:
    assert strip_prefix("/k8s-proxy/api/v1/pods", "/k8s-proxy/") == "/api/v1/pods"
    assert strip_prefix("/api", "/") == "/api"


@pytest.mark.parametrize("path", ["/k8s-proxy", "/api/v1", "/k8s-proxyx/api"])
def test_path_outside_prefix_is_400(path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        strip_prefix(path, "/k8s-proxy/")

    assert caught.value.code == 400
    assert caught.value.message == "Bad request: URL does not start with expected prefix"


def test_status_body_is_a_kubernetes_status() -> None:
    body = json.loads(status_body(403, "Forbidden: agentId is not allowed"))

    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "GitLab Agent Server: Forbidden: agentId is not allowed",
        "reason": "Forbidden",
        "code": 403,
    }


@pytest.mark.parametrize(("code", "reason"), [(401, "Unauthorized"), (404, "NotFound"), (502, "BadGateway")])
def test_status_reasons(code: int, reason: str) -> None:
    assert json.loads(status_body(code, "x"))["reason"] == reason


def test_discovery_requests_get_text_errors() -> None:
    assert wants_text(
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", "/x"
    )
    assert wants_text("application/json, */*", "/api")
    assert wants_text("application/json, */*", "/apis/")
    assert not wants_text("application/json, */*", "/api/v1/pods")
