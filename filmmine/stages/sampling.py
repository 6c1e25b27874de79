"""Sampling stage: which candidate frames (a fixed grid) become samples.

Candidates are the frames with ``index % grid_step == 0``, ``grid_step = round(fps / rate)``
(the decoder delivers exactly those at full resolution). A candidate is dropped, with a
reason, when it lies in a transition, too close to a cut, in a too-short shot, or past the
per-shot cap. Pure functions of the shot boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shots import ShotBoundaries


@dataclass(frozen=True)
class SamplingPlan:
    grid_step: int       # frames between candidates
    margin: int          # frames kept clear of cuts and transitions
    min_shot: int        # frames; shorter shots give nothing
    max_per_shot: int    # 0 = no cap
    lookahead: int       # frames of boundary knowledge needed after a candidate to decide it

    @classmethod
    def from_recipe(cls, fps: float, recipe: dict) -> SamplingPlan:
        s, sh = recipe["sampling"], recipe["shots"]
        step = max(1, round(fps / s["fps"]))
        margin = max(0, round(s["margin_s"] * fps))
        min_shot = max(1, round(sh["min_shot_s"] * fps))
        return cls(step, margin, min_shot, int(s["max_per_shot"]), max(margin, min_shot) + 1)


def sampling_reason(frame: int, bounds: ShotBoundaries, plan: SamplingPlan, *,
                    film_start: int, film_end: int, taken_in_shot: int) -> str | None:
    """None when ``frame`` is sampled, else the reason. ``film_end`` is exclusive.

    Uses the boundaries known so far: call it once they are final up to
    ``frame + plan.lookahead`` (or the film ended).
    """
    if bounds.in_transition(frame):
        return "transition"
    if bounds.distance_to_boundary(frame) < plan.margin:
        return "near_cut"
    start = max(bounds.shot_begin(frame, film_start), film_start)
    nxt = bounds.next_boundary(frame)
    end = film_end if nxt is None else min(nxt, film_end)
    if end - start < plan.min_shot:
        return "short_shot"
    if plan.max_per_shot and taken_in_shot >= plan.max_per_shot:
        return "shot_quota"
    return None
