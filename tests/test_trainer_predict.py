"""trainer.predict: folders, globs and videos as input, raw outputs checked against the model's
own prediction, names that never collide, and no output directory when nothing is written."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_trainer_evaluate import tiny_checkpoint

from filmmine.cli import main as filmmine_main
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.evaluate import predict_disparity
from trainer.predict import colorize, normalised, output_names
from trainer.sources import read_pfm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = SHARED / "real_cut_clips" / "sbs_cut_clip.mp4"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("predck"))


@pytest.fixture(scope="module")
def model(checkpoint):
    m, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    return m, cfg.eval_size


def _expected(model, rgb: np.ndarray) -> np.ndarray:
    m, size = model
    return predict_disparity(m, rgb, size, torch.device("cpu"))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _motorcycle_crops() -> list[np.ndarray]:
    from skimage.data import stereo_motorcycle

    left = stereo_motorcycle()[0]  # a real photograph, [500, 741, 3] RGB
    return [left[:200, :300], left[250:450, 400:700], left[100:300, 200:500]]


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _write_video(path: Path, frames: int, fps: float) -> list[np.ndarray]:
    """A short clip of a real photograph panning; returns its frames as decoded (RGB)."""
    crop = _motorcycle_crops()[0]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 96))
    assert w.isOpened()
    for i in range(frames):
        w.write(cv2.cvtColor(np.ascontiguousarray(crop[:96, 8 * i : 8 * i + 160]),
                             cv2.COLOR_RGB2BGR))
    w.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(decoded) == frames
    return decoded


def test_folders_globs_videos_and_raw_outputs(checkpoint, model, tmp_path, capsys):
    a, b, c = _motorcycle_crops()
    src = tmp_path / "in"
    _write(src / "a" / "x.png", a)
    _write(src / "b" / "x.png", b)  # the same stem as a/x.png
    _write(tmp_path / "g" / "c.jpg", c)
    frames = _write_video(tmp_path / "clip.mp4", frames=12, fps=5)
    out = tmp_path / "pred"
    rc = filmmine_main(["predict", str(src), str(tmp_path / "g" / "*.jpg"),
                        str(tmp_path / "clip.mp4"), "--checkpoint", str(checkpoint),
                        "--out", str(out), "--raw", "png16,npy,pfm"])
    assert rc == 0
    # default stride: one frame per second of a 5 fps clip, from the first
    truth = {"a_x": a, "b_x": b, "c": _rgb(tmp_path / "g" / "c.jpg"),
             "clip_f000000": frames[0], "clip_f000005": frames[5], "clip_f000010": frames[10]}
    stems = {p.name.split(".")[0] for p in out.iterdir()}
    assert stems == set(truth)
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 * len(truth) and all(Path(p).is_file() for p in printed)
    for name, rgb in truth.items():
        want = _expected(model, rgb)  # [H, W] float32 at the input's resolution
        npy = np.load(out / f"{name}.npy")
        assert npy.dtype == np.float32 and npy.shape == rgb.shape[:2]
        np.testing.assert_allclose(npy, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(read_pfm((out / f"{name}.pfm").read_bytes()), npy)
        q = cv2.imread(str(out / f"{name}.disp16.png"), cv2.IMREAD_UNCHANGED)
        assert q.dtype == np.uint16 and q.shape == npy.shape
        # min-max normalised: 65535 at the nearest (largest disparity) pixel, 0 at the farthest
        assert q.flat[np.argmax(npy)] == 65535 and q.flat[np.argmin(npy)] == 0
        expect16 = (npy - npy.min()) / (npy.max() - npy.min()) * 65535
        assert np.abs(q - expect16).max() <= 1.0
        colour = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(colour, colorize(npy))
    # the two x.png differ, so their predictions do
    assert not np.array_equal(np.load(out / "a_x.npy"), np.load(out / "b_x.npy"))


def test_output_names_never_collide():
    paths = [Path("s/a/x.jpg"), Path("s/b/x.jpg"), Path("s/a/x.png"), Path("s/a/sub/x.jpg"),
             Path("y.jpg"), Path("t/Y.png")]
    names = output_names(paths)
    assert len({n.lower() for n in names}) == len(paths)
    assert names == ["a_x_jpg", "b_x", "a_x_png", "a_sub_x", "y", "t_Y"]
    assert output_names([Path("one/z.png")]) == ["z"]


@pytest.mark.skipif(not CLIP.is_file(), reason=f"needs the shared clip {CLIP}")
def test_real_video_default_and_given_stride(checkpoint, tmp_path):
    # 120 frames at 10 fps: one frame per second by default, or every 40th
    rc = filmmine_main(["predict", str(CLIP), "--checkpoint", str(checkpoint), "--out",
                        str(tmp_path / "d")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == \
        [f"sbs_cut_clip_f{i:06d}.png" for i in range(0, 120, 10)]
    rc = filmmine_main(["predict", str(CLIP), "--checkpoint", str(checkpoint), "--out",
                        str(tmp_path / "e"), "--every", "40", "--raw", "npy"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "e").glob("*.npy")) == \
        ["sbs_cut_clip_f000000.npy", "sbs_cut_clip_f000040.npy", "sbs_cut_clip_f000080.npy"]
    assert np.load(tmp_path / "e" / "sbs_cut_clip_f000040.npy").shape == (360, 1280)


def test_failures_leave_no_output_directory(checkpoint, tmp_path, capsys):
    good = _write(tmp_path / "ok.png", _motorcycle_crops()[0])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    junk_ck = tmp_path / "junk.pt"
    junk_ck.write_bytes(b"not a checkpoint")
    out = tmp_path / "o" / "p"  # neither o nor o/p exists
    cases = [
        [str(good), "--checkpoint", str(junk_ck)],  # a checkpoint that does not load
        [str(bad), str(tmp_path / "empty"), "--checkpoint", str(checkpoint)],  # unreadable
        [str(tmp_path / "none.png"), str(tmp_path / "*.webp"), "--checkpoint", str(checkpoint)],
        [str(good), "--checkpoint", str(checkpoint), "--raw", "png16,tiff"],
        [str(good), "--checkpoint", str(checkpoint), "--every", "0"],
    ]
    for argv in cases:
        assert filmmine_main(["predict", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("filmmine: error: ") and "\n" not in err, err
        assert not (tmp_path / "o").exists(), argv
    # one unreadable input among readable ones: the others are written, exit status 1
    assert filmmine_main(["predict", str(good), str(bad), "--checkpoint", str(checkpoint),
                          "--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ok.png"]


def test_normalisation_of_constant_and_non_finite_maps():
    assert not normalised(np.full((2, 3), 4.0)).any()
    d = np.array([[1.0, np.nan], [3.0, np.inf]])
    np.testing.assert_array_equal(normalised(d), [[0.0, 0.0], [1.0, 0.0]])
