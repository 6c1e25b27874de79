"""trainer.evaluate and trainer.predict: metrics by hand, the zero-shot protocol end to end,
and eval on the real Middlebury motorcycle pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_trainer_data import write_synthetic_corpus

from filmmine.cli import main as filmmine_main
from trainer.config import load_config
from trainer.evaluate import (
    absrel,
    align_least_squares,
    delta_pct,
    evaluate_model,
    image_metrics,
    inference_size,
    rmse,
    whdr_pct,
)
from trainer.sources import DatasetSpec, write_pfm
from trainer.train import train


def tiny_checkpoint(root: Path) -> Path:
    """A tiny model trained for 2 steps on a small synthetic corpus."""
    corpus = write_synthetic_corpus(root / "corpus", shards=1, per_shard=6)
    cfg = load_config("tiny")
    cfg.data.datasets = [DatasetSpec(path=str(corpus))]
    cfg.run.steps = 2
    cfg.eval_size = 256
    train(cfg, root / "run")
    return root / "run" / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("evalck"))


# ----------------------------------------------------------------------------- by hand

def test_metrics_hand_computed():
    gt = np.array([1.0, 4.0, 2.0, 5.0])
    pred = np.array([2.0, 4.0, 2.0, 6.0])
    m = np.array([True, True, True, False])
    assert absrel(pred, gt, m) == pytest.approx((1 / 1 + 0 + 0) / 3)
    assert delta_pct(pred, gt, m) == pytest.approx(100 / 3)  # ratio 2 > 1.25 at one pixel
    assert rmse(pred, gt, m) == pytest.approx(math.sqrt(1 / 3))
    assert delta_pct(np.array([1.25, 0.8]), np.array([1.0, 1.0]), np.ones(2, bool)) == 0.0


def test_least_squares_alignment_hand_computed():
    pred = np.array([[1.0, 2.0], [3.0, 99.0]])
    gt = np.array([[3.0, 5.0], [7.0, 0.0]])
    mask = np.array([[True, True], [True, False]])
    s, t = align_least_squares(pred, gt, mask)
    assert (s, t) == (pytest.approx(2.0), pytest.approx(1.0))
    with pytest.raises(ValueError):
        align_least_squares(pred, gt, np.zeros_like(mask))


def test_image_metrics_depth_with_cap_hand_computed():
    # aligned disparity = prediction (gt disparity = pred at three pixels), one far pixel
    gt_depth = np.array([1.0, 2.0, 4.0, 50.0])
    gt_disp = 1 / gt_depth
    pred = np.array([1.0, 0.5, 0.25, 0.02])  # exactly 1 / depth: s = 1, t = 0
    m = image_metrics(pred, gt_disp, np.ones(4, bool), "depth", cap=10.0)
    # the 50 m pixel is predicted at the cap (10 m): AbsRel (40 / 50) / 4
    assert m["scale"] == pytest.approx(1.0) and m["shift"] == pytest.approx(0.0, abs=1e-12)
    assert m["absrel"] == pytest.approx(0.8 / 4)
    assert m["delta_1.25_pct"] == pytest.approx(25.0)
    assert m["rmse"] == pytest.approx(math.sqrt(40**2 / 4))
    m = image_metrics(pred, gt_disp, np.ones(4, bool), "depth", cap=80.0)
    assert m["absrel"] == pytest.approx(0.0, abs=1e-9)
    d = image_metrics(3 * pred + 1, gt_disp, np.ones(4, bool), "disparity")
    assert d["absrel"] == pytest.approx(0.0, abs=1e-9) and d["rmse"] == pytest.approx(0, abs=1e-9)


def test_whdr_hand_computed():
    depth = np.array([[1.0, 2.0], [2.01, 8.0]])
    pairs = [
        (0, 0, 0, 1, "<"),  # 1 < 2: right
        (0, 1, 1, 1, ">"),  # 2 > 8: wrong
        (0, 1, 1, 0, "="),  # 2 vs 2.01 within 3 %: right
        (1, 1, 0, 0, "="),  # 8 vs 1: wrong
    ]
    assert whdr_pct(depth, pairs) == pytest.approx(50.0)


def test_inference_size_multiples_of_32():
    assert inference_size(500, 741, 384) == (256, 384)
    assert inference_size(1080, 1920, 384) == (224, 384)
    assert inference_size(10, 1000, 384) == (32, 384)


# ----------------------------------------------------------------------------- protocol

class Oracle(torch.nn.Module):
    """Predicts the image's red channel: the test images encode disparity there."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, 0] * 7.0 + 0.3  # arbitrary scale and shift


