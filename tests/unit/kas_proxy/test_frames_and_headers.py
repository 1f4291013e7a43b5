"""The frames the proxy sends and decodes (§4.2, §7.2) and its header rewriting (§7.4, §10.6, §10.8)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from agent_proto.flavor import ImpersonationConfig, WireFlavor, wire_names
from agent_proto.gitlab.agent.grpctool import grpctool_pb2 as grpctool
from agent_proto.gitlab.agent.prototool import prototool_pb2 as prototool
from kas.k8s_proxy import frames
from kas.k8s_proxy.cors import OriginRefusedError, cors_headers, is_preflight, preflight_headers
from kas.k8s_proxy.headers import merge_response_header, request_header, request_query

VIA = "gRPC/1.0 gitlab-kas/v0.1.0/unknown"


def head(**overrides: object) -> frames.RequestHead:
    fields: dict[str, object] = {
        "method": "GET",
        "url_path": "/api/v1/pods",
        "header": {"Accept": ["application/json"]},
        "query": {"limit": ["500"]},
        "content_length": 0,
        "impersonation": None,
    }
    fields.update(overrides)
    return frames.RequestHead(**fields)  # type: ignore[arg-type]


def test_header_frame_always_carries_content_length() -> None:
    names = wire_names(WireFlavor.GITLAB)

    message = grpctool.HttpRequest.FromString(frames.header_frame(head(), names))

    assert message.WhichOneof("message") == "header"
    assert message.header.HasField("content_length")  # present even when 0: presence matters
    assert message.header.content_length == 0
    assert not message.header.HasField("extra")
    assert message.header.request.url_path == "/api/v1/pods"
    assert list(message.header.request.query["limit"].value) == ["500"]


@pytest.mark.parametrize("flavor", list(WireFlavor))
def test_impersonation_travels_as_header_extra_of_the_flavor(flavor: WireFlavor) -> None:
    names = wire_names(flavor)
    imp = ImpersonationConfig(username="gitlab:ci_job:1", groups=["gitlab:ci_job"])

    message = grpctool.HttpRequest.FromString(
        frames.header_frame(head(impersonation=imp, content_length=-1), names)
    )

    assert message.header.content_length == -1
    assert (
        message.header.extra.type_url
        == f"type.googleapis.com/{flavor.value}.agent.kubernetes_api.rpc.HeaderExtra"
    )
    assert names.unpack_header_extra(message.header.extra).username == "gitlab:ci_job:1"


def test_body_frames() -> None:
    assert grpctool.HttpRequest.FromString(frames.data_frame(b"abc")).data.data == b"abc"
    assert grpctool.HttpRequest.FromString(frames.trailer_frame()).WhichOneof("message") == "trailer"
    assert grpctool.HttpRequest.FromString(frames.upgrade_data_frame(b"x")).upgradeData.data == b"x"


def _response(**frame: object) -> bytes:
    return grpctool.HttpResponse(**frame).SerializeToString()  # type: ignore[arg-type]


def test_response_decoder_follows_the_allowed_order() -> None:
    decoder = frames.ResponseDecoder()
    header = grpctool.HttpResponse.Header(
        response=prototool.HttpResponse(
            status_code=101,
            status="101 Switching Protocols",
            header={"Upgrade": prototool.Values(value=["SPDY/3.1"])},
        )
    )

    first = decoder.decode(_response(header=header))
    assert first == frames.ResponseHead(101, "Switching Protocols", {"Upgrade": ["SPDY/3.1"]})
    assert decoder.decode(_response(trailer=grpctool.HttpResponse.Trailer())) == frames.ResponseEnd()
    upgrade = decoder.decode(_response(upgradeData=grpctool.HttpResponse.UpgradeData(data=b"x")))
    assert upgrade == frames.ResponseUpgradeData(b"x")
    with pytest.raises(frames.ResponseFrameError, match="transition from upgradeData"):
        decoder.decode(_response(data=grpctool.HttpResponse.Data(data=b"late")))


def test_response_decoder_rejects_junk() -> None:
    with pytest.raises(frames.ResponseFrameError):
        frames.ResponseDecoder().decode(b"\xff\xff\xff")
    with pytest.raises(frames.ResponseFrameError, match="no fields in the oneof"):
        frames.ResponseDecoder().decode(b"")


def test_request_header_is_cleaned_and_canonical() -> None:
    client = [
        ("host", "kas.example"),
        ("authorization", "Bearer ci:1:secret"),
        ("cookie", "_gitlab_kas=x"),
        ("x-csrf-token", "t"),
        ("gitlab-agent-id", "1"),
        ("accept", "application/json"),
        ("impersonate-extra-foo", "bar"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("te", "trailers"),
        ("via", "1.1 ingress"),
    ]

    header = request_header(client, VIA)

    assert header == {
        "Accept": ["application/json"],
        "Impersonate-Extra-Foo": ["bar"],
        "Via": ["1.1 ingress", VIA],
    }


def test_upgrade_request_keeps_upgrade_and_connection() -> None:
    header = request_header([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")], VIA)

    assert header["Upgrade"] == ["SPDY/3.1"]
    assert header["Connection"] == ["upgrade"]


def test_request_query_drops_kas_parameters() -> None:
    query = request_query(
        [("watch", "1"), ("gitlab-agent-id", "1"), ("gitlab-csrf-token", "t"), ("labelSelector", "a=b")]
    )

    assert query == {"watch": ["1"], "labelSelector": ["a=b"]}


def test_response_merge_keeps_kas_headers_and_drops_cluster_cors() -> None:
    preset: CIMultiDict[str] = CIMultiDict(
        {"Access-Control-Allow-Origin": "https://gitlab.example", "Vary": "Origin"}
    )
    agent = {
        "Access-Control-Allow-Origin": ["*"],
        "Access-Control-Expose-Headers": ["X"],
        "Vary": ["Accept-Encoding", "origin"],
        "Content-Type": ["application/json"],
        "Transfer-Encoding": ["chunked"],
        "Server": ["apiserver"],
    }

    merged = merge_response_header(preset, agent, VIA)

    assert merged.getall("Access-Control-Allow-Origin") == ["https://gitlab.example"]
    assert "Access-Control-Expose-Headers" not in merged
    assert merged.getall("Vary") == ["Origin", "Accept-Encoding"]
    assert merged["Content-Type"] == "application/json"
    assert "Transfer-Encoding" not in merged
    assert "Server" not in merged
    assert merged.getall("Via") == [VIA]


def test_cors() -> None:
    allowed = {"https://gitlab.example"}
    assert len(cors_headers({}, allowed)) == 0
    with pytest.raises(OriginRefusedError):
        cors_headers({"Origin": "https://evil.example"}, allowed)
    base = cors_headers({"Origin": "https://gitlab.example"}, allowed)
    assert dict(base) == {
        "Access-Control-Allow-Origin": "https://gitlab.example",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    request = {
        "Origin": "https://gitlab.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-Csrf-Token",
    }
    assert is_preflight("OPTIONS", request)
    assert not is_preflight("GET", request)
    preflight = preflight_headers(request, base)
    assert preflight["Access-Control-Allow-Headers"] == "X-Csrf-Token"
    assert (
        preflight["Access-Control-Allow-Methods"]
        == "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
    )
    assert preflight["Access-Control-Max-Age"] == "86400"
