"""Shot stage: hard cuts, fades and dissolves from the low-resolution pass.

PySceneDetect's detectors (ContentDetector for cuts, ThresholdDetector for fades through black)
are fed frame by frame as ffmpeg decodes, so detection streams with the decode. Dissolves are
found by a small pure-numpy test PySceneDetect does not have: inside a cross-dissolve a frame is
the average of the frames W before and W after it, while the two ends differ a lot; in a cut or a
camera move the middle frame equals one end or neither.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from scenedetect.detectors import ContentDetector, ThresholdDetector

DISSOLVE_MAX_RATIO = 0.3  # |f(n) - mean(f(n-W), f(n+W))| / |f(n-W) - f(n+W)| inside a dissolve


@dataclass
class ShotBoundaries:
    cuts: list[int] = field(default_factory=list)            # first frame of each new shot
    transitions: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in no shot

    def shot_begin(self, frame: int, default: int = 0) -> int:
        """First frame of the shot holding ``frame``: the last cut or transition end at or
        before it (``default`` when there is none). The corpus's ``shot_index`` counts the
        same boundaries."""
        starts = [c for c in self.cuts if c <= frame] + [e for _, e in self.transitions
                                                          if e <= frame]
        return max(starts) if starts else default

    def next_boundary(self, frame: int) -> int | None:
        after = [c for c in self.cuts if c > frame] + [s for s, _ in self.transitions if s > frame]
        return min(after) if after else None

    def in_transition(self, frame: int) -> bool:
        return any(s <= frame < e for s, e in self.transitions)

    def distance_to_boundary(self, frame: int) -> int:
        """Frames to the nearest cut or transition edge (large when there is none)."""
        edges = [*self.cuts, *(x for t in self.transitions for x in t)]
        return min((abs(frame - e) if e <= frame else e - frame for e in edges), default=10**9)


def dissolve_score(before: np.ndarray, middle: np.ndarray,
                   after: np.ndarray) -> tuple[float, float]:
    """(change across the window, ratio of the middle's distance to the ends' average).

    Inputs are float32 [h, w, c] low-res frames. Pure.
    """
    change = float(np.abs(before - after).mean())
    mid_err = float(np.abs(middle - 0.5 * (before + after)).mean())
    return change, mid_err / max(change, 1e-6)


class ShotTracker:
    """Streaming shot detector: push low-res BGR frames in order, read boundaries any time.

    Boundaries up to ``known_until`` are final: cuts need one frame, a dissolve flag 2W frames
    of look-ahead (it is set at the middle of a 2W window and reaches back W more).
    """

    def __init__(self, fps: float, *, content_threshold: float = 27.0,
                 fade_threshold: float = 12.0, dissolve_window_s: float = 0.5,
                 dissolve_threshold: float = 30.0, min_cut_gap_s: float = 0.25) -> None:
        gap = max(1, round(min_cut_gap_s * fps))
        self._content = ContentDetector(threshold=content_threshold, min_scene_len=gap)
        # fade_bias=1: the cut lands on the fade-in frame, so the dark frames stay in the
        # outgoing shot (and are rejected there as dark) instead of splitting a dark shot.
        self._fade = ThresholdDetector(threshold=fade_threshold, min_scene_len=gap, fade_bias=1.0)
        self.window = self.window_frames(fps, dissolve_window_s)
        self.dissolve_threshold = dissolve_threshold
        self.boundaries = ShotBoundaries()
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=2 * self.window + 1)
        self._flagged: list[int] = []
        self.known_until = -1
        self.scores: dict[int, float] = {}

    @staticmethod
    def window_frames(fps: float, dissolve_window_s: float) -> int:
        """W, the half window of the dissolve test, in frames."""
        return max(2, round(dissolve_window_s * fps / 2))

    def push(self, index: int, lowres_bgr: np.ndarray) -> None:
        cuts = self._content.process_frame(index, lowres_bgr)
        cuts += [c for c in self._fade.process_frame(index, lowres_bgr) if c not in cuts]
        for c in cuts:
            if all(abs(c - k) > 1 for k in self.boundaries.cuts):
                self.boundaries.cuts.append(c)
        self.boundaries.cuts.sort()
        small = cv2.GaussianBlur(lowres_bgr, (0, 0), 1.5).astype(np.float32)
        self._recent.append((index, small))
        if len(self._recent) == self._recent.maxlen:
            (i0, f0), (im, fm) = self._recent[0], self._recent[self.window]
            f1 = self._recent[-1][1]
            change, ratio = dissolve_score(f0, fm, f1)
            if change > self.dissolve_threshold and ratio < DISSOLVE_MAX_RATIO and not any(
                i0 < c <= index for c in self.boundaries.cuts
            ):
                self._flag(im)
        # a flag at the window's middle (index - W) marks frames back to index - 2W
        self.known_until = index - 2 * self.window - 1

    def _flag(self, frame: int) -> None:
        w = self.window
        t = self.boundaries.transitions
        if t and frame - w <= t[-1][1]:
            t[-1] = (t[-1][0], frame + w + 1)
        else:
            t.append((frame - w, frame + w + 1))

    def finish(self, last_index: int) -> ShotBoundaries:
        self.known_until = last_index
        return self.boundaries


class GivenShots:
    """The shot stage for a film with a scene list: its cuts, known before any frame, in
    place of ``ShotTracker`` (same ``push`` / ``finish`` / ``boundaries`` / ``known_until``)."""

    def __init__(self, cuts: list[int] | tuple[int, ...]) -> None:
        self.boundaries = ShotBoundaries(cuts=sorted(cuts))
        self.known_until = -1

    def push(self, index: int, lowres_bgr: np.ndarray) -> None:
        self.known_until = index

    def finish(self, last_index: int) -> ShotBoundaries:
        self.known_until = last_index
        return self.boundaries
