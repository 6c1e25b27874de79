"""Shared fixtures: a generated film library with ground truth and a corpus mined from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from filmmine import synth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CLIPS = SHARED / "real_cut_clips"


FD_DIR = Path("/proc/self/fd")


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, ...]]:
    """What the code under test syncs (the path behind each fd) and renames, in order
    (filmmine/atomic.py and trainer/atomic.py: tests/test_atomic.py, test_trainer_atomic.py)."""
    if not FD_DIR.is_dir():
        pytest.skip("needs /proc/self/fd to name a file descriptor's path")
    log: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.readlink(FD_DIR / str(fd))))
        real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        log.append(("replace", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "real" in item.keywords and not SHARED.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"shared data not found at {SHARED}"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread is as fast, deterministic, and immune to a loaded machine
    (OpenMP threads spinning on busy cores made these tests ~10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Path:
    """One film per layout (different scenes, default spec: every shot kind, one dissolve)."""
    root = tmp_path_factory.mktemp("library")
    return synth.write_library(root).parent


def truth_of(library: Path, film: str) -> dict:
    lib = json.loads((library / "library.json").read_text())
    entry = next(f for f in lib["films"] if f["name"] == film)
    side = library / (entry["path"] + ".truth.json" if "path" in entry else film + ".truth.json")
    return json.loads(side.read_text())


@pytest.fixture(scope="session")
def corpus(library, tmp_path_factory) -> Path:
    """The library mined by a real LocalCluster with 2 worker processes."""
    from filmmine.run.extract import extract

    out = tmp_path_factory.mktemp("corpus")
    report = extract([str(library / "library.json")], out, workers=2, progress=False)
    assert report.exit_code == 0, report.summary()
    return out


@pytest.fixture(scope="session")
def moto_half():
    """scikit-image's Middlebury Motorcycle pair at half size: grey left, right, and the
    ground-truth disparity halved (NaN where unknown)."""
    import cv2
    import numpy as np

    from filmmine.tools.bench_data import load_motorcycle

    pair = load_motorcycle()
    if pair is None:
        pytest.skip("scikit-image not installed")
    h, w = pair.left.shape
    size = (w // 2, h // 2)
    left = cv2.resize(pair.left, size, interpolation=cv2.INTER_AREA)
    right = cv2.resize(pair.right, size, interpolation=cv2.INTER_AREA)
    gt = cv2.resize(np.nan_to_num(pair.gt, nan=-1.0), size, interpolation=cv2.INTER_NEAREST)
    return left, right, np.where(gt > 0, gt * 0.5, np.nan).astype(np.float32)
