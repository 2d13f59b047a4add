"""``python -m trainer.models --list``: registered models, trainable parameters vs the paper.

Counts are for IHM (C = 1) with the default configs; models that start from checkpoints are
built with ``init=random`` here (same shapes, no files needed). ``kind``: supervised models give
logits, pretrain models (``mode=pretrain``) an SSL loss; their counts include the projection
heads (and ALIGN's temperature).
"""

from __future__ import annotations

import argparse
import logging
import sys

from trainer.models import create_model, list_models, model_class
from trainer.models.paper import PAPER_MILLIONS
from trainer.tasks import task_spec


def trainable_parameters(name: str, task: str = "ihm") -> int:
    cfg = {"init": "random"} if "init" in model_class(name).config_class.__dataclass_fields__ else None
    model = create_model(name, cfg, task_spec(task))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def table(task: str = "ihm") -> list[str]:
    lines = [
        f"{'model':<12} {'kind':<10} {'parameters':>10} {'trainable (M)':>13} {'paper (M)':>9} {'diff':>7}  causal  trainable"
    ]
    for name in list_models():
        params = trainable_parameters(name, task)
        count = params / 1e6
        paper = PAPER_MILLIONS.get(name)
        paper_txt = f"{paper:9.2f}" if paper else f"{'-':>9}"
        diff_txt = f"{(count - paper) / paper:+7.0%}" if paper else f"{'':>7}"
        cls = model_class(name)
        lines.append(
            f"{name:<12} {cls.kind:<10} {params:>10} {count:13.3f} {paper_txt} {diff_txt}  {cls.causal!s:<6}  {cls.trainable}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.models", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print models and trainable parameter counts")
    parser.add_argument("--task", default="ihm", help="task whose output width is used (default ihm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if not args.list:
        parser.print_help()
        return 0
    sys.stdout.write("\n".join(table(args.task)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
