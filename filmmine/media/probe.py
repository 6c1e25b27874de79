"""Probe stage: what a film is (streams, size, fps, duration) and which stereo layout it has.

ffprobe (through ffmpeg-python) at the edge; the layout decision is a pure function of the probe
result and, when the container says nothing, of how alike the two halves of a few frames are.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import zlib
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import ffmpeg
import numpy as np

from ..errors import InputError, MonoInput, SphericalInput, scrub_addresses
from .ffmpeg_bin import MULTIVIEW_MIN, ffmpeg_version, find_binary, multiview_ffmpeg
from .layout import LAYOUTS, STACKED_LAYOUTS, half_similarity
from .spatial import SpatialInfo, read_spatial, read_sv3d

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


@dataclass(frozen=True)
class StreamInfo:
    path: str
    width: int
    height: int
    fps: float
    n_frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    stereo3d: str | None  # container side data, e.g. "top and bottom"
    spherical: str | None
    has_audio: bool


@dataclass(frozen=True)
class PtsIndex:
    """When each frame of a film is shown: one presentation time per frame, in presentation order.

    Frame ``k`` of a film is the frame with the k-th smallest timestamp among the video stream's
    packets, so a frame has one index however the film is cut into ranges (a count from a
    time-based seek is off by one after a timestamp gap). Times are microseconds from the
    container's start time: the clock of ffmpeg's ``-ss`` and of ``-copyts -start_at_zero``.

    Keyframes (their indices, and whether each is *open*: followed in decode order by frames
    shown before it, which reference the previous GOP) say where a decode must start for a
    range's first frame to come out: see ``seek_plan``.

    Compact, as it travels with every work unit: the first time and zlib-compressed int64 steps
    (a 2-hour film at 23.976 fps, 172,627 frames: 3.4 KB of times).
    """

    n: int
    first_us: int
    steps_z: bytes = field(repr=False)
    keys_z: bytes | None = field(default=None, repr=False)  # int64 steps of keyframe indices
    open_z: bytes | None = field(default=None, repr=False)  # packed bits: keyframe is open

    @classmethod
    def from_times(cls, times_us, keyframes=None, open_gop=None) -> PtsIndex:
        """From frame times in any order; ``keyframes``: presentation indices (sorted) of the
        keyframes, ``open_gop``: one bool each (default: all closed)."""
        t = np.sort(np.asarray(times_us, dtype=np.int64))
        if t.size == 0:
            raise ValueError("a timestamp index needs at least one frame")
        keys_z = open_z = None
        if keyframes is not None:
            k = np.asarray(keyframes, dtype=np.int64)
            o = np.zeros(k.size, bool) if open_gop is None else np.asarray(open_gop, bool)
            keys_z = _pack(np.diff(k, prepend=0))
            open_z = zlib.compress(np.packbits(o).tobytes(), 6)
        return cls(int(t.size), int(t[0]), _pack(np.diff(t)), keys_z, open_z)

    def times_us(self) -> np.ndarray:
        """int64 [n] presentation times (expanded once per process and index)."""
        return _expand_times(self.first_us, self.steps_z)

    def keyframes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(presentation indices of the keyframes, open flags), or None when unknown."""
        if self.keys_z is None or self.open_z is None:
            return None
        return _expand_keys(self.keys_z, self.open_z)

    def time_us(self, k: int) -> int:
        """Time of frame k; past the indexed end (a truncated file) at the last frame step."""
        t = self.times_us()
        if k < self.n:
            return int(t[max(k, 0)])
        return int(t[-1]) + (k - self.n + 1) * self.typical_step_us()

    def typical_step_us(self) -> int:
        """The frame step at the end of the index (extrapolation, lookup tolerance)."""
        return _typical_step(self.first_us, self.steps_z)

    def seek_us(self, k: int) -> int | None:
        """A time between frames k - 1 and k: frames from k on are those at or after it.

        None for the first frame (decode from the start, no seek).
        """
        if k <= 0:
            return None
        return (self.time_us(k - 1) + self.time_us(k)) // 2

    def seek_plan(self, k: int) -> tuple[int | None, int | None]:
        """(where the demuxer seeks, where frames start), µs; None: from the film's start.

        Frames start at ``seek_us(k)``. The demuxer goes to the last keyframe at or before
        frame k (a seek to a time lands on the last keyframe before it by pts or, in mp4, by
        dts, which can be past an open GOP's leading frames: the decoder drops those). When
        that keyframe is open, one keyframe earlier: frames after an open keyframe may
        reference its leading frames, which decode only from the GOP before.
        """
        start = self.seek_us(k)
        if start is None:
            return None, None
        keys = self.keyframes()
        if keys is None:
            return start, start
        idx, is_open = keys
        j = int(np.searchsorted(idx, min(k, self.n - 1), side="right")) - 1
        if j >= 0 and is_open[j]:
            j -= 1
        if j < 0 or idx[j] <= 0:
            return None, start
        return self.time_us(int(idx[j])), start

    def lookup(self, t_us: int, expected: int | None = None) -> int | None:
        """Index of the frame shown at ``t_us`` (a decoded frame's time), or None.

        The nearest indexed frame (ffmpeg rounds times between the stream's time base and
        microseconds); ``expected`` when it is as near, so equal timestamps are numbered in
        decode order. A time outside the index by more than half a frame step maps to nothing.
        """
        t = self.times_us()
        half = self.typical_step_us() // 2
        if (t_us < t[0] - half) or (t_us > t[-1] + half):
            return None
        i = int(np.searchsorted(t, t_us))
        if i > 0 and (i == self.n or t_us - t[i - 1] <= t[i] - t_us):
            i -= 1
        near = abs(int(t[i]) - t_us)
        if expected is not None and 0 <= expected < self.n and abs(int(t[expected]) - t_us) <= near:
            return expected
        return i


