"""`python -m agent_runtime`: run one agent with agentk's flags (see agent_runtime.cli)."""

from __future__ import annotations

import sys

from agent_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
