"""The unit plan: how a film is cut into work units (frame ranges), the context each decodes
around its seams so that its decisions are a whole-film pass's, and a trial's span."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..corpus.staging import WorkUnit
from ..media.probe import ProbeResult
from ..stages.sampling import SamplingPlan
from ..stages.shots import ShotTracker


def unit_context(fps: float, recipe: dict) -> tuple[int, int]:
    """(frames decoded before a unit's first frame, frames decoded after its last): enough for
    every decision near its seams to be the one a whole-film pass makes (``UnitMiner``)."""
    plan = SamplingPlan.from_recipe(fps, recipe)
    after = plan.lookahead + 2 * ShotTracker.window_frames(
        fps, recipe["shots"]["dissolve_window_s"]) + 1
    return after + plan.grid_step, after


def trial_span(probe: ProbeResult, max_duration_s: float) -> ProbeResult:
    """The film as far as ``decode.max_duration_s`` (a quick trial): its first frames, as if it
    ended there; the whole film when that is 0 or the film is shorter."""
    if max_duration_s <= 0 or probe.fps <= 0:
        return probe
    n = max(1, round(max_duration_s * probe.fps))
    if n >= probe.n_frames:
        return probe
    return replace(probe, n_frames=n, duration_s=n / probe.fps)


def film_chunk_s(duration_s: float, chunk_s: float, min_chunk_s: float, units: int) -> float:
    """The unit length for a film that should give at least ``units`` work units.

    A library with fewer films than workers leaves workers idle when every film is cut into
    the recipe's ``chunk_s`` units (one 60 s film in 30 s units keeps two workers busy). Such a
    film's units are shortened to ``duration_s / units``, never below
    ``min_chunk_s`` (each unit decodes ~3.4 s of context at 24 fps: shorter units decode more
    context than film), never above ``chunk_s``; 0 = one unit stays one unit. The split
    changes no output byte: units decode context around their seams (``unit_context``)."""
    if chunk_s <= 0 or units <= 1 or duration_s <= 0:
        return chunk_s
    return max(min(chunk_s, duration_s / units), min(min_chunk_s, chunk_s))


def plan_units(probe: ProbeResult, chunk_s: float, lead: int | None = None) -> list[WorkUnit]:
    """The film's work units: as few ranges as keep each within ``chunk_s`` seconds, of equal
    length (0: one unit). Equal lengths: a 95 s film in 30 s units is four of 23.75 s, where
    30 + 30 + 30 + 5 would spend a unit's whole context and ffmpeg start on 5 s, and workers
    would end apart.

    ``lead``: frames a unit decodes before its first one (``unit_context``). With it, and
    when the film's keyframes are known, each seam moves to the nearest frame whose decode
    starts exactly on a keyframe (within a quarter of a unit): a seek lands on the keyframe at
    or before the first frame decoded, and every frame from there to it is decoded for
    nothing (up to a GOP a unit). Seams never change what is mined (units decode context
    around them): only where a unit's decode starts.
    """
    n = probe.n_frames
    if n <= 0:
        return []
    size = n if chunk_s <= 0 else max(1, round(chunk_s * probe.fps))
    count = max(1, -(-n // size))
    size = max(1, -(-n // count))                 # equal units, none longer than before
    starts = list(range(0, n, size))
    keys = probe.pts.keyframes() if lead is not None and probe.pts is not None else None
    if keys is not None and len(starts) > 1:
        idx, is_open = keys
        # a decode from a closed keyframe starts on it; from an open one a keyframe earlier
        fits = idx[~is_open].astype(np.int64) + int(lead)
        tol = size // 4
        for i in range(1, len(starts)):
            b = starts[i]
            near = fits[(fits > starts[i - 1]) & (fits < n) & (np.abs(fits - b) <= tol)]
            if near.size:
                starts[i] = int(near[np.argmin(np.abs(near - b))])  # first of equals: earlier
    ends = [*starts[1:], n]
    return [WorkUnit(probe.name, i, s, e)
            for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
