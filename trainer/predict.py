"""``filmmine predict``: relative disparity maps (near = bright) for images, folders, globs and
videos.

Inputs: image files, directories (their images and videos, recursively, in name order), glob
patterns (quoted, so that the shell leaves them to us; ``**`` recurses) and videos, of which
every ``every``-th frame is predicted (default: one frame per second, ``every`` = the rounded
frame rate; decoded with OpenCV's ``VideoCapture``).

Outputs, per image or kept frame, in ``OUT``: ``NAME.png``, the coloured map (inferno,
min-max normalised per image), and with ``raw`` beside it ``NAME.disp16.png`` (16-bit PNG of
the same normalisation: 0 farthest, 65535 nearest), ``NAME.npy`` and ``NAME.pfm`` (float32
[H, W], the model's relative disparity at the input's resolution, up to scale and shift).
``NAME`` is the input's stem (a video frame: ``STEM_fNNNNNN``, its index from 0); inputs that
share a stem are told apart by their folders below the nearest common one (``a/x.jpg``,
``b/x.jpg``: ``a_x``, ``b_x``), or else their extensions (``x.jpg``, ``x.png``: ``x_jpg``,
``x_png``). ``OUT`` is made by the first file written: a run that writes nothing leaves no
directory behind.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import TrainerError
from .atomic import write_bytes
from .evaluate import pick_device, predict_disparity
from .names import RAW_FORMATS
from .sources import SampleError, decode_image, pfm_bytes

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
              ".m2ts", ".wmv", ".flv")
EVERY_UNKNOWN_FPS = 30  # a video's stride when it does not state its frame rate


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)  # every file, in the order written
    predicted: int = 0  # images and video frames
    skipped: list[str] = field(default_factory=list)  # "INPUT: reason"


def parse_raw(text: str) -> tuple[str, ...]:
    """``png16,npy,pfm`` (any of them, comma-separated; empty: none) -> the formats."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in RAW_FORMATS]
    if bad:
        raise TrainerError(f"unknown --raw format {', '.join(bad)}; choose from "
                           f"{', '.join(RAW_FORMATS)}")
    return names


def normalised(disp: np.ndarray) -> np.ndarray:
    """[H, W] disparity -> [H, W] float64 in 0..1, min-max over the finite values (0 where
    not finite, and everywhere for a constant map)."""
    finite = np.isfinite(disp)
    if not finite.any():
        return np.zeros(disp.shape)
    lo, hi = float(disp[finite].min()), float(disp[finite].max())
    if hi <= lo:
        return np.zeros(disp.shape)
    return np.where(finite, (np.nan_to_num(disp, nan=lo, posinf=hi, neginf=lo) - lo)
                    / (hi - lo), 0.0)


def colorize(disp: np.ndarray) -> np.ndarray:
    """[H, W] disparity -> [H, W, 3] uint8 BGR (inferno), min-max normalised per image."""
    u = np.round(normalised(disp) * 255).astype(np.uint8)
    return cv2.applyColorMap(u, cv2.COLORMAP_INFERNO)


