# Source me: creates/updates the project virtualenv (.venv) and installs the package
# non-editable (so share/vidseg_ros, the ament resource marker and lib/vidseg_ros exist).
# Idempotent and quiet when nothing changed.
set -e
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${VIDSEG_VENV:-$_root/.venv}"
if [ ! -x "$_venv/bin/python" ]; then
  echo "[setup] creating virtualenv $_venv"
  python3 -m venv "$_venv"
fi
_req_hash="$(sha256sum "$_root/requirements.txt" | cut -c1-16)"
if [ ! -f "$_venv/.req-$_req_hash" ]; then
  echo "[setup] installing requirements (first run takes a few minutes)"
  "$_venv/bin/pip" install -q -r "$_root/requirements.txt" 2>&1 | grep -v "is ignored: it is neither" || true
  "$_venv/bin/python" -c "import torch, cv2, rclpy, rosbags" || { echo "[setup] requirement install failed" >&2; return 1 2>/dev/null || exit 1; }
  rm -f "$_venv"/.req-*; touch "$_venv/.req-$_req_hash"
fi
# Reinstall the package itself when any source changed (non-editable: installs data_files).
_src_hash="$(cd "$_root" && find vidseg_ros launch config scripts/lib resource setup.py setup.cfg package.xml -type f \
  -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
if [ ! -f "$_venv/.src-$_src_hash" ]; then
  "$_venv/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$_root" 2>&1 | grep -v "is ignored: it is neither" || true
  rm -f "$_venv"/.src-*; touch "$_venv/.src-$_src_hash"
fi
export VIRTUAL_ENV="$_venv"
export PATH="$_venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Fast DDS: a profile with a 32 MB shared-memory segment (the default 512 KB one drops camera
# images; see config/fastdds.xml and docs/ROS.md).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_root/config/fastdds.xml}"
export VIDSEG_SHARED="${VIDSEG_SHARED:-$_root/../shared}"
set +e
