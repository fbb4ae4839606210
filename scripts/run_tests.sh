#!/usr/bin/env bash
# The whole suite in the built environment. pytest's "no tests collected" (exit 5) is a failure here: a suite
# that silently stops finding its tests must not pass.
set -o pipefail
cd "$(dirname "$0")/.."
# colcon's generated setup.bash reads unset variables, so nounset is switched on only after sourcing it
source scripts/env.sh || exit 1
set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export PYTHONUNBUFFERED=1
pytest -ra -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "run_tests: pytest collected no tests - treating as failure" >&2
  exit 1
fi
exit $rc
