"""SourceIndex: which agents use which Secret/ConfigMap, and which objects nobody uses any more; what the
cache keeps of them."""

from __future__ import annotations

from agent_operator.mapping import AgentKey, SourceKind, SourceRef
from agent_operator.sources import SourceIndex, kept_of_source

A, B = AgentKey("ns", "a"), AgentKey("ns", "b")
TOKEN_1 = SourceRef(SourceKind.SECRET, "ns", "token-1")
TOKEN_2 = SourceRef(SourceKind.SECRET, "ns", "token-2")
CA = SourceRef(SourceKind.CONFIG_MAP, "ns", "ca")


def test_changing_references_releases_only_what_nobody_uses() -> None:
    index = SourceIndex()
    assert index.set(A, frozenset({TOKEN_1, CA})) == frozenset()
    assert index.set(B, frozenset({CA})) == frozenset()
    # a moves to another token: token-1 is free, the CA map is still b's
    assert index.set(A, frozenset({TOKEN_2})) == frozenset({TOKEN_1})
    assert index.agents(CA) == [B]
    # setting the same references again releases nothing
    assert index.set(A, frozenset({TOKEN_2})) == frozenset()


def test_removing_an_agent_releases_its_objects_unless_shared() -> None:
    index = SourceIndex()
    index.set(A, frozenset({TOKEN_1, CA}))
    index.set(B, frozenset({CA}))
    assert index.remove(A) == frozenset({TOKEN_1})
    assert index.remove(B) == frozenset({CA})
    assert index.remove(B) == frozenset()
    assert index.agents(CA) == []


def test_the_cache_keeps_a_sources_data_and_name_only() -> None:
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "agent-token",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"agentk.dev/watched": "true"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"token":"c2VjcmV0"}}'
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {}}],
        },
        "data": {"token": "c2VjcmV0"},
    }
    assert kept_of_source(applied) == {
        "type": "Opaque",
        "metadata": {
            "name": "agent-token",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"agentk.dev/watched": "true"},
        },
        "data": {"token": "c2VjcmV0"},
    }
    config_map = {"metadata": {"name": "ca", "namespace": "ns"}, "binaryData": {"ca.crt": "LS0t"}}
    assert kept_of_source(config_map) == config_map
