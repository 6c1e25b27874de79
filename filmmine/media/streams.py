"""ffprobe at the edge: what one file's video stream is (size, rate, frames, stereo and
spherical side data), or a one-line reason why it has none; the clearest of ffmpeg's and
ffprobe's error lines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from ..errors import InputError, scrub_addresses
from .ffmpeg_bin import find_binary


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
    return probe_stream_entries(path)[0]


def probe_stream_entries(path: str | Path) -> tuple[StreamInfo, dict, dict]:
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