def _pack(steps: np.ndarray) -> bytes:
    return zlib.compress(np.asarray(steps).astype("<i8").tobytes(), 6)


@lru_cache(maxsize=8)
def _expand_times(first_us: int, steps_z: bytes) -> np.ndarray:
    steps = np.frombuffer(zlib.decompress(steps_z), dtype="<i8")
    t = np.empty(steps.size + 1, dtype=np.int64)
    t[0] = first_us
    np.cumsum(steps, out=t[1:])
    t[1:] += first_us
    t.flags.writeable = False
    return t


@lru_cache(maxsize=8)
def _expand_keys(keys_z: bytes, open_z: bytes) -> tuple[np.ndarray, np.ndarray]:
    idx = np.cumsum(np.frombuffer(zlib.decompress(keys_z), dtype="<i8"))
    is_open = np.unpackbits(np.frombuffer(zlib.decompress(open_z), np.uint8))[: idx.size]
    idx.flags.writeable = False
    return idx, is_open.astype(bool)


@lru_cache(maxsize=8)
def _typical_step(first_us: int, steps_z: bytes) -> int:
    t = _expand_times(first_us, steps_z)
    return max(1, int(np.median(np.diff(t[-101:])))) if t.size > 1 else 40_000


def _seconds_to_us(s: str | None) -> int:
    try:
        return int((Decimal(s) * 1_000_000).to_integral_value()) if s else 0
    except (InvalidOperation, ValueError):
        return 0


PTS_INDEX_TIMEOUT_S = 1800.0


