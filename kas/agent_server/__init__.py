"""The agent-facing listener: plain gRPC (h2c / TLS h2) and gRPC-in-WebSocket on one port."""
