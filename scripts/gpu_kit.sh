#!/usr/bin/env bash
# Packs what a lent GPU machine lacks for filmmine's GPU measurements into .gpu-kit/ (ignored by
# git; carried by the device tool): the pure-Python wheels its image does not hold (its python3
# 3.12 has torch, OpenCV, scikit-image, tifffile, pytest; not ffmpeg-python) and the real stereo
# pairs of ../shared/data (../shared does not travel). Run here, where PyPI is reachable; then
# on the GPU machine: `bash benchmarks/gpu_session.sh` with carry [".gpu-kit"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu-kit/' .git/info/exclude 2>/dev/null || echo '/.gpu-kit/' >> .git/info/exclude
rm -rf .gpu-kit && mkdir -p .gpu-kit/wheels .gpu-kit/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .gpu-kit/wheels \
    ffmpeg-python==0.2.0 future
for d in kitti2015_000046 middlebury2003_cones middlebury2014_motorcycle_imperfect; do
    cp -r "../shared/data/$d" .gpu-kit/data/
done
du -sh .gpu-kit
