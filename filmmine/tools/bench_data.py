"""Stereo pairs with ground truth for the disparity benchmarks, loaded from the layouts of
their datasets:

* Middlebury-format folders (``im0.png``, ``im1.png``, ``disp0GT.pfm``; optional
  ``disp0GTy.pfm`` vertical ground truth), e.g. MiddEval3's imperfectly rectified Motorcycle;
* Middlebury 2001/2003 scenes, Middlebury 2003 Cones (``left.png``, ``right.png``,
  ``disp_left.tif``), a KITTI 2015 frame (``image_2_*``, ``image_3_*``, ``disp_occ_0_*``) and an
  Argoverse pair as laid out in ``../shared/data``;
* scikit-image's Middlebury 2014 Motorcycle (perfect rectification);
* synthetic film frames (``filmmine.synth`` textured shots, exact truth, rendered in memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]   # filmmine/tools/ lies two levels down


@dataclass
class Pair:
    """A grey stereo pair with left-view ground truth (NaN = unknown)."""

    dataset: str
    name: str
    left: np.ndarray                 # [H, W] uint8
    right: np.ndarray                # [H, W] uint8
    gt: np.ndarray                   # [H, W] float32 px, d = x_left - x_right
    gt_dy: np.ndarray | None = None  # [H, W] float32 px, y_right - y_left
    real: bool = True
    occluded: np.ndarray | None = None  # [H, W] bool: ground truth seen by the left view only



def read_pfm(path: Path) -> np.ndarray:
    """One-channel PFM (Middlebury), flipped to top row first; +inf stays inf."""
    with Path(path).open("rb") as f:
        if f.readline().strip() != b"Pf":
            raise ValueError(f"{path}: not a one-channel PFM file")
        w, h = map(int, f.readline().split())
        scale = float(f.readline())
        data = np.fromfile(f, "<f4" if scale < 0 else ">f4", count=w * h)
    return np.flipud(data.reshape(h, w)).copy()


def _grey(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def _finite(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan).astype(np.float32)


def _mask(path: Path) -> np.ndarray | None:
    """A grey mask image, None when there is no such file."""
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    return mask


def load_middlebury(folder: Path) -> Pair:
    """``im0.png``, ``im1.png``, ``disp0GT.pfm`` (+inf = unknown), optional ``disp0GTy.pfm``
    and ``mask0nocc.png`` (255 = seen by both views, 128 = occluded)."""
    folder = Path(folder)
    dy = folder / "disp0GTy.pfm"
    mask = _mask(folder / "mask0nocc.png")
    return Pair(folder.name, folder.name, _grey(folder / "im0.png"), _grey(folder / "im1.png"),
                _finite(read_pfm(folder / "disp0GT.pfm")),
                _finite(read_pfm(dy)) if dy.is_file() else None,
                occluded=None if mask is None else mask == 128)


def load_middlebury2003(folder: Path) -> Pair:
    """``left.png``, ``right.png``, ``disp_left.tif`` (float32 px, 0 = unknown), optional
    ``occlusion.png`` (255 = seen by both views)."""
    import tifffile

    folder = Path(folder)
    gt = tifffile.imread(folder / "disp_left.tif").astype(np.float32)
    mask = _mask(folder / "occlusion.png")
    return Pair(folder.name, folder.name, _grey(folder / "left.png"),
                _grey(folder / "right.png"), np.where(gt > 0, gt, np.nan).astype(np.float32),
                occluded=None if mask is None else mask != 255)


# Middlebury 2001/2003 scenes: (left, right, left ground truth, the 8-bit scale), which the
# files do not hold (Scharstein & Szeliski's pages; SOURCES.md)
MIDDLEBURY_0103 = {"teddy": ("im2.png", "im6.png", "disp2.png", 4.0),
                   "cones": ("im2.png", "im6.png", "disp2.png", 4.0),
                   "tsukuba": ("im3.png", "im4.png", "disp3.pgm", 16.0),
                   "venus": ("im2.png", "im6.png", "disp2.pgm", 8.0)}


def _scaled_png(path: Path, scale: float) -> np.ndarray:
    """An integer disparity image as px (value / scale), NaN where 0 (no ground truth)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read disparity {path}")
    if raw.ndim == 3:
        raw = raw[..., 0]
    return np.where(raw > 0, raw.astype(np.float32) / scale, np.nan).astype(np.float32)


def load_middlebury0103(folder: Path) -> Pair:
    """A Middlebury 2001/2003 scene folder (``teddy``, ``cones``, ``tsukuba``, ``venus``), its
    8-bit ground truth divided by the scene's scale."""
    folder = Path(folder)
    lf, rf, gf, scale = MIDDLEBURY_0103[folder.name.lower()]
    return Pair("middlebury2001_2003", folder.name, _grey(folder / lf), _grey(folder / rf),
                _scaled_png(folder / gf, scale))


