"""The Triton kernels of census_sgm's building blocks (``sgm_ops``: SGM, cost volume, shear,
guided filter, winner) give the torch code's volumes and flows.

On a CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, which must be
set before the kernels are defined: in a child process); on CUDA they are compiled.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")

# compares kernels and torch code on DEVICE; prints one line per comparison, the largest
# absolute difference last
CHECKS = textwrap.dedent("""
    import numpy as np, torch
    from filmmine.flow import sgm_ops as ft
    from filmmine.flow.census_sgm import CensusSgmFlow
    from filmmine.flow import triton_kernels
    from filmmine.tools.bench_data import synthetic_pairs
    from filmmine.flow import backend_options
    from filmmine.recipe import load_recipe
    dev = DEVICE
    g = torch.Generator().manual_seed(0)
    assert triton_kernels.available(torch.zeros(1, device=dev))
    # SGM: label counts and line counts that are not block multiples, both P2 modes, fp16
    for (n, d, h, w), edge, dtype in [((2, 7, 9, 13), 20.0, torch.float32),
                                      ((3, 20, 16, 11), 0.0, torch.float32),
                                      ((2, 37, 12, 70), 20.0, torch.float16)]:
        cost = torch.rand(n, d, h, w, generator=g).to(dev, dtype)
        grey = (torch.rand(n, 1, h, w, generator=g) * 255).to(dev)
        ft.USE_KERNELS = True
        got = ft.sgm(cost, grey, 0.03, 0.4, edge, 4).float()
        ft.USE_KERNELS = False
        ref = ft.sgm(cost, grey, 0.03, 0.4, edge, 4).float()
        print("sgm", (n, d, h, w), edge, str(dtype), float((got - ref).abs().max()))
    # cost volume: 1 and 3 candidate rows, with and without the gradient term
    b, h, w = 2, 9, 70
    left = (torch.rand(b, 1, h, w, generator=g) * 255).to(dev)
    right = (torch.rand(b, 1, h, w, generator=g) * 255).to(dev)
    cl, cr = ft.census(left, (5, 5)), ft.census(right, (5, 5))
    rows = torch.stack([cr, cr.roll(1, 1), cr.roll(-1, 1)], 1)
    gl, gr = ft.clipped_gradient(left, 64.0), ft.clipped_gradient(right, 64.0)
    grows = torch.stack([gr, gr.roll(1, 1), gr.roll(-1, 1)], 1)
    dmin = torch.tensor([-5, 3], device=dev)
    for gw in (0.3, 0.0):
        for nr in (1, 3):
            ft.USE_KERNELS = True
            got = ft.cost_volume(cl, rows[:, :nr], dmin, 21, 24, torch.float32, gl,
                                 grows[:, :nr], gw)
            ft.USE_KERNELS = False
            ref = ft.cost_volume(cl, rows[:, :nr], dmin, 21, 24, torch.float32, gl,
                                 grows[:, :nr], gw)
            print("cost_volume", gw, nr, float((got - ref).abs().max()))
    # guided filter: radii 3 and 2, a width that is not a block multiple, fp16 volume
    for (n, d, h, w), r, dtype in [((2, 3, 9, 13), 3, torch.float32),
                                   ((1, 2, 8, 70), 2, torch.float16)]:
        cost = torch.rand(n, d, h, w, generator=g).to(dev, dtype)
        grey = (torch.rand(n, 1, h, w, generator=g) * 255).to(dev)
        ft.USE_KERNELS = True
        got = ft.guided_filter(cost, grey, r, 1e-4).float()
        ft.USE_KERNELS = False
        ref = ft.guided_filter(cost, grey, r, 1e-4).float()
        print("guided_filter", (n, d, h, w), r, str(dtype), float((got - ref).abs().max()))
    # winner (ties: the first label; 1, 2 and 37 labels) and the right view's volume
    for n, d, h, w in [(2, 1, 3, 5), (2, 2, 3, 70), (2, 37, 5, 13)]:
        agg = torch.rand(n, d, h, w, generator=g).to(dev)
        agg[:, d // 2, 0] = agg[:, 0, 0]           # equal costs in row 0
        ft.USE_KERNELS = True
        got = ft.winner(agg)
        ft.USE_KERNELS = False
        ref = ft.winner(agg)
        print("winner", (n, d, h, w), max(float((x - y).abs().max()) for x, y in zip(got, ref)))
    vol = torch.rand(2, 21, 9, 70, generator=g).to(dev, torch.float16)
    ft.USE_KERNELS = True
    got = ft.shear_to_right(vol, dmin)
    ft.USE_KERNELS = False
    print("shear", float((got.float() - ft.shear_to_right(vol, dmin).float()).abs().max()))
    # the whole backend on film frames
    if dev == "cpu":
        # the guided-filter kernel walks every row of every label plane: ~150 s here under the
        # interpreter (compared on its own above); the torch filter stands in for it
        def torch_filter(cost, guide, r, eps, box_mean):
            ft.USE_KERNELS = False
            try:
                return ft.guided_filter(cost, guide, r, eps)
            finally:
                ft.USE_KERNELS = True
        triton_kernels.guided_filter = torch_filter
    pairs = synthetic_pairs(2, (96, 54))
    opts = backend_options(load_recipe("gpu"))
    opts["half_precision"] = False
    be = CensusSgmFlow(device=dev, **opts)
    lt = torch.from_numpy(np.stack([p.left for p in pairs]))[:, None]
    rt = torch.from_numpy(np.stack([p.right for p in pairs]))[:, None]
    ft.USE_KERNELS = True
    a = be.stereo_tensors(lt, rt)
    ft.USE_KERNELS = False
    r = be.stereo_tensors(lt, rt)
    print("flow", max(float((a.lr - r.lr).abs().max()), float((a.rl - r.rl).abs().max()),
                      float((a.match_confidence - r.match_confidence).abs().max())))
""")


def _run_checks(device: str) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHECKS.replace("DEVICE", repr(device))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        out.setdefault(words[0], []).append(float(words[-1]))
    return out


def _assert_close(out: dict[str, list[float]], fp16_sgm_tol: float) -> None:
    sgm = out["sgm"]
    assert len(sgm) == 3 and max(sgm[:2]) < 1e-5, sgm
    # fp16 volume: the kernel adds the paths in fp32, torch in fp16 (values up to ~6)
    assert sgm[2] < fp16_sgm_tol, sgm
    assert len(out["cost_volume"]) == 4 and max(out["cost_volume"]) < 1e-6, out
    assert len(out["winner"]) == 3 and max(out["winner"]) < 1e-5, out["winner"]
    assert out["shear"] == [0.0], out["shear"]
    gf = out["guided_filter"]
    assert len(gf) == 2 and gf[0] < 1e-5 and gf[1] < 2e-3, gf   # fp16 output: half an ulp
    # same volumes up to float rounding: the same winners, sub-pixel fits within 1e-3 px
    assert len(out["flow"]) == 1 and out["flow"][0] < 1e-3, out


@needs_triton
def test_kernels_match_the_torch_code_under_the_interpreter():
    _assert_close(_run_checks("cpu"), fp16_sgm_tol=2e-2)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_match_the_torch_code_on_cuda():
    _assert_close(_run_checks("cuda"), fp16_sgm_tol=2e-2)
