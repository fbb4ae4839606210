#!/usr/bin/env bash
# One-shot GPU check (target: under 8 minutes on one H100/H200). Run from anywhere:
#     bash bench/gpu_check.sh [OUT_DIR]          (default bench/results/gpu_check)
# 1. uses the first of .venv, .venv-gpu and python3 whose torch sees CUDA and that has the model's requirements
#    (an image with CUDA PyTorch preinstalled needs no network); otherwise makes .venv-gpu with PyPI's torch (CUDA
#    build) + those requirements (no ROS: none of these steps needs it)
# 2. model bench, lite and paper x fp32/fp16/bf16: latency per stage, peak CUDA memory
# 3. Predictor.predict end to end (real seq 08 frame when ../shared/data is there, else a synthetic one)
# 4. a short training-step loop (time per step, peak memory), lite and paper, bf16
# 5. the GPU tests (test/test_gpu.py with SCANSSC_REQUIRE_CUDA=1, plus test/test_fastpath.py on this machine)
# The real frame is read from $SCANSSC_SHARED_DATA (default ../shared/data, as the tests do).
# Writes OUT_DIR/gpu_check.json (everything) and OUT_DIR/summary.txt. Exits at once when CUDA is absent: a GPU
# check that quietly runs on CPU would report nothing useful. A step that fails is logged as FAIL and the later
# steps still run (one broken measurement should not cost the others a GPU session); the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check}
mkdir -p "$OUT"
START=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

FAILED=()
step() {  # step NAME CMD...: run CMD, tee its output into the summary, remember a failure and go on
  local name=$1; shift
  log "$name"
  if ! "$@" 2>&1 | tee -a "$OUT/summary.txt"; then
    log "FAIL: $name"
    FAILED+=("$name")
  fi
}

PY=""
USABLE='import sys, torch, numpy, cv2, yaml, tqdm, PIL, pytest; sys.exit(0 if torch.cuda.is_available() else 1)'
for cand in .venv/bin/python .venv-gpu/bin/python "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c "$USABLE" 2>/dev/null; then
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

step "model bench: lite, paper x fp32, fp16, bf16" \
  "$PY" bench/bench_model.py --variant lite,paper --device cuda --precision fp32,fp16,bf16 --iters 10 --warmup 3 \
  --out "$OUT/model.json"

export SCANSSC_SHARED_DATA=${SCANSSC_SHARED_DATA:-$(cd .. && pwd)/shared/data}
FRAME_ARGS=(--data "$SCANSSC_SHARED_DATA")
[ -d "$SCANSSC_SHARED_DATA/semantickitti-mini" ] || FRAME_ARGS=(--synthetic)
for v in lite paper; do
  for p in fp32 bf16; do
    step "Predictor.predict end to end: $v $p ${FRAME_ARGS[*]}" \
      "$PY" bench/bench_predictor.py --variant "$v" --device cuda --precision "$p" --threads 8 --iters 10 --warmup 3 \
      --modes fast "${FRAME_ARGS[@]}" --out "$OUT/predictor_${v}_${p}.json"
  done
done

step "training steps (bf16): lite, paper" \
  "$PY" bench/bench_train_step.py --variant lite,paper --device cuda --precision bf16 --steps 6 --warmup 2 \
  --out "$OUT/train.json"

step "GPU tests" env SCANSSC_REQUIRE_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider test/test_gpu.py test/test_fastpath.py

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
doc = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_check.json"}
(out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
EOF
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED steps: ${FAILED[*]}"
  exit 1
fi
log "done: $OUT/gpu_check.json, $OUT/summary.txt"