def load_argoverse(folder: Path) -> Pair:
    """An Argoverse 1.1 stereo pair: ``stereo_front_left_rect_N.jpg``, ``..._right_...`` and
    ``disparity_N.png`` (uint16, d = value / 256, 0 = none: sparse LiDAR)."""
    folder = Path(folder)
    left = sorted(folder.glob("stereo_front_left_rect_*.jpg"))[0]
    n = left.stem.rsplit("_", 1)[1]
    return Pair("argoverse", n, _grey(left), _grey(folder / f"stereo_front_right_rect_{n}.jpg"),
                _scaled_png(folder / f"disparity_{n}.png", 256.0))


def load_kitti(folder: Path) -> Pair:
    """KITTI 2015 frame: ``image_2_*`` left, ``image_3_*`` right, ``disp_occ_0_*`` (value/256,
    0 = no ground truth)."""
    folder = Path(folder)
    left = sorted(folder.glob("image_2_*.png"))[0]
    stem = left.name[len("image_2_"):]
    raw = cv2.imread(str(folder / f"disp_occ_0_{stem}"), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read KITTI disparity in {folder}")
    gt = np.where(raw > 0, raw.astype(np.float32) / 256.0, np.nan).astype(np.float32)
    return Pair(folder.name, stem, _grey(left), _grey(folder / f"image_3_{stem}"), gt)


def load_motorcycle() -> Pair | None:
    """scikit-image's Middlebury 2014 Motorcycle (perfect rectification; +inf = unknown)."""
    try:
        from skimage import data
    except ImportError:
        return None
    left, right, gt = data.stereo_motorcycle()
    return Pair("skimage_motorcycle", "motorcycle", cv2.cvtColor(left, cv2.COLOR_RGB2GRAY),
                cv2.cvtColor(right, cv2.COLOR_RGB2GRAY), _finite(gt))


def synthetic_pairs(n: int, size: tuple[int, int] = (320, 180), seed: int = 0) -> list[Pair]:
    """``n`` frames of textured synthetic shots (``filmmine.synth``), exact ground truth."""
    from .. import synth

    out: list[Pair] = []
    w, h = size
    shot = 0
    while len(out) < n:
        spec = synth.FilmSpec(shots=(synth.ShotSpec("textured", 48, seed=seed + shot + 1),),
                              view_width=w, view_height=h, seed=seed + shot)
        for frame in (6, 30):
            if len(out) == n:
                break
            left, right, gt = synth.render_frame(spec, frame)
            out.append(Pair(f"synthetic_{w}x{h}", f"shot{shot}_f{frame}",
                            cv2.cvtColor(left, cv2.COLOR_RGB2GRAY),
                            cv2.cvtColor(right, cv2.COLOR_RGB2GRAY), gt, real=False))
        shot += 1
    return out


def default_data_dir() -> Path:
    return Path(os.environ.get("FILMMINE_DATA", REPO.parent / "shared" / "data"))


def _load_folder(folder: Path) -> Pair | None:
    """The pair a folder holds in one of the known layouts, else None."""
    if (folder / "im0.png").is_file() and (folder / "disp0GT.pfm").is_file():
        pair = load_middlebury(folder)
        # MiddEval3's scenes: its training folder's, and the imperfect Motorcycle beside it
        if folder.parent.name.lower().startswith("middeval3") or \
                folder.name.startswith("middlebury2014_"):
            scene = "Motorcycle" if folder.name.startswith("middlebury2014_") else folder.name
            pair.dataset, pair.name = "middeval3", scene
        return pair
    if (folder / "left.png").is_file() and (folder / "disp_left.tif").is_file():
        return load_middlebury2003(folder)
    if folder.name.lower() in MIDDLEBURY_0103 and \
            (folder / MIDDLEBURY_0103[folder.name.lower()][2]).is_file():
        return load_middlebury0103(folder)
    if list(folder.glob("image_2_*.png")) and list(folder.glob("disp_occ_0_*.png")):
        return load_kitti(folder)
    if list(folder.glob("stereo_front_left_rect_*.jpg")) and list(folder.glob("disparity_*.png")):
        return load_argoverse(folder)
    return None


def discover(paths: list[Path]) -> list[Pair]:
    """Pairs found in the given folders, their subfolders and theirs (a data folder holding
    MiddEval3's ``trainingQ/SCENE``, Middlebury 2001/2003's ``SCENE``, KITTI, Argoverse)."""
    pairs: list[Pair] = []
    for root in paths:
        root = Path(root)
        level = [root]
        for _depth in range(3):
            below = []
            for folder in level:
                pair = _load_folder(folder)
                if pair is not None:
                    pairs.append(pair)
                elif folder.is_dir():
                    below += sorted(p for p in folder.iterdir() if p.is_dir())
            level = below
    return pairs
