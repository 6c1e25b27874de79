"""Synthetic spherical stereo films with exact ground truth: 360° (or VR180, fisheye) eyes
made of flat synthetic scenes, one per pinhole view.

Each view of the film's ``views`` shows a flat synthetic film (``filmmine.synth``, its seed
moved per view) through the same maps that cut the view out again
(``filmmine.stages.projection``): a view cut from the eyes is the flat scene's stereo pair, up
to resampling, and its truth is the flat scene's disparity. The rest of each eye (the poles,
what no view shows) is a flat grey. The same scene as a flat film is ``view_spec``'s.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from . import synth
from .stages.projection import PinholeView, directions_to_view, source_to_directions

BACKGROUND = 128


def view_spec(spec: synth.FilmSpec, k: int) -> synth.FilmSpec:
    """The flat film the ``k``-th view shows."""
    return replace(spec, seed=spec.seed + 101 * k)


def eye_maps(views: list[PinholeView], projection: str, eye_size: tuple[int, int],
             fisheye_fov_deg: float = 180.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per view: the remap maps (x, y) from its image into an eye of ``eye_size`` and the
    mask of the eye pixels it fills (the first view that shows a pixel fills it)."""
    w, h = eye_size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    d = source_to_directions(xs, ys, projection, eye_size, fisheye_fov_deg)
    taken = np.zeros((h, w), bool)
    out = []
    for v in views:
        x, y = directions_to_view(d, v)
        with np.errstate(invalid="ignore"):
            inside = (x >= 0) & (x <= v.width - 1) & (y >= 0) & (y <= v.height - 1)
        mask = inside & ~taken
        taken |= mask
        out.append((np.nan_to_num(x, nan=-1.0).astype(np.float32),
                    np.nan_to_num(y, nan=-1.0).astype(np.float32), mask))
    return out


def compose_eye(images: list[np.ndarray], maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                ) -> np.ndarray:
    """An eye [h, w, 3] uint8 showing each view's ``images[k]`` through its maps."""
    h, w = maps[0][2].shape
    eye = np.full((h, w, 3), BACKGROUND, np.uint8)
    for img, (mx, my, mask) in zip(images, maps, strict=True):
        warped = cv2.remap(img, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        eye[mask] = warped[mask]
    return eye


def write_spherical_film(spec: synth.FilmSpec, out: Path, views: list[PinholeView],
                         projection: str = "equirect", eye_size: tuple[int, int] = (1536, 768),
                         *, crf: int = 12) -> dict:
    """Encode the film, left eye above the right (top-bottom), and write the truth sidecar
    ``OUT.truth.json``; every view must be ``spec``'s view size. Returns the sidecar."""
    if any((v.width, v.height) != (spec.view_width, spec.view_height) for v in views):
        raise ValueError("every view must have the film's view size")
    out = Path(out)
    maps = eye_maps(views, projection, eye_size)
    w, h = eye_size
    specs = [view_spec(spec, k) for k in range(len(views))]
    with contextlib.ExitStack() as stack:
        enc = stack.enter_context(synth._Encoder(out, (w, 2 * h), spec.fps, crf))
        for i in range(synth.n_frames(spec)):
            pairs = [synth.render_frame(s, i)[:2] for s in specs]
            left = compose_eye([p[0] for p in pairs], maps)
            right = compose_eye([p[1] for p in pairs], maps)
            enc.write(np.concatenate([left, right], axis=0))
    sidecar = {"format": "filmmine-synth-spherical/1", "spec": spec.to_json(),
               "projection": projection, "layout": "tab", "eye_size": list(eye_size),
               "views": [{"yaw_deg": v.yaw_deg, "pitch_deg": v.pitch_deg, "fov_deg": v.fov_deg,
                          "rows": v.rows, "seed": s.seed} for v, s in zip(views, specs,
                                                                            strict=True)],
               "n_frames": synth.n_frames(spec), "fps": spec.fps,
               "regenerate": "synth.true_disparity(view_spec(FilmSpec.from_json(d['spec']), "
                             "k), frame_index)"}
    Path(f"{out}.truth.json").write_text(json.dumps(sidecar, indent=1))
    return sidecar
