"""Spherical -> pinhole maps (filmmine.stages.projection) against the camera model, exactly."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from filmmine.stages.projection import (
    PinholeView,
    directions_to_source,
    reproject,
    rotation_matrix,
    view_maps,
)

SIZE = (2048, 1024)   # a 360° equirectangular image


def direction(lon_deg: float, lat_deg: float) -> np.ndarray:
    lo, la = math.radians(lon_deg), math.radians(lat_deg)
    return np.array([math.cos(la) * math.sin(lo), -math.sin(la), math.cos(la) * math.cos(lo)])


def project(view: PinholeView, d: np.ndarray) -> tuple[float, float]:
    """Where a world direction lands in the view: the pinhole model, written out."""
    c = view.rotation().T @ d
    f = view.focal_px
    return ((view.width - 1) / 2 + f * c[0] / c[2], (view.height - 1) / 2 + f * c[1] / c[2])


def dot_image(points: list[tuple[float, float]], projection: str = "equirect",
              size: tuple[int, int] = SIZE) -> np.ndarray:
    """A black spherical image with a small bright blob at each (lon, lat) direction, drawn
    on the sphere (every source pixel within 0.4° of the direction), so that its centre is
    exact whatever the projection stretches."""
    w, h = size
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    if projection == "fisheye":
        raise NotImplementedError
    span = 360.0 if projection == "equirect" else 180.0
    lon = np.radians(((xs + 0.5) / w - 0.5) * span)
    lat = np.radians(90.0 - (ys + 0.5) / h * 180.0)
    d = np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    img = np.zeros((h, w), np.float32)
    for lo, la in points:
        ang = np.degrees(np.arccos(np.clip(d @ direction(lo, la), -1, 1)))
        img = np.maximum(img, np.clip(1 - ang / 0.4, 0, 1))
    return img


def centroid(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(img > 0.05)
    wgt = img[ys, xs]
    return float((xs * wgt).sum() / wgt.sum()), float((ys * wgt).sum() / wgt.sum())


@pytest.mark.parametrize(("yaw", "pitch", "lon", "lat"), [
    (0, 0, 10, 5), (60, 0, 75, -12), (-120, 10, -110, 20), (180, 0, 170, 0),  # 180: the seam
])
def test_a_known_direction_lands_where_the_pinhole_model_says(yaw, pitch, lon, lat):
    view = PinholeView(yaw, pitch, 60.0, 512, 384)
    got = centroid(reproject(dot_image([(lon, lat)]), view, "equirect"))
    want = project(view, direction(lon, lat))
    assert np.hypot(got[0] - want[0], got[1] - want[1]) < 0.3, (got, want)


def test_straight_lines_stay_straight():
    """Points of a straight 3D line (not through the camera) drawn on the sphere: their
    images in a pinhole view lie on one line within a fraction of a pixel."""
    view = PinholeView(30.0, 5.0, 70.0, 640, 480)
    a, b = np.array([-3.0, 1.0, 4.0]), np.array([4.0, -0.5, 6.0])
    r = view.rotation()
    pts = [r @ (a + t * (b - a)) for t in np.linspace(0.1, 0.9, 7)]
    dirs = [(math.degrees(math.atan2(p[0], p[2])),
             math.degrees(math.asin(-p[1] / np.linalg.norm(p)))) for p in pts]
    img = reproject(dot_image(dirs), view, "equirect")
    n, labels = cv2.connectedComponents((img > 0.05).astype(np.uint8))
    assert n - 1 == len(dirs)
    cs = np.array([centroid(np.where(labels == i, img, 0)) for i in range(1, n)])
    centred = cs - cs.mean(0)
    normal = np.linalg.svd(centred)[2][-1]
    assert np.abs(centred @ normal).max() < 0.3


def test_fisheye_and_half_equirect_agree_with_the_full_sphere():
    """The same directions through the three projections' maps come back to the same rays:
    the source pixel each map gives, turned back into a direction, is the ray's."""
    view = PinholeView(20.0, -10.0, 60.0, 64, 48)
    rays = None
    for proj, size in (("equirect", (2000, 1000)), ("half-equirect", (1000, 1000)),
                       ("fisheye", (1000, 1000))):
        mx, my = view_maps(view, proj, size)
        if proj == "fisheye":   # equidistant: radius proportional to the angle
            r = np.hypot(mx - 499.5, my - 499.5) / 500 * (math.pi / 2)
            phi = np.arctan2(my - 499.5, mx - 499.5)
            d = np.stack([np.sin(r) * np.cos(phi), np.sin(r) * np.sin(phi), np.cos(r)], -1)
        else:
            span = 2 * math.pi if proj == "equirect" else math.pi
            lon = ((mx + 0.5) / size[0] - 0.5) * span
            lat = math.pi / 2 - (my + 0.5) / size[1] * math.pi
            d = np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
        rays = d if rays is None else rays
        assert np.abs(d - rays).max() < 1e-5, proj
    behind = PinholeView(180.0, 0.0, 40.0, 8, 8)
    mx, _ = view_maps(behind, "half-equirect", (1000, 1000))
    assert (mx < 0).all()    # VR180 sees nothing behind


