#!/usr/bin/env bash
# GPU check (< 5 min on one node): the DALI `mixed` loader (nvJPEG decode on the GPU) and a short
# NCCL DDP run of the trainer over every visible GPU. Prints images/s and samples/s.
#
#   scripts/gpu_check.sh [PYTHON]      # default: .venv/bin/python, else python3
#
# Needs: CUDA GPU(s), torch with CUDA, nvidia-dali-cuda120. Uses a generated shard set (shards.tiny,
# 256 px images) in a temp dir, so no data has to be present. Exit status != 0 when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d -t medmod-gpu-check-XXXX)"
trap 'rm -rf "$WORK"' EXIT
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [[ "$NGPU" -lt 1 ]]; then echo "gpu_check: no CUDA device visible" >&2; exit 2; fi
echo "gpu_check: $NGPU GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"

echo "== 1/3 shard set (tiny generator, 256 px images)"
"$PY" - "$WORK/shards" <<'PYEOF'
import sys
from shards.tiny import tiny_dataset
tiny_dataset(sys.argv[1], tasks=("radiology", "decomp"), records=512, records_per_shard=32, image_size=256)
PYEOF

echo "== 2/3 DALI mixed loader: images/s (decode + SPEC §10 train transforms on the GPU)"
"$PY" - "$WORK/shards" <<'PYEOF'
import sys, time
import torch
from shards.dali import dali_loader
from shards.reader import ReaderConfig
root = sys.argv[1]
for device in ("mixed", "cpu"):
    cfg = ReaderConfig(task="radiology", split="train", train=True)
    n, start = 0, None
    for i, batch in enumerate(dali_loader(root, cfg, batch_size=64, device=device, num_threads=4)):
        if i == 1:  # first batch includes pipeline build and warm-up
            start, n = time.perf_counter(), 0
        n += int(batch["has_image"].sum())
    elapsed = time.perf_counter() - start
    print(f"dali {device:5s}: {n / elapsed:8.1f} images/s ({n} images after warm-up)")
PYEOF

echo "== 3/3 trainer: NCCL DDP on $NGPU GPU(s), bf16 autocast"
run() {
  "$PY" -m torch.distributed.run --nproc_per_node="$NGPU" --standalone trainer/train.py \
    data.shards="$WORK/shards" train.runs_dir="$WORK/runs" train.device=cuda train.amp=true \
    train.bootstrap=0 train.progress=never train.epochs=1000 train.chunk_steps=0 train.resume=false \
    data.batch_size=32 data.num_workers=4 "$@"
}
report() {
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); t=m['throughput']; \
print(f\"{sys.argv[2]}: {t['samples_per_s']:.1f} samples/s, data-loader share {100*t['data_share']:.0f}%, world {m['world_size']}\")" "$1" "$2"
}
run task=radiology model=uni_cxr data.loader=dali data.dali_device=mixed train.max_steps=60
report "$WORK/runs/radiology/uni_cxr/0/metrics.json" "uni_cxr radiology (DALI mixed), images/s = samples/s"
run task=radiology model=uni_cxr data.loader=wds train.max_steps=60
report "$WORK/runs/radiology/uni_cxr/0/metrics.json" "uni_cxr radiology (wds + PIL/torch on CPU workers)"
run task=decomp model=uni_ehr data.loader=wds train.hourly_mode=sequence train.max_steps=100
report "$WORK/runs/decomp/uni_ehr/0/metrics.json" "uni_ehr decomp sequence mode, hourly samples/s"
echo "gpu_check: done"
