"""Probe stage: what a film is (its streams, frame times) and which stereo layout and
projection it has.

The facts come from ffprobe (``streams``) and the packet list (``pts_index``); the layout
decision is a pure function of them and, when the container says nothing, of how alike the
two halves of a few frames are.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError, MonoInput, SphericalInput
from .ffmpeg_bin import MULTIVIEW_MIN, ffmpeg_version, find_binary, multiview_ffmpeg
from .layout import LAYOUTS, STACKED_LAYOUTS, half_similarity
from .pts_index import PtsIndex, read_pts_index
from .spatial import SpatialInfo, read_spatial, read_sv3d
from .streams import StreamInfo, probe_stream, probe_stream_entries

log = logging.getLogger(__name__)

# A full side-by-side frame is two views wide: 2 x 4:3 = 2.67 and up. Top-bottom full frames are
# at most 2 x 16:9 / 2... i.e. narrower than 1.2. Between the two the views are squeezed.
FULL_SBS_MIN_ASPECT = 2.4
FULL_TAB_MAX_ASPECT = 1.2
MIN_HALF_CORRELATION = 0.5  # below this the halves are not two views of one scene
# A stereo packing makes one split (left|right or top/bottom) alike and the other not; a 2D
# pattern alike both ways (tiling, test cards, flat colour) says nothing about stereo.
MIN_PACKING_MARGIN = 0.15
DOUBT = "; but "   # in a layout_reason: what follows says why the given layout looks wrong
STEREO3D_TYPES = {"side by side": "sbs", "top and bottom": "tab", "2D": "mono"}


@dataclass
class ProbeResult:
    """Everything extract needs to know about one input before decoding it."""

    name: str
    paths: tuple[str, ...]
    streams: tuple[StreamInfo, ...]
    layout: str
    layout_reason: str
    frame_size: tuple[int, int]  # decoded packed frame (w, h); separate views are hstacked
    fps: float
    n_frames: int
    duration_s: float
    similarity: dict[str, float] = field(default_factory=dict)
    # frame times of the (left) video stream; None: derive them from fps (a probe rebuilt
    # from a film record, or a stream without timestamps)
    pts: PtsIndex | None = field(default=None, repr=False, compare=False)
    # the film's cuts from a scene list (filmmine.media.scenelist) instead of the shot detector
    given_cuts: tuple[int, ...] | None = None
    # spatial video (mv-hevc): the container's stereo metadata (filmmine.media.spatial) and the
    # ffmpeg that decodes both views
    stereo: dict | None = None
    # what the eyes are: flat, or a spherical projection cut into pinhole views
    # (filmmine.stages.projection), and where that comes from
    projection: str = "flat"
    projection_from: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        del d["pts"]  # large, and read again from the film when needed
        if self.given_cuts is None:
            del d["given_cuts"]   # detected shots: the record as without scene lists
        else:
            d["given_cuts"] = list(self.given_cuts)
        if self.stereo is None:
            del d["stereo"]       # only spatial video has it
        if self.projection == "flat":
            del d["projection"], d["projection_from"]   # a flat film's record as it was
        d["paths"] = list(self.paths)
        d["frame_size"] = list(self.frame_size)
        return d


def _index_of(info: StreamInfo, stream: dict, fmt: dict) -> PtsIndex | None:
    index = read_pts_index(info.path, int(stream.get("index", 0)), stream.get("time_base", ""),
                           fmt.get("start_time"))
    try:
        lag = round((float(stream["start_time"]) - float(fmt["start_time"])) * 1e6)
    except (KeyError, TypeError, ValueError):   # "N/A" or missing: the clocks are taken as one
        lag = 0
    return replace(index, clock_us=lag) if index is not None and lag > 0 else index


@lru_cache(maxsize=16)
def _film_pts_index(path: str, size: int, mtime_ns: int) -> PtsIndex | None:
    return _index_of(*probe_stream_entries(path))


_INDEX_LOCK = threading.Lock()


def film_pts_index(path: str | Path) -> PtsIndex | None:
    """The frame times of one file (cached while the file is unchanged, built once when
    threads ask together): for probes rebuilt from a film record, which does not store them."""
    st = Path(path).stat()
    with _INDEX_LOCK:
        return _film_pts_index(str(path), st.st_size, st.st_mtime_ns)


def grey_thumbnails(path: str, duration_s: float, n: int = 5, width: int = 320) -> list[np.ndarray]:
    """A few grey frames spread over the film (seeking, so cheap on long films)."""
    thumbs = []
    for i in range(n):
        t = duration_s * (0.1 + 0.8 * i / max(n - 1, 1))
        cmd = [find_binary("ffmpeg"), "-nostdin", "-v", "error", "-ss", f"{t:.3f}", "-i", path,
               "-frames:v", "1", "-vf", f"scale={width}:-2,format=gray", "-f", "rawvideo", "pipe:1"]
        out = subprocess.run(cmd, capture_output=True, check=False, timeout=120).stdout
        if out and len(out) % width == 0:
            thumbs.append(np.frombuffer(out, np.uint8).reshape(-1, width))
    return thumbs


def layout_doubt(requested: str, info: StreamInfo, sim: dict[str, float]) -> str | None:
    """Why a layout given by hand looks wrong, else None: the container says another packing,
    or the halves are alike the other way and not this one (a tab film cut as sbs pairs the
    top of one view with the top of the other: no label passes the checks)."""
    key = "sbs" if requested.endswith("sbs") else "tab"
    other = "tab" if key == "sbs" else "sbs"
    packing = STEREO3D_TYPES.get(info.stereo3d or "")
    if packing in ("sbs", "tab") and packing != key:
        return f"the container says {info.stereo3d} (stereo3d side data)"
    if not sim or sim[key] >= MIN_HALF_CORRELATION or sim[other] < MIN_HALF_CORRELATION or \
            sim[other] - sim[key] < MIN_PACKING_MARGIN:
        return None
    return (f"its halves are alike {other} (r={sim[other]:.2f}), not {key} "
            f"(r={sim[key]:.2f})")


def decide_layout(info: StreamInfo, requested: str, thumbs: list[np.ndarray] | None,
                  requested_from: str = "--layout") -> tuple[str, str, dict[str, float]]:
    """(layout, why, similarity). Pure: raises InputError for mono input."""
    aspect = info.width / info.height
    if requested != "auto":
        if requested not in LAYOUTS or requested in STACKED_LAYOUTS:
            raise InputError(f"unknown layout {requested!r} for a single file")
        sims = [half_similarity(t) for t in thumbs or []]
        sim = {k: float(np.median([s[k] for s in sims])) for k in ("sbs", "tab")} if sims else {}
        doubt = layout_doubt(requested, info, sim)
        why = f"from {requested_from}" + (f"{DOUBT}{doubt}: check {requested_from}"
                                          if doubt else "")
        return requested, why, sim
    if info.stereo3d is not None:
        packing = STEREO3D_TYPES.get(info.stereo3d)
        if packing == "mono":
            raise MonoInput("mono: container marks the video as 2D")
        if packing == "sbs":
            layout = "sbs" if aspect >= FULL_SBS_MIN_ASPECT else "half-sbs"
            return layout, f"container metadata (stereo3d: {info.stereo3d})", {}
        if packing == "tab":
            layout = "tab" if aspect < FULL_TAB_MAX_ASPECT else "half-tab"
            return layout, f"container metadata (stereo3d: {info.stereo3d})", {}
    sims = [half_similarity(t) for t in thumbs or []]
    sim = {k: float(np.median([s[k] for s in sims])) for k in ("sbs", "tab")} if sims else {}
    if aspect >= FULL_SBS_MIN_ASPECT:
        packing, why = "sbs", f"aspect {aspect:.2f} (two views side by side)"
    elif aspect < FULL_TAB_MAX_ASPECT:
        packing, why = "tab", f"aspect {aspect:.2f} (two views stacked)"
    else:
        if not sim:
            raise InputError("cannot tell the layout: no frame could be decoded")
        packing = "sbs" if sim["sbs"] >= sim["tab"] else "tab"
        other = "tab" if packing == "sbs" else "sbs"
        alike_both = sim[packing] - sim[other] < MIN_PACKING_MARGIN
        if alike_both and sim[packing] >= MIN_HALF_CORRELATION:
            raise MonoInput(
                f"mono or undecidable: halves alike both side by side (r={sim['sbs']:.2f}) and "
                f"top-bottom (r={sim['tab']:.2f}); pass --layout to force"
            )
        why = f"aspect {aspect:.2f} and halves alike {packing} (r={sim[packing]:.2f})"
        packing = "half-" + packing
    key = "sbs" if packing.endswith("sbs") else "tab"
    if sim and sim[key] < MIN_HALF_CORRELATION:
        raise MonoInput(
            f"mono: the two halves are not a stereo pair ({key} correlation {sim[key]:.2f} "
            f"< {MIN_HALF_CORRELATION}); pass --layout to force"
        )
    return packing, why, sim


# --projection: what a film's frames are when its container does not say (or says wrong)
REPROJECTABLE = ("equirect", "half-equirect", "fisheye")   # filmmine.stages.projection's
PROJECTION_CHOICES = ("auto", "flat", *REPROJECTABLE)
SPHERICAL_NAMES = {"equirect": "equirectangular", "half-equirect": "half-equirectangular, VR180",
                   "fisheye": "fisheye", "cubemap": "cubemap", "mesh": "mesh"}
# ffprobe's projection names (Spherical Mapping side data) -> ours
FFPROBE_PROJECTIONS = {"equirectangular": "equirect", "half_equirectangular": "half-equirect",
                       "fisheye": "fisheye", "cubemap": "cubemap", "rectilinear": "flat",
                       "tiled equirectangular": "equirect", "equirectangular_tile": "equirect"}


def film_projection(requested: str, ffprobe_projection: str | None,
                    sv3d: tuple[str, tuple[float, ...]] | None) -> tuple[str, str]:
    """(projection, where it comes from). Given by hand (``--projection``), it wins; else the
    Spherical Video V2 box (exact: a mesh file's V1 XML, which ffprobe 5.1 reports, says
    equirectangular), with equirect bounds cropping half the width or more read as VR180;
    else ffprobe's side data; else flat."""
    if requested != "auto":
        if requested not in PROJECTION_CHOICES:
            raise InputError(f"unknown projection {requested!r}; choose from "
                             f"{', '.join(PROJECTION_CHOICES)}")
        return requested, "from --projection"
    if sv3d is not None:
        kind, bounds = sv3d
        if kind == "equirect" and len(bounds) == 4 and bounds[2] + bounds[3] >= 0.49:
            kind = "half-equirect"
        return kind, "sv3d box"
    if ffprobe_projection is not None:
        return (FFPROBE_PROJECTIONS.get(ffprobe_projection, ffprobe_projection),
                "spherical side data")
    return "flat", "no spherical metadata"


