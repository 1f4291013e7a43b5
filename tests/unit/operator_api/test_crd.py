"""The generated CRD is structural, fully described, named as designed, and committed as generated."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from agent_operator.api import constants as c
from agent_operator.api.crd import build_crd, openapi_schema, render_crd
from agent_operator.api.schema import SchemaError, to_structural

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / f"{c.CRD_NAME}.yaml"


def _schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node (not the keys of `properties`), with a dotted path."""
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from _schemas(sub, f"{path}.{name}")
    if "items" in node:
        yield from _schemas(node["items"], f"{path}[]")


def _version() -> dict[str, Any]:
    versions: list[dict[str, Any]] = build_crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def test_committed_crd_is_current() -> None:
    assert CRD_FILE.read_text() == render_crd(), "run `make crds` and commit crds/"
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-crd"), "--check"], capture_output=True
    )
    assert check.returncode == 0, check.stderr.decode()


def test_rendering_is_deterministic() -> None:
    assert render_crd() == render_crd()
    assert yaml.safe_load(render_crd()) == build_crd()
    assert "&id" not in render_crd(), "no YAML anchors: every subtree is written out"


def test_names_scope_and_subresources() -> None:
    spec = build_crd()["spec"]
    assert build_crd()["metadata"]["name"] == "gitlabagents.agentk.dev"
    assert spec["group"] == "agentk.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "GitLabAgent",
        "listKind": "GitLabAgentList",
        "plural": "gitlabagents",
        "singular": "gitlabagent",
        "shortNames": ["gla"],
        "categories": ["gitlab"],
    }
    version = _version()
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = [
        (col["name"], col["jsonPath"])
        for col in _version()["additionalPrinterColumns"]
        if not col.get("priority")
    ]
    assert columns == [
        ("KAS", ".spec.kasAddress"),
        ("PHASE", ".status.phase"),
        ("AGENT ID", ".status.agentId"),
        ("KAS VERSION", ".status.kasVersion"),
        ("TUNNELS", ".status.tunnelsSummary"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    schema = openapi_schema()
    for col in _version()["additionalPrinterColumns"]:
        assert col["description"], col["name"]
        top, *rest = col["jsonPath"].lstrip(".").split(".")
        if top == "metadata":
            continue
        node = schema["properties"][top]
        for part in rest:  # the column reads a field the schema declares
            node = node["properties"][part]
        assert node["type"] == col["type"], col["name"]


def test_no_json_schema_constructs_outside_the_structural_subset() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"}
    forbidden |= {"x-kubernetes-preserve-unknown-fields", "additionalProperties"}
    for path, node in _schemas(openapi_schema()):
        assert not set(node) & forbidden, (path, set(node) & forbidden)
    assert "$ref" not in CRD_FILE.read_text()


def test_every_schema_node_has_a_type_and_a_description() -> None:
    for path, node in _schemas(openapi_schema()):
        assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}, path
        if path == ".metadata":
            assert node == {"type": "object"}, "the apiserver forbids describing metadata"
            continue
        assert isinstance(node.get("description"), str), path
        assert len(node["description"]) > 10, path
        assert "\n" not in node["description"], f"{path}: one line per paragraph, kubectl explain wraps"


def test_objects_declare_their_fields_so_unknown_fields_are_pruned() -> None:
    for path, node in _schemas(openapi_schema()):
        if node["type"] == "object" and path not in {".metadata"}:
            assert node.get("properties"), f"{path}: an object without properties would accept anything"
        if node["type"] == "array":
            assert "items" in node, path


def test_spec_fields_and_defaults() -> None:
    spec = openapi_schema()["properties"]["spec"]
    assert spec["required"] == ["kasAddress", "tokenSecretRef"]
    props = spec["properties"]
    assert set(props) == {
        "kasAddress",
        "tokenSecretRef",
        "caCert",
        "tlsServerName",
        "insecureSkipTLSVerify",
        "kasHeaders",
        "proxy",
        "serviceAccountName",
        "tunnels",
        "wireFlavor",
        "suspend",
        "flux",
    }
    assert props["flux"]["default"] == {"enabled": True, "mode": "requestedAt"}
    assert props["flux"]["properties"]["enabled"]["default"] is True
    assert props["flux"]["properties"]["mode"]["default"] == "requestedAt"
    assert props["flux"]["properties"]["mode"]["enum"] == ["requestedAt", "receiver"]
    assert props["tokenSecretRef"]["properties"]["key"]["default"] == "token"
    assert props["serviceAccountName"]["default"] == "default"
    assert props["tunnels"]["default"] == {"minIdle": 2, "max": 500}
    assert props["tunnels"]["properties"]["minIdle"] | {"description": ""} == {
        "description": "",
        "type": "integer",
        "default": 2,
        "minimum": 1,
        "maximum": 50,
    }
    assert props["tunnels"]["properties"]["max"]["maximum"] == 500
    assert props["wireFlavor"]["enum"] == ["gitlab", "plural"]
    assert props["wireFlavor"]["default"] == "gitlab"
    rules = [v["rule"] for v in props["caCert"]["x-kubernetes-validations"]]
    assert rules == ["has(self.secretKeyRef) != has(self.configMapKeyRef)"]
    assert [v["rule"] for v in props["tunnels"]["x-kubernetes-validations"]] == ["self.minIdle <= self.max"]


def test_status_fields() -> None:
    status = openapi_schema()["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Connecting", "Connected", "Degraded", "Suspended", "Failed"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "atomic"  # one writer, whole-list patches
    assert "x-kubernetes-list-map-keys" not in conditions
    condition = conditions["items"]
    assert condition["required"] == ["type", "status", "reason", "message", "lastTransitionTime"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    for name in ("observedGeneration", "agentId"):
        assert status[name]["format"] == "int64"
    assert set(status["tunnels"]["properties"]) == {"idle", "active"}
    assert set(status["lastError"]["properties"]) == {"reason", "message", "hint"}
    assert "tunnelsSummary" in status
    assert set(status["flux"]["properties"]) == {
        "state",
        "watchedGitRepositories",
        "projects",
        "triggeredReconciles",
        "failedReconciles",
        "lastTriggerTime",
    }
    for type_ in c.ConditionType:
        assert type_.value in status["conditions"]["description"]


class _Union(BaseModel):
    """A model whose field has two types."""

    value: int | str
    """Either."""


class _Undocumented(BaseModel):
    """A model whose field has no docstring."""

    value: int


@pytest.mark.parametrize(("model", "message"), [(_Union, "union"), (_Undocumented, "no description")])
def test_generation_refuses_what_has_no_structural_form(model: type[BaseModel], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        to_structural(model.model_json_schema())


def test_every_runtime_error_reason_fits_the_status_schema() -> None:
    """The operator copies the runtime's typed reasons into status.lastError.reason."""
    from agent_operator.api import LastError
    from agent_runtime.spec import ErrorReason

    for reason in ErrorReason:
        LastError(reason=reason.value, message="m")
