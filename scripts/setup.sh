#!/usr/bin/env bash
# One-command setup: uv, .venv with pinned wheels, CMake path repair, colcon build.
# Idempotent: each step is skipped when its inputs did not change, so a warm run takes seconds.
# ROS_DISTRO=jazzy builds the Jazzy set into .venv-jazzy / build-jazzy / install-jazzy instead (scripts/distro.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/distro.sh || exit 1
# a shell that sourced env.sh for the other distribution must not leak its install into this build
scanssc_forget_checkout
VENV=$SCANSSC_VENV
BUILD=$SCANSSC_BUILD
INSTALL=$SCANSSC_INSTALL
LOG=$SCANSSC_LOG
PY=${PYTHON:-python3}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Project machines set this, and uv installs without precompiling: every process would recompile torch from source.
unset PYTHONDONTWRITEBYTECODE
# uv trusts only its bundled root certificates unless told otherwise: behind a TLS-inspecting proxy (its CA added to
# the system store, as on project machines) every index request fails with "invalid peer certificate" once
# SSL_CERT_FILE is not in the environment. The system store holds the public roots too.
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"

# 1. uv: resolves and downloads in parallel. pip asks the index once per package, one after another; with ~190
#    packages behind a slow link that alone took over an hour in CI. The pinned wheel is fetched directly.
UV_VERSION=0.13.9
UV_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/scanssc_ros/uv-$UV_VERSION"
UV="$(command -v uv || true)"
if [ -z "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  UV="$UV_DIR/bin/uv"
fi
if [ ! -x "$UV" ]; then
  log "fetching uv $UV_VERSION"
  FILES=https://files.pythonhosted.org/packages
  case "$(uname -m)" in
    x86_64) url="$FILES/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            sha=d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19 ;;
    aarch64) url="$FILES/fe/2f/51a5de367c602592c018a42a23d57fba5f2689fe6c3bf025dcf043b39c61/uv-0.13.9-py3-none-manylinux_2_28_aarch64.whl"
             sha=ecb6028d79dc96fbeafffe5c8af62a7099487ebc05a701e76714eebcffd06375 ;;
    *) url=""; sha="" ;;
  esac
  mkdir -p "$UV_DIR"
  if [ -n "$url" ] && curl -fsSL --retry 3 -o "$UV_DIR/uv.whl" "$url" \
      && echo "$sha  $UV_DIR/uv.whl" | sha256sum -c --quiet -; then
    "$PY" - "$UV_DIR" <<'PYEOF'
import os, sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(os.path.join(d, "uv.whl")) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/uv"))
    os.makedirs(os.path.join(d, "bin"), exist_ok=True)
    with z.open(name) as src, open(os.path.join(d, "bin", "uv"), "wb") as dst:
        dst.write(src.read())
os.chmod(os.path.join(d, "bin", "uv"), 0o755)
PYEOF
    rm -f "$UV_DIR/uv.whl"
  else
    log "direct download failed; installing uv with pip"
    "$PY" -m pip install -q --target "$UV_DIR" "uv==$UV_VERSION"
  fi
fi

# 2. Virtual environment and pinned Python packages. torch 2.13.0 CPU is taken from the machine's local wheel
#    when there is one (project machines), otherwise from the index.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating ${VENV#"$ROOT/"} ($SCANSSC_DISTRO) with $($PY --version)"
  "$UV" venv -q -p "$PY" "$VENV"
