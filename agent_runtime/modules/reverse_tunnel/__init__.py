"""reverse_tunnel: the pool of Connect streams through which kas calls the agent (PROTOCOL.md §6.3, §8)."""

from agent_runtime.modules.reverse_tunnel.module import ReverseTunnelModule, build

__all__ = ["ReverseTunnelModule", "build"]
