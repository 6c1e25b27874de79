#!/usr/bin/env bash
# filmmine's GPU measurements in one command on a lent GPU machine (prepare .gpu-kit with
# scripts/gpu_kit.sh first and carry it). Each step has its own time limit and its log goes to
# $OUT: the CUDA tests (CPU and CUDA give the same labels), the disparity backends on the real
# pairs and their speed at 960x540 with batches (issue 3: >= 200 pairs/s goal), and the trainer's
# loader/step benchmark (issue 4: GPU steps/s, real vs synthetic batches).
#   DEVICE=cpu bash benchmarks/gpu_session.sh   # the same steps on a CPU, to check the script
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/filmmine-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/filmmine-site \
    .gpu-kit/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/filmmine-site:$PWD" FILMMINE_DATA="$PWD/.gpu-kit/data" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"
} | tee "$OUT/machine.txt"
step() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "rc $? in $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
    tail -n 30 "$OUT/$name.txt"
}
step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_flow_torch.py \
    tests/test_flow_raft.py tests/test_disparity.py
step disparity_backends 240 "$PY" benchmarks/disparity_backends.py --device "$DEVICE" \
    --backends census_sgm,dis_sgbm --batch 32 --synthetic 8
step trainer_loader 150 "$PY" benchmarks/trainer_loader.py
