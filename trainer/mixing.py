"""Pareto-optimal mixing: per-dataset gradients combined by their min-norm convex combination.

Each dataset is a task; the update direction is the point of minimum norm in the convex hull of
the per-task gradients on the shared parameters (MGDA, Sener & Koltun 2018): a common descent
direction for every task unless the current point is Pareto-stationary. Closed form for two
tasks, Frank-Wolfe on the Gram matrix beyond.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor


def _pair(g11: float, g12: float, g22: float) -> float:
    """gamma in [0, 1] minimising |gamma v1 + (1 - gamma) v2|^2 given the Gram entries."""
    denom = g11 - 2.0 * g12 + g22  # |v1 - v2|^2
    if denom <= 1e-30 * max(g11, g22, 1e-300):
        return 0.5  # v1 == v2: every combination has the same norm
    return float(np.clip((g22 - g12) / denom, 0.0, 1.0))


def _frank_wolfe(gram: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    k = gram.shape[0]
    # start from the best pair (closed form), as Sener & Koltun's solver does
    best, w = np.inf, np.full(k, 1.0 / k)
    for i, j in itertools.combinations(range(k), 2):
        gamma = _pair(gram[i, i], gram[i, j], gram[j, j])
        cand = np.zeros(k)
        cand[i], cand[j] = gamma, 1.0 - gamma
        norm = cand @ gram @ cand
        if norm < best:
            best, w = norm, cand
    for _ in range(max_iter):
        mw = gram @ w
        t = int(np.argmin(mw))  # the vertex that decreases the norm fastest
        vv, vu, uu = float(w @ mw), float(mw[t]), float(gram[t, t])
        gamma = _pair(uu, vu, vv)  # weight on e_t in the line search between w and e_t
        new = (1.0 - gamma) * w
        new[t] += gamma
        if np.abs(new - w).sum() < tol:
            w = new
            break
        w = new
    return w


def min_norm_weights(grads: Tensor, max_iter: int = 2000, tol: float = 1e-10) -> Tensor:
    """``[K, P]`` gradients (one row per task) -> ``[K]`` weights on the simplex minimising
    ``|sum_k w_k grads[k]|``. Non-finite gradients give uniform weights (the step is then
    skipped by the AMP scaler or clipped, never steered by an overflow)."""
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads must be [K, P] with K >= 1, got {tuple(grads.shape)}")
    k = grads.shape[0]
    out = dict(dtype=grads.dtype if grads.is_floating_point() else torch.float32,
               device=grads.device)
    if k == 1:
        return torch.ones(1, **out)
    g = grads.detach().to(torch.float64)
    gram = (g @ g.T).cpu().numpy()  # [K, K]; double: nearly parallel gradients are common
    if not np.isfinite(gram).all():
        return torch.full((k,), 1.0 / k, **out)
    if k == 2:
        gamma = _pair(gram[0, 0], gram[0, 1], gram[1, 1])
        w = np.array([gamma, 1.0 - gamma])
    else:
        w = _frank_wolfe(gram, max_iter, tol)
    w = np.clip(w, 0.0, None)
    return torch.as_tensor(w / w.sum(), **out)


def combine(grads: Tensor, weights: Tensor) -> Tensor:
    """``[K, P]``, ``[K]`` -> ``[P]``: the update direction."""
    return weights.to(grads.dtype) @ grads