def probe_film(name: str, paths: tuple[str, ...], requested: str = "auto",
               requested_from: str = "--layout", projection: str = "auto") -> ProbeResult:
    """Probe one film (one packed file, or separate left and right files). A spherical video
    (by its container, or ``projection`` given by hand) of a projection filmmine cannot
    reproject (a mesh) is a SphericalInput, skipped with its reason."""
    if len(paths) == 2:
        (left, v, fmt), right = probe_stream_entries(paths[0]), probe_stream(paths[1])
        index = _index_of(left, v, fmt)
        left = replace(left, n_frames=_frame_count(left, v, index))
        if (left.width, left.height) != (right.width, right.height):
            raise InputError(
                f"left and right views differ in size: {left.width}x{left.height} "
                f"vs {right.width}x{right.height}"
            )
        if abs(left.fps - right.fps) > 1e-3:
            raise InputError(
                f"left and right views differ in frame rate: {left.fps} vs {right.fps}"
            )
        return ProbeResult(
            name=name, paths=paths, streams=(left, right), layout="separate",
            layout_reason=f"separate left/right files (from {requested_from})",
            frame_size=(2 * left.width, left.height), fps=left.fps,
            n_frames=min(left.n_frames, right.n_frames),
            duration_s=min(left.duration_s, right.duration_s),
            pts=index,  # the right view is paired with the left by time
            **_given_projection(projection),
        )
    info, v, fmt = probe_stream_entries(paths[0])
    spatial = read_spatial(paths[0]) if info.codec == "hevc" else None
    if requested == "mv-hevc" and not (spatial and spatial.multilayer):
        raise InputError("not MV-HEVC: no second HEVC layer (lhvC) in the container; "
                         "choose another --layout")
    if spatial is not None and spatial.multilayer and requested in ("auto", "mv-hevc"):
        return _mv_hevc_probe(name, paths[0], info, v, fmt, spatial, requested_from
                              if requested == "mv-hevc" else "")
    kind, where = film_projection(projection, info.spherical, read_sv3d(paths[0]))
    if kind not in ("flat", *REPROJECTABLE):
        raise SphericalInput(f"spherical video ({SPHERICAL_NAMES.get(kind, kind)} projection, "
                             f"{where}): filmmine cannot reproject this projection")
    index = _index_of(info, v, fmt)
    info = replace(info, n_frames=_frame_count(info, v, index))
    thumbs = None
    if info.stereo3d is None:   # a layout given by hand too: checked against the halves
        thumbs = grey_thumbnails(paths[0], info.duration_s)
    layout, why, sim = decide_layout(info, requested, thumbs, requested_from)
    w, h = info.width, info.height
    # Odd sizes: the packed halves must split evenly.
    if layout in ("sbs", "half-sbs") and w % 2:
        w -= 1
    if layout in ("tab", "half-tab") and h % 2:
        h -= 1
    return ProbeResult(
        name=name, paths=paths, streams=(info,), layout=layout, layout_reason=why,
        frame_size=(w, h), fps=info.fps, n_frames=info.n_frames, duration_s=info.duration_s,
        similarity=sim, pts=index, projection=kind,
        projection_from=where if kind != "flat" else "",
    )


