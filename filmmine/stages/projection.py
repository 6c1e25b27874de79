"""Spherical projections to pinhole views: the maps that cut a perspective view out of an
equirectangular (360°), half-equirectangular (VR180) or fisheye frame.

Pure numpy: a view is a pinhole camera (field of view, size) looking along a yaw and pitch;
for each of its pixels the maps give where its ray meets the source image, for ``cv2.remap``
(or ``torch.grid_sample`` on the GPU path, after scaling to [-1, 1]). Both eyes of a stereo
frame are cut with the same rotation, so that their views form a stereo pair; a small
relative rotation between the eye cameras (``rotation``) is undone in the same maps.

Conventions (camera and world alike): x right, y down, z forward. Longitude λ grows to the
right from the image centre (λ = 0 at x = W/2; ±π at the edges of a 360° image, ±π/2 of a
VR180 one), latitude φ is +π/2 at the top row. Pixel centres at integer coordinates. Fisheye:
equidistant (the image radius is proportional to the angle from the axis, as VR180 cameras'
lenses nearly are), ``fisheye_fov_deg`` across the circle's diameter, centred in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PROJECTIONS = ("equirect", "half-equirect", "fisheye")


@dataclass(frozen=True)
class PinholeView:
    """A perspective view: looking along ``yaw_deg`` (to the right) and ``pitch_deg`` (up).

    ``rows`` "ods": columns as a pinhole's (x = f tan of the longitude from the yaw), rows by
    latitude alone (y = f tan of the latitude from the pitch). Omnidirectional stereo (ODS,
    the 360° stereo format) shows a point at the same latitude in both eyes, so such views
    of its two eyes have no vertical parallax, where pinhole ones have some towards their
    corners; near the centre the two are the same."""

    yaw_deg: float
    pitch_deg: float
    fov_deg: float       # horizontal field of view
    width: int
    height: int
    rows: str = "pinhole"   # pinhole | ods

    @property
    def focal_px(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)

    def rotation(self) -> np.ndarray:
        """Camera -> world: yaw about y (to the right), then pitch about x (up)."""
        return rotation_matrix(self.yaw_deg, self.pitch_deg, 0.0)


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = R_yaw @ R_pitch @ R_roll for the x-right, y-down, z-forward frame: yaw turns the
    view to the right, pitch up, roll clockwise as seen from behind."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def view_rays(view: PinholeView) -> np.ndarray:
    """[H, W, 3] unit rays of the view's pixels in its camera frame."""
    f = view.focal_px
    cx, cy = (view.width - 1) / 2.0, (view.height - 1) / 2.0
    u = (np.arange(view.width, dtype=np.float64) - cx) / f
    v = (np.arange(view.height, dtype=np.float64) - cy) / f
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1))), axis=-1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def view_directions(view: PinholeView) -> np.ndarray:
    """[H, W, 3] unit world directions of the view's pixels (before any eye rotation)."""
    if view.rows == "pinhole":
        return view_rays(view) @ view.rotation().T
    if view.rows != "ods":
        raise ValueError(f"unknown view rows {view.rows!r}; choose from pinhole, ods")
    f = view.focal_px
    cx, cy = (view.width - 1) / 2.0, (view.height - 1) / 2.0
    lon = math.radians(view.yaw_deg) + np.arctan(
        (np.arange(view.width, dtype=np.float64) - cx) / f)[None, :]
    lat = math.radians(view.pitch_deg) - np.arctan(
        (np.arange(view.height, dtype=np.float64) - cy) / f)[:, None]
    lon, lat = np.broadcast_arrays(lon, lat)
    return np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)],
                    axis=-1)


def directions_to_view(d: np.ndarray, view: PinholeView) -> tuple[np.ndarray, np.ndarray]:
    """World unit directions [..., 3] -> the view's pixel coordinates (x, y)
    (``view_directions``' inverse); directions the view cannot show map to NaN."""
    f = view.focal_px
    cx, cy = (view.width - 1) / 2.0, (view.height - 1) / 2.0
    if view.rows == "ods":
        lon = np.arctan2(d[..., 0], d[..., 2]) - math.radians(view.yaw_deg)
        lon = np.mod(lon + math.pi, 2 * math.pi) - math.pi
        lat = np.arcsin(np.clip(-d[..., 1], -1.0, 1.0))
        ok = np.abs(lon) < math.pi / 2
        x = np.where(ok, cx + f * np.tan(np.where(ok, lon, 0.0)), np.nan)
        y = np.where(ok, cy + f * np.tan(math.radians(view.pitch_deg) - lat), np.nan)
        return x, y
    c = d @ view.rotation()                     # world -> camera: R^T d for each row
    ok = c[..., 2] > 1e-9
    z = np.where(ok, c[..., 2], 1.0)
    return (np.where(ok, cx + f * c[..., 0] / z, np.nan),
            np.where(ok, cy + f * c[..., 1] / z, np.nan))


