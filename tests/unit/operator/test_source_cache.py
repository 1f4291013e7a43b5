"""What the Secret/ConfigMap cache keeps (agent_operator.sources) and the informer's refill/retransform."""

from __future__ import annotations

from typing import Any, cast

from agent_operator.api import GitLabAgentSpec
from agent_operator.kube_api import KubeApi
from agent_operator.mapping import (
    ALLOWED_AGENTS_ANNOTATION,
    AgentKey,
    SourceKind,
    SourceRef,
    SourceUses,
    add_uses,
)
from agent_operator.sources import DATA_WITHHELD, MAX_KEPT_DATA_BYTES, WATCHED_LABEL, Sources, name_only
from agent_runtime.informer import Informer, ResourceKind
from agent_runtime.kube import KubeAccess

REF = SourceRef(SourceKind.SECRET, "team-a", "token")


def _secret(value: str = "dG9rZW4=", rv: str = "7", **extra_meta: Any) -> dict[str, Any]:
    meta = {"name": REF.name, "namespace": REF.namespace, "resourceVersion": rv, **extra_meta}
    return {"metadata": meta, "type": "Opaque", "data": {"token": value}}


def _sources() -> Sources:
    return Sources(cast(KubeApi, object()), [REF.namespace])


def test_an_object_nobody_refers_to_keeps_its_name_and_our_label_only() -> None:
    big = _secret(
        "x" * 100_000,
        labels={WATCHED_LABEL: "true", "padding": "y" * 60},
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "z" * 100_000},
    )
    kept = _sources()._keep(SourceKind.SECRET, big)
    assert kept == {
        "metadata": {
            "name": REF.name,
            "namespace": REF.namespace,
            "resourceVersion": "7",
            "labels": {WATCHED_LABEL: "true"},
        },
        DATA_WITHHELD: True,
    }


def test_a_referenced_object_keeps_its_data_up_to_the_cap() -> None:
    sources = _sources()
    sources._referenced.add(REF)
    assert sources._keep(SourceKind.SECRET, _secret())["data"] == {"token": "dG9rZW4="}
    over = _secret("x" * MAX_KEPT_DATA_BYTES)
    assert sources._keep(SourceKind.SECRET, over) == name_only(over)
    # The same name as a ConfigMap is another object.
    assert DATA_WITHHELD in sources._keep(SourceKind.CONFIG_MAP, _secret())


def _informer(sources: Sources) -> Informer:
    informer = Informer(
        cast(KubeAccess, object()),
        ResourceKind("v1", "secrets", namespace=REF.namespace),
        transform=lambda obj: sources._keep(SourceKind.SECRET, obj),
    )
    informer.store._put(informer._transform(_secret()))
    return informer


def test_refill_takes_only_the_cached_version_and_retransform_drops_data() -> None:
    sources = _sources()
    informer = _informer(sources)
    key = f"{REF.namespace}/{REF.name}"
    assert DATA_WITHHELD in informer.store.get(key)  # type: ignore[operator]
    sources._referenced.add(REF)
    assert not informer.refill(_secret(rv="8"))  # another version: the watch brings it
    assert informer.refill(_secret())
    assert informer.store.get(key)["data"] == {"token": "dG9rZW4="}  # type: ignore[index]
    sources._referenced.discard(REF)
    informer.retransform(key)
    assert DATA_WITHHELD in informer.store.get(key)  # type: ignore[operator]


def test_the_sweep_releases_what_no_gitlabagent_refers_to_except_where_unknown() -> None:
    sources = _sources()
    elsewhere = SourceRef(SourceKind.SECRET, "team-b", "token")
    gone = SourceRef(SourceKind.CONFIG_MAP, REF.namespace, "ca")
    sources._referenced.update({REF, elsewhere, gone})
    sources.keep_data_of(frozenset({REF}), unknown_namespaces=frozenset({"team-b"}))
    assert sources.referenced() == frozenset({REF, elsewhere})


def _labelled(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {WATCHED_LABEL: "true"}}
    if annotations is not None:
        meta["annotations"] = annotations
    return _secret(**meta)


def test_what_agents_listed_at_start_refer_to_keeps_its_data_when_admitted() -> None:
    """A restart: the Secrets carry our label from the last run; those the listed GitLabAgents refer to
    (and, for credentials, that opted in to one of them) keep their data from the informer's first LIST,
    so nothing is read again. Anything else stays a name, as before."""
    ca = SourceRef(SourceKind.CONFIG_MAP, REF.namespace, "ca")
    other = SourceRef(SourceKind.SECRET, REF.namespace, "other")
    sources = _sources()
    sources.expect({REF: frozenset({"agent-a"}), ca: None, other: frozenset({"agent-b"})})

    opted = _labelled({ALLOWED_AGENTS_ANNOTATION: "agent-a"})
    assert sources._keep(SourceKind.SECRET, opted)["data"] == {"token": "dG9rZW4="}
    assert REF in sources.referenced()

    config_map = {**_labelled(), "metadata": {"name": "ca", "namespace": REF.namespace}}
    assert DATA_WITHHELD not in sources._keep(SourceKind.CONFIG_MAP, config_map)  # a CA needs no opt-in

    not_opted = {**_labelled({ALLOWED_AGENTS_ANNOTATION: "agent-a"})}
    not_opted["metadata"] = {**not_opted["metadata"], "name": "other"}
    assert DATA_WITHHELD in sources._keep(SourceKind.SECRET, not_opted)  # opted in to another agent
    assert other not in sources.referenced()
    assert DATA_WITHHELD in sources._keep(SourceKind.SECRET, not_opted)  # and not expected any more

    unknown = _labelled({ALLOWED_AGENTS_ANNOTATION: "*"})
    unknown["metadata"] = {**unknown["metadata"], "name": "nobody-refers-to-it"}
    assert DATA_WITHHELD in sources._keep(SourceKind.SECRET, unknown)


def test_uses_merge_the_agents_of_one_secret_and_a_ca_use_needs_no_opt_in() -> None:
    spec_a = GitLabAgentSpec.model_validate(
        {"kasAddress": "wss://kas.example.test", "tokenSecretRef": {"name": "token"}}
    )
    spec_b = GitLabAgentSpec.model_validate(
        {
            "kasAddress": "wss://kas.example.test",
            "tokenSecretRef": {"name": "token-b"},
            "caCert": {"secretKeyRef": {"name": "token", "key": "ca.crt"}},
        }
    )
    uses: SourceUses = {}
    add_uses(uses, AgentKey(REF.namespace, "a"), spec_a)
    assert uses == {REF: frozenset({"a"})}
    add_uses(uses, AgentKey(REF.namespace, "b"), spec_b)
    assert uses[REF] is None  # b reads it as a CA bundle
    assert uses[SourceRef(SourceKind.SECRET, REF.namespace, "token-b")] == frozenset({"b"})
