"""Request-hygiene limits and rules that mutation testing found unpinned (docs/testing.md); the attacks and
properties are in tests/security/test_hygiene_*.py."""

from __future__ import annotations

import pytest

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_runtime.modules.kubernetes_api.hygiene import CleanRequest, RequestRejectedError, clean_request


def clean(
    method: str = "GET", path: str = "/api", raw: dict[str, list[str]] | None = None, **header: list[str]
) -> CleanRequest:
    named = {name.replace("_", "-"): v for name, v in header.items()} | (raw or {})
    values = {name: prototool_pb2.Values(value=v) for name, v in named.items()}
    return clean_request(prototool_pb2.HttpRequest(method=method, url_path=path, header=values))


def test_the_method_may_have_32_characters_not_33() -> None:
    assert clean(method="M" * 32).method == "M" * 32
    with pytest.raises(RequestRejectedError, match=r"method 'M{32}' is not an HTTP token"):
        clean(method="M" * 33)


def test_the_path_may_have_16_kib_not_more() -> None:
    assert clean(path="/" + "a" * (16 * 1024 - 1)).url_path.endswith("a")
    with pytest.raises(RequestRejectedError, match="at most 16 KiB"):
        clean(path="/" + "a" * 16 * 1024)


def test_a_header_name_may_have_256_characters_and_the_message_shows_64() -> None:
    assert "X" + "n" * 255 in clean(raw={"X" + "n" * 255: ["v"]}).header
    long = "X" + "n" * 256
    with pytest.raises(RequestRejectedError) as refused:
        clean(raw={long: ["v"]})
    assert repr(long[:64]) in str(refused.value)
    assert repr(long[:65]) not in str(refused.value)


@pytest.mark.parametrize("value", ["a\tb", "a b", "~", "caf\u00e9", ""])
def test_tabs_spaces_and_printable_text_are_kept(value: str) -> None:
    assert clean(X_Value=[value]).header["X-Value"] == [value]


@pytest.mark.parametrize("value", ["a\x00b", "a\rb", "a\nb", "\x1f", "\x7f"])
def test_other_control_characters_are_refused(value: str) -> None:
    with pytest.raises(RequestRejectedError, match="X-Value has a value with control characters"):
        clean(X_Value=[value])


def test_what_connection_names_is_dropped_besides_the_fixed_set() -> None:
    header = clean(Connection=["X-Hop"], X_Hop=["1"], Authorization=["Bearer kas"], X_Kept=["2"]).header
    assert header == {"X-Kept": ["2"]}


def test_proxy_headers_are_dropped_and_the_rest_kept() -> None:
    header = clean(Proxy_Anything=["x"], X_Kept=["2"]).header
    assert header == {"X-Kept": ["2"]}


def test_an_upgrade_is_set_apart_and_checked() -> None:
    upgraded = clean(Upgrade=[" SPDY/3.1 ", "websocket"], Connection=["Upgrade"])
    assert upgraded.upgrade == "SPDY/3.1, websocket"
    assert "Upgrade" not in upgraded.header
    assert clean().upgrade is None
    for bad in ([" "], ["spdy;3"]):
        with pytest.raises(RequestRejectedError, match="Upgrade header is not a list of protocol tokens"):
            clean(Upgrade=bad)
