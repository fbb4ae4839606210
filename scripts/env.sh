# Source this (bash) to use the built workspace: venv tools, the colcon install, loopback-only DDS.
_SCANSSC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$_SCANSSC_ROOT/.venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_SCANSSC_ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_SCANSSC_ROOT/install/setup.bash"
_SCANSSC_SITE=$(ls -d "$_SCANSSC_ROOT"/install/scanssc_ros/lib/python3*/site-packages 2>/dev/null | head -n 1)
export PYTHONPATH="$_SCANSSC_SITE${PYTHONPATH:+:$PYTHONPATH}"
# Project machines set PYTHONDONTWRITEBYTECODE, which makes every process recompile torch and rclpy from source
# (tens of seconds per import on 2 slow cores); cached bytecode in .venv is safe and much faster.
unset PYTHONDONTWRITEBYTECODE
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
unset _SCANSSC_SITE
