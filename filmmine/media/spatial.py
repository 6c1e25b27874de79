"""Spatial video (MV-HEVC: iPhone 15 Pro and later, Apple Vision Pro): what the container says.

Such a file holds both eyes in one multilayer HEVC stream. Its sample entry (``hvc1``) carries
an ``lhvC`` box (the layered HEVC configuration: the second view) and Apple's video extended
usage box ``vexu``: ``eyes/stri`` (which eyes there are, and whether their order is reversed),
``eyes/hero`` (the hero eye), ``eyes/cams/blin`` (camera baseline, micrometres),
``eyes/cmfy/dadj`` (horizontal disparity adjustment, 1/10000 of the image width), ``proj/prji``
(projection); beside it ``hfov`` (horizontal field of view, 1/1000 degree).

Read here from the box tree itself (pure Python, no decoder): Debian's ffprobe 5.1 sees none of
it, and FFmpeg 9's per-view labels call view 0 the right eye in Apple's own files, whose
disparity shows it is the left eye (as ``stri`` says).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

# boxes holding only boxes, on the way from the file to the video sample entry and in it
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"vexu", b"eyes", b"proj", b"cams",
              b"cmfy"}
HEVC_ENTRIES = {b"hvc1", b"hev1"}
VIDEO_ENTRIES = {*HEVC_ENTRIES, b"avc1", b"avc3", b"vp09", b"av01", b"mp4v", b"dvh1", b"dvhe"}
# Spherical Video V2 (sv3d/proj): its projection boxes
SV3D_PROJECTIONS = {b"equi": "equirect", b"cbmp": "cubemap", b"mshp": "mesh"}
VISUAL_ENTRY_HEADER = 78     # SampleEntry (8) + VisualSampleEntry fields (70) before its boxes
MAX_MOOV_BYTES = 256 << 20   # a moov this large is no video's index: not read
STRI_REVERSED = 0x08         # stri flags: eye_views_reversed


@dataclass(frozen=True)
class SpatialInfo:
    """A spatial video's stereo metadata; None where the file does not say."""

    multilayer: bool                  # an lhvC box: the stream has a second layer (view)
    left_view: int = 0                # which decoded view is the left eye (0 or 1)
    baseline_mm: float | None = None  # distance between the two cameras
    hfov_deg: float | None = None     # horizontal field of view of each view
    disparity_adjustment: float | None = None  # horizontal shift for display, x image width
    hero_eye: str | None = None       # "left" | "right"
    projection: str | None = None     # "rect" (rectilinear) etc.

    def to_json(self) -> dict:
        return asdict(self)


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", data[i:i + 8])
        head = 8
        if size == 1:
            if i + 16 > end:
                return
            size, head = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        if size < head or i + size > end:
            return   # damaged: what was read so far stands
        yield typ, i + head, i + size
        i += size


