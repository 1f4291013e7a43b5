"""Property tests of the request-hygiene layer: whatever kas sends, what leaves for the API server is one
well-formed request whose framing, credentials and identity are the agent's own."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_runtime.modules.kubernetes_api.hygiene import (
    DROPPED_HEADERS,
    IMPERSONATE_PREFIX,
    RequestRejectedError,
    clean_request,
    is_token,
)
from agent_runtime.modules.kubernetes_api.outgoing import build_request

TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
DANGEROUS_NAMES = [
    "Impersonate-User",
    "Impersonate-Group",
    "Impersonate-Uid",
    "Impersonate-Extra-Scopes",
    "Authorization",
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Te",
    "Trailer",
    "Connection",
    "Keep-Alive",
    "Proxy-Authorization",
    "Proxy-Connection",
    "Upgrade",
]
OWN = (("Authorization", "Bearer operator"), ("Impersonate-User", "system:serviceaccount:a:agent"))


def _respell(name: str, flips: list[bool]) -> str:
    return "".join(
        ch.swapcase() if flip else ch for ch, flip in zip(name, flips + [False] * len(name), strict=False)
    )


names = st.one_of(
    st.text(alphabet=TCHARS, min_size=1, max_size=20),
    st.builds(_respell, st.sampled_from(DANGEROUS_NAMES), st.lists(st.booleans(), max_size=30)),
    st.text(min_size=1, max_size=20),  # anything at all: spaces, colons, CR/LF, non-ASCII
)
values = st.lists(st.text(max_size=40), min_size=1, max_size=3)
headers = st.dictionaries(names, values, max_size=8)
methods = st.one_of(st.sampled_from(["GET", "POST", "PATCH", "DELETE"]), st.text(min_size=0, max_size=12))
paths = st.one_of(st.text(max_size=30).map(lambda p: "/" + p), st.text(max_size=30))


def _request(method: str, path: str, header: dict[str, list[str]]) -> prototool_pb2.HttpRequest:
    return prototool_pb2.HttpRequest(
        method=method, url_path=path, header={k: prototool_pb2.Values(value=v) for k, v in header.items()}
    )


@settings(max_examples=400, deadline=None)
@given(methods, paths, headers)
def test_what_passes_hygiene_is_safe_to_write_on_the_wire(
    method: str, path: str, header: dict[str, list[str]]
) -> None:
    try:
        clean = clean_request(_request(method, path, header))
    except RequestRejectedError:
        return
    out = build_request(
        clean, {}, base_path="", content_length=None, identity_headers=OWN[1:], auth_headers=dict(OWN[:1])
    )
    assert is_token(out.method)
    assert out.path_and_query.startswith("/")
    head = "\r\n".join(
        [f"{out.method} {out.path_and_query} HTTP/1.1", *(f"{k}: {v}" for k, v in out.headers)]
    )
    assert head.count("\r\n") == len(out.headers), "nothing kas sent can start a line of its own"
    assert "\x00" not in head
    keys = [k for k, _ in out.headers]
    assert all(is_token(k) for k in keys)
    lowered = [k.lower() for k in keys]
    assert lowered.count("authorization") == 1, "the operator's credentials are the only ones"
    for name in ("host", "content-length", "transfer-encoding", "te", "trailer", "keep-alive"):
        assert name not in lowered
    assert not any(k.startswith("proxy-") for k in lowered)
    if clean.upgrade is None:
        assert "connection" not in lowered
        assert "upgrade" not in lowered


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([n for n in DANGEROUS_NAMES if n.startswith(IMPERSONATE_PREFIX)]), st.data())
def test_impersonation_is_seen_in_any_spelling(name: str, data: st.DataObject) -> None:
    spelled = _respell(name, data.draw(st.lists(st.booleans(), max_size=30)))
    clean = clean_request(_request("GET", "/api", {spelled: ["system:admin"]}))
    assert clean.impersonates


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DROPPED_HEADERS - {"Upgrade"})), st.data())
def test_dropped_headers_are_dropped_in_any_spelling(name: str, data: st.DataObject) -> None:
    spelled = _respell(name, data.draw(st.lists(st.booleans(), max_size=30)))
    clean = clean_request(_request("GET", "/api", {spelled: ["x"]}))
    assert {k.lower() for k in clean.header}.isdisjoint({name.lower()})
