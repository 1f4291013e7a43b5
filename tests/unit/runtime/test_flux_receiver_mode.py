"""Receiver mode's pure parts: which webhook base URLs pass the operator's list, the URL joined with a
Receiver's webhook path, and Receiver names."""

from __future__ import annotations

import pytest

from agent_runtime.modules.flux.receivers import NAME_LIMIT, receiver_name
from agent_runtime.modules.flux.webhook import BaseUrl, WebhookUrlError, allowed_base

FLUX_SERVICE = "http://webhook-receiver.flux-system.svc.cluster.local"


@pytest.mark.parametrize(
    "configured",
    [
        "",  # agentk's default: Flux's Service
        FLUX_SERVICE,
        FLUX_SERVICE + "/",
        "HTTP://Webhook-Receiver.flux-system.svc.cluster.local:80",
    ],
)
def test_the_flux_service_url_passes_in_any_spelling(configured: str) -> None:
    assert str(allowed_base(configured, (FLUX_SERVICE,))) == (
        "http://webhook-receiver.flux-system.svc.cluster.local:80"
    )


@pytest.mark.parametrize(
    "configured",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://webhook-receiver.flux-system.svc.cluster.local:8080",  # another port
        "https://webhook-receiver.flux-system.svc.cluster.local",  # another scheme
        FLUX_SERVICE + "/api",  # another path
        "http://user:pw@webhook-receiver.flux-system.svc.cluster.local",
        FLUX_SERVICE + "?x=1",
        "/api/v1/namespaces/flux-system/services/http:webhook-receiver:80/proxy",  # agentk's proxy form
        "file:///etc/passwd",
    ],
)
def test_anything_else_is_refused(configured: str) -> None:
    with pytest.raises(
        WebhookUrlError, match=r"not allowed by the operator|not an http|credentials, a query"
    ):
        allowed_base(configured, (FLUX_SERVICE,))


def test_an_empty_operator_list_refuses_everything() -> None:
    with pytest.raises(WebhookUrlError, match=r"allowed: none"):
        allowed_base(FLUX_SERVICE, ())


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/hook/3f2a9c", "http://127.0.0.1:9292/base/hook/3f2a9c"),
        ("", None),
        ("/hook/", None),
        ("/hook/../../admin", None),
        ("/other/abc", None),
        ("/hook/abc?x=1", None),
        ("/hook/abc#f", None),
        ("//evil.example/hook/abc", None),
    ],
)
def test_only_a_webhook_path_is_joined(path: str, url: str | None) -> None:
    assert BaseUrl.parse("http://127.0.0.1:9292/base/").join(path) == url


def test_receiver_names_carry_the_agent_and_stay_within_63_characters() -> None:
    assert receiver_name(42, "podinfo") == "gitlab-42-podinfo"
    long_a, long_b = "a" * 60 + "-one", "a" * 60 + "-two"
    name_a, name_b = receiver_name(42, long_a), receiver_name(42, long_b)
    assert len(name_a) == NAME_LIMIT
    assert len(name_b) == NAME_LIMIT
    assert name_a != name_b  # the digest keeps cut names apart
    assert name_a[-9] == "-"
    assert name_a[-10].isalnum()