def read_pts_index(path: str, stream_index: int, time_base: str,
                   start_time: str | None) -> PtsIndex | None:
    """The film's frame times from its packet list (demux only, no decode).

    None, with a warning, when the packets carry no usable times: callers then fall back to
    times derived from the frame rate.
    """
    cmd = [find_binary("ffprobe"), "-v", "error", "-select_streams", str(stream_index),
           "-show_entries", "packet=pts,dts,flags", "-of", "csv=p=0", path]
    try:
        done = subprocess.run(cmd, capture_output=True, check=False, timeout=PTS_INDEX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s: listing packets timed out; frame times from the frame rate", path)
        return None
    try:
        return index_from_packets(done.stdout.decode(errors="replace"), time_base, start_time)
    except ValueError as e:
        log.warning("%s: %s; frame times from the frame rate", path, e)
        return None


def index_from_packets(csv: str, time_base: str, start_time: str | None) -> PtsIndex:
    """PtsIndex from ffprobe's ``packet=pts,dts,flags`` CSV lines (pure; ValueError if none).

    A packet's pts, or its dts when it has none, is the time of the frame it decodes to;
    packets the demuxer marks discard (flag ``D``: outside an edit list) give no frame.
    Ticks of ``time_base`` become microseconds (rounded) from ``start_time`` (seconds, the
    container's start). Keyframes are the ``K`` packets; one is open when a later packet
    before the next keyframe, in this (decode) order, is shown before it.
    """
    try:
        tb = Fraction(time_base)
    except (ValueError, ZeroDivisionError):
        tb = Fraction(0)
    if tb <= 0:
        raise ValueError(f"no time base ({time_base!r})")
    ticks, key = [], []
    missing = 0
    for line in csv.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3 or "D" in parts[2]:
            continue
        v = parts[0] if parts[0].lstrip("-").isdigit() else parts[1]
        if not v.lstrip("-").isdigit():
            missing += 1
            continue
        ticks.append(int(v))
        key.append("K" in parts[2])
    if not ticks or missing:
        raise ValueError(f"{missing} of {missing + len(ticks)} packets without a timestamp")
    num, den, start = tb.numerator * 1_000_000, tb.denominator, _seconds_to_us(start_time)
    us = np.array([(x * num * 2 + den) // (2 * den) - start for x in ticks], dtype=np.int64)
    is_key = np.array(key, dtype=bool)
    # presentation index of each packet (stable: equal times keep decode order)
    order = np.argsort(us, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    key_pos = np.flatnonzero(is_key)  # decode positions of the keyframes
    if key_pos.size == 0:
        return PtsIndex.from_times(us)
    # open: the smallest time from the keyframe to the next one (decode order) is not its own
    seg_min = np.minimum.reduceat(us, key_pos)
    is_open = seg_min < us[key_pos]
    by_rank = np.argsort(rank[key_pos], kind="stable")
    return PtsIndex.from_times(us, rank[key_pos][by_rank], is_open[by_rank])


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

    def to_json(self) -> dict:
        d = asdict(self)
        del d["pts"]  # large, and read again from the film when needed
        if self.given_cuts is None:
            del d["given_cuts"]   # detected shots: the record as without scene lists
        else:
            d["given_cuts"] = list(self.given_cuts)
        if self.stereo is None:
            del d["stereo"]       # only spatial video has it
        d["paths"] = list(self.paths)
        d["frame_size"] = list(self.frame_size)
        return d


def _rate(s: str | None) -> float:
    try:
        f = Fraction(s) if s else Fraction(0)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(f)


# ffprobe's last line is its error code's text ("PATH: Invalid data found when processing
# input", "PATH: Input/output error"), ffmpeg's often its own failure ("Error marking filters as
# finished"); for these a line before it ("[mov,mp4,...] moov atom not found", "[matroska,webm]
# File ended prematurely at pos. 300 (0x12c)") says more
GENERIC_FFPROBE_ERRORS = ("Invalid data found when processing input", "End of file",
                          "Input/output error")
GENERIC_FFMPEG_ERRORS = (*GENERIC_FFPROBE_ERRORS, "Error marking filters as finished",
                         "Conversion failed!")
VAGUE_DEMUXER_LINES = ("error reading header",)
# a demuxer's weak guess at random bytes (which then fails in its own way)
MISDETECTION = "misdetection possible"
# (context the line starts with, words of the line, the cause said plainly), in the order they
# win: a line naming a known cause beats a later line that does not ("[matroska,webm]
# Duplicate element" after the file ended). The line follows the cause in brackets.
KNOWN_CAUSES = (
    ("[mov,", "moov atom not found", "truncated or unfinished MP4: no index"),
    ("[mov,", "reached eof, corrupted", "truncated MP4: index cut short"),
    ("[matroska,", "File ended prematurely", "truncated file"),
    ("[mov,", ": partial file", "truncated MP4: data cut short"),
    ("Truncating packet of size", "", "truncated file: last packet cut short"),
)
ENDED_AT = re.compile(r"File ended prematurely(?: at pos\. (\d+))?")


def _cause(words: str, cause: str, line: str) -> str:
    if words == "File ended prematurely":  # "truncated file: ended prematurely at byte 300"
        m = ENDED_AT.search(line)
        at = f" at byte {m.group(1)}" if m and m.group(1) else ""
        return f"{cause}: ended prematurely{at}"
    return f"{cause} ({line.partition('] ')[2] or line})"


def pick_reason(lines: list[str], paths: tuple[str, ...] = (),
                generic: tuple[str, ...] = GENERIC_FFMPEG_ERRORS) -> str | None:
    """The clearest of ffmpeg's or ffprobe's error lines (addresses already scrubbed), as one
    line; None when there are none. The last line, unless it is ``generic`` and a specific
    line ("[demuxer] ...") came before it: then the cause a line names (a truncated file by
    name), else the last specific demuxer line. ``paths``: file names to drop in front of the
    last line ("PATH: Input/output error")."""
    if not lines:
        return None
    last = lines[-1]
    for path in paths:
        last = last.removeprefix(str(path) + ": ")
    demuxer = [line for line in lines if line.startswith("[")]
    if any(MISDETECTION in line for line in demuxer):
        return "unrecognised data (no known video container format)"
    specific = [line for line in demuxer
                if not any(v in line for v in VAGUE_DEMUXER_LINES)]
    named = [line for line in lines if any(line.startswith(c) and w in line
                                           for c, w, _ in KNOWN_CAUSES)]
    if not (specific or named) or (last not in generic and last not in specific):
        return last
    for context, words, cause in KNOWN_CAUSES:
        for line in reversed(lines):
            if line.startswith(context) and words in line:
                return _cause(words, cause, line)
    return specific[-1] if specific else last


def ffprobe_reason(stderr: bytes | None, path: str | Path) -> str:
    """Why ffprobe failed, as a one-line reason: its last stderr line or, when that is only a
    generic "invalid data" or "input/output error", the cause an earlier line names (a
    truncated file by name) or the demuxer's last specific line (see ``pick_reason``).
    Without the file's path in front and without ffmpeg's per-process addresses, so that a
    rerun writes the same manifest bytes."""
    lines = [scrub_addresses(line.strip())
             for line in (stderr or b"").decode(errors="replace").strip().splitlines()]
    return pick_reason(lines, (str(path),), GENERIC_FFPROBE_ERRORS) or "ffprobe failed"


# what ffprobe shows of a 3D Blu-ray's MVC video: the Multiview/Stereo High profiles of H.264
# (profile_idc 118, 128) on the stream, or the dependent view as a stream of MPEG-TS type 0x20
MVC_PROFILES = ("Multiview High", "Stereo High")
MVC_TS_TAG = "0x0020"


def mvc_stream(streams: list[dict]) -> str | None:
    """How ffprobe's streams show H.264 MVC stereo, else None."""
    for s in streams:
        if s.get("codec_type") != "video" or s.get("codec_name") != "h264":
            continue
        if s.get("profile") in MVC_PROFILES:
            return f"profile {s['profile']}"
        if str(s.get("codec_tag", "")).lower() == MVC_TS_TAG:
            return f"stream {s.get('index', '?')}: MPEG-TS type 0x20, the MVC dependent view"
    return None


def probe_stream(path: str | Path) -> StreamInfo:
    """ffprobe one file; InputError with a one-line reason when it holds no decodable video."""
    return _probe_stream(path)[0]


def _probe_stream(path: str | Path) -> tuple[StreamInfo, dict, dict]:
    """(StreamInfo, ffprobe's entry of the video stream, ffprobe's format entry)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"missing file: {p}")
    if not p.is_file():
        raise InputError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise InputError(f"unreadable file: {e.strerror}") from e
    try:
        meta = ffmpeg.probe(str(p), cmd=find_binary("ffprobe"))
    except ffmpeg.Error as e:
        raise InputError(f"not a readable video: {ffprobe_reason(e.stderr, p)}") from e
    streams = meta.get("streams", [])
    if (mvc := mvc_stream(streams)) is not None:
        raise InputError(f"H.264 MVC 3D (a 3D Blu-ray's stereo stream, {mvc}): FFmpeg cannot "
                         "decode its second view; convert the film to full side-by-side "
                         "with an MVC decoder first (e.g. FRIM), then mine that file")
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise InputError(f"no video stream (streams: {', '.join(kinds)})")
    v = video[0]
    width, height = int(v.get("width", 0)), int(v.get("height", 0))
    if width < 16 or height < 16:
        raise InputError(f"video too small: {width}x{height}")
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    duration = float(v.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    n_frames = int(v.get("nb_frames") or 0) or round(duration * fps)
    if fps <= 0 or n_frames <= 0:
        raise InputError("video stream has no frame rate or no frames")
    stereo3d = spherical = None
    for sd in v.get("side_data_list", []) or []:
        if sd.get("side_data_type") == "Stereo 3D":
            stereo3d = sd.get("type")
        elif sd.get("side_data_type") == "Spherical Mapping":
            spherical = sd.get("projection")
    info = StreamInfo(
        path=str(p), width=width, height=height, fps=fps, n_frames=n_frames,
        duration_s=duration, codec=v.get("codec_name", "?"), pix_fmt=v.get("pix_fmt", "?"),
        stereo3d=stereo3d, spherical=spherical,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )
    return info, v, meta.get("format", {})


def _index_of(info: StreamInfo, stream: dict, fmt: dict) -> PtsIndex | None:
    return read_pts_index(info.path, int(stream.get("index", 0)), stream.get("time_base", ""),
                          fmt.get("start_time"))


@lru_cache(maxsize=16)
def _film_pts_index(path: str, size: int, mtime_ns: int) -> PtsIndex | None:
    return _index_of(*_probe_stream(path))


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
PROJECTION_CHOICES = ("auto", "flat", "equirect", "half-equirect", "fisheye")
REPROJECTABLE = ("equirect", "half-equirect", "fisheye")   # filmmine.stages.projection's
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
               requested_from: str = "--layout", flat_only: bool = True,
               projection: str = "auto") -> ProbeResult:
    """Probe one film (one packed file, or separate left and right files). ``flat_only``: a
    spherical video (by its container, or ``projection`` given by hand) is a SphericalInput,
    skipped by extract and probe."""
    if len(paths) == 2:
        (left, v, fmt), right = _probe_stream(paths[0]), probe_stream(paths[1])
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
        )
    info, v, fmt = _probe_stream(paths[0])
    spatial = read_spatial(paths[0]) if info.codec == "hevc" else None
    if requested == "mv-hevc" and not (spatial and spatial.multilayer):
        raise InputError("not MV-HEVC: no second HEVC layer (lhvC) in the container; "
                         "choose another --layout")
    if spatial is not None and spatial.multilayer and requested in ("auto", "mv-hevc"):
        return _mv_hevc_probe(name, paths[0], info, v, fmt, spatial, requested_from
                              if requested == "mv-hevc" else "")
    kind, where = film_projection(projection, info.spherical, read_sv3d(paths[0]))
    if flat_only and kind != "flat":
        # cut as a flat film, an equirectangular panorama got the wrong aspect, a
        # floating-window crop across its wrap and latitude-dependent disparity
        if kind in REPROJECTABLE:
            raise SphericalInput(f"spherical video ({SPHERICAL_NAMES[kind]} projection, "
                                 f"{where}): filmmine mines flat stereo films; reprojecting "
                                 "to perspective views is not supported yet")
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
        similarity=sim, pts=index,
    )


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
