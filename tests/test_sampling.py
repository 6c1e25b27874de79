"""filmmine.stages.sampling: the candidate grid plan and the reason each candidate is dropped."""

from __future__ import annotations

import pytest

from filmmine.recipe import load_recipe
from filmmine.stages.sampling import SamplingPlan, sampling_reason
from filmmine.stages.shots import ShotBoundaries

# grid 6, margin 6, min shot 24 (the default recipe at 24 fps), no cap
PLAN = SamplingPlan(grid_step=6, margin=6, min_shot=24, max_per_shot=0, lookahead=31)


def reason(frame: int, bounds: ShotBoundaries, plan: SamplingPlan = PLAN, *, start: int = 0,
           end: int = 1000, taken: int = 0) -> str | None:
    return sampling_reason(frame, bounds, plan, film_start=start, film_end=end,
                           taken_in_shot=taken)


def test_plan_from_default_recipe_at_24_fps() -> None:
    """4 samples/s -> every 6th frame; 0.25 s margin = 6; 1 s min shot = 24 frames."""
    plan = SamplingPlan.from_recipe(24.0, load_recipe())
    assert plan == SamplingPlan(grid_step=6, margin=6, min_shot=24, max_per_shot=0,
                                lookahead=24 + 1)
    assert SamplingPlan.from_recipe(24000 / 1001, load_recipe()) == plan


def test_plan_from_preview_recipe() -> None:
    plan = SamplingPlan.from_recipe(24.0, load_recipe("preview"))
    assert plan == SamplingPlan(grid_step=24, margin=6, min_shot=24, max_per_shot=4,
                                lookahead=25)
    # a slow film still gets a grid step of at least one frame
    assert SamplingPlan.from_recipe(2.0, load_recipe()).grid_step == 1


def test_accepted_in_the_middle_of_a_long_shot() -> None:
    b = ShotBoundaries(cuts=[48, 120])
    assert reason(84, b) is None
    assert reason(54, b) is None  # exactly margin frames after the cut
    assert reason(114, b) is None  # exactly margin frames before the next cut


@pytest.mark.parametrize("frame", [43, 47, 48, 49, 53, 115, 119])
def test_near_cut(frame: int) -> None:
    """Closer than the margin (6) to a cut on either side."""
    assert reason(frame, ShotBoundaries(cuts=[48, 120])) == "near_cut"


def test_transition_and_near_its_edges() -> None:
    b = ShotBoundaries(cuts=[], transitions=[(100, 112)])
    assert [reason(f, b) for f in (100, 105, 111)] == ["transition"] * 3
    assert reason(95, b) == "near_cut"  # 5 frames before the transition starts
    assert reason(112, b) == "near_cut"  # first frame after it
    assert reason(94, b) is None and reason(118, b) is None


def test_short_shot_between_cuts() -> None:
    """A 12-frame shot is shorter than min_shot (24) even where the margins are met."""
    b = ShotBoundaries(cuts=[48, 60, 200])
    assert reason(54, b) == "short_shot"
    b = ShotBoundaries(cuts=[48, 72, 200])  # exactly min_shot long
    assert reason(60, b) is None


def test_a_transition_end_starts_a_shot() -> None:
    """After a dissolve [100, 112) the shot runs 112..130 (18 frames): too short."""
    b = ShotBoundaries(cuts=[130], transitions=[(100, 112)])
    assert reason(120, b) == "short_shot"
    b = ShotBoundaries(cuts=[136], transitions=[(100, 112)])
    assert reason(124, b) is None


def test_film_edges_bound_the_shot() -> None:
    """No boundary at all: the shot is the whole film (or work unit) range."""
    b = ShotBoundaries()
    assert reason(10, b, end=20) == "short_shot"
    assert reason(10, b, end=24) is None
    assert reason(310, b, start=300, end=320) == "short_shot"


def test_shot_quota() -> None:
    plan = SamplingPlan(6, 6, 24, max_per_shot=2, lookahead=31)
    b = ShotBoundaries(cuts=[48, 200])
    assert reason(84, b, plan, taken=1) is None
    assert reason(84, b, plan, taken=2) == "shot_quota"
    assert reason(84, b, PLAN, taken=500) is None  # 0 = no cap


def test_reason_precedence() -> None:
    """transition before near_cut before short_shot before shot_quota."""
    plan = SamplingPlan(6, 6, 24, max_per_shot=1, lookahead=31)
    b = ShotBoundaries(cuts=[48, 60], transitions=[(60, 70)])
    assert reason(62, b, plan, taken=5) == "transition"
    assert reason(50, b, plan, taken=5) == "near_cut"
    assert reason(54, b, plan, taken=5) == "short_shot"
