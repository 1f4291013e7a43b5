"""Established TCP connections as the kernel lists them (/proc/net/tcp{,6}), for tests that count a
server's live clients without asking the server."""

from __future__ import annotations

from pathlib import Path

TCP_ESTABLISHED = "01"


def established_on(port: int) -> int:
    """Established connections whose local port is `port`: the server side of each client connection
    (on loopback the client side has its own ephemeral port, so nothing is counted twice)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == TCP_ESTABLISHED:
                count += 1
    return count
