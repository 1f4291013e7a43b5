"""GitLab 18's structured agent tokens are opaque; whitespace around a token is not part of it (§18)."""

from __future__ import annotations

import pytest

from agent_operator.mapping import Missing, token_from_secret
from agent_runtime.secret import Secret
from tests.unit.operator.test_mapping import KEY, b64, secret_obj, spec

STRUCTURED = "glagent-" + "QWxhZGRpbjpvcGVuIHNlc2FtZQ" * 3 + ".01.0a1b2c3d4"


@pytest.mark.parametrize(
    "stored", [STRUCTURED, f"{STRUCTURED}\n", f"  {STRUCTURED}\t", f"\t{STRUCTURED}  \r\n"]
)
def test_a_structured_token_is_used_as_it_is_without_the_whitespace_around_it(stored: str) -> None:
    assert token_from_secret(secret_obj({"token": b64(stored)}), KEY, spec()) == Secret(STRUCTURED)


def test_only_whitespace_is_an_empty_token() -> None:
    result = token_from_secret(secret_obj({"token": b64("  \t ")}), KEY, spec())

    assert isinstance(result, Missing)
    assert result.reason == "TokenEmpty"
