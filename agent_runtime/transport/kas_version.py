"""Learning kas's version: the WebSocket `Server` header, or gRPC response metadata for grpc/grpcs.

GitLab's kas names itself `gitlab-kas/<version>/<commit>` in its WebSocket handshake; plain gRPC has no
such header, so the reference kas sends the same value as response metadata (`gitlab-kas-version`), and
we read it there when a kas provides it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

KAS_SERVER_PREFIX: Final = "gitlab-kas/"
KAS_VERSION_METADATA_KEY: Final = "gitlab-kas-version"
_MAX_VERSION_LENGTH: Final = 64


def from_server_header(server: str | None) -> str | None:
    """`<version>` of `gitlab-kas/<version>/<commit>`; None for anything else."""
    if not server or not server.startswith(KAS_SERVER_PREFIX):
        return None
    version = server[len(KAS_SERVER_PREFIX) :].split("/", 1)[0].strip()
    return version[:_MAX_VERSION_LENGTH] or None


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """kas's version from gRPC response metadata, if it sent one."""
    for key, value in metadata or ():
        if key == KAS_VERSION_METADATA_KEY and isinstance(value, str):
            return from_server_header(value)
    return None
