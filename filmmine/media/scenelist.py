"""Scene lists given with a film: its shots from an editor or an earlier PySceneDetect run.

A film whose cuts are known (a CSV that ``scenedetect list-scenes`` wrote, an EDL from an
editing system) is cut where the list says instead of where the shot detector finds cuts.
Pure parsing here: text -> the first frame of every shot after the first (0-based frame
indices, the corpus's ``frame_index``).

- **CSV** (PySceneDetect's ``list-scenes``): an optional first row of cut timecodes, then a
  header row naming ``Start Frame`` (1-based, as PySceneDetect writes it), one row per scene.
- **EDL** (CMX 3600): one event per line, ``NNN REEL TRACK TRANS [DUR] SRC_IN SRC_OUT REC_IN
  REC_OUT``, timecodes ``HH:MM:SS:FF`` (``;`` before the frames for drop-frame) at the film's
  rounded frame rate. Each event's source-in starts a shot; events start at the source
  timecode of frame 0, ``00:00:00:00`` unless ``start_tc`` says otherwise.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..errors import InputError

SIDECARS = ("{stem}-Scenes.csv", "{stem}.scenes.csv", "{stem}.edl")   # found beside a film
TIMECODE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})[:;](\d{2})$")


def find_sidecar(film: str | Path) -> Path | None:
    """The scene list beside a film file (PySceneDetect's default ``STEM-Scenes.csv``,
    ``STEM.scenes.csv`` or ``STEM.edl``), else None."""
    p = Path(film)
    for pattern in SIDECARS:
        q = p.with_name(pattern.format(stem=p.stem))
        if q.is_file():
            return q
    return None


def parse_csv(text: str) -> list[int]:
    """Cut frames of a PySceneDetect scene-list CSV."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    head = next((i for i, r in enumerate(rows) if "Start Frame" in [c.strip() for c in r]),
                None)
    if head is None:
        raise ValueError("no header row with a 'Start Frame' column (PySceneDetect's "
                         "list-scenes CSV)")
    col = [c.strip() for c in rows[head]].index("Start Frame")
    starts = []
    for r in rows[head + 1:]:
        try:
            starts.append(int(r[col]) - 1)
        except (IndexError, ValueError):
            raise ValueError(f"scene row {','.join(r)!r} has no Start Frame") from None
    return _cuts(starts)


def timecode_frames(tc: str, fps: float) -> int:
    """``HH:MM:SS:FF`` -> frames at the timecode's base (the rounded frame rate)."""
    m = TIMECODE.match(tc)
    if m is None:
        raise ValueError(f"{tc!r} is not a timecode HH:MM:SS:FF")
    base = max(1, round(fps))
    h, mi, s, f = (int(x) for x in m.groups())
    if f >= base:
        raise ValueError(f"timecode {tc} has frame {f} at {base} frames per second")
    return ((h * 60 + mi) * 60 + s) * base + f


def parse_edl(text: str, fps: float, start_tc: str = "00:00:00:00") -> list[int]:
    """Cut frames of a CMX 3600 EDL: every event's source-in after the first."""
    zero = timecode_frames(start_tc, fps)
    starts = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].isdigit() or len(parts) < 8:
            continue  # TITLE, FCM, comments (* FROM CLIP NAME ...), blank lines
        tcs = [p for p in parts if TIMECODE.match(p)]
        if len(tcs) != 4:
            raise ValueError(f"event line {line.strip()!r} does not hold four timecodes")
        starts.append(timecode_frames(tcs[0], fps) - zero)
    if not starts:
        raise ValueError("no events (lines 'NNN REEL V C SRC_IN SRC_OUT REC_IN REC_OUT')")
    if min(starts) < 0:
        raise ValueError(f"an event starts before the film's first frame ({start_tc})")
    return _cuts(starts)


def _cuts(starts: list[int]) -> list[int]:
    """Shot starts -> the cuts (a shot starting at frame 0 is no cut), sorted, unique."""
    return sorted({s for s in starts if s > 0})


def read_scene_list(path: str | Path, fps: float, n_frames: int) -> list[int]:
    """The cut frames a scene list gives for a film of ``n_frames`` frames at ``fps``;
    InputError naming the file and what is wrong in one line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig", errors="replace")
        cuts = parse_edl(text, fps) if p.suffix.lower() == ".edl" else parse_csv(text)
    except OSError as e:
        raise InputError(f"scene list {p}: {e.strerror or e}") from e
    except ValueError as e:
        raise InputError(f"scene list {p}: {e}") from e
    beyond = [c for c in cuts if c >= n_frames]
    if beyond:
        raise InputError(f"scene list {p}: a shot starts at frame {beyond[0]}, after the "
                         f"film's last ({n_frames - 1}): a list of another film?")
    return cuts
