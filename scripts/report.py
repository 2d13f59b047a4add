"""The benchmark's tables from its trial table (``trainer.report``).

python scripts/report.py RESULTS     # RESULTS/trials.parquet -> RESULTS/tables/{*.md,*.csv,*.tex}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trainer.report import write_reports

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="the benchmark's out folder (holding trials.parquet)")
    parser.add_argument("--shards", help="the shard set: adds its label distributions (Figure 3)")
    parser.add_argument(
        "--partial", help="results of the same benchmark on partial shards: adds paired vs partial"
    )
    parser.add_argument(
        "--transformer", help="results of the same benchmark with transformer encoders: Table 9"
    )
    parser.add_argument("--no-timing", action="store_true", help="skip Table 8's inference timing")
    args = parser.parse_args(argv)
    try:
        paths = write_reports(
            Path(args.results),
            timing=not args.no_timing,
            shards=args.shards,
            partial=args.partial and Path(args.partial),
            transformer=args.transformer and Path(args.transformer),
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths[0].read_text())
    print(f"tables: {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
