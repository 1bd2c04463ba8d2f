#!/usr/bin/env bash
# The main job: sets everything up (first run), then runs the whole ROS 2 graph on the
# default input (a generated synthetic drive) and writes overlay video, labels and summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec vidseg_demo "$@"
