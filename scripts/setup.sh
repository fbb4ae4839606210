#!/usr/bin/env bash
# One-command setup: system libraries (as root), .venv with pinned wheels, CMake path repair, colcon build.
# Idempotent: each step is skipped when its inputs did not change, so a warm run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian libraries open3d needs, plus Vulkan for offscreen rendering (only possible as root).
APT_PKGS="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    log "apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
else
  log "not root: skipping apt (open3d rendering needs: $APT_PKGS)"
fi

# 2. Virtual environment and pinned Python packages.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
REQ_HASH=$(cat requirements/*.txt setup.py | sha256sum | cut -c1-16)
STAMP="$VENV/.scanssc_requirements"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing Python packages (first run: several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements/ros.txt -r requirements/ml.txt -c requirements/constraints.txt
  # console scripts (scanssc-*) and the ROS-free package; the colcon install below takes precedence on PYTHONPATH
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$REQ_HASH" > "$STAMP"
fi

# 3. The ROS wheels' exported CMake files point at the wheel builder's Python and numpy headers. Point them at
#    ours. The numpy headers are copied out of the tree: CMake refuses to export include paths that lie inside
#    the source directory, and .venv does.
PY_INC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NP_VER=$("$VENV/bin/python" -c "import numpy; print(numpy.__version__)")
NP_INC="${XDG_CACHE_HOME:-$HOME/.cache}/scanssc_ros/numpy-$NP_VER-include"
if [ ! -f "$NP_INC/numpy/ndarrayobject.h" ]; then
  mkdir -p "$NP_INC" && cp -r "$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")/." "$NP_INC/"
fi
stale=$(grep -rlE "/opt/python/cp3|[^;\" ]*numpy/_core/include" "$VENV/share" --include='*.cmake' 2>/dev/null \
  | xargs -r grep -LF "$NP_INC" || true)
if [ -n "$stale" ]; then
  log "repairing stale CMake paths in $(echo "$stale" | wc -l) files"
  echo "$stale" | xargs sed -i -E \
    -e "s#[^;\" ]*/numpy/_core/include#$NP_INC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PY_INC#g"
fi

# 4. Build the ROS package (messages + installed Python package + executable + share files).
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
mkdir -p log
log "colcon build"
colcon --log-base log build --symlink-install --base-paths "$ROOT" --build-base build --install-base install \
  --event-handlers console_direct- summary- status- --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DPython3_NumPy_INCLUDE_DIR="$NP_INC" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF > log/colcon_build.txt 2>&1 \
  || { mkdir -p log; cat log/colcon_build.txt >&2 2>/dev/null; log "colcon build FAILED"; exit 1; }
log "ready: source scripts/env.sh to use the built package"
