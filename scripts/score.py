"""Leaderboard scorer: validate a predictions file, score it with CIs, compare with a baseline.

    python scripts/score.py PREDICTIONS --task T [--truth SHARDS] [--against BASELINE]

The command of ``trainer.leaderboard`` (its docstring says what a submission is and where the
truth comes from).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.leaderboard import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
