"""Reverse tunnels: the registry of agents' idle Connect streams, and routing calls onto them."""
