"""A Spark driver in a fresh Python process, for tests of how its JVM was started (the shared
test session's JVM is already running and cannot be started again with other options)."""

from __future__ import annotations

import subprocess
import sys


def driver_result(java_options: str, expression: str) -> str:
    """Start a one-core session whose driver JVM gets ``java_options`` instead of the project's,
    and return ``expression`` (Python, ``spark`` in scope) as that process printed it."""
    script = (
        "from spark_jobs.session import *\n"
        "spark = build_spark(SparkConfig(master='local[1]', driver_memory='1g', "
        f"extra={{'spark.driver.extraJavaOptions': {java_options!r}}}))\n"
        f"print('RESULT', {expression})\n"
        "spark.stop()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    result = [line.removeprefix("RESULT ") for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1, done.stdout
    return result[0]
