"""The reverse tunnel's own HTTP/2 client: Connect streams on the event loop, without grpc.aio's thread hops.

grpc.aio runs every message of a call as its own batch on grpc's threads (one tunnelled GET: 15 batches,
~65 context switches); for the tunnel, whose messages are small and many, that cost more CPU than the
rest of a request together (docs/benchmarks.md, issue 11). This package speaks gRPC's HTTP/2 mapping
directly on the event loop for the Connect streams only; the other calls stay on the grpc.aio channel.
"""

from agent_runtime.transport.h2.channel import H2Channel, H2Target
from agent_runtime.transport.h2.link import LinkSettings

__all__ = ["H2Channel", "H2Target", "LinkSettings"]
