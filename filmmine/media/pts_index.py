"""Frame times of a film from its packet list (demux only): which frame is shown when, and
where a decode must start for a range's first frame to come out."""

from __future__ import annotations

import logging
import subprocess
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .ffmpeg_bin import find_binary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PtsIndex:
    """When each frame of a film is shown: one presentation time per frame, in presentation order.

    Frame ``k`` of a film is the frame with the k-th smallest timestamp among the video stream's
    packets, so a frame has one index however the film is cut into ranges (a count from a
    time-based seek is off by one after a timestamp gap). Times are microseconds from the
    container's start time: the clock of ffmpeg's ``-ss``. In a filter graph,
    ``-copyts -start_at_zero`` counts from the video stream's own start, ``clock_us`` later
    (an MPEG-TS whose audio starts first): the decoder's times are the index's less it.

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
    clock_us: int = 0   # the video stream's start after the container's

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
