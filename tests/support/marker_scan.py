"""Marker tokens and the scan for them (issue 13 §6): every token a test makes carries one marker, unique
to the run, so finding it anywhere the operator or kas shows (logs, status, Events, metrics, errors)
proves a leak. A token is also looked for by its random part and by the start of its base64 form (how
it sits in a Secret's data), so a token cut or encoded is found as well."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping


class Markers:
    """Tokens `<marker>-<kind>-<random hex>`; `scan()` reports which of them a text contains."""

    def __init__(self) -> None:
        self.marker = "mrk" + secrets.token_hex(5)
        self.tokens: dict[str, str] = {}

    def token(self, kind: str) -> str:
        """A new token named `kind` (unique per Markers)."""
        assert kind not in self.tokens, kind
        self.tokens[kind] = f"{self.marker}-{kind}-{secrets.token_hex(12)}"
        return self.tokens[kind]

    def needles(self) -> dict[str, str]:
        """name -> text that must not appear: the marker, each token's random part and base64 prefix."""
        found = {"marker": self.marker}
        for name, value in self.tokens.items():
            found[f"{name} (random part)"] = value.rsplit("-", 1)[1]
            found[f"{name} (base64)"] = base64.b64encode(value.encode()).decode()[:16]
        return found

    def scan(self, sources: Mapping[str, str]) -> dict[str, list[str]]:
        """source -> names of the needles found in it (sources without any are left out)."""
        needles = self.needles()
        return {
            source: hits
            for source, text in sources.items()
            if (hits := [name for name, needle in needles.items() if needle in text])
        }
