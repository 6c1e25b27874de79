"""Synthetic stereo 3D films with exact ground-truth disparity.

A film is a sequence of shots (see ``SHOT_KINDS``) joined by hard cuts, except for at most one
cross-dissolve.  Every frame is a pure function of ``(FilmSpec, frame_index)``, so the truth never
has to be stored: ``true_disparity`` regenerates it.

Geometry conventions
--------------------
* Disparity is given for the LEFT view, in px: ``d = x_left - x_right``.  A surface point seen at
  ``x_left`` in the left view appears at ``x_right = x_left - d`` in the right view.
* Textures are periodic/band-limited fields sampled with sub-pixel affine warps, and the right view
  samples exactly the same texture points (shifted by ``d``), so the truth is exact up to the
  interpolation error (well below one grey level).
* Letterbox bars (``letterbox_px`` at top and bottom of each view) are pure black and NaN in the
  truth; the scene is rendered into the band between them (band rows are the origin for the
  row-dependent background disparity).

Ground truth per shot kind
--------------------------
* ``textured``: disparity of the front-most surface; NaN on the ~1 px anti-aliased band at layer
  boundaries (pixels that mix two surfaces).
* ``vertical``: as ``textured``; the right view is additionally shifted DOWN by ``vertical_px``
  (``y_right = y_left + vertical_px``).  The truth is the horizontal disparity only.
* ``mono`` (left == right), ``dark``, ``lowtex``, ``credits``: NaN everywhere (no usable depth
  signal, so nothing should be mined from them).
* Inside the dissolve: NaN everywhere.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import functools
import json
import logging
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import cv2
import ffmpeg
import numpy as np

__all__ = [
    "LAYOUTS",
    "SHOT_KINDS",
    "FilmSpec",
    "ShotSpec",
    "cut_frames",
    "default_film_spec",
    "dissolve_range",
    "film_timeline",
    "main",
    "n_frames",
    "render_frame",
    "shot_kind_at",
    "true_disparity",
    "write_film",
    "write_library",
]

log = logging.getLogger(__name__)

SHOT_KINDS = ("textured", "vertical", "mono", "dark", "lowtex", "credits")
LAYOUTS = ("sbs", "half-sbs", "tab", "half-tab", "separate")

SIDECAR_FORMAT = "filmmine-synth/1"
LIBRARY_FORMAT = "filmmine-library/1"

# Kinds rendered from a layered stereo scene (the others have their own simple renderers).
_SCENE_KINDS = ("textured", "vertical", "mono", "dark")
# Brightness factor of "dark" shots: a scene mean of <= ~200 becomes <= 6/255.
_DARK_GAIN = 0.03
# Texture spectrum: nothing above this (cycles/px), so 4:2:0 chroma and 2x squeezing stay benign.
_MAX_FREQ_CPP = 0.25
# Alpha thresholds: above _ALPHA_SOLID a pixel shows only that layer; between the two it mixes
# two surfaces and gets NaN truth.
_ALPHA_SOLID = 0.98
_ALPHA_EMPTY = 0.02
# Extra canvas around each foreground shape so cubic interpolation never reads past its border.
_LAYER_MARGIN_PX = 4
_GOLDEN = 0.6180339887498949


# --------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class ShotSpec:
    """One shot of a synthetic film."""

    kind: str
    n_frames: int
    seed: int = 0
    vertical_px: float = 4.0  # only used by kind "vertical": right view shifted DOWN by this

    def __post_init__(self) -> None:
        if self.kind not in SHOT_KINDS:
            raise ValueError(f"unknown shot kind {self.kind!r}; expected one of {SHOT_KINDS}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.kind == "vertical" and not 3.0 <= self.vertical_px <= 24.0:
            raise ValueError(f"vertical_px must be in [3, 24], got {self.vertical_px}")


@dataclass(frozen=True)
class FilmSpec:
    """A whole synthetic film: shots, view geometry, timing and the optional dissolve."""

    shots: tuple[ShotSpec, ...]
    view_width: int = 320
    view_height: int = 180
    fps: float = 24.0
    dissolve_after: int | None = None  # shots i and i+1 are joined by a cross-dissolve
    dissolve_frames: int = 12  # extra frames blending the end of shot i into shot i+1
    letterbox_px: int = 0  # black bar height at top and bottom of each view
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.shots:
            raise ValueError("a film needs at least one shot")
        if not all(isinstance(s, ShotSpec) for s in self.shots):
            raise TypeError("shots must be ShotSpec instances")
        if not isinstance(self.shots, tuple):
            # Keep the spec hashable (it is the render cache key).
            object.__setattr__(self, "shots", tuple(self.shots))
        if self.view_width < 32 or self.view_height < 32:
            raise ValueError("view size must be at least 32x32 px")
        if self.view_width % 2 or self.view_height % 2:
            raise ValueError("view_width and view_height must be even (yuv420p)")
        if self.letterbox_px < 0 or self.letterbox_px % 2:
            raise ValueError("letterbox_px must be even and >= 0")
        if self.view_height - 2 * self.letterbox_px < 32:
            raise ValueError("letterbox leaves fewer than 32 content rows")
        if self.fps <= 0:
            raise ValueError("fps must be > 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.dissolve_after is not None:
            if not 0 <= self.dissolve_after < len(self.shots) - 1:
                raise ValueError(
                    f"dissolve_after={self.dissolve_after} must index a shot followed by another"
                )
            if self.dissolve_frames < 1:
                raise ValueError("dissolve_frames must be >= 1")

    @property
    def band_height(self) -> int:
        """Rows of picture between the letterbox bars."""
        return self.view_height - 2 * self.letterbox_px

    def to_json(self) -> dict:
        """JSON-serialisable dict (inverse of ``from_json``)."""
        d = asdict(self)
        d["shots"] = [asdict(s) for s in self.shots]
        return d

    @classmethod
    def from_json(cls, d: dict) -> FilmSpec:
        """Rebuild a spec written by ``to_json``."""
        fields = dict(d)
        fields["shots"] = tuple(ShotSpec(**s) for s in d["shots"])
        return cls(**fields)


def default_film_spec(
    *,
    view_width: int = 320,
    view_height: int = 180,
    fps: float = 24.0,
    letterbox_px: int = 0,
    seed: int = 0,
    shot_frames: int = 36,
) -> FilmSpec:
    """A film exercising every shot kind, with one dissolve between shots 1 and 2."""
    kinds = (
        "textured",
        "textured",
        "textured",
        "vertical",
        "mono",
        "dark",
        "lowtex",
        "credits",
        "textured",
    )
    shots = tuple(ShotSpec(kind=k, n_frames=shot_frames, seed=i + 1) for i, k in enumerate(kinds))
    return FilmSpec(
        shots=shots,
        view_width=view_width,
        view_height=view_height,
        fps=fps,
        dissolve_after=1,
        dissolve_frames=12,
        letterbox_px=letterbox_px,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Timeline
#
# Each shot keeps exactly its n_frames.  The dissolve adds dissolve_frames EXTRA frames between
# shot i and shot i+1 that belong to neither: shot i ends where the dissolve starts and shot i+1
# starts where it ends.  During the dissolve, shot i keeps running past its last frame (local
# time n_i, n_i+1, ...) and shot i+1 runs up to its first frame (local time -D, ..., -1), so the
# motion is continuous through both seams.


@functools.lru_cache(maxsize=64)
def _timeline(spec: FilmSpec) -> tuple[tuple[tuple[int, int], ...], tuple[int, int] | None]:
    ranges: list[tuple[int, int]] = []
    dissolve: tuple[int, int] | None = None
    cursor = 0
    for i, shot in enumerate(spec.shots):
        ranges.append((cursor, cursor + shot.n_frames))
        cursor += shot.n_frames
        if spec.dissolve_after == i:
            dissolve = (cursor, cursor + spec.dissolve_frames)
            cursor += spec.dissolve_frames
    return tuple(ranges), dissolve


def film_timeline(spec: FilmSpec) -> list[dict]:
    """Per shot ``{"index", "kind", "start", "end"}``: frame range ``[start, end)`` in the film.

    The dissolve range (``dissolve_range``) is not part of any shot.
    """
    ranges, _ = _timeline(spec)
    return [
        {"index": i, "kind": shot.kind, "start": start, "end": end}
        for i, (shot, (start, end)) in enumerate(zip(spec.shots, ranges, strict=True))
    ]


def cut_frames(spec: FilmSpec) -> list[int]:
    """First frame of every shot entered by a HARD cut (frame 0 and the dissolve excluded)."""
    ranges, _ = _timeline(spec)
    return [
        ranges[i][0]
        for i in range(1, len(spec.shots))
        if spec.dissolve_after is None or i != spec.dissolve_after + 1
    ]


def dissolve_range(spec: FilmSpec) -> tuple[int, int] | None:
    """``[start, end)`` frames in which two shots are blended, or None."""
    return _timeline(spec)[1]


def n_frames(spec: FilmSpec) -> int:
    """Total number of frames in the film."""
    ranges, dissolve = _timeline(spec)
    return max(ranges[-1][1], dissolve[1] if dissolve else 0)


def _locate(spec: FilmSpec, frame_index: int) -> tuple[int | None, int]:
    """(shot index, local frame) for a shot frame, or (None, k) for the k-th dissolve frame."""
    total = n_frames(spec)
    if not 0 <= frame_index < total:
        raise IndexError(f"frame {frame_index} outside film of {total} frames")
    ranges, dissolve = _timeline(spec)
    if dissolve is not None and dissolve[0] <= frame_index < dissolve[1]:
        return None, frame_index - dissolve[0]
    for i, (start, end) in enumerate(ranges):
        if start <= frame_index < end:
            return i, frame_index - start
    raise AssertionError("timeline does not cover the film")  # unreachable by construction


def shot_kind_at(spec: FilmSpec, frame_index: int) -> str | None:
    """Kind of the shot showing ``frame_index``; None inside the dissolve."""
    shot, _ = _locate(spec, frame_index)
    return None if shot is None else spec.shots[shot].kind


# --------------------------------------------------------------------------------------------
# Procedural textures


def _bandpass_noise(
    rng: np.random.Generator, shape: tuple[int, int], bands: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Periodic Gaussian noise with a log-normal spectrum per band, unit std.

    bands: (centre frequency in cycles/px, weight).  Being built in the Fourier domain the field
    is band-limited (nothing above _MAX_FREQ_CPP) and exactly periodic with period ``shape``.
    """
    h, w = shape
    spec = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1e-9
    logf = np.log2(f)
    filt = np.zeros_like(f)
    for f0, weight in bands:
        # ~0.7 octave std: broad enough to look natural, narrow enough to control the scale.
        filt += weight * np.exp(-((logf - math.log2(f0)) ** 2) / (2 * 0.7**2))
    # Taper to zero at _MAX_FREQ_CPP (a hard edge would ring).
    filt *= np.clip((_MAX_FREQ_CPP - f) / 0.06, 0.0, 1.0)
    filt[0, 0] = 0.0
    field = np.fft.irfft2(spec * filt, s=shape)
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _sinusoids(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Sum of plane waves (wavelength 24-64 px), periodic over ``shape``, unit-ish amplitude."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        wavelength = rng.uniform(24.0, 64.0)
        theta = rng.uniform(0, math.pi)
        # Integer cycles over the canvas keep the field periodic; the |k| >= 1 floor stops a
        # rounded-to-zero component from becoming a constant.
        kx = round(w * math.cos(theta) / wavelength)
        ky = round(h * math.sin(theta) / wavelength)
        if kx == 0 and ky == 0:
            kx = 1
        out += np.cos(2 * math.pi * (kx * xx / w + ky * yy / h) + rng.uniform(0, 2 * math.pi))
    return out / max(count, 1)


def _hsv_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    # Squeeze hues away from pure red: texture noise around red wraps the HSV hue between ~0 and
    # ~180, and that flicker looks like a cut to HSV-difference cut detectors.
    hue = 0.07 + 0.86 * (hue % 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255.0


# Orthonormal chroma directions (orthogonal to grey), so chroma noise leaves luminance alone.
_CHROMA_U = np.array([1.0, -1.0, 0.0], np.float32) / math.sqrt(2.0)
_CHROMA_V = np.array([1.0, 1.0, -2.0], np.float32) / math.sqrt(6.0)


def _colour_texture(
    rng: np.random.Generator, shape: tuple[int, int], base_rgb: np.ndarray
) -> np.ndarray:
    """Colourful band-limited texture (float32 RGB, 0..255) around ``base_rgb``."""
    # Features of ~4-12 px carry the matching signal, the 30 px band the large-scale shading.
    lum = _bandpass_noise(rng, shape, ((1 / 9, 1.0), (1 / 30, 0.8)))
    lum = 30.0 * lum + 14.0 * _sinusoids(rng, shape, 3)
    cu = _bandpass_noise(rng, shape, ((1 / 28, 1.0),))
    cv = _bandpass_noise(rng, shape, ((1 / 28, 1.0),))
    rgb = (
        base_rgb[None, None, :]
        + lum[..., None]
        + 16.0 * (cu[..., None] * _CHROMA_U + cv[..., None] * _CHROMA_V)
    )
    # Clip at the texture, before warping, so both views see identical (clipped) values.
    return np.clip(rgb, 0.0, 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Shot content (built once per (spec, shot) and cached)


@dataclass(frozen=True)
class _Wobble:
    """Smooth bounded 1-D motion ``amp * sin(omega * t + phase)`` (px)."""

    amp_px: float
    omega: float
    phase: float

    def __call__(self, t: float) -> float:
        return self.amp_px * math.sin(self.omega * t + self.phase)

    @staticmethod
    def random(rng: np.random.Generator, amp_px: float, max_speed_px: float) -> _Wobble:
        amp = rng.uniform(0.5, 1.0) * amp_px
        # Peak speed is amp * omega; keep it under max_speed_px (px/frame).
        omega = rng.uniform(0.4, 1.0) * max_speed_px / max(amp, 1e-6)
        return _Wobble(amp, omega, rng.uniform(0, 2 * math.pi))


@dataclass(frozen=True)
class _Layer:
    """A foreground surface at constant disparity, in its own canvas coordinates."""

    rgb: tuple[np.ndarray, ...]  # R, G, B float32 planes [h, w]
    alpha: np.ndarray  # float32 [h, w], anti-aliased shape
    disp_px: float
    cx0_px: float  # centre in left-view band coordinates at t = 0 (before camera motion)
    cy0_px: float
    move_x: _Wobble
    move_y: _Wobble

    def centre(self, t: float) -> tuple[float, float]:
        return self.cx0_px + self.move_x(t), self.cy0_px + self.move_y(t)


@dataclass(frozen=True)
class _Scene:
    """Layered stereo scene: slanted background plane plus constant-disparity layers."""

    bg_tiled: tuple[np.ndarray, ...]  # R, G, B planes of the periodic texture, wrap-padded
    bg_period: tuple[int, int]  # (rows, cols)
    bg_margin_px: int
    bg_disp_top_px: float  # background disparity at band row 0
    bg_disp_slope: float  # px of disparity per band row
    drift_x_px: float  # background drift per frame (tracking shot parallax)
    drift_y_px: float
    cam_x: _Wobble  # camera motion shared by everything
    cam_y: _Wobble
    layers: tuple[_Layer, ...]  # back to front
    vertical_px: float  # right view shifted down by this (0 except for "vertical")
    gain: float  # brightness factor ("dark" shots)


@dataclass(frozen=True)
class _LowTex:
    """Nearly uniform colour with a ~2 grey-level smooth gradient."""

    base_rgb: np.ndarray
    xx: np.ndarray  # float32 band grid
    yy: np.ndarray
    period_px: float
    phase: float
    drift_px: float
    disp_px: float


@dataclass(frozen=True)
class _Credits:
    """White text rows on black, scrolling up."""

    tiled: np.ndarray  # float32 grey, period rows padded by wrap
    period_px: int
    speed_px: float
    disp_px: float


def _planes(rgb: np.ndarray) -> tuple[np.ndarray, ...]:
    # OpenCV's cubic warp is much faster on single-channel float images than on 3-channel ones.
    return tuple(np.ascontiguousarray(rgb[..., c]) for c in range(3))


def _shot_rng(spec: FilmSpec, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, spec.shots[index].seed, index])


def _shot_look(spec: FilmSpec, index: int, rng: np.random.Generator) -> tuple[float, float]:
    """(hue, brightness) of a shot: neighbours differ a lot so every hard cut is visible."""
    # Golden-ratio hue steps put consecutive shots ~0.38 of the colour wheel apart.
    hue = (spec.seed * 0.137 + index * _GOLDEN + rng.uniform(-0.04, 0.04)) % 1.0
    value = 0.42 if index % 2 else 0.68
    return hue, value


def _shape_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Anti-aliased ellipse / rounded rectangle / blob filling an h x w box (plus margin)."""
    m = _LAYER_MARGIN_PX
    ch, cw = h + 2 * m, w + 2 * m
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    x = xx - (cw - 1) / 2
    y = yy - (ch - 1) / 2
    hx, hy = w / 2 - 1, h / 2 - 1
    kind = rng.integers(3)
    if kind == 0:  # ellipse, approximate signed distance in px
        rho = np.sqrt((x / hx) ** 2 + (y / hy) ** 2)
        dist = (rho - 1.0) * min(hx, hy)
    elif kind == 1:  # rounded rectangle, exact signed distance
        r = rng.uniform(0.1, 0.4) * min(hx, hy)
        qx = np.abs(x) - (hx - r)
        qy = np.abs(y) - (hy - r)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        dist = outside + np.minimum(np.maximum(qx, qy), 0) - r
    else:  # blob: ellipse with a wavy radius
        harmonics = [(k, rng.uniform(0.03, 0.08), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
        scale = 1.0 + sum(c for _, c, _ in harmonics)
        ax, ay = hx / scale, hy / scale
        rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
        theta = np.arctan2(y / ay, x / ax)
        radius = 1.0 + sum(c * np.cos(k * theta + p) for k, c, p in harmonics)
        dist = (rho - radius) * min(ax, ay)
    # 1-px linear ramp across the boundary = anti-aliasing.
    return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)


def _build_scene(spec: FilmSpec, index: int) -> _Scene:
    shot = spec.shots[index]
    rng = _shot_rng(spec, index)
    hue, value = _shot_look(spec, index, rng)
    w, hb = spec.view_width, spec.band_height
    vertical_px = shot.vertical_px if shot.kind == "vertical" else 0.0

    # Background: slanted plane, far (negative, behind the screen) at the top and near the
    # convergence plane at the bottom, like a ground plane.
    d_top = rng.uniform(-8.0, -6.0)
    d_bottom = rng.uniform(0.0, 2.0)
    slope = (d_bottom - d_top) / max(hb - 1, 1)
    period = (cv2.getOptimalDFTSize(hb + 64), cv2.getOptimalDFTSize(w + 64))
    bg = _colour_texture(rng, period, _hsv_rgb(hue, 0.55, value))
    margin = 32 + math.ceil(vertical_px)
    # Wrap-pad so that sampling at (offset mod period) + anything in the band stays inside.
    bg_tiled = _planes(
        np.pad(bg, ((margin, margin + hb), (margin, margin + w), (0, 0)), mode="wrap")
    )

    # Foreground layers, back to front: the nearest is in front of the screen (+10..+16 px), the
    # farthest around the convergence plane; the ones between spread evenly.
    n_layers = int(rng.integers(2, 5))
    d_far = rng.uniform(-4.0, 1.0)
    d_near = rng.uniform(11.0, 16.0)
    disps = np.linspace(d_far, d_near, n_layers) + rng.uniform(-0.8, 0.8, n_layers)
    disps[-1] = d_near
    slots = rng.permutation(n_layers)
    layers = []
    for k, d in enumerate(disps):
        lw = int(rng.uniform(0.2, 0.38) * w)
        lh = int(rng.uniform(0.35, 0.65) * hb)
        alpha = _shape_alpha(rng, lh, lw)
        # Hue steps away from the background (and from each other) so layers stand out.
        layer_hue = hue + 0.18 + 0.21 * k
        base = _hsv_rgb(layer_hue, rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.8))
        rgb = _colour_texture(rng, alpha.shape, base)
        # Spread layers across the width so several are visible at once.
        cx0 = (slots[k] + 0.5) / n_layers * w + rng.uniform(-0.08, 0.08) * w
        cy0 = rng.uniform(0.35, 0.65) * hb
        layers.append(
            _Layer(
                rgb=_planes(rgb),
                alpha=alpha,
                disp_px=float(d),
                cx0_px=float(cx0),
                cy0_px=float(cy0),
                move_x=_Wobble.random(rng, 0.08 * w, 0.7),
                move_y=_Wobble.random(rng, 0.06 * hb, 0.4),
            )
        )

    drift_x = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7)
    drift_y = rng.uniform(-0.3, 0.3)
    return _Scene(
        bg_tiled=bg_tiled,
        bg_period=period,
        bg_margin_px=margin,
        bg_disp_top_px=float(d_top),
        bg_disp_slope=float(slope),
        drift_x_px=float(drift_x),
        drift_y_px=float(drift_y),
        cam_x=_Wobble.random(rng, 0.1 * w, 0.7),
        cam_y=_Wobble.random(rng, 0.05 * hb, 0.3),
        layers=tuple(layers),
        vertical_px=vertical_px,
        gain=_DARK_GAIN if shot.kind == "dark" else 1.0,
    )


def _build_lowtex(spec: FilmSpec, index: int) -> _LowTex:
    rng = _shot_rng(spec, index)
    hue, _ = _shot_look(spec, index, rng)
    w, hb = spec.view_width, spec.band_height
    yy, xx = np.mgrid[0:hb, 0:w].astype(np.float32)
    return _LowTex(
        base_rgb=_hsv_rgb(hue, 0.25, 0.5),
        xx=xx,
        yy=yy,
        period_px=float(rng.uniform(1.2, 2.0) * w),
        phase=float(rng.uniform(0, 2 * math.pi)),
        drift_px=float(rng.uniform(0.2, 0.4)),
        disp_px=2.0,
    )


_SYLLABLES = ("an", "bel", "cor", "da", "el", "fin", "gar", "ho", "ka", "lu", "mar", "no", "ra")
_ROLES = ("DIRECTOR", "PRODUCER", "CAMERA", "EDITOR", "MUSIC", "SOUND", "GAFFER", "VFX", "CAST")


def _build_credits(spec: FilmSpec, index: int) -> _Credits:
    rng = _shot_rng(spec, index)
    w, hb = spec.view_width, spec.band_height
    scale = max(hb / 400.0, 0.3)
    thickness = max(1, round(scale * 2))
    line_px = max(int(hb / 8), 14)
    n_lines = max(math.ceil((hb + 32) / line_px), 6)
    period = n_lines * line_px
    canvas = np.zeros((period, w), np.uint8)
    for i in range(n_lines):
        name = " ".join(
            "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
            for _ in range(2)
        )
        text = f"{_ROLES[int(rng.integers(len(_ROLES)))]}  {name}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        org = (max((w - tw) // 2, 2), i * line_px + (line_px + th) // 2)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    tiled = np.pad(canvas, ((0, hb + 4), (0, 0)), mode="wrap").astype(np.float32)
    return _Credits(tiled=tiled, period_px=period, speed_px=0.5, disp_px=0.0)


@functools.lru_cache(maxsize=32)
def _shot_content(spec: FilmSpec, index: int) -> _Scene | _LowTex | _Credits:
    kind = spec.shots[index].kind
    if kind in _SCENE_KINDS:
        return _build_scene(spec, index)
    if kind == "lowtex":
        return _build_lowtex(spec, index)
    return _build_credits(spec, index)


# --------------------------------------------------------------------------------------------
# Rendering
#
# Every warp maps a destination pixel of the view to a texture coordinate with an affine map
# (WARP_INVERSE_MAP).  A left-view pixel (x, y) on a surface with disparity d shows the texture
# point p; the right view shows that same p at (x - d, y + vertical_px).  So the right view's
# map is the left one composed with (x_r, y_r) -> (x_r + d, y_r - vertical_px).

_WARP_RGB = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
_WARP_ALPHA = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def _scene_view(
    scene: _Scene, spec: FilmSpec, t: float, *, right: bool, want_rgb: bool, want_disp: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Render one view of a scene band: (float32 RGB or None, disparity of this view or None)."""
    w, hb = spec.view_width, spec.band_height
    v = scene.vertical_px if right else 0.0
    cam_x, cam_y = scene.cam_x(t), scene.cam_y(t)

    planes = None
    if want_rgb:
        # Background texture coordinate of left pixel (x, y): (x + ox, y + oy).  For the right
        # view pixel (xr, yr): left point (xr + a + b*(yr - v), yr - v), i.e. a shear.
        ox = cam_x + scene.drift_x_px * t
        oy = cam_y + scene.drift_y_px * t
        shear = scene.bg_disp_slope if right else 0.0
        tx = ox + ((scene.bg_disp_top_px - scene.bg_disp_slope * v) if right else 0.0)
        ty = oy - v
        ph, pw = scene.bg_period
        m = scene.bg_margin_px
        mat = np.array([[1.0, shear, tx % pw + m], [0.0, 1.0, ty % ph + m]], np.float64)
        planes = [cv2.warpAffine(p, mat, (w, hb), flags=_WARP_RGB) for p in scene.bg_tiled]

    disp = None
    if want_disp:
        rows = np.arange(hb, dtype=np.float32) - v
        col = scene.bg_disp_top_px + scene.bg_disp_slope * rows
        disp = np.repeat(col.astype(np.float32)[:, None], w, axis=1)

    for layer in scene.layers:
        cx, cy = layer.centre(t)
        cx -= cam_x
        cy -= cam_y
        ch, cw = layer.alpha.shape
        dx = layer.disp_px if right else 0.0
        # Canvas origin (top-left) in this view's coordinates.
        left0 = cx - (cw - 1) / 2 - dx
        top0 = cy - (ch - 1) / 2 + v
        x0, x1 = max(0, math.floor(left0)), min(w, math.ceil(left0 + cw))
        y0, y1 = max(0, math.floor(top0)), min(hb, math.ceil(top0 + ch))
        if x1 <= x0 or y1 <= y0:
            continue
        mat = np.array([[1.0, 0.0, x0 - left0], [0.0, 1.0, y0 - top0]], np.float64)
        size = (x1 - x0, y1 - y0)
        alpha = cv2.warpAffine(layer.alpha, mat, size, flags=_WARP_ALPHA)
        if planes is not None:
            for plane, tex in zip(planes, layer.rgb, strict=True):
                roi = plane[y0:y1, x0:x1]
                roi += alpha * (cv2.warpAffine(tex, mat, size, flags=_WARP_RGB) - roi)
        if disp is not None:
            droi = disp[y0:y1, x0:x1]
            droi[alpha > _ALPHA_SOLID] = layer.disp_px
            droi[(alpha > _ALPHA_EMPTY) & (alpha <= _ALPHA_SOLID)] = np.nan

    if planes is None:
        return None, disp
    if scene.gain != 1.0:
        # Dark shots are grey: near-black colour makes hue/saturation flicker wildly after
        # encoding, which content-based cut detectors would report as cuts.
        grey = (0.299 * planes[0] + 0.587 * planes[1] + 0.114 * planes[2]) * scene.gain
        return cv2.merge([grey, grey, grey]), disp
    return cv2.merge(planes), disp


def _lowtex_view(c: _LowTex, t: float, *, right: bool) -> np.ndarray:
    shift = c.drift_px * t + (c.disp_px if right else 0.0)
    hb = c.yy.shape[0]
    g = np.cos((c.xx + shift) * (2 * math.pi / c.period_px) + c.phase) + (c.yy / hb - 0.5)
    return c.base_rgb[None, None, :] + g[..., None]


def _credits_view(c: _Credits, spec: FilmSpec, t: float, *, right: bool) -> np.ndarray:
    w, hb = spec.view_width, spec.band_height
    dx = c.disp_px if right else 0.0
    mat = np.array([[1.0, 0.0, dx], [0.0, 1.0, (c.speed_px * t) % c.period_px]], np.float64)
    grey = cv2.warpAffine(c.tiled, mat, (w, hb), flags=_WARP_ALPHA)
    return np.repeat(grey[..., None], 3, axis=2)


def _shot_band(
    spec: FilmSpec, index: int, t: float, *, want_rgb: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Float band images (left, right) and left truth of shot ``index`` at local time t."""
    kind = spec.shots[index].kind
    content = _shot_content(spec, index)
    w, hb = spec.view_width, spec.band_height
    nan_disp = np.full((hb, w), np.nan, np.float32)
    if isinstance(content, _Scene):
        geometric = kind in ("textured", "vertical")
        left, disp = _scene_view(
            content, spec, t, right=False, want_rgb=want_rgb, want_disp=geometric
        )
        right = None
        if want_rgb:
            if kind == "mono":
                right = left.copy()
            else:
                right, _ = _scene_view(content, spec, t, right=True, want_rgb=True, want_disp=False)
        return left, right, disp if geometric else nan_disp
    if not want_rgb:
        return None, None, nan_disp
    if isinstance(content, _LowTex):
        return _lowtex_view(content, t, right=False), _lowtex_view(content, t, right=True), nan_disp
    return (
        _credits_view(content, spec, t, right=False),
        _credits_view(content, spec, t, right=True),
        nan_disp,
    )


def _to_uint8(band: np.ndarray, spec: FilmSpec) -> np.ndarray:
    out = np.zeros((spec.view_height, spec.view_width, 3), np.uint8)
    lb = spec.letterbox_px
    # +0.5 then truncation = rounding for the non-negative values that survive the clip.
    np.clip(band + 0.5, 0.0, 255.0, out=band)
    out[lb : spec.view_height - lb] = band
    return out


def _pad_disp(band: np.ndarray, spec: FilmSpec) -> np.ndarray:
    if spec.letterbox_px == 0:
        return band
    out = np.full((spec.view_height, spec.view_width), np.nan, np.float32)
    out[spec.letterbox_px : spec.view_height - spec.letterbox_px] = band
    return out


def render_frame(spec: FilmSpec, frame_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, disparity) of one frame.

    left/right: uint8 RGB [view_height, view_width, 3].  disparity: float32 [H, W], truth for the
    LEFT view in px (``x_right = x_left - d``); NaN where there is no usable truth (letterbox,
    non-geometric shots, dissolve, mixed pixels on layer edges).
    """
    shot, local = _locate(spec, frame_index)
    if shot is None:
        i = spec.dissolve_after
        assert i is not None
        # Outgoing shot runs past its end, incoming one runs up to its start (see _timeline).
        a_left, a_right, _ = _shot_band(spec, i, spec.shots[i].n_frames + local)
        b_left, b_right, _ = _shot_band(spec, i + 1, local - spec.dissolve_frames)
        a = (local + 1) / (spec.dissolve_frames + 1)
        left = a_left * (1 - a) + b_left * a
        right = a_right * (1 - a) + b_right * a
        disp = np.full((spec.band_height, spec.view_width), np.nan, np.float32)
    else:
        left, right, disp = _shot_band(spec, shot, local)
    return _to_uint8(left, spec), _to_uint8(right, spec), _pad_disp(disp, spec)


def true_disparity(spec: FilmSpec, frame_index: int) -> np.ndarray:
    """The disparity of ``render_frame`` without rendering the images."""
    shot, local = _locate(spec, frame_index)
    if shot is None:
        return np.full((spec.view_height, spec.view_width), np.nan, np.float32)
    _, _, disp = _shot_band(spec, shot, local, want_rgb=False)
    return _pad_disp(disp, spec)


def _right_disparity(spec: FilmSpec, frame_index: int) -> np.ndarray:
    """Truth for the RIGHT view (same sign convention); used to find occlusions in tests."""
    shot, local = _locate(spec, frame_index)
    nan = np.full((spec.band_height, spec.view_width), np.nan, np.float32)
    if shot is None or spec.shots[shot].kind not in ("textured", "vertical"):
        return _pad_disp(nan, spec)
    scene = _shot_content(spec, shot)
    assert isinstance(scene, _Scene)
    _, disp = _scene_view(scene, spec, local, right=True, want_rgb=False, want_disp=True)
    return _pad_disp(disp, spec)


# --------------------------------------------------------------------------------------------
# Encoding


def _frame_size(spec: FilmSpec, layout: str) -> tuple[int, int]:
    w, h = spec.view_width, spec.view_height
    return {
        "sbs": (2 * w, h),
        "half-sbs": (w, h),
        "tab": (w, 2 * h),
        "half-tab": (w, h),
        "separate": (w, h),
    }[layout]


def _pack(left: np.ndarray, right: np.ndarray, layout: str) -> list[np.ndarray]:
    """Frames to encode for one stereo pair (two for "separate", else one)."""
    h, w = left.shape[:2]
    if layout == "sbs":
        return [np.concatenate([left, right], axis=1)]
    if layout == "tab":
        return [np.concatenate([left, right], axis=0)]
    if layout == "half-sbs":
        size = (w // 2, h)
        return [
            np.concatenate(
                [cv2.resize(v, size, interpolation=cv2.INTER_AREA) for v in (left, right)], axis=1
            )
        ]
    if layout == "half-tab":
        size = (w, h // 2)
        return [
            np.concatenate(
                [cv2.resize(v, size, interpolation=cv2.INTER_AREA) for v in (left, right)], axis=0
            )
        ]
    return [left, right]


def _ffmpeg_args(path: Path, size: tuple[int, int], fps: float, crf: int) -> list[str]:
    rate = Fraction(fps).limit_denominator(1001)
    stream = ffmpeg.input(
        "pipe:",
        format="rawvideo",
        pix_fmt="rgb24",
        s=f"{size[0]}x{size[1]}",
        framerate=f"{rate.numerator}/{rate.denominator}",
    )
    stream = ffmpeg.output(
        stream,
        str(path),
        vcodec="libx264",
        pix_fmt="yuv420p",
        preset="veryfast",
        g=48,
        crf=crf,
        an=None,
    )
    return ffmpeg.compile(
        stream.global_args("-hide_banner", "-loglevel", "error"), overwrite_output=True
    )


class _Encoder:
    """One ffmpeg/libx264 process fed raw RGB frames through stdin (context manager)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, crf: int) -> None:
        self.path = path
        self._args = _ffmpeg_args(path, size, fps, crf)
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> _Encoder:
        # stderr goes to a file: an unread pipe could fill up and stall ffmpeg.
        self._log = tempfile.TemporaryFile(prefix="ffmpeg-", suffix=".log")
        self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stderr=self._log)
        return self

    def write(self, frame: np.ndarray) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError as exc:
            self._proc.wait()
            raise RuntimeError(f"ffmpeg died while encoding {self.path}: {self._text()}") from exc

    def _text(self) -> str:
        assert self._log is not None
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self._proc is not None and self._log is not None
        try:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                # If ffmpeg is already gone, its exit code below tells the story.
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
            code = self._proc.wait()
            if code != 0 and exc_type is None:
                raise RuntimeError(f"ffmpeg failed ({code}) encoding {self.path}: {self._text()}")
        finally:
            self._log.close()


def write_film(spec: FilmSpec, out: Path, layout: str, *, crf: int = 14) -> dict:
    """Encode the film with ffmpeg/libx264 in ``layout`` and write the truth sidecar.

    For "separate", ``out`` is a path stem (a trailing ".mp4" is dropped): the views go to
    ``<out>_left.mp4`` / ``<out>_right.mp4`` and the sidecar to ``<out>.truth.json``.  Otherwise
    ``out`` is the video path and the sidecar is ``<out>.truth.json``.  Returns the sidecar dict.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    out = Path(out)
    if layout == "separate":
        if out.suffix == ".mp4":
            out = out.with_suffix("")
        videos = [out.parent / f"{out.name}_left.mp4", out.parent / f"{out.name}_right.mp4"]
    else:
        videos = [out]
    out.parent.mkdir(parents=True, exist_ok=True)
    size = _frame_size(spec, layout)
    total = n_frames(spec)

    with contextlib.ExitStack() as stack:
        encoders = [stack.enter_context(_Encoder(video, size, spec.fps, crf)) for video in videos]
        for i in range(total):
            left, right, _ = render_frame(spec, i)
            for encoder, frame in zip(encoders, _pack(left, right, layout), strict=True):
                encoder.write(frame)

    sidecar = {
        "format": SIDECAR_FORMAT,
        "spec": spec.to_json(),
        "layout": layout,
        "files": [v.name for v in videos],
        "view_size": [spec.view_width, spec.view_height],
        "frame_size": list(size),
        "n_frames": total,
        "fps": spec.fps,
        "cuts": cut_frames(spec),
        "dissolve": list(d) if (d := dissolve_range(spec)) else None,
        "shots": film_timeline(spec),
        "letterbox_px": spec.letterbox_px,
        "regenerate": "filmmine.synth.true_disparity(FilmSpec.from_json(d['spec']), frame_index)",
    }
    Path(f"{out}.truth.json").write_text(json.dumps(sidecar, indent=1))
    log.info("wrote %s (%s, %d frames, %dx%d)", out, layout, total, *size)
    return sidecar


def write_library(
    root: Path,
    *,
    view_width: int = 320,
    view_height: int = 180,
    shot_frames: int = 36,
    layouts: Sequence[str] = LAYOUTS,
    seed: int = 0,
) -> Path:
    """One film per layout under ``root`` plus ``root/library.json``; returns the manifest path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    films = []
    for k, layout in enumerate(layouts):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        # Letterboxing on the tab film checks that bar handling works through a stacked layout;
        # keep it proportionate for tiny views.
        letterbox = 0
        if layout == "tab":
            letterbox = 16 if view_height >= 96 else 2 * (view_height // 12)
        spec = default_film_spec(
            view_width=view_width,
            view_height=view_height,
            letterbox_px=letterbox,
            seed=seed * 100 + k + 1,
            shot_frames=shot_frames,
        )
        name = f"film_{layout}"
        if layout == "separate":
            write_film(spec, root / name, layout)
            films.append(
                {
                    "name": name,
                    "left": f"{name}_left.mp4",
                    "right": f"{name}_right.mp4",
                    "layout": layout,
                }
            )
        else:
            write_film(spec, root / f"{name}.mp4", layout)
            films.append({"name": name, "path": f"{name}.mp4", "layout": layout})
    manifest = root / "library.json"
    manifest.write_text(json.dumps({"format": LIBRARY_FORMAT, "films": films}, indent=1))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m filmmine.synth OUTDIR`` writes a synthetic film library."""
    parser = argparse.ArgumentParser(prog="python -m filmmine.synth", description=main.__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--view-width", type=int, default=320)
    parser.add_argument("--view-height", type=int, default=180)
    parser.add_argument("--shot-frames", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_library(
        args.outdir,
        view_width=args.view_width,
        view_height=args.view_height,
        shot_frames=args.shot_frames,
        layouts=tuple(args.layouts),
        seed=args.seed,
    )
    log.info("library manifest: %s", manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
