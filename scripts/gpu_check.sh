#!/usr/bin/env bash
# The prepared GPU check (< 8 min on one node, one command, one table): DALI mixed vs CPU decode,
# uni_cxr / MedFuse / uni_ehr-sequence training and ConVIRT pretraining samples/s per GPU at 1
# and N ranks (data-loader share, GPU utilisation), and the S3 (moto on loopback) -> DALI path.
# See scripts/gpu_check.py.
#
#   scripts/gpu_check.sh [PYTHON] [--no-write] [--out DIR] [--steps N]   # PYTHON: .venv/bin/python, else python3
#
# Appends the table, with the machine, to BENCHMARKS.md unless --no-write. Needs CUDA GPU(s),
# torch with CUDA, nvidia-dali-cuda120, moto. Exit status != 0 when a step fails (2: no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
WRITE="--write"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-write) WRITE="" ;;
    --out | --steps) EXTRA+=("$1" "$2"); shift ;;
    *) PY="$1" ;;
  esac
  shift
done
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" scripts/gpu_check.py $WRITE "${EXTRA[@]}"
