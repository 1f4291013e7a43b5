"""HS256 JSON Web Tokens for the kas-to-kas private API (issuer and audience `gitlab-kas`, 5 s lifetime).

Written with hmac + base64: the format is small and fixed (PROTOCOL.md §11.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Final

from kas.secret import Secret

ISSUER: Final = "gitlab-kas"
AUDIENCE: Final = "gitlab-kas"
LIFETIME: Final = 5.0
NOT_BEFORE_SKEW: Final = 5.0
_ALGORITHMS: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


class JwtError(ValueError):
    """The token is malformed, badly signed, expired or meant for someone else."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise JwtError("token is not base64url") from err


def encode(
    secret: Secret, *, issuer: str = ISSUER, audience: str = AUDIENCE, lifetime: float = LIFETIME
) -> str:
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now - int(NOT_BEFORE_SKEW),
        "exp": now + int(lifetime),
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.reveal(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def verify(
    token: str, secret: Secret, *, audience: str = AUDIENCE, issuer: str | None = ISSUER
) -> dict[str, Any]:
    """Check signature, algorithm, exp/nbf, audience and (unless None) issuer; return the claims."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("token must have three parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as err:
        raise JwtError("token header or claims are not JSON") from err
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("token header and claims must be JSON objects")
    digest = _ALGORITHMS.get(str(header.get("alg")))
    if digest is None:
        raise JwtError(f"unsupported algorithm {header.get('alg')!r}")
    expected = hmac.new(secret.reveal(), f"{parts[0]}.{parts[1]}".encode(), digest).digest()
    if not hmac.compare_digest(expected, _unb64(parts[2])):
        raise JwtError("bad signature")
    now = time.time()
    if not isinstance(claims.get("exp"), int | float) or now >= claims["exp"]:
        raise JwtError("token expired")
    if isinstance(claims.get("nbf"), int | float) and now < claims["nbf"]:
        raise JwtError("token not valid yet")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise JwtError("wrong audience")
    if issuer is not None and claims.get("iss") != issuer:
        raise JwtError("wrong issuer")
    return claims


def load_secret(path_text: bytes) -> Secret:
    """The private API secret file holds base64 (GitLab: 32 bytes); surrounding whitespace is ignored."""
    try:
        raw = base64.b64decode(path_text.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("authentication secret file must contain base64") from err
    if not raw:
        raise ValueError("authentication secret file is empty")
    return Secret(raw)