def test_a_rotation_of_one_eye_is_undone_in_its_maps():
    """An eye whose camera is rolled by 0.5° and yawed by 0.3° records a world direction d at
    R^T d of its own sphere. Cut with the rectifying rotation R^T, the dot lands where the
    pinhole model puts d; without it, a pixel and more away."""
    view = PinholeView(0.0, 0.0, 60.0, 640, 480)
    eye = rotation_matrix(0.3, 0.0, 0.5)
    d = direction(15.0, 10.0)
    e = eye.T @ d
    seen = (math.degrees(math.atan2(e[0], e[2])), math.degrees(math.asin(-e[1])))
    img = dot_image([seen])
    want = project(view, d)
    fixed = centroid(reproject(img, view, "equirect", rotation=eye.T))
    raw = centroid(reproject(img, view, "equirect"))
    assert np.hypot(fixed[0] - want[0], fixed[1] - want[1]) < 0.3, (fixed, want)
    assert np.hypot(raw[0] - want[0], raw[1] - want[1]) > 1.0
    assert np.allclose(directions_to_source(np.array([0.0, 0.0, 1.0]), "equirect", SIZE),
                       (SIZE[0] / 2 - 0.5, SIZE[1] / 2 - 0.5))


def sphere_texture(size: tuple[int, int], rotation: np.ndarray | None = None,
                   yaw_shift=None, seed: int = 3) -> np.ndarray:
    """A uint8 equirectangular image of a texture painted on the sphere (a sum of 3D
    sinusoids of directions), seen by an eye whose own ray e looks at world direction R^T e,
    its longitude moved by ``yaw_shift(lat, lon)`` radians first (parallax)."""
    rng = np.random.default_rng(seed)
    w, h = size
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    lon = ((xs + 0.5) / w - 0.5) * 2 * math.pi
    lat = math.pi / 2 - (ys + 0.5) / h * math.pi
    if yaw_shift is not None:
        lon = lon + yaw_shift(lat, lon)
    d = np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    if rotation is not None:
        d = d @ rotation          # R^T e, row-wise
    freqs = rng.normal(size=(40, 3))
    freqs *= rng.uniform(15, 45, size=(40, 1)) / np.linalg.norm(freqs, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * math.pi, 40)
    t = np.sin(d @ freqs.T + phase).sum(-1)
    return np.clip(128 + t * 18, 0, 255).astype(np.uint8)


def test_a_known_eye_rotation_is_recovered_within_a_twentieth_of_a_degree():
    """The right eye pitched 0.3° and rolled 0.5°, and its content shifted in longitude by a
    smooth, depth-like parallax of up to 1.2°: pitch and roll come back within 0.05°, and the
    right eye's views cut with the found rotation line up with the left's (no vertical
    offset), where without it they are a pixel and more off."""
    from filmmine.stages.alignment import confident_matches
    from filmmine.stages.projection import eye_rotation

    size = (1024, 512)
    true = rotation_matrix(0.0, 0.3, 0.5)
    left = sphere_texture(size)
    right = sphere_texture(size, true, yaw_shift=lambda lat, lon: np.radians(
        0.6 + 0.6 * np.sin(2 * lon) * np.cos(lat)))
    found = eye_rotation(left, right, "equirect")
    assert found is not None and found.matches > 100
    assert abs(found.pitch_deg - 0.3) < 0.05 and abs(found.roll_deg - 0.5) < 0.05, found
    for yaw in (0.0, 90.0):    # where the pitch and where the roll shows
        view = PinholeView(yaw, 0.0, 60.0, 320, 240)
        lv = reproject(left, view, "equirect")
        for rot, small in ((found.rotation(), True), (None, False)):
            rv = reproject(right, view, "equirect", rotation=rot)
            pl, pr = confident_matches(lv, rv)
            dy = abs(float(np.median(pr[:, 1] - pl[:, 1])))   # the views' vertical offset
            assert len(pl) > 50
            assert (dy < 0.1) if small else (dy > 1.0), (yaw, dy)


def test_the_view_cutter_gives_the_exact_views_across_the_seam():
    """ViewCutter's maps of a rotated right eye (interpolated between exact samples) are
    within a tenth of a pixel of the exact ones, on every view of a 360° eye, the one across
    its seam (yaw 180) included; its views are reproject's."""
    import cv2

    from filmmine.recipe import load_recipe
    from filmmine.stages.projection import ViewCutter, spherical_views

    size = (960, 480)
    views = spherical_views("equirect", dict(load_recipe()["spherical"], view_size=128,
                                             max_pitch_deg=30.0))
    cutter = ViewCutter("equirect", views)
    rot = cv2.Rodrigues(np.array([0.004, 0.0, -0.006]))[0]
    eye = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (480, 960, 3), np.uint8),
                           (0, 0), 2.0)
    for v in views:
        ex, ey = view_maps(v, "equirect", size, rot)
        mx, my = cutter.maps(v, size, rot)
        dx = np.abs((mx - ex + size[0] / 2) % size[0] - size[0] / 2)
        assert dx.max() < 0.1 and np.abs(my - ey).max() < 0.1, v
        got = cutter.cut(cutter.prepare(eye), size, v)
        assert np.abs(got.astype(int) - reproject(eye, v, "equirect")).max() <= 1, v
