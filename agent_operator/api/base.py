"""The base of every API model, plus the validation patterns shared by several fields.

Patterns are written in the subset of regular-expression syntax that both Python (pydantic) and
Go's RE2 (the apiserver) understand, so the model and the CRD reject exactly the same strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

DNS1123_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""Names of Secrets, ConfigMaps and ServiceAccounts."""
DNS1123_SUBDOMAIN_MAX: Final = 253

CONFIG_KEY: Final = r"^[-._a-zA-Z0-9]+$"
"""Keys of Secret and ConfigMap data."""
CONFIG_KEY_MAX: Final = 253

HTTP_TOKEN: Final = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"  # noqa: S105 (a header-name pattern, not a password)
"""An HTTP header field name (RFC 9110 token)."""

HEADER_VALUE: Final = r"^[^\x00-\x08\x0a-\x1f\x7f]+$"
"""A header value: no control characters except horizontal tab, so no header injection."""

CONDITION_REASON: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
"""CamelCase reasons, as in every Kubernetes condition."""

CONDITION_TYPE: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
"""Condition types: an optional DNS-subdomain prefix and a name."""


class ApiModel(BaseModel):
    """Fields are snake_case in Python and camelCase on the wire; unknown fields are errors.

    Each field's docstring is its description in the CRD, i.e. what `kubectl explain` prints.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; Kubernetes timestamps have whole seconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


def _rfc3339(value: datetime) -> str:
    # isoformat rather than strftime: half the time, and one status write formats two dozen of these.
    return _as_utc(value).isoformat()[:19] + "Z"


Timestamp = Annotated[datetime, AfterValidator(_as_utc), PlainSerializer(_rfc3339, return_type=str)]
"""A Kubernetes timestamp: RFC 3339, UTC, whole seconds (`2024-05-01T12:00:00Z`)."""


def cel_rule(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> JsonDict:
    """One `x-kubernetes-validations` entry: a CEL expression the apiserver evaluates on `self`."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def with_cel_rules(*rules: JsonDict) -> ConfigDict:
    """Model config that attaches cross-field CEL rules to the model's schema (merged with ApiModel's)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})
