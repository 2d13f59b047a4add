"""``python -m trainer.evaluate ...``: the earlier name of ``python -m trainer.rescore``.

Kept so that the commands already in README.md and in users' scripts still run; the scoring code
itself lives in ``trainer.scoring`` and the command in ``trainer.rescore``.
"""

from __future__ import annotations

import sys

from trainer.rescore import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
