"""Grad-CAM overlays of a run's CXR encoder (the paper's Figure 4).

    python scripts/gradcam.py RUN --samples N [--out DIR] [--target predicted|true]

The command of ``trainer.gradcam`` (its docstring says how the map and the target label are
chosen, and what is written).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.gradcam import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