def directions_to_source(d: np.ndarray, projection: str, size: tuple[int, int],
                         fisheye_fov_deg: float = 180.0) -> tuple[np.ndarray, np.ndarray]:
    """World unit directions [..., 3] -> source pixel coordinates (x, y) in an image of
    ``size`` (w, h) of that projection. Directions a half-sphere or fisheye image does not
    see map outside it (remap's border)."""
    w, h = size
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    if projection in ("equirect", "half-equirect"):
        lon = np.arctan2(x, z)
        lat = np.arcsin(np.clip(-y, -1.0, 1.0))
        span = 2 * math.pi if projection == "equirect" else math.pi
        sx = lon / span * w + w / 2.0 - 0.5   # pixel i spans λ of [i, i + 1) / w * span
        sy = (math.pi / 2 - lat) / math.pi * h - 0.5
        if projection == "half-equirect":
            behind = np.abs(lon) > math.pi / 2
            sx = np.where(behind, -1e6, sx)
        return sx.astype(np.float32), sy.astype(np.float32)
    if projection == "fisheye":
        theta = np.arccos(np.clip(z, -1.0, 1.0))           # angle from the optical axis
        r_max = min(w, h) / 2.0
        r = theta / math.radians(fisheye_fov_deg / 2.0) * r_max
        phi = np.arctan2(y, x)
        sx = (w / 2.0 - 0.5) + r * np.cos(phi)
        sy = (h / 2.0 - 0.5) + r * np.sin(phi)
        outside = theta > math.radians(fisheye_fov_deg / 2.0)
        sx = np.where(outside, -1e6, sx)
        return sx.astype(np.float32), sy.astype(np.float32)
    raise ValueError(f"unknown projection {projection!r}; choose from {PROJECTIONS}")