def _is_input(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS or p.suffix.lower() in VIDEO_EXTS


def expand_inputs(items: Sequence[str], exclude: Path | None = None
                  ) -> tuple[list[Path], list[str]]:
    """The files to predict (each once, in the order given) and ``"ITEM: reason"`` for the
    items that gave none. Directories give their images and videos below them, except hidden
    ones and those under ``exclude`` (the output directory, on a rerun into the input)."""
    files: list[Path] = []
    skipped: list[str] = []
    skip_root = exclude.absolute() if exclude is not None else None

    def keep(q: Path, root: Path) -> bool:
        if not q.is_file() or not _is_input(q):
            return False
        if any(part.startswith(".") for part in q.relative_to(root).parts):
            return False
        return skip_root is None or not q.absolute().is_relative_to(skip_root)

    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if keep(q, p))
            if not found:
                skipped.append(f"{item}: no images or videos in this directory")
        elif p.is_file():
            found = [p]
        elif any(c in item for c in "*?["):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True)
                           if Path(q).is_file() and _is_input(Path(q)))
            if not found:
                skipped.append(f"{item}: no image or video matches")
        else:
            found = []
            skipped.append(f"{item}: not found")
        files += found
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.absolute() not in seen:
            seen.add(f.absolute())
            unique.append(f)
    return unique, skipped


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per input, unique (case-insensitively, for such file systems): the stem,
    with the folders below the nearest common one of the inputs sharing it, or else their
    extensions; a short hash of the path as the last resort."""
    names = [p.stem for p in paths]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        groups[p.stem.lower()].append(i)
    for group in groups.values():
        if len(group) < 2:
            continue
        absolute = [paths[i].absolute() for i in group]
        common = Path(os.path.commonpath([a.parent for a in absolute]))
        for i, a in zip(group, absolute, strict=True):
            names[i] = "_".join((*a.parent.relative_to(common).parts, a.stem))
        same = Counter(names[i].lower() for i in group)
        for i in group:
            if same[names[i].lower()] > 1:
                names[i] += "_" + paths[i].suffix.lstrip(".").lower()
    counts = Counter(n.lower() for n in names)
    for i, n in enumerate(names):
        if counts[n.lower()] > 1:
            digest = hashlib.sha1(str(paths[i].absolute()).encode()).hexdigest()[:8]
            names[i] = f"{n}_{digest}"
    return names


def video_frames(path: Path, every: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, [H, W, 3] uint8 RGB) of every ``every``-th frame from the first (None: one
    frame per second of video)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SampleError("OpenCV cannot open it as a video")
        if every is None:
            fps = cap.get(cv2.CAP_PROP_FPS)
            every = max(1, round(fps)) if math.isfinite(fps) and fps > 0 else EVERY_UNKNOWN_FPS
        index = 0
        while cap.grab():  # grab without retrieve: skipped frames are not converted
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def _encode(disp: np.ndarray, raw: Sequence[str]) -> dict[str, bytes]:
    """Output file suffix -> bytes, for one [H, W] float32 relative disparity."""
    files = {".png": _png(colorize(disp))}
    if "png16" in raw:
        files[RAW_FORMATS["png16"]] = _png(np.round(normalised(disp) * 65535).astype(np.uint16))
    if "npy" in raw:
        buf = io.BytesIO()
        np.save(buf, disp.astype(np.float32), allow_pickle=False)
        files[RAW_FORMATS["npy"]] = buf.getvalue()
    if "pfm" in raw:
        files[RAW_FORMATS["pfm"]] = pfm_bytes(disp)
    return files


def _items(path: Path, name: str, every: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """(output name, RGB image) of one input; SampleError / OSError when it cannot be read."""
    if path.suffix.lower() in VIDEO_EXTS:
        n = 0
        for index, frame in video_frames(path, every):
            n += 1
            yield f"{name}_f{index:06d}", frame
        if not n:
            raise SampleError("no frame could be decoded")
    else:
        yield name, decode_image(path.read_bytes())


def _reasons(skipped: list[str], shown: int = 3) -> str:
    more = f" (and {len(skipped) - shown} more)" if len(skipped) > shown else ""
    return "; ".join(skipped[:shown]) + more


def predict_files(inputs: Sequence[str], checkpoint: str | Path, out: str | Path,
                  size: int | None = None, device: str = "auto", every: int | None = None,
                  raw: Sequence[str] = ()) -> PredictReport:
    """Predict every image and kept video frame of ``inputs`` into ``out`` (see the module's
    text). TrainerError, with ``out`` left as it was, when the checkpoint does not load or no
    input could be read."""
    from .checkpoint import load_checkpoint, model_from_checkpoint

    bad = [r for r in raw if r not in RAW_FORMATS]
    if bad:
        raise TrainerError(f"unknown raw format {', '.join(bad)}; choose from "
                           f"{', '.join(RAW_FORMATS)}")
    if every is not None and every < 1:
        raise TrainerError(f"--every must be >= 1, got {every}")
    out = Path(out)
    files, skipped = expand_inputs(inputs, exclude=out)
    if not files:
        raise TrainerError("no images or videos to predict: " + _reasons(skipped))
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    dev = pick_device(device)
    model.to(dev)
    report = PredictReport(skipped=skipped)
    made = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    try:
        for path, name in zip(files, output_names(files), strict=True):
            try:
                for item, image in _items(path, name, every):
                    disp = predict_disparity(model, image, size or cfg.eval_size, dev)
                    report.predicted += 1
                    for suffix, data in _encode(disp, raw).items():
                        dst = out / f"{item}{suffix}"
                        write_bytes(dst, data)
                        report.written.append(dst)
            except (OSError, SampleError) as e:
                report.skipped.append(f"{path}: {e}")
                log.warning("skipping %s: %s", path, e)
    finally:
        if not report.written:
            for d in made:  # the directories this run made, if still empty
                try:
                    d.rmdir()
                except OSError:
                    break
    if not report.written:
        raise TrainerError("nothing predicted: " + _reasons(report.skipped))
    return report
