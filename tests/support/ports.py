"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket
import threading

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port nobody listens on right now, never the same one twice in this process.

    The kernel picks the port (bind to 0), so it comes from the ephemeral range; the socket is closed
    before the caller's server binds it, which leaves a tiny window for another process to take it.
    Remembering what we handed out removes the more likely collision: two of our own servers asking
    at the same moment and the kernel reusing a just-closed port.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free port on {host} after 100 attempts")