def _moov(path: Path) -> bytes | None:
    """The top-level ``moov`` box's payload (at the start of a file or after its media data);
    read once for both readers below (a film's probe asks for each)."""
    st = path.stat()
    return _moov_of(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _moov_of(path_s: str, total: int, _mtime_ns: int) -> bytes | None:
    with open(path_s, "rb") as f:
        pos = 0
        while pos + 8 <= total:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                return None
            size, typ = struct.unpack(">I4s", head[:8])
            if not all(32 <= c < 127 for c in typ):
                return None   # no ISO media file (a box type is four printable characters)
            hl = 8
            if size == 1 and len(head) == 16:
                size, hl = struct.unpack(">Q", head[8:16])[0], 16
            elif size == 0:
                size = total - pos
            if size < hl:
                return None
            if typ == b"moov":
                if size > MAX_MOOV_BYTES:
                    return None
                f.seek(pos + hl)
                return f.read(size - hl)
            pos += size
    return None


def _video_entry(moov: bytes, kinds: set[bytes] = HEVC_ENTRIES) -> tuple[int, int] | None:
    """(start, end) of the boxes inside the first video sample entry of ``kinds``."""
    def find(start: int, end: int) -> tuple[int, int] | None:
        for typ, a, b in _boxes(moov, start, end):
            if typ in CONTAINERS:
                hit = find(a, b)
                if hit:
                    return hit
            elif typ == b"stsd" and b - a >= 8:   # full box, then an entry count
                for etyp, ea, eb in _boxes(moov, a + 8, b):
                    if etyp in kinds and eb - ea >= VISUAL_ENTRY_HEADER:
                        return ea + VISUAL_ENTRY_HEADER, eb
        return None
    return find(0, len(moov))


def _u32(data: bytes, a: int, b: int, off: int = 4) -> int | None:
    """The uint32 after a full box's version and flags (``off`` bytes in)."""
    return struct.unpack(">I", data[a + off:a + off + 4])[0] if b - a >= off + 4 else None


def read_spatial(path: str | Path) -> SpatialInfo | None:
    """The spatial-video metadata of an MP4/QuickTime file; None for any other file (no HEVC
    sample entry, or not an ISO media file)."""
    p = Path(path)
    try:
        moov = _moov(p)
    except OSError:
        return None
    if moov is None:
        return None
    entry = _video_entry(moov)
    if entry is None:
        return None
    found: dict[str, object] = {"multilayer": False}

    def walk(start: int, end: int) -> None:
        for typ, a, b in _boxes(moov, start, end):
            if typ == b"lhvC":
                found["multilayer"] = True
            elif typ in CONTAINERS:
                walk(a, b)
            elif typ == b"stri" and b - a >= 5:
                found["left_view"] = 1 if moov[a + 4] & STRI_REVERSED else 0
            elif typ == b"hero" and b - a >= 5:
                found["hero_eye"] = {1: "left", 2: "right"}.get(moov[a + 4])
            elif typ == b"blin" and (v := _u32(moov, a, b)) is not None:
                found["baseline_mm"] = v / 1000.0
            elif typ == b"dadj" and b - a >= 8:
                found["disparity_adjustment"] = struct.unpack(">i", moov[a + 4:a + 8])[0] / 1e4
            elif typ == b"hfov" and (v := _u32(moov, a, b, off=0)) is not None:
                found["hfov_deg"] = v / 1000.0
            elif typ == b"prji" and b - a >= 8:
                found["projection"] = moov[a + 4:a + 8].decode("ascii", "replace").strip()

    walk(*entry)
    return SpatialInfo(**found)   # type: ignore[arg-type]


def read_sv3d(path: str | Path) -> tuple[str, tuple[float, float, float, float]] | None:
    """The Spherical Video V2 projection of an MP4 (``sv3d/proj``): ("equirect" | "cubemap"
    | "mesh", the equirect bounds cropped from (top, bottom, left, right) as fractions), or
    None when there is no sv3d box. Read from the box itself: ffprobe 5.1 reports a mesh
    file's older V1 XML ("equirectangular") instead."""
    p = Path(path)
    try:
        moov = _moov(p)
    except OSError:
        return None
    entry = _video_entry(moov, VIDEO_ENTRIES) if moov is not None else None
    if entry is None:
        return None
    for typ, a, b in _boxes(moov, *entry):
        if typ != b"sv3d":
            continue
        for ptyp, pa, pb in _boxes(moov, a, b):
            if ptyp != b"proj":
                continue
            for jtyp, ja, jb in _boxes(moov, pa, pb):
                kind = SV3D_PROJECTIONS.get(jtyp)
                if kind is None:
                    continue   # prhd: the pose, not the projection
                bounds = (0.0, 0.0, 0.0, 0.0)
                if jtyp == b"equi" and jb - ja >= 20:
                    bounds = tuple(v / 2**32 for v in struct.unpack(">4I", moov[ja + 4:ja + 20]))
                return kind, bounds   # type: ignore[return-value]
    return None


def focal_px(hfov_deg: float, width_px: float) -> float:
    """Pinhole focal length in pixels of a view ``width_px`` wide with that field of view."""
    import math

    return (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)


def stereo_record(stereo: dict, view_wh: tuple[int, int] | list[int], crop: list[int] | tuple,
                  size: tuple[int, int] | list[int]) -> dict:
    """A sample's metric-depth metadata: the rig's baseline and field of view, and the focal
    length in pixels of the stored image (the view cropped to ``crop`` [x, y, w, h], then
    resized to ``size``), so that depth = focal_px * baseline / d."""
    hfov = stereo.get("hfov_deg")
    f = focal_px(hfov, view_wh[0]) * size[0] / crop[2] if hfov else None
    return {"baseline_mm": stereo.get("baseline_mm"), "hfov_deg": hfov,
            "focal_px": round(f, 3) if f is not None else None,
            "disparity_adjustment": stereo.get("disparity_adjustment")}
