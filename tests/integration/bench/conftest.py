"""bench/ is a directory of scripts, not a package: its helpers import each other as top-level modules."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = str(Path(__file__).resolve().parents[3] / "bench")
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
