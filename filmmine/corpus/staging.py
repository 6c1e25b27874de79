"""Staged work units: a unit is a frame range of one film; while its film is mined it leaves
its samples in a staging tar and its outcome in a JSON marker beside it, from which the film
is assembled."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WorkUnit:
    film: str
    index: int
    start: int   # first frame owned by the unit
    end: int     # exclusive

    @property
    def stem(self) -> str:
        return f"unit-{self.index:05d}"


def unit_paths(work_dir: Path, unit: WorkUnit) -> tuple[Path, Path]:
    return work_dir / f"{unit.stem}.tar", work_dir / f"{unit.stem}.json"


@dataclass
class UnitMarker:
    """A staged unit's outcome, its ``unit-NNNNN.json``: a row per candidate frame (no shot
    index yet: shots are counted over the whole film), the shot boundaries it found, how far
    it decoded, the samples it staged, and what it was computed from (``made_from``: a
    resumed run reuses the unit only when that is the same)."""

    unit: WorkUnit
    frames: list[dict] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)
    transitions: list[list[int]] = field(default_factory=list)
    decoded: int = 0
    stopped_early: str | None = None
    stop_reason: str | None = None       # why it stopped early (``DecodeStats.stop_reason``)
    samples: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (profiling)
    made_from: str | None = None

    def to_json(self) -> dict:
        out = {"unit": self.unit.__dict__, "frames": self.frames, "cuts": self.cuts,
               "transitions": self.transitions, "decoded": self.decoded,
               "stopped_early": self.stopped_early, "stop_reason": self.stop_reason,
               "samples": self.samples,
               "timings": {k: round(v, 4) for k, v in sorted(self.timings.items())}}
        if self.made_from is not None:
            out["made_from"] = self.made_from
        return out

    @classmethod
    def from_json(cls, obj: dict) -> UnitMarker:
        return cls(**{**obj, "unit": WorkUnit(**obj["unit"])})

    @classmethod
    def read(cls, path: Path) -> UnitMarker:
        return cls.from_json(json.loads(path.read_text()))