def _given_projection(requested: str) -> dict:
    """The projection of films whose container is not read for one (separate files): as
    given by hand, else flat."""
    if requested in REPROJECTABLE:
        return {"projection": requested, "projection_from": "from --projection"}
    return {}


def _mv_hevc_probe(name: str, path: str, info: StreamInfo, v: dict, fmt: dict,
                   spatial: SpatialInfo, requested_from: str) -> ProbeResult:
    """A spatial video: both views of its multilayer stream, left first, side by side."""
    binary = multiview_ffmpeg()
    if binary is None:
        raise InputError(f"MV-HEVC stereo (two views in one HEVC stream): decoding its second "
                         f"view needs FFmpeg >= {MULTIVIEW_MIN[0]}.{MULTIVIEW_MIN[1]} (this one "
                         f"is {ffmpeg_version()}): pip install 'filmmine[spatial]', or set "
                         "FILMMINE_FFMPEG to one")
    index = _index_of(info, v, fmt)
    info = replace(info, n_frames=_frame_count(info, v, index))
    eye = "view 0" if spatial.left_view == 0 else "view 1 (stri: eye views reversed)"
    why = (f"MV-HEVC: two views in one HEVC stream (lhvC), left eye {eye}"
           + (f", from {requested_from}" if requested_from else ""))
    stereo = {**spatial.to_json(), "decoder": ffmpeg_version(binary)}
    return ProbeResult(
        name=name, paths=(path,), streams=(info,), layout="mv-hevc", layout_reason=why,
        frame_size=(2 * info.width, info.height), fps=info.fps, n_frames=info.n_frames,
        duration_s=info.duration_s, pts=index, stereo=stereo,
    )


def _frame_count(info: StreamInfo, stream: dict, index: PtsIndex | None) -> int:
    """Frames of a film. Without a count in the header (mkv, webm) duration x fps is only an
    estimate, wrong on a variable frame rate (a VFR mkv was "decoded 58 of 60 frames"): the
    timestamp index counts the frames there are, unless it ends well before the header's
    duration — a truncated file, which keeps the estimate so that its report says how much
    was lost."""
    if index is None or int(stream.get("nb_frames") or 0) > 0:
        return info.n_frames
    end_s = (index.time_us(index.n - 1) + index.typical_step_us()) / 1e6
    start_s = index.first_us / 1e6
    if end_s - start_s >= info.duration_s - max(0.5, 2.0 / info.fps):
        return index.n
    return info.n_frames
