"""The labelled set of ``filmmine bench-checks`` (``bench_checks``), made from the real data
in ``../shared/data``: rectified stereo a miner should keep (positives), and negatives it
should reject, real (the raw OAK-D video, the shipboard pairs) or made from a positive (its
right view moved, rotated or scaled, a mono or a dark copy), with the synthetic films' bad
shots."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .bench_data import MIDDLEBURY_0103, _finite, _scaled_png, read_pfm


@dataclass
class Pair:
    """One stereo frame of the set: full-size RGB views as a film would give them."""

    group: str                      # e.g. "middeval3", "shift_2px"
    name: str                       # scene or frame
    left: np.ndarray                # [H, W, 3] uint8 RGB
    right: np.ndarray
    positive: bool
    gt: np.ndarray | None = None    # [H, W] float32 px, d = x_left - x_right, NaN unknown
    sequence: str | None = None     # frames of one shot, in order (the frozen test's history)
    # applied to the stored-size right view, after the crop (px and angles where labels live)
    perturb: Callable[[np.ndarray], np.ndarray] | None = None


def _rgb(path: Path) -> np.ndarray:
    quiet = cv2.utils.logging.getLogLevel()
    # Cones' "left.png" is a GeoTIFF: libtiff warns about its tags
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(quiet)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def still_positives(data: Path) -> list[Pair]:
    """The real still pairs of ``data`` (those present), ground truth where there is some."""
    out: list[Pair] = []
    mid = [data / "middlebury2014_motorcycle_imperfect"]
    q = data / "middeval3_trainingQ"
    if q.is_dir():
        mid += sorted(p for p in q.iterdir() if (p / "im0.png").is_file())
    for folder in mid:
        if (folder / "disp0GT.pfm").is_file():
            name = "Motorcycle" if folder.name.startswith("middlebury2014") else folder.name
            out.append(Pair("middeval3", name, _rgb(folder / "im0.png"),
                            _rgb(folder / "im1.png"), True,
                            _finite(read_pfm(folder / "disp0GT.pfm"))))
    old = data / "middlebury2001_2003"
    for scene, (lf, rf, gf, scale) in MIDDLEBURY_0103.items():
        if (old / scene / lf).is_file() and (old / scene / gf).is_file():
            out.append(Pair("middlebury01_03", scene, _rgb(old / scene / lf),
                            _rgb(old / scene / rf), True, _scaled_png(old / scene / gf, scale)))
    cones = data / "middlebury2003_cones"
    if (cones / "left.png").is_file():
        import tifffile

        gt = tifffile.imread(cones / "disp_left.tif").astype(np.float32)
        out.append(Pair("middlebury01_03", "cones", _rgb(cones / "left.png"),
                        _rgb(cones / "right.png"), True,
                        np.where(gt > 0, gt, np.nan).astype(np.float32)))
    kitti = data / "kitti2015_000046"
    for left in sorted(kitti.glob("image_2_*.png")):
        stem = left.name[len("image_2_"):]
        out.append(Pair("kitti", stem, _rgb(left), _rgb(kitti / f"image_3_{stem}"), True,
                        _scaled_png(kitti / f"disp_occ_0_{stem}", 256.0)))
    argo = data / "argoverse_stereo"
    if (argo / "stereo_front_left_rect_1.jpg").is_file():
        out.append(Pair("argoverse", "1", _rgb(argo / "stereo_front_left_rect_1.jpg"),
                        _rgb(argo / "stereo_front_right_rect_1.jpg"), True,
                        _scaled_png(argo / "disparity_1.png", 256.0)))
    eth = data / "eth3d_twoview"
    if eth.is_dir():
        for scene in sorted(p for p in eth.iterdir() if (p / "im0.png").is_file()):
            out.append(Pair("eth3d", scene.name, _rgb(scene / "im0.png"),
                            _rgb(scene / "im1.png"), True))
    fence = data / "crestereo_fence"
    if (fence / "left.png").is_file():
        out.append(Pair("fence", "fence", _rgb(fence / "left.png"), _rgb(fence / "right.png"),
                        True))
    return out


def southkensington(data: Path) -> list[Pair]:
    root = data / "southkensington_sv"
    out = []
    for left in sorted((root / "left").glob("left*.png")):
        right = root / "right" / left.name.replace("left", "right")
        if right.is_file():
            out.append(Pair("southkensington", left.stem[4:], _rgb(left), _rgb(right), True,
                            sequence="southkensington"))
    return out


def _video_frames(path: Path, frames: list[int]) -> dict[int, np.ndarray]:
    """The given frames of a video (RGB), read in order."""
    cap = cv2.VideoCapture(str(path))
    want, out, i = set(frames), {}, 0
    try:
        while len(out) < len(want):
            ok, img = cap.read()
            if not ok:
                break
            if i in want:
                out[i] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    return out


def oakd_rectifier(calib_path: Path) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """The OAK-D pair rectified with its factory calibration: each view undistorted and
    rotated by ``stereoRectificationData``, both onto the right camera's intrinsics."""
    c = json.loads(calib_path.read_text())
    cams = {cid: d for cid, d in c["cameraData"]}
    rect = c["stereoRectificationData"]
    left, right = cams[rect["leftCameraSocket"]], cams[rect["rightCameraSocket"]]
    size = (left["width"], left["height"])
    k_new = np.array(right["intrinsicMatrix"], np.float64)
    maps = []
    for cam, rot in ((left, rect["rectifiedRotationLeft"]),
                     (right, rect["rectifiedRotationRight"])):
        maps.append(cv2.initUndistortRectifyMap(
            np.array(cam["intrinsicMatrix"], np.float64),
            np.array(cam["distortionCoeff"], np.float64), np.array(rot, np.float64), k_new,
            size, cv2.CV_32FC1))

    def apply(lv: np.ndarray, rv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(cv2.remap(v, mx, my, cv2.INTER_LINEAR)
                     for v, (mx, my) in zip((lv, rv), maps, strict=True))

    return apply


OAKD_FRAMES = list(range(30, 627, 30))   # every second, past the auto-exposure settling


def oakd(data: Path) -> tuple[list[Pair], list[Pair]]:
    """(rectified positives, raw negatives) of the OAK-D video."""
    root = data / "oakd_raw_stereo_video"
    if not (root / "left.mp4").is_file():
        return [], []
    lf = _video_frames(root / "left.mp4", OAKD_FRAMES)
    rf = _video_frames(root / "right.mp4", OAKD_FRAMES)
    rectify = oakd_rectifier(root / "calib.json")
    pos, neg = [], []
    for i in OAKD_FRAMES:
        if i in lf and i in rf:
            lv, rv = rectify(lf[i], rf[i])
            pos.append(Pair("oakd_rectified", f"f{i:03d}", lv, rv, True, sequence="oakd_rect"))
            neg.append(Pair("oakd_raw", f"f{i:03d}", lf[i], rf[i], False, sequence="oakd_raw"))
    return pos, neg


def shipboard(data: Path) -> list[Pair]:
    root = data / "shipboard_ocean"
    out = []
    for left in sorted((root / "flea18_left").glob("*.png")):
        nnn = left.name.split("_")[0]
        right = sorted((root / "flea21_right").glob(f"{nnn}_*.png"))
        if right:
            lv, rv = _rgb(left), _rgb(right[0])
            lv[:1, :40] = rv[:1, :40] = 0   # the camera's timestamp
            out.append(Pair("shipboard", nnn, lv, rv, False, sequence="shipboard"))
    return out


CUT_CLIPS = {"cut_clips_sbs": ("sbs_cut_clip.mp4", "sbs"),
             "cut_clips_half_sbs": ("sbs_cut_clip_half.mp4", "half-sbs"),
             "cut_clips_tab": ("tb_cut_clip.mp4", "tab")}


def cut_clips(data: Path, recipe: dict) -> list[tuple[Pair, np.ndarray, str]]:
    """The cut clips' candidates on the recipe's sampling grid, at least ``margin_s`` from a
    cut, decoded by filmmine's own decoder: (pair with empty views, packed frame, layout)."""
    from ..media.decode import iter_frames
    from ..media.probe import probe_film
    from ..stages.sampling import SamplingPlan

    root = data / "real_cut_clips"
    if not (root / "cuts.json").is_file():
        return []
    info = json.loads((root / "cuts.json").read_text())
    out = []
    for group, (file, layout) in CUT_CLIPS.items():
        probe = probe_film(group, (str(root / file),), requested=layout)
        plan = SamplingPlan.from_recipe(probe.fps, recipe)
        margin = recipe["sampling"]["margin_s"] * probe.fps
        for f in iter_frames(probe, grid_step=plan.grid_step):
            if f.full is None:
                continue
            shot = next(s for s in info["shots"] if s["start"] <= f.index < s["end_exclusive"])
            if min(f.index - shot["start"], shot["end_exclusive"] - 1 - f.index) < margin:
                continue
            empty = np.zeros((0, 0, 3), np.uint8)
            out.append((Pair(group, f"f{f.index:03d}", empty, empty, True,
                             sequence=f"{group}:{shot['start']}"), f.full, layout))
    return out


# Negatives made from a positive: the right view as a misaligned rig, a mono or a dark film
# would give it (stored-image px and degrees)


def _warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def shift_down(px: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda img: _warp(img, np.float32([[1, 0, 0], [0, 1, px]]))


def rotate(deg: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        return _warp(img, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0))
    return f


def vscale(frac: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(img: np.ndarray) -> np.ndarray:
        cy = (img.shape[0] - 1) / 2
        return _warp(img, np.float32([[1, 0, 0], [0, 1 + frac, -frac * cy]]))
    return f


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "shift_1px": shift_down(1.0), "shift_2px": shift_down(2.0), "shift_3px": shift_down(3.0),
    "shift_4px": shift_down(4.0), "rotate_0.25deg": rotate(0.25),
    "rotate_0.5deg": rotate(0.5), "rotate_1deg": rotate(1.0), "vscale_1pct": vscale(0.01),
}
# reported, not held to the ≥ 98 % rejection goal (README: the benchmark)
REPORT_ONLY = ("shift_1px", "rotate_0.25deg", "vscale_1pct")


def derived_negatives(bases: list[Pair]) -> list[Pair]:
    out = []
    for p in bases:
        for group, fn in PERTURBATIONS.items():
            out.append(Pair(group, f"{p.group}/{p.name}", p.left, p.right, False, perturb=fn))
        out.append(Pair("mono", f"{p.group}/{p.name}", p.left, p.left.copy(), False))
        dark = [(v.astype(np.float32) * 0.06).astype(np.uint8) for v in (p.left, p.right)]
        out.append(Pair("dark", f"{p.group}/{p.name}", dark[0], dark[1], False))
    return out


def synthetic_bad(n_per_kind: int = 3) -> list[Pair]:
    """Frames of the synthetic films' bad shot kinds (misaligned, mono, dark, low texture,
    credits)."""
    from .. import synth

    out = []
    for k, kind in enumerate(("vertical", "mono", "dark", "lowtex", "credits")):
        spec = synth.FilmSpec(shots=(synth.ShotSpec(kind, 24, seed=100 + k),), view_width=960,
                              view_height=540, seed=k)
        for f in range(n_per_kind):
            left, right, _ = synth.render_frame(spec, 4 + 8 * f)
            out.append(Pair("synthetic_bad", f"{kind}/f{4 + 8 * f}", left, right, False,
                            sequence=f"synthetic_{kind}"))
    return out


GT_GROUPS = ("middeval3", "middlebury01_03", "kitti", "argoverse")   # with ground truth
POSITIVE_GROUPS = ("middeval3", "middlebury01_03", "kitti", "argoverse", "eth3d", "fence",
                   "southkensington", "oakd_rectified", *CUT_CLIPS)
NEGATIVE_GROUPS = (*PERTURBATIONS, "mono", "dark", "oakd_raw", "shipboard", "synthetic_bad")


@dataclass
class CheckSet:
    pairs: list[Pair]
    packed: dict[int, tuple[np.ndarray, str]] = field(default_factory=dict)  # id -> clip frame


def build_set(data: Path, recipe: dict, groups: set[str] | None = None) -> CheckSet:
    """The labelled set from ``data`` (what is there of it)."""
    def want(group: str) -> bool:
        return groups is None or group in groups

    stills = still_positives(data)
    sk = southkensington(data)
    derived = (*PERTURBATIONS, "mono", "dark")
    need_oak = any(want(g) for g in ("oakd_rectified", "oakd_raw", *derived))
    oak_pos, oak_neg = oakd(data) if need_oak else ([], [])
    clips = cut_clips(data, recipe) if any(want(g) for g in CUT_CLIPS) else []
    # the derived negatives start from well-rectified pairs: a base pair per still scene but
    # Argoverse's (its stored pair is ~5 px misaligned: README, "Tuning the frame checks"),
    # and a frame of the videos
    bases = [p for p in stills if p.group != "argoverse"] + sk[:1] + oak_pos[:1]
    pairs = [*stills, *sk, *oak_pos, *derived_negatives(bases), *oak_neg,
             *(shipboard(data) if want("shipboard") else []),
             *(synthetic_bad() if want("synthetic_bad") else [])]
    cs = CheckSet([p for p in pairs if want(p.group)])
    for pair, full, layout in clips:
        if want(pair.group):
            cs.packed[id(pair)] = (full, layout)
            cs.pairs.append(pair)
    return cs
