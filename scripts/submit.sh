#!/usr/bin/env bash
# Run one of our Spark jobs (a module such as spark_jobs.synth_mimic) on a cluster via spark-submit.
#
#   scripts/submit.sh --master spark://host:7077 spark_jobs.synth_mimic --out DIR --patients 2000
#
# What it does: finds the venv's pyspark (SPARK_HOME) and its spark-submit, hands Spark the Delta
# and S3A jars from the local cache (`python -m spark_jobs.jars list`; fetch them once with
# `python -m spark_jobs.jars fetch`), makes the driver and the executors use the venv's python,
# checks that the module can be imported and runs it on the driver through scripts/spark_launch.py
# (as `python -m MODULE` would), passing every argument after it to the job.
#
# Why a launcher: spark-submit runs its primary .py file as `python FILE`, which puts FILE's
# directory first on sys.path. Submitting spark_jobs/pipeline.py itself would make our modules
# `events`, `tasks`, `cohort`, `resources`, ... top-level names that shadow third-party modules;
# the launcher drops its own directory from sys.path and imports the job by its dotted name.
#
# Cluster requirement: the executors run `spark.pyspark.python`, i.e. THIS venv's python at THIS
# absolute path. Every worker machine must therefore have the same venv (same Python, pyspark and
# our package installed, e.g. `pip install -e .` of the same checkout) at the same path, and output
# paths must be reachable from all of them (s3://... or a shared file system, not a local dir).
# The Delta/S3A jars are shipped to the executors by spark-submit itself.
#
# Environment: MEDMOD_VENV (default: <repo>/.venv), MEDMOD_JARS_DIR (the jar cache, see jars.py).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/submit.sh --master URL [--conf KEY=VALUE]... MODULE [JOB ARGS...]

Run a MedMod Spark job module on a cluster with spark-submit from the project venv.

  --master URL       Spark master: spark://host:7077, yarn, k8s://..., local[2], ...
  --conf KEY=VALUE   extra Spark setting for spark-submit (repeatable)
  -h, --help         show this help
  MODULE             dotted module name (e.g. spark_jobs.synth_mimic) or a path to a .py file
  JOB ARGS           passed unchanged to the job

example:
  scripts/submit.sh --master spark://host:7077 spark_jobs.synth_mimic --out s3://bucket/synth --patients 2000

Every worker needs this venv at the same absolute path (see the comment at the top of this script).
EOF
}

die() {
    echo "submit.sh: error: $*" >&2
    exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEDMOD_VENV:-$repo/.venv}
python=$venv/bin/python

master=""
confs=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --master)
            [[ $# -ge 2 ]] || die "--master needs a value"
            master=$2
            shift 2
            ;;
        --master=*)
            master=${1#--master=}
            shift
            ;;
        --conf)
            [[ $# -ge 2 ]] || die "--conf needs KEY=VALUE"
            confs+=(--conf "$2")
            shift 2
            ;;
        --conf=*)
            confs+=(--conf "${1#--conf=}")
            shift
            ;;
        -*)
            usage >&2
            die "unknown option $1 (options for the job go after MODULE)"
            ;;
        *)
            break
            ;;
    esac
done

if [[ $# -lt 1 ]]; then
    usage >&2
    die "no MODULE given"
fi
[[ -n $master ]] || {
    usage >&2
    die "--master is required"
}
module=$1
shift

[[ -x $python ]] || die "no python at $python (run \`make setup\`, or set MEDMOD_VENV)"

spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') ||
    die "pyspark is not installed in $venv"
spark_submit=$spark_home/bin/spark-submit
[[ -x $spark_submit ]] || die "no spark-submit at $spark_submit"

if ! jar_listing=$(cd "$repo" && "$python" -m spark_jobs.jars list); then
    die "Spark jars missing from the cache:
$jar_listing
fetch them once while online: $python -m spark_jobs.jars fetch"
fi
jar_list=$(awk 'NF { printf "%s%s", sep, $1; sep = "," }' <<<"$jar_listing")
[[ -n $jar_list ]] || die "python -m spark_jobs.jars list printed no jars"

launcher=$repo/scripts/spark_launch.py
[[ -f $launcher ]] || die "no launcher at $launcher"
if [[ $module == *.py ]]; then
    [[ -f $module ]] || die "no such file: $module"
    job=(--file "$(cd "$(dirname "$module")" && pwd)/$(basename "$module")")
else
    # Fail here, before a JVM starts, if the driver could not import the module. Checked from a
    # neutral directory, as the driver sees it: importable through the venv (our package is
    # installed there), not through the caller's working directory.
    (cd / && "$python" - "$module" <<'EOF'
import importlib.util
import sys

name = sys.argv[1]
try:
    spec = importlib.util.find_spec(name)
except (ImportError, ValueError) as err:
    sys.exit(f"submit.sh: error: cannot import {name!r}: {err}")
if spec is None or not spec.origin or not spec.origin.endswith(".py"):
    sys.exit(f"submit.sh: error: {name!r} is not a Python module file")
if spec.submodule_search_locations is not None:
    sys.exit(f"submit.sh: error: {name!r} is a package; name the job module inside it")
EOF
    ) || exit 2
    job=("$module")
fi

export SPARK_HOME=$spark_home
export PYSPARK_PYTHON=$python
export PYSPARK_DRIVER_PYTHON=$python

echo "submit.sh: $module on $master" >&2
exec "$spark_submit" \
    --master "$master" \
    --jars "$jar_list" \
    --conf "spark.pyspark.python=$python" \
    --conf "spark.pyspark.driver.python=$python" \
    --conf "spark.driver.extraJavaOptions=-Dlog4j.configurationFile=file:$repo/spark_jobs/log4j2.properties -XX:-DontCompileHugeMethods" \
    "${confs[@]}" \
    "$launcher" "${job[@]}" "$@"
