"""The runtime's own HTTP/2 client for calls to kas: gRPC on the event loop, without grpc.aio's thread hops.

grpc.aio runs every message of a call as its own batch on grpc's threads (one tunnelled GET: 15 batches,
~65 context switches); for the tunnel, whose messages are small and many, that cost more CPU than the
rest of a request together (docs/benchmarks.md, issue 11), and each agent's grpc.aio channel held about
50 KiB. This package speaks gRPC's HTTP/2 mapping directly on the event loop for every call an agent
makes (Connect, GetConfiguration, Register, the Flux stream), on one connection per agent.
"""

from agent_runtime.transport.h2.channel import DialObserver, H2Channel, H2Target
from agent_runtime.transport.h2.link import LinkSettings

__all__ = ["DialObserver", "H2Channel", "H2Target", "LinkSettings"]
