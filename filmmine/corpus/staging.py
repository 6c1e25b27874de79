"""Staged work units: a unit is a frame range of one film; while its film is mined it leaves
its samples in a staging tar and its outcome in a JSON marker beside it, from which the film
is assembled."""

from __future__ import annotations

from dataclasses import dataclass
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
