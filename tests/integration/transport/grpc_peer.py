"""A grpc.aio test service with raw-bytes methods (no .proto needed): unary echo and a byte download."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

ECHO = "/test.Echo/Unary"
DOWNLOAD = "/test.Echo/Download"
_CHUNK = 1 << 20


@dataclass
class GrpcPeer:
    """A grpc.aio server on 127.0.0.1 (or `host`) that records the metadata and peer of every call."""

    credentials: grpc.ServerCredentials | None = None
    metadata: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    """0: any free port; the bound port after start()."""
    host: str = "127.0.0.1"
    peers: list[str] = field(default_factory=list)
    """grpc's name of each call's TCP peer ("ipv4:127.0.0.1:<port>")."""
    _server: grpc.aio.Server | None = None

    async def start(self) -> GrpcPeer:
        server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._echo),
            "Download": grpc.unary_stream_rpc_method_handler(self._download),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
        if self.credentials is None:
            self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        else:
            self.port = server.add_secure_port(f"{self.host}:{self.port}", self.credentials)
        await server.start()
        self._server = server
        return self

    def _record(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        self.peers.append(context.peer())

    async def _echo(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self._record(context)
        return request

    async def _download(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        self._record(context)
        (total,) = struct.unpack("!Q", request)
        sent = 0
        while sent < total:
            n = min(_CHUNK, total - sent)
            yield bytes([sent // _CHUNK % 251]) * n
            sent += n

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


def download_request(total: int) -> bytes:
    """The request of DOWNLOAD for `total` bytes."""
    return struct.pack("!Q", total)
