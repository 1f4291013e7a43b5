"""Turn a pydantic JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

The apiserver accepts only a subset of JSON Schema in a CRD, and pydantic emits constructs outside it:
`$ref`/`$defs` (forbidden: structural schemas are self-contained trees), `anyOf` with `null` for
Optional fields, `title`, `additionalProperties: false` (the apiserver prunes unknown fields instead,
and strict field validation, kubectl's default, rejects them), `const` for Literal. This module rewrites
those, refuses anything else it does not know (so a new pydantic construct fails generation loudly
instead of producing a CRD the apiserver would reject), and orders keys canonically for stable output.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Final

NULLABLE_MARK: Final = "x-nullable"
"""A field that must keep an explicit null sets json_schema_extra={NULLABLE_MARK: True}. Otherwise the
null branch of Optional is dropped: the apiserver prunes nulls of non-nullable fields, and a merge patch
reads null as "delete", which is all the operator needs."""

_KEY_ORDER: Final = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)
_ALLOWED: Final = frozenset(_KEY_ORDER)
_DROPPED: Final = frozenset({"title", "$defs"})


def clean_description(text: str) -> str:
    """A docstring as one line per paragraph: what `kubectl explain` wraps nicely."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


class SchemaError(ValueError):
    """The model uses a JSON Schema construct that has no structural equivalent."""


def to_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural equivalent of a pydantic `model_json_schema()` result (whose `$defs` it inlines)."""
    return _convert(schema, schema.get("$defs", {}), "")


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Replace `$ref` / single-element `allOf` / Optional's `anyOf` by the schema they stand for.

    Keys next to the reference (description, default, extras of the field) win over the referenced
    schema's own, which describe the type rather than this use of it.
    """
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        if name not in defs:
            raise SchemaError(f"{path or '<root>'}: unresolvable $ref {name!r}")
        return _resolve({**defs[name], **node}, defs, path)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{path or '<root>'}: allOf with {len(parts)} schemas has no structural form")
        return _resolve({**parts[0], **node}, defs, path)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"{path or '<root>'}: a union of {len(branches)} types has no structural form")
        if node.get("default", ...) is None:
            del node["default"]
        return _resolve({**branches[0], **node}, defs, path)
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == NULLABLE_MARK:
            if value:
                out["nullable"] = True
        elif key == "description":
            out[key] = clean_description(value)
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):  # a map type: keys free, values typed
                out[key] = _convert(value, defs, f"{path}{{}}")
            # `false` is dropped: structural schemas prune unknown fields on their own.
        elif key in _ALLOWED:
            out[key] = value
        else:
            raise SchemaError(f"{path or '<root>'}: JSON Schema keyword {key!r} has no structural equivalent")
    _check(out, path)
    return {key: out[key] for key in _KEY_ORDER if key in out}


def _check(node: dict[str, Any], path: str) -> None:
    where = path or "<root>"
    if "type" not in node:
        raise SchemaError(f"{where}: no type")
    if not node.get("description"):
        raise SchemaError(f"{where}: no description (kubectl explain would show nothing)")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaError(f"{where}: properties and additionalProperties are mutually exclusive")
