"""Where census_sgm's time goes: seconds per phase of one batched call, kernel launches, memory.

Times each phase of ``CensusSgmFlow.stereo_tensors`` (census, cost volume, shear, guided
filter, SGM, winner, refinement; the coarse pass separately) by wrapping ``sgm_ops``'s
functions with device synchronisation, over a batch of synthetic frames at film size. Then one
torch.profiler run gives the kernels that take the most device time and how many were
launched. Use it to pick what to fuse; the figures are for one run on one device.

    python benchmarks/census_sgm_profile.py [--device cuda] [--size 960x540] [--batch 8 32]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict

import numpy as np
import torch

from filmmine.flow import backend_options, census_sgm, sgm_ops
from filmmine.recipe import load_recipe
from filmmine.tools.bench_data import synthetic_pairs

PHASES = ("census", "cost_volume", "shear_to_right", "guided_filter", "sgm", "winner",
          "lk_refine", "clipped_gradient", "shift_rows")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def instrument(device: str) -> tuple[dict[str, float], callable]:
    """Wraps the phases; returns the seconds table and an undo function."""
    seconds: dict[str, float] = defaultdict(float)
    stack: list[str] = []
    saved = {}

    def wrap(owner, name, label):
        fn = getattr(owner, name)
        saved[(owner, name)] = fn

        @functools.wraps(fn)
        def timed(*a, **k):
            _sync(device)
            t0 = time.perf_counter()
            stack.append(label)
            try:
                return fn(*a, **k)
            finally:
                _sync(device)
                seconds["/".join(stack)] += time.perf_counter() - t0
                stack.pop()
        setattr(owner, name, timed)

    for name in PHASES:
        wrap(sgm_ops, name, name)
    wrap(census_sgm.CensusSgmFlow, "_coarse", "coarse")
    wrap(census_sgm.CensusSgmFlow, "_fine", "fine")

    def undo():
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
    return seconds, undo


def disparity_stage(be, pairs, device: str) -> None:
    """compute_disparity on the batch: wall, its split (flows / checks+statistics), cProfile."""
    import cProfile
    import pstats

    from filmmine.stages import disparity

    cfg = load_recipe("gpu")["disparity"]
    lefts, rights = [p.left for p in pairs], [p.right for p in pairs]
    disparity.compute_disparity(lefts, rights, be, cfg)                    # warm-up
    _sync(device)
    t0 = time.perf_counter()
    flows = disparity.stereo_flows(lefts, rights, be, cfg)
    _sync(device)
    t1 = time.perf_counter()
    disparity.check_batch(flows.lr, flows.rl, cfg, lefts[0].shape[1], flows.match_confidence,
                          lefts)
    t2 = time.perf_counter()
    n = len(pairs)
    print(f"compute_disparity, batch {n}: flows {(t1 - t0) * 1000:.0f} ms, checks + per-frame "
          f"statistics {(t2 - t1) * 1000:.0f} ms ({(t2 - t1) * 1000 / n:.1f} ms a frame) -> "
          f"{n / (t2 - t0):.1f} pairs/s", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    disparity.compute_disparity(lefts, rights, be, cfg)
    _sync(device)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--fp32", action="store_true", help="no half-precision volumes")
    ap.add_argument("--no-profiler", action="store_true")
    ap.add_argument("--disparity", action="store_true",
                    help="also the whole disparity stage (compute_disparity: flows, checks, "
                         "per-frame statistics) for the largest batch, with a cProfile")
    ap.add_argument("--torch", action="store_true",
                    help="the torch code for the cost volume and SGM, not the Triton kernels")
    args = ap.parse_args()
    sgm_ops.USE_KERNELS = not args.torch
    w, h = (int(x) for x in args.size.split("x"))
    opts = backend_options(load_recipe("gpu"))
    if args.fp32:
        opts["half_precision"] = False
    be = census_sgm.CensusSgmFlow(device=args.device, **opts)
    pairs = synthetic_pairs(max(args.batch), (w, h))
    left = torch.from_numpy(np.stack([p.left for p in pairs]))[:, None].to(args.device)
    right = torch.from_numpy(np.stack([p.right for p in pairs]))[:, None].to(args.device)
    kernels = sgm_ops._kernels(left)
    print(f"device {args.device} size {w}x{h} dtype {be.dtype} "
          f"{'Triton kernels' if kernels else 'torch code'}", flush=True)
    be.stereo_tensors(left[:2], right[:2])                               # warm-up
    for b in args.batch:
        _sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        be.stereo_tensors(left[:b], right[:b])
        _sync(args.device)
        wall = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() / 2**30
                if args.device.startswith("cuda") else float("nan"))
        seconds, undo = instrument(args.device)
        try:
            t1 = time.perf_counter()
            be.stereo_tensors(left[:b], right[:b])
            _sync(args.device)
            wall_i = time.perf_counter() - t1
        finally:
            undo()
        print(f"batch {b}: {wall * 1000:.0f} ms = {b / wall:.1f} pairs/s, peak {peak:.1f} GiB; "
              f"instrumented {wall_i * 1000:.0f} ms", flush=True)
        for k in sorted(seconds, key=lambda k: (k.split("/")[0], -seconds[k])):
            print(f"  {k:<40} {seconds[k] * 1000:9.1f} ms", flush=True)
    if args.disparity:
        disparity_stage(be, pairs[:max(args.batch)], args.device)
    if not args.no_profiler:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            acts.append(ProfilerActivity.CUDA)
        b = args.batch[-1]
        with profile(activities=acts) as prof:
            be.stereo_tensors(left[:b], right[:b])
            _sync(args.device)
        key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)
        events = prof.events()
        kernels = [e for e in events if getattr(e, "device_type", None) is not None
                   and str(e.device_type).endswith("CUDA")]
        print(f"device events (kernels, copies) in one batch of {b}: {len(kernels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