fi
REQ_HASH=$(cat "$SCANSSC_ROS_REQ" requirements/ml.txt requirements/viz.txt "$SCANSSC_CONSTRAINTS" setup.py | sha256sum | cut -c1-16)
STAMP="$VENV/.scanssc_requirements"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing Python packages (first run: several minutes)"
  PYTAG=$("$VENV/bin/python" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  TORCH_WHEEL=$(ls /opt/wheels/torch-2.13.0+cpu-"$PYTAG"-"$PYTAG"-*"$(uname -m)".whl 2>/dev/null | head -n 1 || true)
  export VIRTUAL_ENV="$VENV" UV_NO_PROGRESS=1
  if [ -n "$TORCH_WHEEL" ]; then
    "$UV" pip install -q "$TORCH_WHEEL"
  fi
  "$UV" pip install -q -r "$SCANSSC_ROS_REQ" -r requirements/ml.txt -r requirements/viz.txt \
    -c "$SCANSSC_CONSTRAINTS"
  # console scripts (scanssc-*) and the ROS-free package; the colcon install below takes precedence on PYTHONPATH
  "$UV" pip install -q --no-deps --no-build-isolation -e .
  echo "$REQ_HASH" > "$STAMP"
fi

# 2b. open3d (the 3D pictures: ray-cast voxel renders, .ply export) loads these Debian libraries on import; without
#     them the renders fall back to matplotlib. Its Filament renderer (which would also need libvulkan1 and
#     mesa-vulkan-drivers) is not used. Only missing ones are installed, and only as root (CI, project machines).
O3D_DEBS="libusb-1.0-0 libgl1 libegl1 libgomp1"
missing=""
if command -v dpkg-query >/dev/null; then
  for deb in $O3D_DEBS; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing="$missing $deb"
  done
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt: installing$missing (open3d offscreen rendering)"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; } \
      || log "apt-get failed: 3D renders will fall back to matplotlib"
  else
    log "not root: 3D renders fall back to matplotlib until these are installed: apt-get install$missing"
  fi
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
mkdir -p "$LOG"
touch "$VENV/COLCON_IGNORE"
# tf2_msgs is not on PyPI, and the node's TF placement needs it. In this development environment only, generate it
# from its one-line message definition (identical in ROS 2) into build/, outside any colcon source tree, so a user's
# workspace never sees a second tf2_msgs; a real ROS install has its own and skips this.
COLCON_PATHS=("$ROOT")
if ! "$VENV/bin/python" -c "import tf2_msgs" 2>/dev/null || [ -d "$BUILD/dev_msgs/tf2_msgs" ]; then
  DEV_TF2=$BUILD/dev_msgs/tf2_msgs
  mkdir -p "$DEV_TF2/msg"
  echo "geometry_msgs/TransformStamped[] transforms" > "$DEV_TF2/msg/TFMessage.msg"
  cat > "$DEV_TF2/package.xml" <<'XML'
<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.0.0</version>
  <description>Development stand-in: TFMessage only, generated by scanssc_ros/scripts/setup.sh.</description>
  <maintainer email="dev@scanssc-ros.org">scanssc_ros developers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
XML
  cat > "$DEV_TF2/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(tf2_msgs C CXX)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
CMAKE
  COLCON_PATHS+=("$DEV_TF2")
fi
# colcon alone needs minutes to start on a slow machine: skip it when nothing it installs has changed
BUILD_HASH=$({ echo "$REQ_HASH ${COLCON_PATHS[*]}"; find CMakeLists.txt package.xml msg scanssc_ros scripts launch config rviz -type f \
  ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
BUILD_STAMP=$INSTALL/.scanssc_build
if [ -f "$INSTALL/setup.bash" ] && [ "$(cat "$BUILD_STAMP" 2>/dev/null)" = "$BUILD_HASH" ]; then
  log "colcon build up to date"
  exit 0
fi
log "colcon build ($SCANSSC_DISTRO)"
# colcon adds "-l <cores>" otherwise, and background load on these machines keeps make at one job
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
colcon --log-base "$LOG" build --symlink-install --paths "${COLCON_PATHS[@]}" --build-base "$BUILD" --install-base "$INSTALL" \
  --event-handlers console_direct- summary- status- --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DPython3_NumPy_INCLUDE_DIR="$NP_INC" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF > "$LOG/colcon_build.txt" 2>&1 \
  || { cat "$LOG/colcon_build.txt" >&2 2>/dev/null; log "colcon build FAILED"; exit 1; }
echo "$BUILD_HASH" > "$BUILD_STAMP"
if [ "$SCANSSC_DISTRO" = kilted ]; then
  log "ready: source scripts/env.sh to use the built package"
else
  log "ready: ROS_DISTRO=$SCANSSC_DISTRO source scripts/env.sh to use the built package"
fi
