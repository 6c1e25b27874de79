"""Label confidence cues: how far can a per-pixel test trade density for accuracy?

Issue 3's goal is bad-2 <= 2 % at >= 85 % density (means over the real pairs with ground
truth). The default backend labels 86.6 % of the ground truth at bad-2 2.99 %: reaching the
goal by dropping labels needs a test that drops mostly bad ones (of every 100 labels dropped
on the way to 85 %, about 60 would have to be bad). This benchmark measures which test could:
for each per-pixel cue that a matcher's output offers (all "higher = less trustworthy"):

* ``lr_error``: left-right disagreement, px (from the stored confidence, ``exp(-err/lr_max)``);
* ``bt3`` / ``bt5``: Birchfield-Tomasi photometric cost of the label, box mean over 3x3 / 5x5;
* ``zncc5``: 1 - zero-mean normalised cross-correlation of 5x5 windows at the label;
* ``fg_step5`` / ``fg_step11``: how far the label stands above the lowest label around it
  (the foreground side of a depth step, where stereo matchers fatten objects);
* ``span5``: largest minus smallest label in 5x5;
* ``sparse7``: share of unlabelled pixels in 7x7;
* ``near_invalid``: minus the distance to the nearest unlabelled pixel;
* ``flat``: minus the mean horizontal image gradient in 5x5 (little texture);

and for models of all of them fitted **out of fold** (on the other scenes only: the two
Motorcycle pairs are one scene): a logistic regression and a small MLP (torch). Each row gives
the mean bad-2 when labels are dropped, worst first, down to 85 % mean density, and the mean
density left where mean bad-2 reaches 2 % ("-": only when nothing is left). The oracle drops
bad labels only.

    .venv/bin/python benchmarks/label_cues.py [--recipe default] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from filmmine.flow import backend_options, get_backend
from filmmine.recipe import load_recipe
from filmmine.stages.disparity import compute_disparity
from filmmine.tools.bench_data import default_data_dir, discover, load_motorcycle
from filmmine.tools.bench_disparity import _parse_set

TARGET_DENSITY = 85.0
TARGET_BAD2 = 2.0


def _warp_right(right: np.ndarray, d: np.ndarray, v: np.ndarray, dx: float = 0.0) -> np.ndarray:
    """The right view sampled where each left pixel's label lands (bilinear)."""
    h, w = d.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx = xs - np.nan_to_num(d, nan=0.0) + np.float32(dx)
    my = ys + np.nan_to_num(v, nan=0.0)
    return cv2.remap(right.astype(np.float32), mx, my, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def cue_maps(left: np.ndarray, right: np.ndarray, disparity: np.ndarray,
             vertical: np.ndarray, confidence: np.ndarray, lr_max: float) -> dict[str, np.ndarray]:
    """Per-pixel cues [H, W] float32 for one labelled frame (meaningful where labelled)."""
    d = disparity
    v = vertical if vertical is not None else np.zeros_like(d)
    valid = np.isfinite(d)
    L = left.astype(np.float32)
    r0, rm, rp = (_warp_right(right, d, v, dx) for dx in (0.0, -0.5, 0.5))
    rmin, rmax = np.minimum(np.minimum(r0, rm), rp), np.maximum(np.maximum(r0, rm), rp)
    bt = np.maximum(0.0, np.maximum(L - rmax, rmin - L))
    k5 = (5, 5)
    m_l, m_r = cv2.blur(L, k5), cv2.blur(r0, k5)
    s_ll = cv2.blur(L * L, k5) - m_l * m_l
    s_rr = cv2.blur(r0 * r0, k5) - m_r * m_r
    s_lr = cv2.blur(L * r0, k5) - m_l * m_r
    zncc = s_lr / np.sqrt(np.maximum(s_ll * s_rr, 1e-6))
    low = np.where(valid, d, 1e4).astype(np.float32)
    high = np.where(valid, d, -1e4).astype(np.float32)
    cues = {
        "lr_error": -np.log(np.maximum(confidence, 1e-6)) * np.float32(lr_max),
        "bt3": cv2.blur(bt, (3, 3)),
        "bt5": cv2.blur(bt, k5),
        "zncc5": 1.0 - zncc,
        "fg_step5": d - cv2.erode(low, np.ones(k5, np.uint8)),
        "fg_step11": d - cv2.erode(low, np.ones((11, 11), np.uint8)),
        "span5": cv2.dilate(high, np.ones(k5, np.uint8)) - cv2.erode(low, np.ones(k5, np.uint8)),
        "sparse7": 1.0 - cv2.blur(valid.astype(np.float32), (7, 7)),
        "near_invalid": -cv2.distanceTransform(valid.astype(np.uint8), cv2.DIST_L2, 3),
        "flat": -cv2.blur(np.abs(cv2.Sobel(L, cv2.CV_32F, 1, 0, ksize=3)), k5),
    }
    return {k: c.astype(np.float32) for k, c in cues.items()}


class Frame:
    """One real pair's labels with ground truth: cue values and bad-2 flags per label."""

    def __init__(self, name: str, scene: str, x: np.ndarray, bad: np.ndarray, n_gt: int):
        self.name, self.scene, self.x, self.bad, self.n_gt = name, scene, x, bad, n_gt


def frames(recipe: str, overrides: dict) -> tuple[list[str], list[Frame], float]:
    cfg = load_recipe(recipe)["disparity"]
    cfg.update(overrides)
    backend = get_backend(cfg["backend"], **backend_options(cfg))
    pairs = discover([default_data_dir()])
    moto = load_motorcycle()
    if moto is not None:
        pairs.append(moto)
    out, names, t = [], [], 0.0
    for p in pairs:
        t0 = time.perf_counter()
        r = compute_disparity([p.left], [p.right], backend, cfg)[0]
        cues = cue_maps(p.left, p.right, r.disparity, r.vertical, r.confidence,
                        float(cfg["lr_max_px"]))
        t += time.perf_counter() - t0
        has = np.isfinite(p.gt)
        lab = np.isfinite(r.disparity) & has
        names = list(cues)
        x = np.stack([cues[k][lab] for k in names], 1)
        bad = np.abs(r.disparity - p.gt)[lab] > 2.0
        scene = "motorcycle" if "otorcycle" in p.name else p.dataset
        out.append(Frame(p.dataset, scene, x, bad, int(has.sum())))
    return names, out, t / max(len(pairs), 1)


def _at(scores: list[np.ndarray], fs: list[Frame], thr: float) -> tuple[float, float]:
    """Mean bad-2 % and mean density % keeping labels with score <= thr."""
    b2, de = [], []
    for s, f in zip(scores, fs, strict=True):
        keep = s <= thr
        b2.append(100.0 * f.bad[keep].mean() if keep.any() else float("nan"))
        de.append(100.0 * keep.sum() / f.n_gt)
    return float(np.mean(b2)), float(np.mean(de))


def trade(scores: list[np.ndarray], fs: list[Frame]) -> tuple[float, float]:
    """(mean bad-2 at 85 % mean density, mean density at 2 % mean bad-2): one threshold on the
    score for all pairs, found by bisection over the pooled score quantiles. Ties (a cue with
    few values, e.g. a distance in whole pixels) are broken at random: a jitter of 1e-3 of
    the score's spread."""
    rng = np.random.default_rng(0)
    spread = float(np.std(np.concatenate(scores))) or 1.0
    scores = [s + rng.random(s.size, np.float32) * np.float32(1e-3 * spread) for s in scores]
    pooled = np.sort(np.concatenate(scores))
    qs = pooled[np.linspace(0, pooled.size - 1, 4001).astype(int)]

    def search(ok) -> float:
        lo, hi = 0, qs.size - 1          # ok(qs[hi]) holds (everything kept), find the lowest
        if not ok(qs[hi]):
            return qs[hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(qs[mid]) else (mid, hi)
        return qs[hi]

    bad_at = _at(scores, fs, search(lambda t: _at(scores, fs, t)[1] >= TARGET_DENSITY))[0]
    # density falls as the threshold falls; bad-2 mostly too: the highest threshold at 2 %
    ts = qs[::-1]
    dens_at = float("nan")
    for t in ts[::8]:
        b, dn = _at(scores, fs, t)
        if b <= TARGET_BAD2:
            dens_at = dn
            break
    return bad_at, dens_at


def _fit(kind: str, x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int = 0):
    torch.manual_seed(seed)
    xt, yt, wt = (torch.from_numpy(a.astype(np.float32)) for a in (x, y, w))
    n = x.shape[1]
    model = (torch.nn.Linear(n, 1) if kind == "logistic" else
             torch.nn.Sequential(torch.nn.Linear(n, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(400):
        idx = torch.randint(0, xt.shape[0], (8192,), generator=gen)
        loss = (loss_fn(model(xt[idx])[:, 0], yt[idx]) * wt[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def out_of_fold(kind: str, fs: list[Frame]) -> list[np.ndarray]:
    """Scores of each frame from a model fitted on the frames of the other scenes (pairs
    weighted equally; features standardised on the training frames)."""
    scores = []
    for f in fs:
        train = [g for g in fs if g.scene != f.scene]
        x = np.concatenate([g.x for g in train])
        y = np.concatenate([g.bad for g in train]).astype(np.float32)
        w = np.concatenate([np.full(g.bad.size, 1.0 / g.bad.size) for g in train])
        w *= w.size / w.sum()
        mu, sd = x.mean(0), x.std(0) + 1e-6
        model = _fit(kind, (x - mu) / sd, y, w)
        with torch.no_grad():
            scores.append(model(torch.from_numpy(((f.x - mu) / sd).astype(np.float32)))[:, 0]
                          .numpy())
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [disparity] key")
    args = ap.parse_args()
    names, fs, ms = frames(args.recipe, _parse_set(args.set))
    print(f"{len(fs)} real pairs ({', '.join(f.name for f in fs)}); labels and cues "
          f"{ms * 1000:.0f} ms a pair")
    base_b2 = float(np.mean([100.0 * f.bad.mean() for f in fs]))
    base_de = float(np.mean([100.0 * f.bad.size / f.n_gt for f in fs]))
    rows = [("as labelled (no cue)", base_b2, base_de, float("nan"), float("nan"))]
    for j, name in enumerate(names):
        rows.append((name, float("nan"), float("nan"),
                     *trade([np.nan_to_num(f.x[:, j], nan=1e9) for f in fs], fs)))
    for kind in ("logistic", "mlp"):
        t0 = time.perf_counter()
        scores = out_of_fold(kind, [Frame(f.name, f.scene, np.nan_to_num(f.x, nan=1e3,
                                                                           posinf=1e3,
                                                                           neginf=-1e3),
                                          f.bad, f.n_gt) for f in fs])
        rows.append((f"all cues, {kind}, out of fold ({time.perf_counter() - t0:.0f} s)",
                     float("nan"), float("nan"), *trade(scores, fs)))
    rows.append(("oracle (drops bad labels first)", float("nan"), float("nan"),
                 *trade([f.bad.astype(np.float32) + np.linspace(0, 0.5, f.bad.size)
                         for f in fs], fs)))
    print(f"{'cue':48s} {'bad-2 %':>8s} {'dens. %':>8s} {'bad-2 % at 85 % dens.':>22s} "
          f"{'dens. % at 2 % bad-2':>21s}")
    def cell(x: float, w: int) -> str:
        return f"{x:{w}.2f}" if np.isfinite(x) else " " * (w - 1) + "-"

    for name, b2, de, b85, d2 in rows:
        print(f"{name:48s} {cell(b2, 8)} {cell(de, 8)} {cell(b85, 22)} {cell(d2, 21)}")


if __name__ == "__main__":
    main()
