#!/usr/bin/env bash
# `make demo` (after setup): held-out synthetic scenes and, when ../shared/data is present, the real KITTI sample
# frames become rosbags, are replayed through the installed scanssc_node with config/scanssc.yaml, and every frame
# gets a PNG (input image; the completed grid and its ground truth as shaded 3D voxels, bird's-eye views, a
# right/wrong map, the occupancy grid) and .ply voxel files in demo_out/, with summary.txt.
set -eo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh  # before nounset: colcon's setup scripts read unset variables
set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((1 + $$ % 100))}
exec python -m scanssc_ros.demo "$@"