def _depth_scene(h: int = 90, w: int = 120) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    depth = 1.0 / (0.1 + 0.9 * (0.5 + 0.5 * np.sin(xx / 11.0) * np.cos(yy / 17.0)))  # 1..10 m
    disp = 1 / depth
    red = np.round((disp - 0.1) / 0.9 * 255).astype(np.uint8)
    image = np.stack([red, np.zeros_like(red), np.full_like(red, 128)], -1)
    return image, depth


def test_depth_folder_protocol_with_an_oracle(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        image, depth = _depth_scene()
        mm = np.round(depth * 1000).astype(np.uint16)
        mm[: 5 + i] = 0  # no label
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), image[..., ::-1])
        cv2.imwrite(str(tmp_path / "labels" / f"f{i}.png"), mm)
    spec = DatasetSpec(type="folder", path=str(tmp_path), label="depth", scale=0.001, cap=10)
    rep = evaluate_model(Oracle(), spec, size=128)
    assert rep["images"] == 2 and rep["skipped"] == 0
    assert rep["metrics"]["absrel"] < 0.03
    assert rep["metrics"]["delta_1.25_pct"] < 1.0
    assert rep["per_image"][0]["valid_px"] == 85 * 120


def test_ordinal_folder_gives_whdr(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image, depth = _depth_scene()
    cv2.imwrite(str(tmp_path / "images" / "o.png"), image[..., ::-1])
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(50):
        ya, yb = rng.integers(0, 90, 2)
        xa, xb = rng.integers(0, 120, 2)
        ratio = depth[ya, xa] / depth[yb, xb]
        if abs(ratio - 1) > 0.1:
            pairs.append([int(ya), int(xa), int(yb), int(xb), ">" if ratio > 1 else "<"])
    (tmp_path / "labels" / "o.json").write_text(json.dumps({"pairs": pairs}))
    rep = evaluate_model(Oracle(), DatasetSpec(type="folder", path=str(tmp_path)), size=128)
    assert set(rep["metrics"]) == {"whdr_pct"}
    assert rep["metrics"]["whdr_pct"] < 5.0


# ----------------------------------------------------------------------------- real data

def write_motorcycle(root: Path) -> Path:
    from skimage.data import stereo_motorcycle

    left, _right, disp = stereo_motorcycle()
    scene = root / "Motorcycle"
    scene.mkdir(parents=True)
    cv2.imwrite(str(scene / "im0.png"), cv2.cvtColor(left, cv2.COLOR_RGB2BGR))
    write_pfm(scene / "disp0GT.pfm", disp.astype(np.float32))  # +inf = unknown, as Middlebury
    return root


def test_eval_cli_on_the_real_motorcycle_pair(checkpoint, tmp_path, capsys):
    data = write_motorcycle(tmp_path / "mb")
    out = tmp_path / "report.json"
    rc = filmmine_main(["eval", "--checkpoint", str(checkpoint), "--dataset", str(data),
                        "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["type"] == "middlebury" and rep["images"] == 1 and rep["step"] == 2
    assert set(rep["metrics"]) == {"absrel", "delta_1.25_pct", "rmse"}
    assert all(np.isfinite(v) for v in rep["metrics"].values())
    assert rep["per_image"][0]["key"] == "Motorcycle"
    assert rep["per_image"][0]["valid_px"] > 0.5 * 741 * 500
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == rep["metrics"]


def test_predict_writes_coloured_disparity(checkpoint, tmp_path):
    from skimage.data import stereo_motorcycle

    left = stereo_motorcycle()[0]
    img = tmp_path / "moto.jpg"
    cv2.imwrite(str(img), cv2.cvtColor(left, cv2.COLOR_RGB2BGR))
    rc = filmmine_main(["predict", str(img), str(tmp_path / "missing.png"), "--checkpoint",
                        str(checkpoint), "--out", str(tmp_path / "pred")])
    assert rc == 1  # one of the two inputs could not be read
    out = cv2.imread(str(tmp_path / "pred" / "moto.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (*left.shape[:2], 3) and out.dtype == np.uint8


def test_eval_errors_are_one_line(tmp_path, capsys):
    rc = filmmine_main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--dataset",
                        str(tmp_path)])
    assert rc == 2
    assert "error" in capsys.readouterr().err
