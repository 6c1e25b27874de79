"""``filmmine predict``: coloured relative-disparity PNGs (near = bright) for images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .atomic import write_bytes
from .evaluate import pick_device, predict_disparity
from .sources import SampleError, decode_image

log = logging.getLogger(__name__)


def colorize(disp: np.ndarray) -> np.ndarray:
    """[H, W] disparity -> [H, W, 3] uint8 BGR (inferno), min-max normalised per image."""
    finite = np.isfinite(disp)
    lo, hi = (float(disp[finite].min()), float(disp[finite].max())) if finite.any() else (0, 1)
    u = np.zeros(disp.shape, np.uint8)
    if hi > lo:
        u = np.clip((np.nan_to_num(disp, nan=lo) - lo) / (hi - lo) * 255 + 0.5, 0, 255)
        u = u.astype(np.uint8)
    return cv2.applyColorMap(u, cv2.COLORMAP_INFERNO)


def predict_files(images: Sequence[str], checkpoint: str | Path, out: str | Path,
                  size: int | None = None, device: str = "auto") -> list[Path]:
    """Write ``OUT/<stem>.png`` per readable image; returns the files written."""
    from .train import load_checkpoint, model_from_checkpoint

    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    dev = pick_device(device)
    model.to(dev)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in images:
        try:
            image = decode_image(Path(name).read_bytes())
        except (OSError, SampleError) as e:
            log.warning("skipping %s: %s", name, e)
            continue
        disp = predict_disparity(model, image, size or cfg.eval_size, dev)
        dst = out / f"{Path(name).stem}.png"
        ok, png = cv2.imencode(".png", colorize(disp))
        try:
            if not ok:
                raise OSError("PNG encoding failed")
            write_bytes(dst, png.tobytes())
        except OSError as e:
            log.warning("could not write %s: %s", dst, e)
            continue
        written.append(dst)
    return written
