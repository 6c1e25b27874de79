#!/usr/bin/env bash
# Set up filmmine on a fresh machine: ffmpeg (Debian package where missing), a virtualenv in
# .venv with the CPU build of torch and the project with its test extras.
# `--test` also installs what the tests need (pytest and friends, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  if [ -z "${FILMMINE_FFMPEG:-}" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "installing ffmpeg (apt-get)..."
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
    else
      echo "ffmpeg/ffprobe not found: install them (e.g. 'sudo apt-get install ffmpeg') or set" \
           "FILMMINE_FFMPEG and FILMMINE_FFPROBE to their paths" >&2
      exit 1
    fi
  fi
fi

# --- headless Chromium: only for the test that opens `filmmine preview`'s HTML report --------
# (tests/test_preview.py skips that test, saying why, when no chromium is found)
if [ "$WITH_TESTS" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium (apt-get) for the HTML report test..."
    { apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      echo "note: chromium could not be installed; the HTML report test will be skipped" >&2
  else
    echo "note: chromium not found (e.g. 'sudo apt-get install chromium'); the HTML report" \
         "test will be skipped" >&2
  fi
fi
# ----------------------------------------------------------------------------------------------

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch/torchvision are pinned only here, to the builds that lie on this kind of machine's disk
# (an unpinned torch downloads a CUDA build of several GB; PyPI's torchvision does not load
# beside the torch 2.13 CPU wheel). The project itself asks for ranges (pyproject.toml).
pip_install() {  # quiet, minus the noise of this machine's unused local indexes
  .venv/bin/pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_install "torch==2.14.1" "torchvision==0.29.1"
# the tests decode MV-HEVC spatial video too: they need the spatial extra's FFmpeg
if [ "$WITH_TESTS" = 1 ]; then pip_install -e ".[test,spatial]"; else pip_install -e .; fi
.venv/bin/python - <<'PY'
import cv2
missing = [m for m in ("ximgproc", "optflow") if not hasattr(cv2, m)]
if missing:
    raise SystemExit(f"cv2 lacks contrib modules {missing}: another opencv package shadows "
                     "opencv-contrib-python-headless; uninstall opencv-python(-headless)")
PY
