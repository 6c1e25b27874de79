#!/usr/bin/env bash
# filmmine's GPU measurements in one command on a lent GPU machine (prepare .gpu-kit with
# scripts/gpu_kit.sh first and carry it). Steps run in order of priority, each under its own
# time limit and all within BUDGET seconds (the device tool allows 600 a call); logs go to $OUT:
#   triton              the Triton kernels against the torch code on CUDA (if they fail, the
#                       steps after it run the torch code: FILMMINE_TRITON=0)
#   profile             census_sgm's time per phase at 960x540, batches of 8 to 64 (issue 3)
#   profile_torch       the same without the Triton kernels (FILMMINE_TRITON=0's code)
#   disparity_backends  the backends on the real pairs, and pairs/s at 960x540 (>= 200 goal)
#   extract_gpu         extract wall / decode-only wall, --recipe gpu --device cuda (<= 1.2 goal;
#                       units of 5 s: a 60 s film in 30 s units busies only 2 workers)
#   cuda_tests          CPU and CUDA give the same labels (tests/test_flow_torch.py, ...)
#   extract_cpu         the same film with the default recipe on the node's CPU cores
#   trainer_loader      the trainer's loader/step benchmark (GPU steps/s), 12 loader workers
#   STEPS="profile cuda_tests" bash benchmarks/gpu_session.sh   # a subset
#   DEVICE=cpu bash benchmarks/gpu_session.sh                    # the same steps on a CPU
#   FILM_SECONDS=30  the extraction steps' film (rendering 60 s took ~50 s on a 16-core node)
#   KERNELS_ANYWAY=1 keep the kernels after a failed kernel check
# The device tool returns at most 8 files from $OUT: machine.txt and up to 7 steps per call.
# Measured with it on 2026-11-25 (H100): benchmarks/RESULTS.md, "GPU".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/filmmine-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
BUDGET=${BUDGET:-560}
STEPS=${STEPS:-triton profile profile_torch disparity_backends extract_gpu cuda_tests extract_cpu trainer_loader}
SECONDS=0
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/filmmine-site \
    .gpu-kit/wheels/*.whl || exit 1
mkdir -p /tmp/filmmine-bin
[ -x /tmp/filmmine-bin/ffprobe ] || tar -C /tmp/filmmine-bin -xJf .gpu-kit/ffmpeg.tar.xz || exit 1
export PATH="/tmp/filmmine-bin:$PATH" FILMMINE_FFMPEG=/tmp/filmmine-bin/ffmpeg \
    FILMMINE_FFPROBE=/tmp/filmmine-bin/ffprobe
export PYTHONPATH="/tmp/filmmine-site:$PWD" FILMMINE_DATA="$PWD/.gpu-kit/data" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  nproc; ffmpeg -version | head -1
  "$PY" -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
CACHE=/tmp/filmmine-bench
step() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    local left=$((BUDGET - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "== $name skipped: budget spent"; return; fi
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    RC=$?
    echo "rc $RC in $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
    tail -n 40 "$OUT/$name.txt"
}
RC=0
step triton 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_flow_triton.py
[ "$RC" = 0 ] || [ -n "${KERNELS_ANYWAY:-}" ] || { echo "Triton kernels failed: torch code from here"; export FILMMINE_TRITON=0; }
step profile 120 "$PY" benchmarks/census_sgm_profile.py --device "$DEVICE" --batch 8 32 64 \
    --disparity
step profile_torch 60 "$PY" benchmarks/census_sgm_profile.py --device "$DEVICE" --batch 32 \
    --torch --no-profiler
step disparity_backends 150 "$PY" benchmarks/disparity_backends.py --device "$DEVICE" \
    --backends census_sgm,dis_sgbm --batch 32 --synthetic 8
# the recipes as users run them: a lone film's units are cut to fill the workers
# (decode.min_chunk_s; 60 s on 8 workers: 8 units of 7.5 s), no hand-set chunk_s
step extract_gpu 240 "$PY" benchmarks/extract_throughput.py --cache "$CACHE" --jobs 12 \
    --seconds "${FILM_SECONDS:-60}" \
    --recipe gpu --device "$DEVICE" --no-stages --repeat 1
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_flow_torch.py \
    tests/test_flow_raft.py tests/test_disparity.py
step extract_cpu 120 "$PY" benchmarks/extract_throughput.py --cache "$CACHE" --jobs 12 \
    --seconds "${FILM_SECONDS:-60}" \
    --recipe default --no-stages --repeat 1
step trainer_loader 100 "$PY" benchmarks/trainer_loader.py --workers 12
echo "session: $SECONDS s"
