# Source this (bash) to use the built workspace: venv tools, the colcon install, loopback-only DDS.
# ROS_DISTRO picks the build (kilted, the default, or jazzy: `export ROS_DISTRO=jazzy; source scripts/env.sh`); sourcing
# it again for the other distribution replaces this checkout's paths instead of stacking them.
# shellcheck source=scripts/distro.sh
source "$(dirname "${BASH_SOURCE[0]}")/distro.sh" || return 1
scanssc_forget_checkout
export ROS_DISTRO=$SCANSSC_DISTRO
export PATH="$SCANSSC_VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$SCANSSC_VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$SCANSSC_INSTALL/setup.bash"
_SCANSSC_SITE=$(ls -d "$SCANSSC_INSTALL"/scanssc_ros/lib/python3*/site-packages 2>/dev/null | head -n 1)
export PYTHONPATH="$_SCANSSC_SITE${PYTHONPATH:+:$PYTHONPATH}"
# Project machines set PYTHONDONTWRITEBYTECODE, which makes every process recompile torch and rclpy from source
# (tens of seconds per import on 2 slow cores); cached bytecode in .venv is safe and much faster.
unset PYTHONDONTWRITEBYTECODE
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
unset _SCANSSC_SITE
