"""What a run tells its user and machines: the per-film summary and exit code, and the
optional JSON-lines event log."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..media.probe import DOUBT

SUMMARY_OK_LINES = 20   # inputs up to which the end-of-run summary lists every ok film


class InputState(StrEnum):
    PENDING = "pending"   # not finished yet (a run that stopped early leaves it so)
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"   # not a film filmmine mines (mono, a projection it cannot reproject)


@dataclass
class InputStatus:
    """What became of one input: a film (``film`` its id) or a source that gave none."""

    source: str
    film: str | None
    paths: list[str]
    status: InputState = InputState.PENDING
    reason: str | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "film": self.film, "paths": list(self.paths),
                "status": str(self.status), "reason": self.reason}


@dataclass
class RunReport:
    out: Path
    inputs: list[InputStatus] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)
    remined: dict[str, str] = field(default_factory=dict)  # film -> why it was mined again

    @property
    def failed(self) -> list[InputStatus]:
        return [i for i in self.inputs if i.status == InputState.FAILED]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self, listed_ok: int = SUMMARY_OK_LINES) -> str:
        """A line per input that failed, was skipped or was mined with a note, and per plain
        ``ok`` film too when there are at most ``listed_ok`` inputs (a library of thousands
        gets one line for those: the manifest and `filmmine inspect` have them); then the
        totals."""
        lines = []
        notes = {i.film: " - ".join(n for n in (self.layout_note(i.film),
                                                       self.no_samples_note(i.film)) if n)
                 for i in self.inputs}
        quiet_ok = [i for i in self.inputs if i.status == "ok" and not i.reason
                    and not notes[i.film] and i.film not in self.remined]
        hide_ok = len(self.inputs) > listed_ok
        for i in self.inputs:
            if hide_ok and i in quiet_ok:
                continue
            extra = ""
            rec = self.records.get(i.film or "")
            if rec:
                c = rec["counts"]
                extra = (f"{c['accepted']} samples from {c['candidates']} candidates, "
                         f"{c['shots']} shots")
            again = self.remined.get(i.film or "")
            again = again and f"mined again ({again})"
            text = " - ".join(t for t in (extra, again, i.reason, notes[i.film])
                              if t)
            lines.append(f"  {i.status:7s} {i.source}: {text}")
        if hide_ok and quiet_ok:
            lines.append(f"  {'ok':7s} {len(quiet_ok)} film(s) without a note: per film in "
                         f"{self.out / 'manifest.json'} and `filmmine inspect {self.out}`")
        if not self.records and not self.out.exists():
            lines.append(f"nothing to mine: {self.out} not written")
            return "\n".join(lines)
        n = sum(r["counts"]["accepted"] for r in self.records.values())
        shards = sum(len(r["shards"]) for r in self.records.values())
        lines.append(f"{len(self.records)} film(s) mined, {n} samples in {shards} shard(s), "
                     f"{len(self.failed)} failed -> {self.out}")
        return "\n".join(lines)


    def layout_note(self, film: str | None) -> str | None:
        """For a film mined in a layout its own frames disagree with: why, else None."""
        why = (self.records.get(film or "") or {}).get("probe", {}).get("layout_reason") or ""
        return f"layout {why.replace(DOUBT, ', but ', 1)}" if DOUBT in why else None

    def no_samples_note(self, film: str | None) -> str | None:
        """For a film mined into no sample: its top rejection reasons (what to look at, e.g.
        a wrong --layout gives "inconsistent"), else None."""
        rec = self.records.get(film or "")
        if not rec or rec["counts"]["accepted"] or not rec.get("rejections"):
            return None
        top = sorted(rec["rejections"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return "no samples: " + ", ".join(f"{k} {v}" for k, v in top)


class EventLog:
    """Optional JSON-lines log of the run, for machines (one object per line, with ``t``)."""

    def __init__(self, path: str | Path | None) -> None:
        self._f = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        if self._f is None:
            return
        with self._lock:
            self._f.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields},
                                     sort_keys=True, default=str) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
