"""Secrets kas holds (agent tokens in transit, the private API key) with a redacted repr."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

_REDACTED: Final = "<redacted>"


class Secret:
    """A secret byte string; repr/str/format never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_REDACTED})"

    def __str__(self) -> str:
        return _REDACTED

    def __format__(self, format_spec: str) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


def token_digest(token: str | bytes) -> str:
    """sha256 hex of a token: the only form in which kas keeps agent tokens."""
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()
