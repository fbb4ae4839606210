#!/usr/bin/env bash
# One-shot GPU check (target: under 8 minutes on one H100/H200). Run from anywhere:
#     bash bench/gpu_check.sh [OUT_DIR]          (default bench/results/gpu_check)
# 1. uses .venv if its torch sees CUDA; otherwise makes .venv-gpu with PyPI's torch (CUDA build) + the model's
#    requirements (no ROS: none of these steps needs it)
# 2. model bench, lite and paper x fp32/fp16/bf16: latency per stage, peak CUDA memory
# 3. Predictor.predict end to end (real seq 08 frame when ../shared/data is there, else a synthetic one)
# 4. a short training-step loop (time per step, peak memory), lite and paper, bf16
# 5. the GPU tests (test/test_gpu.py with SCANSSC_REQUIRE_CUDA=1, plus test/test_fastpath.py on this machine)
# Writes OUT_DIR/gpu_check.json (everything) and OUT_DIR/summary.txt. Exits non-zero on the first failure, and
# at once when CUDA is absent: a GPU check that quietly runs on CPU would report nothing useful.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check}
mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

PY=""
for cand in .venv/bin/python .venv-gpu/bin/python; do
  if [ -x "$cand" ] && "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=$cand; break
  fi
done
if [ -z "$PY" ]; then
  command -v nvidia-smi >/dev/null || { log "FAIL: no nvidia-smi: this machine has no usable NVIDIA GPU"; exit 2; }
  log "installing torch (CUDA) + model requirements into .venv-gpu"
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q --upgrade pip
  .venv-gpu/bin/pip install -q "torch==2.13.0" numpy opencv-python-headless pyyaml pillow tqdm pytest
  PY=.venv-gpu/bin/python
fi
"$PY" - <<'EOF' || { log "FAIL: torch.cuda.is_available() is False with $PY"; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log "python $PY; $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt" || true

log "model bench: lite, paper x fp32, fp16, bf16"
"$PY" bench/bench_model.py --variant lite,paper --device cuda --precision fp32,fp16,bf16 --iters 10 --warmup 3 \
  --out "$OUT/model.json" | tee -a "$OUT/summary.txt"

DATA=../shared/data
FRAME_ARGS=()
[ -d "$DATA/semantickitti-mini" ] || FRAME_ARGS=(--synthetic)
for v in lite paper; do
  for p in fp32 bf16; do
    log "Predictor.predict end to end: $v $p ${FRAME_ARGS[*]:-(real frame)}"
    "$PY" bench/bench_predictor.py --variant "$v" --device cuda --precision "$p" --threads 8 --iters 10 --warmup 3 \
      --modes fast "${FRAME_ARGS[@]}" --out "$OUT/predictor_${v}_${p}.json" | tee -a "$OUT/summary.txt"
  done
done

log "training steps (bf16): lite, paper"
"$PY" bench/bench_train_step.py --variant lite,paper --device cuda --precision bf16 --steps 6 --warmup 2 \
  --out "$OUT/train.json" | tee -a "$OUT/summary.txt"

log "GPU tests"
SCANSSC_REQUIRE_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider test/test_gpu.py test/test_fastpath.py \
  2>&1 | tee -a "$OUT/summary.txt"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
doc = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_check.json"}
(out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
EOF
log "done: $OUT/gpu_check.json, $OUT/summary.txt"
