#!/usr/bin/env bash
# The test command: sets everything up (first run) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# Run from the installed package (same code the ROS processes import).
exec python -m pytest test "$@"
