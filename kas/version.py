"""The version this reference kas reports: the GitLab protocol level it implements (PROTOCOL.md, 16.5)."""

from __future__ import annotations

from typing import Final

VERSION: Final = "v16.5.0"
COMMIT: Final = "pykas"
VERSION_METADATA_KEY: Final = "gitlab-kas-version"
"""gRPC response metadata carrying server_header() on every agent RPC (the WebSocket Server header's twin)."""


def server_header(version: str = VERSION, commit: str = COMMIT) -> str:
    """`Server` header value on the WebSocket handshake: gitlab-kas/<version>/<commit>."""
    return f"gitlab-kas/{version}/{commit}"
