"""trainer.mixing.min_norm_weights against a brute-force search over the simplex."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainer.mixing import combine, min_norm_weights


def simplex_grid(k: int, step: float) -> np.ndarray:
    n = round(1 / step)
    pts = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in pts], np.float64) / n


def brute_force(g: np.ndarray, step: float) -> tuple[np.ndarray, float]:
    grid = simplex_grid(g.shape[0], step)
    norms = np.linalg.norm(grid @ g, axis=1)
    i = int(np.argmin(norms))
    return grid[i], float(norms[i])


def _cases(k: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = int(rng.integers(3, 40))
        common = rng.normal(size=(1, p)) * rng.uniform(0, 3)  # from conflicting to aligned
        g = rng.normal(size=(k, p)) + common
        if i % 5 == 0:
            g[0] *= 10  # very different norms
        yield g


@pytest.mark.parametrize(("k", "step"), [(2, 0.001), (3, 0.005)])
def test_min_norm_matches_brute_force(k, step):
    for g in _cases(k, 40, seed=k):
        w = min_norm_weights(torch.from_numpy(g)).numpy()
        assert w.shape == (k,)
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
        got = float(np.linalg.norm(w @ g))
        best_w, best = brute_force(g, step)
        assert got <= best + 1e-9  # never worse than any grid point
        # the optimum is unique (strictly convex unless gradients are dependent): weights agree
        # up to the grid's resolution
        scale = max(np.linalg.norm(g, axis=1))
        if best > 1e-3 * scale:
            np.testing.assert_allclose(w, best_w, atol=3 * step + 0.02)


def test_four_tasks_not_worse_than_brute_force():
    for g in _cases(4, 10, seed=11):
        w = min_norm_weights(torch.from_numpy(g)).numpy()
        _, best = brute_force(g, 0.02)
        assert float(np.linalg.norm(w @ g)) <= best + 1e-9


def test_two_task_closed_form():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(min_norm_weights(g), torch.tensor([0.5, 0.5]))
    g = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # same direction: all weight on the shorter
    torch.testing.assert_close(min_norm_weights(g), torch.tensor([0.0, 1.0]))
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # opposite: they cancel (Pareto-stationary)
    torch.testing.assert_close(combine(g, min_norm_weights(g)), torch.zeros(2))


def test_edge_cases():
    torch.testing.assert_close(min_norm_weights(torch.randn(1, 7)), torch.ones(1))
    g = torch.ones(3, 5)  # identical gradients: any point is optimal
    w = min_norm_weights(g)
    assert float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(combine(g, w), torch.ones(5))
    bad = torch.randn(3, 5)
    bad[1, 2] = float("inf")
    torch.testing.assert_close(min_norm_weights(bad), torch.full((3,), 1 / 3))
    with pytest.raises(ValueError):
        min_norm_weights(torch.zeros(5))