def view_maps(view: PinholeView, projection: str, size: tuple[int, int],
              rotation: np.ndarray | None = None, fisheye_fov_deg: float = 180.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (x, y) that cut ``view`` out of a source image of ``size`` (w, h).
    ``rotation``: a further camera -> world rotation of this eye (its rectifying rotation),
    applied after the view's own."""
    d = view_directions(view)
    if rotation is not None:
        d = d @ rotation.T
    return directions_to_source(d, projection, size, fisheye_fov_deg)


def reproject(image: np.ndarray, view: PinholeView, projection: str,
              rotation: np.ndarray | None = None, fisheye_fov_deg: float = 180.0
              ) -> np.ndarray:
    """The pinhole ``view`` of a spherical ``image`` (bilinear; a 360° image wraps at its
    sides, what a half-sphere or fisheye image does not see is black), from its exact maps:
    the reference ``ViewCutter`` is held to."""
    h, w = image.shape[:2]
    mx, my = view_maps(view, projection, (w, h), rotation, fisheye_fov_deg)
    if projection == "equirect":   # longitude wraps: the seam is no border
        pad = np.concatenate([image, image[:, :1]], axis=1)
        mx = np.mod(mx + 0.5, w) - 0.5
        mx = np.where(mx < 0, mx + w, mx).astype(np.float32)
        return cv2.remap(pad, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


def view_tag(view: PinholeView) -> str:
    """The view's part of a sample key: ``y060p000`` (yaw 60°, pitch 0°), ``y300p-30``."""
    return f"y{round(view.yaw_deg) % 360:03d}p{round(view.pitch_deg):03d}"


def spherical_views(projection: str, cfg: dict) -> list[PinholeView]:
    """The pinhole views a spherical film is cut into (recipe table ``[spherical]``): yaws
    every ``yaw_step_deg`` all around a 360° image, or centred on the front of a half-sphere
    or fisheye one as far as its views stay inside it; pitches every ``pitch_step_deg`` up
    to ``max_pitch_deg``."""
    fov, size = float(cfg["fov_deg"]), int(cfg["view_size"])
    step = float(cfg["yaw_step_deg"])
    if projection == "equirect":
        yaws = [k * step for k in range(math.ceil(360.0 / step - 1e-9))]
    else:
        reach = (90.0 if projection == "half-equirect" else cfg["fisheye_fov_deg"] / 2.0)
        m = max(0, math.floor((reach - fov / 2.0) / step + 1e-9))
        yaws = [k * step for k in range(-m, m + 1)]
    pstep = float(cfg["pitch_step_deg"])
    n = math.floor(float(cfg["max_pitch_deg"]) / pstep + 1e-9)
    pitches = [k * pstep for k in range(-n, n + 1)]
    rows = cfg["view_rows"]
    if rows == "auto":   # 360° stereo is ODS; VR180 and fisheye pairs are two real cameras
        rows = "ods" if projection == "equirect" else "pinhole"
    return [PinholeView(y, p, fov, size, size, rows) for p in pitches for y in yaws]


class ViewCutter:
    """Cuts the eyes of a spherical film into its views, for every frame.

    A view's maps for the left eye are computed once per eye size. The right eye's change
    with its fitted rotation, frame by frame: they are computed exactly every ``GRID`` px and
    interpolated between (the maps are smooth: bilinear between 4 px samples is within a
    tenth of a pixel), for a fraction of the exact maps' cost. A 360° eye is cut from itself
    twice side by side (``prepare``), so that a view across its seam needs no wrap of its
    maps."""

    GRID = 4

    def __init__(self, projection: str, views: list[PinholeView],
                 fisheye_fov_deg: float = 180.0) -> None:
        self.projection, self.views, self.fisheye_fov_deg = projection, views, fisheye_fov_deg
        self._maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._coarse: dict[PinholeView, tuple[np.ndarray, np.ndarray]] = {}
        for v in views:
            # exact samples at 0, GRID, ..., and the last pixel; where each pixel falls among
            # them, for the interpolating remap
            xs = _grid(v.width, self.GRID)
            ys = _grid(v.height, self.GRID)
            d = view_directions(v)[np.ix_(ys, xs)]
            fx = np.interp(np.arange(v.width), xs, np.arange(len(xs))).astype(np.float32)
            fy = np.interp(np.arange(v.height), ys, np.arange(len(ys))).astype(np.float32)
            self._coarse[v] = (d, np.stack(np.meshgrid(fx, fy), axis=-1))

    def prepare(self, eye: np.ndarray) -> np.ndarray:
        """The image views are cut from: a 360° eye twice side by side (one column more for
        the bilinear taps at the end), any other eye as it is."""
        if self.projection == "equirect":
            return np.concatenate([eye, eye, eye[:, :1]], axis=1)
        return eye

    def maps(self, view: PinholeView, size: tuple[int, int],
             rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``cv2.remap`` maps into the ``prepare``d eye of ``size`` (w, h) (the eye's)."""
        if rotation is None:
            key = (view, size)
            if key not in self._maps:
                mx, my = directions_to_source(view_directions(view), self.projection, size,
                                              self.fisheye_fov_deg)
                self._maps[key] = (self._unwrap(mx, size[0]), my)
            return self._maps[key]
        d, where = self._coarse[view]
        mx, my = directions_to_source(d @ rotation.T, self.projection, size,
                                      self.fisheye_fov_deg)
        coarse = np.stack([self._unwrap(mx, size[0]), my], axis=-1).astype(np.float32)
        fine = cv2.remap(coarse, where[..., 0], where[..., 1], cv2.INTER_LINEAR)
        return fine[..., 0], fine[..., 1]

    def _unwrap(self, mx: np.ndarray, w: int) -> np.ndarray:
        """A 360° view's x map made continuous across the eye's seam and moved into
        [-0.5, 2 w - 0.5): what the doubled eye holds."""
        if self.projection != "equirect":
            return mx.astype(np.float32)
        m = np.unwrap(np.unwrap(mx.astype(np.float64), period=w, axis=1), period=w, axis=0)
        m -= w * np.floor((m.min() + 0.5) / w)
        return m.astype(np.float32)

    def cut(self, prepared: np.ndarray, size: tuple[int, int], view: PinholeView,
            rotation: np.ndarray | None = None) -> np.ndarray:
        """The view of a ``prepare``d eye of ``size`` (w, h)."""
        mx, my = self.maps(view, size, rotation)
        return cv2.remap(prepared, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


def _grid(n: int, step: int) -> np.ndarray:
    """0, step, 2 step, ... and n - 1."""
    return np.unique(np.append(np.arange(0, n, step), n - 1))


def source_to_directions(x: np.ndarray, y: np.ndarray, projection: str, size: tuple[int, int],
                         fisheye_fov_deg: float = 180.0) -> np.ndarray:
    """Source pixel coordinates -> unit directions [..., 3] (``directions_to_source``'s
    inverse)."""
    w, h = size
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if projection in ("equirect", "half-equirect"):
        span = 2 * math.pi if projection == "equirect" else math.pi
        lon = ((x + 0.5) / w - 0.5) * span
        lat = math.pi / 2 - (y + 0.5) / h * math.pi
        return np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)],
                        axis=-1)
    if projection == "fisheye":
        r_max = min(w, h) / 2.0
        dx, dy = x - (w / 2.0 - 0.5), y - (h / 2.0 - 0.5)
        theta = np.hypot(dx, dy) / r_max * math.radians(fisheye_fov_deg / 2.0)
        phi = np.arctan2(dy, dx)
        return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                         np.cos(theta)], axis=-1)
    raise ValueError(f"unknown projection {projection!r}; choose from {PROJECTIONS}")


