# Sourced by setup.sh and env.sh: which ROS 2 distribution this checkout's environment is built for
# (ROS_DISTRO, default kilted) and where its files live. Kilted keeps the plain .venv/build/install/log paths that
# the demo and docs name; every other distribution gets suffixed copies so both can live in one clone.
#   kilted: requirements/ros.txt + constraints.txt              -> .venv        build        install        log
#   jazzy:  requirements/ros-jazzy.txt + constraints-jazzy.txt  -> .venv-jazzy  build-jazzy  install-jazzy  log-jazzy
SCANSSC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCANSSC_DISTRO=${ROS_DISTRO:-kilted}
case "$SCANSSC_DISTRO" in
  kilted) _scanssc_sfx="" ;;
  jazzy) _scanssc_sfx="-$SCANSSC_DISTRO" ;;
  *) echo "ROS_DISTRO=$SCANSSC_DISTRO: this checkout builds against the PyPI wheels of kilted (default) or jazzy" \
       "only; unset ROS_DISTRO or set one of those (a real ROS install builds the package with colcon, see README)" >&2
     return 1 ;;
esac
SCANSSC_VENV="$SCANSSC_ROOT/.venv$_scanssc_sfx"
SCANSSC_BUILD="$SCANSSC_ROOT/build$_scanssc_sfx"
SCANSSC_INSTALL="$SCANSSC_ROOT/install$_scanssc_sfx"
SCANSSC_LOG="$SCANSSC_ROOT/log$_scanssc_sfx"
SCANSSC_ROS_REQ="$SCANSSC_ROOT/requirements/ros${_scanssc_sfx}.txt"
SCANSSC_CONSTRAINTS="$SCANSSC_ROOT/requirements/constraints${_scanssc_sfx}.txt"
unset _scanssc_sfx

# Drops every entry that points into this checkout from the search paths, and the ROS wheels' one-time re-exec
# guard, so a shell (or a child process) that had the other distribution's environment gets none of its
# libraries or modules: rclpy 7 loading Kilted's librcl, or the reverse, crashes at import.
scanssc_forget_checkout() {
  local var entry kept phys parts
  phys=$(cd "$SCANSSC_ROOT" && pwd -P)
  for var in PATH LD_LIBRARY_PATH PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH; do
    kept=""
    IFS=: read -ra parts <<< "${!var-}"
    for entry in "${parts[@]}"; do
      case "$entry" in
        "$SCANSSC_ROOT"/*|"$phys"/*|"") ;;
        *) kept="${kept:+$kept:}$entry" ;;
      esac
    done
    if [ -n "$kept" ]; then export "$var=$kept"; else unset "$var"; fi
  done
  unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
}
