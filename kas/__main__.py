"""`python -m kas --config kas.yaml`: run the reference kas until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from kas import logs
from kas.agents_secret import AgentsSecretError
from kas.config import load_config
from kas.server import KasServer


async def _run(config_path: Path) -> None:
    config = load_config(config_path)
    logs.configure(config.log_level)
    server = KasServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kas", description="Reference GitLab agent server (kas)")
    parser.add_argument("--config", type=Path, required=True, help="kas.yaml")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.config))
    except (OSError, ValueError, AgentsSecretError) as err:
        print(f"kas: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