@dataclass(frozen=True)
class EyeRotation:
    """The right eye camera's rotation against the left's that rectification undoes: pitch
    (about x) and roll (about z). Yaw is not measured: between two eyes it is the same
    longitude shift as disparity."""

    pitch_deg: float
    roll_deg: float
    matches: int
    inliers: int
    residual_deg: float      # robust spread of the matches' latitude residuals

    def rotation(self) -> np.ndarray:
        """The right eye's ``rotation`` for ``view_maps``: its rays of the left's world."""
        w = np.array([math.radians(self.pitch_deg), 0.0, math.radians(self.roll_deg)])
        return cv2.Rodrigues(w)[0]


MAX_FIT_LATITUDE_DEG = 60.0   # towards the poles an equirectangular image stretches matching


def eye_rotation(left: np.ndarray, right: np.ndarray, projection: str,
                 fisheye_fov_deg: float = 180.0, iterations: int = 3) -> EyeRotation | None:
    """The relative rotation of two spherical eyes (uint8 grey, same size) from confident
    matches (``alignment.confident_matches``), None with fewer than 20.

    A rotation of the right eye by a small vector w moves a direction d by w x d; its latitude
    changes by (w_x d_z - w_z d_x) / cos(lat), whatever the depth, while parallax only moves
    longitude (a stereo camera pair's baseline is horizontal). So pitch and roll are the
    robust (Cauchy-weighted) least squares of the matches' latitude changes, refined on the
    rotated rays."""
    from .alignment import confident_matches

    size = (left.shape[1], left.shape[0])
    pl, pr = confident_matches(left, right, max_corners=600)
    if len(pl) < 20:
        return None
    d = source_to_directions(pl[:, 0], pl[:, 1], projection, size, fisheye_fov_deg)
    e = source_to_directions(pr[:, 0], pr[:, 1], projection, size, fisheye_fov_deg)
    keep = np.abs(np.degrees(np.arcsin(np.clip(-d[:, 1], -1, 1)))) < MAX_FIT_LATITUDE_DEG
    d, e = d[keep], e[keep]
    if len(d) < 20:
        return None
    w = np.zeros(3)
    weights = np.ones(len(d))
    res = np.zeros(len(d))
    for _ in range(max(1, iterations)):
        # the right rays taken back by the rotation found so far: what is left to fit
        back = e @ cv2.Rodrigues(w)[0]          # R^T e for each row
        lat_d = np.arcsin(np.clip(-d[:, 1], -1, 1))
        lat_e = np.arcsin(np.clip(-back[:, 1], -1, 1))
        b = (lat_e - lat_d) * np.cos(lat_d)
        a = np.stack([d[:, 2], -d[:, 0]], axis=-1)
        for _irls in range(10):
            sw = np.sqrt(weights)
            sol = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
            res = b - a @ sol
            scale = max(1.4826 * float(np.median(np.abs(res))), 1e-6)
            weights = 1.0 / (1.0 + (res / (2.385 * scale)) ** 2)
        w = w + np.array([sol[0], 0.0, sol[1]])
    inliers = int((np.abs(res) < 3 * max(1.4826 * float(np.median(np.abs(res))), 1e-6)).sum())
    return EyeRotation(math.degrees(w[0]), math.degrees(w[2]), len(d), inliers,
                       math.degrees(1.4826 * float(np.median(np.abs(res)))))
