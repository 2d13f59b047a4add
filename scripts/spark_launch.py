"""The primary file scripts/submit.sh hands to spark-submit: runs a job module as ``__main__``.

    spark_launch.py MODULE [ARGS...]          # python -m MODULE ARGS..., e.g. spark_jobs.pipeline
    spark_launch.py --file PATH.py [ARGS...]  # python PATH.py ARGS..., without PATH's dir on sys.path

Why not submit the module's own .py file: Python puts the directory of the file it runs first on
``sys.path``, so submitting spark_jobs/pipeline.py would make ``events``, ``tasks``, ``cohort``,
``resources`` ... importable top-level names that shadow any third-party module of the same name.
This launcher removes its own directory (scripts/) from ``sys.path`` before anything else is
imported, then runs the job through ``runpy`` exactly as ``python -m`` would (``sys.argv[0]`` is
the job's file, ``sys.argv[1:]`` its arguments). Standard library only: nothing of ours is
imported before the job's own imports.
"""

import os
import runpy
import sys

USAGE = "usage: spark_launch.py MODULE [ARGS...] | spark_launch.py --file PATH.py [ARGS...]"


def _drop_own_dir() -> None:
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]


def main() -> None:
    _drop_own_dir()
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(USAGE)
    if args[0] == "--file":
        if len(args) < 2:
            sys.exit(USAGE)
        path = args[1]
        sys.argv = [path, *args[2:]]
        # run_path on a plain file leaves sys.path alone (unlike ``python PATH.py``).
        runpy.run_path(path, run_name="__main__")
    else:
        sys.argv = [args[0], *args[1:]]  # run_module replaces argv[0] with the module's file
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
