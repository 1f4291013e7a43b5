"""How a call to kas ends, in the runtime's own types: the modules never see grpc's.

Importing grpc costs a process about 8.6 MiB, and by default no call goes over it (transport/h2); so the
status codes, the error and the end-of-stream marker live here. The grpc.aio path converts its own at its
boundary (transport/grpc_aio.py). Names and numbers are gRPC's (PROTOCOL.md §3.5), so logs, metrics labels
and the tunnel's error frames read as before.
"""

from __future__ import annotations

import enum
from typing import Final, Literal


class StatusCode(enum.IntEnum):
    """gRPC's status codes, numbered as on the wire (grpc-status)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call ended with a status other than OK; `code()` and `details()` as on grpc.aio's AioRpcError,
    so that code written for either reads the same."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> StatusCode:
        """The call's status code."""
        return self._code

    def details(self) -> str:
        """The status message: kas's grpc-message, or ours for local and transport failures."""
        return self._details


class UsageError(Exception):
    """The call cannot do this (any more): a write after done_writing; on the grpc.aio path also the
    failed half-close of a call kas has just ended."""


class _EndOfStream(enum.Enum):
    EOF = "EOF"


EOF: Final = _EndOfStream.EOF
"""What `read()` returns after the last message of a call that ended OK."""
EndOfStream = Literal[_EndOfStream.EOF]
"""The type of EOF (`read()` returns `bytes | EndOfStream`)."""
