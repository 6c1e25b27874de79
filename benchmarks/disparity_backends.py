"""Disparity backends: accuracy on pairs with ground truth, speed at film resolution, GPU floor.

Three parts, one run:
1. ``filmmine bench-disparity`` (every backend through the full disparity stage on the real
   pairs of ../shared/data, scikit-image's Motorcycle and synthetic film frames).
2. Speed at 960x540 (the stored film size): ms per pair, both directions and checks, on
   synthetic frames, for each backend (``--batch`` pairs per call for torch backends).
3. The census_sgm GPU floor: FLOPs and bytes moved per pair from the algorithm's sizes, and
   the pairs/s they allow on a given bandwidth (an estimate, not a measurement).

    .venv/bin/python benchmarks/disparity_backends.py [--device cuda] [--batch 32] [--skip-table]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from filmmine.flow import TORCH_BACKENDS, backend_options, get_backend
from filmmine.recipe import load_recipe
from filmmine.stages.disparity import compute_disparity
from filmmine.tools.bench_commands import DEFAULT_BACKENDS, add_arguments
from filmmine.tools.bench_data import synthetic_pairs
from filmmine.tools.bench_disparity import Row, format_table, run


def speed_at(size: tuple[int, int], names: list[str], device: str, batch: int,
             repeat: int) -> list[tuple[str, float, float]]:
    """(backend, ms per pair, pairs/s) at ``size`` on synthetic frames."""
    cfg = load_recipe()["disparity"]
    pairs = synthetic_pairs(max(2, batch), size)
    out = []
    for name in names:
        dev = device if name in TORCH_BACKENDS else "cpu"
        be = get_backend(name, device=dev, **backend_options(cfg))
        compute_disparity([pairs[0].left], [pairs[0].right], be, cfg)        # warm-up
        times = []
        for i in range(repeat):
            p = pairs[i % len(pairs)]
            t0 = time.perf_counter()
            compute_disparity([p.left], [p.right], be, cfg)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rate = 1.0 / float(np.median(times))
        if batch > 1 and dev.startswith("cuda"):
            lefts, rights = [p.left for p in pairs[:batch]], [p.right for p in pairs[:batch]]
            compute_disparity(lefts, rights, be, cfg)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            compute_disparity(lefts, rights, be, cfg)
            torch.cuda.synchronize()
            rate = batch / (time.perf_counter() - t0)
        out.append((f"{name} ({dev})", float(np.median(times)) * 1000, rate))
    return out


def gpu_floor(w: int, h: int, labels: int, rows: int, paths: int, radius_passes: int = 4,
              bytes_per_cost: int = 2) -> dict[str, float]:
    """FLOPs and bytes per pair of census_sgm's fine pass (the coarse pass adds ~1/16).

    Volumes: 2 views x labels x pixels. Fused floor: the cost volume is written once, the
    guided filter reads/writes it ~6 times, each SGM path reads the cost and read-modify-
    writes the sum, the winner reads the sum once. As written (unfused torch ops): every
    elementwise op and every cumulative sum is a pass over the volume (counted from the code:
    ~36 fp32 passes in the guided filter, ~20 passes per SGM path, ~6 in the winner)."""
    px = w * h
    vol = 2 * labels * px
    flops = (labels * rows * px * 15          # census Hamming (xor + popcount + min), int ops
             + vol * 30                        # guided filter (4 box filters + coefficients)
             + vol * paths * 8                 # SGM recurrence per path
             + vol * 6)                        # winner, sub-pixel, confidence
    fused = vol * bytes_per_cost * (1 + 6 + paths * 3 + 1)
    unfused = vol * (36 * 2 * 4 + paths * 20 * bytes_per_cost + 6 * bytes_per_cost * 2)
    return {"flops": float(flops), "bytes_fused": float(fused), "bytes_unfused": float(unfused)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--skip-table", action="store_true", help="only the speed and GPU parts")
    ap.add_argument("--speed-size", default="960x540")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bandwidth-tbs", type=float, default=2.5,
                    help="achievable GPU memory bandwidth, TB/s (H100 SXM: ~2.5 of 3.35)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [b for b in args.backends.split(",") if b] or list(DEFAULT_BACKENDS)
    if not args.skip_table:
        report = run(args)
        print(format_table([Row(**r) for r in report["rows"]]))
        print(f"device {report['device']}, torch threads {report['torch_threads']}\n")
    w, h = (int(x) for x in args.speed_size.split("x"))
    print(f"speed at {w}x{h} (synthetic frames, both directions + checks, "
          f"{torch.get_num_threads()} torch threads):")
    for name, ms, rate in speed_at((w, h), [n for n in names if n != "raft"], args.device,
                                   args.batch, args.repeat):
        print(f"  {name:<22} {ms:9.0f} ms/pair {rate:8.2f} pairs/s")
    cfg = load_recipe()["disparity"]
    labels = 64       # films at 960 px: a |d| range of ~40-60 px plus margins
    rows = 2 * cfg["sgm_vertical_px"] + 1
    f = gpu_floor(w, h, labels, rows, cfg["sgm_paths"])
    bw = args.bandwidth_tbs * 1e12
    print(f"census_sgm GPU floor at {w}x{h}, {labels} labels, {rows} rows, "
          f"{cfg['sgm_paths']} paths, fp16 volumes:")
    print(f"  {f['flops'] / 1e9:.1f} GFLOP (incl. int ops) per pair")
    print(f"  fused kernels: {f['bytes_fused'] / 1e9:.2f} GB per pair -> "
          f"{bw / f['bytes_fused']:.0f} pairs/s at {args.bandwidth_tbs} TB/s")
    print(f"  as written (unfused torch ops): {f['bytes_unfused'] / 1e9:.1f} GB per pair -> "
          f"{bw / f['bytes_unfused']:.0f} pairs/s at {args.bandwidth_tbs} TB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
