"""The controller keeps only what a reconciliation reads of each resource body."""

from __future__ import annotations

from agent_operator.controller import kept_body


def test_keeps_spec_status_uid_and_generation_and_drops_the_rest() -> None:
    spec = {"kasAddress": "grpc://kas:8150", "tokenSecretRef": {"name": "t"}}
    status = {"phase": "Connected", "conditions": [{"type": "Ready", "status": "True"}]}
    body = {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {
            "name": "a",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "resourceVersion": "42",
            "annotations": {"agentk.dev/last-handled-configuration": '{"spec": {}}'},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "finalizers": ["agentk.dev/worker-cleanup"],
        },
        "spec": spec,
        "status": status,
    }
    kept = kept_body(body)
    assert kept == {"metadata": {"uid": "u-1", "generation": 3}, "spec": spec, "status": status}
    assert kept["spec"] is spec, "shared, not copied"


def test_a_body_without_status_or_metadata_stays_without() -> None:
    assert kept_body({"spec": {}}) == {"metadata": {}, "spec": {}}


def test_keeps_the_creation_timestamp_that_orders_admission() -> None:
    meta = {"uid": "u", "creationTimestamp": "2026-12-05T20:00:00Z", "labels": {"a": "b"}}
    assert kept_body({"metadata": meta})["metadata"] == {
        "uid": "u",
        "creationTimestamp": "2026-12-05T20:00:00Z",
    }
