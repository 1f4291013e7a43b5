"""Puts the repository root on sys.path, so `python bench/<name>.py` can import `tests.support`.

Imported first by every benchmark script; scripts run as files have only bench/ on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
