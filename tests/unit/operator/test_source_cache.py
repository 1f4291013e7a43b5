"""What the Secret/ConfigMap cache keeps (agent_operator.sources) and the informer's refill/retransform."""

from __future__ import annotations

from typing import Any, cast

from agent_operator.kube_api import KubeApi
from agent_operator.mapping import SourceKind, SourceRef
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
