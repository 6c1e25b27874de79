"""Resolve what the user named (files, directories, library manifests) into films."""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

from .scenelist import SIDECARS, find_sidecar

VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".m2ts", ".mts", ".ts", ".webm", ".m4v", ".mpg",
              ".mpeg", ".wmv", ".flv", ".3d", ".y4m"}
LIBRARY_FILE = "library.json"
LIBRARY_FORMAT = "filmmine-library/1"


@dataclass(frozen=True)
class FilmInput:
    name: str                  # film id: used in shard names and sample keys (no dots)
    paths: tuple[str, ...]     # one packed file, or (left, right)
    layout: str                # "auto" or a layout
    layout_from: str           # where the layout came from, for the report
    source: str                # what the user named, for the report
    scenes: str | None = None  # a scene list giving its shots (filmmine.media.scenelist)
    projection: str = "auto"   # "auto" (the container says) or given (--projection)


@dataclass(frozen=True)
class InputIssue:
    source: str
    status: str                # "failed" | "skipped"
    reason: str


def slug(text: str) -> str:
    """A film id: ASCII letters, digits, '-' and '_' only (keys must have no dots)."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    t = re.sub(r"[^A-Za-z0-9_-]+", "_", t).strip("_")
    return t or "film"


TEXT_KEYS = ("name", "path", "left", "right", "scenes", "layout", "projection")


def _from_manifest(path: Path, layout: str, projection: str = "auto"
                   ) -> tuple[list[FilmInput], list[InputIssue]]:
    try:
        data = json.loads(path.read_text())
        films = data["films"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [], [InputIssue(str(path), "failed", f"unreadable library manifest: {e}")]
    if not isinstance(films, list):
        return [], [InputIssue(str(path), "failed", "unreadable library manifest: 'films' is "
                                                    f"not a list but {type(films).__name__}")]
    out, issues = [], []
    for i, f in enumerate(films):
        name = f.get("name", i) if isinstance(f, dict) else i
        src = f"{path}#{name if isinstance(name, str | int) else i}"
        if not isinstance(f, dict):
            issues.append(InputIssue(src, "failed", "library entry is not an object"))
            continue
        # every value is a path or a name: anything else would fail later, far from here
        wrong = next((k for k in TEXT_KEYS if k in f and not isinstance(f[k], str)), None)
        if wrong is not None:
            issues.append(InputIssue(src, "failed", f"library entry's {wrong!r} is not a "
                                                    f"string but {type(f[wrong]).__name__}"))
            continue
        lay = f.get("layout", "auto")
        if "left" in f or "right" in f:
            if "left" not in f or "right" not in f:
                issues.append(InputIssue(src, "failed", "separate views need both left and right"))
                continue
            paths = (str(path.parent / f["left"]), str(path.parent / f["right"]))
            lay = "separate"
        elif "path" in f:
            paths = (str(path.parent / f["path"]),)
        else:
            issues.append(InputIssue(src, "failed", "library entry names no path"))
            continue
        if layout != "auto" and lay == "auto":
            lay, lay_from = layout, "--layout"
        else:
            lay_from = "library manifest"
        name = f.get("name") or Path(paths[0]).stem
        scenes = str(path.parent / f["scenes"]) if f.get("scenes") else find_sidecar(paths[0])
        out.append(FilmInput(slug(name), paths, lay, lay_from, src,
                             str(scenes) if scenes else None,
                             str(f.get("projection") or projection)))
    return out, issues


def path_tag(paths: tuple[str, ...]) -> str:
    """8 hex digits of a film's files: the suffix that tells apart films of one name."""
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:8]


def resolve_inputs(inputs: list[str], layout: str = "auto",
                   known: dict[tuple[str, ...], str] | None = None, projection: str = "auto"
                   ) -> tuple[list[FilmInput], list[InputIssue]]:
    """Films to mine and the inputs that cannot be (each with a one-line reason).

    ``known``: the films already in the corpus (their files -> their id), which keep their
    ids. A film's id is its name (file stem, or the library manifest's) when no other film
    of the corpus or of the command has it; of several films wanting one name, the first by
    path gets it and the others ``NAME-TAG`` (``path_tag`` of their files), so that an id
    does not depend on what else the command names or in which order."""
    films: list[FilmInput] = []
    issues: list[InputIssue] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            lib = p / LIBRARY_FILE
            if lib.is_file():
                f, i = _from_manifest(lib, layout, projection)
                films += f
                issues += i
                continue
            found = 0
            files = sorted(x for x in p.rglob("*") if x.is_file()
                           and not any(part.startswith(".") for part in x.relative_to(p).parts))
            # scene lists beside the videos are theirs, not inputs to report as skipped
            lists = {q.with_name(pat.format(stem=q.stem)) for q in files
                     if q.suffix.lower() in VIDEO_EXTS for pat in SIDECARS}
            for q in files:
                if q.suffix.lower() in VIDEO_EXTS:
                    name = slug(str(q.relative_to(p).with_suffix("")))
                    scenes = find_sidecar(q)
                    films.append(FilmInput(name, (str(q),), layout, "--layout", str(q),
                                           str(scenes) if scenes else None, projection))
                    found += 1
                elif q in lists:
                    continue
                else:
                    issues.append(InputIssue(str(q), "skipped",
                                             f"not a video file ({q.suffix or 'no extension'})"))
            if not found:   # an empty directory, or the wrong one: not a library
                issues.append(InputIssue(str(p), "failed", f"no videos found in {p}"))
        elif p.suffix.lower() == ".json" and p.is_file():
            f, i = _from_manifest(p, layout, projection)
            films += f
            issues += i
        elif p.exists() or p.is_symlink():
            scenes = find_sidecar(p)
            films.append(FilmInput(slug(p.stem), (str(p),), layout, "--layout", str(p),
                                   str(scenes) if scenes else None, projection))
        else:
            issues.append(InputIssue(str(p), "failed", "no such file or directory"))
    # absolute paths: records compare them on resume, whatever the working directory
    films = [replace(f, paths=tuple(os.path.abspath(p) for p in f.paths),
                     scenes=os.path.abspath(f.scenes) if f.scenes else None) for f in films]
    seen: set[tuple[str, ...]] = set()
    films = [f for f in films if not (f.paths in seen or seen.add(f.paths))]  # named twice
    known = known or {}
    ids: dict[int, str] = {i: known[f.paths] for i, f in enumerate(films) if f.paths in known}
    used = set(known.values())
    rest = sorted((i for i in range(len(films)) if i not in ids), key=lambda i: films[i].paths)
    for i in rest:                       # a name nobody holds: the first by path takes it
        if films[i].name not in used:
            ids[i] = films[i].name
            used.add(ids[i])
    for i in rest:
        if i not in ids:
            base = f"{films[i].name}-{path_tag(films[i].paths)}"
            name, n = base, 2
            while name in used:          # a film named so already: never in practice
                name, n = f"{base}-{n}", n + 1
            ids[i] = name
            used.add(name)
    return [replace(f, name=ids[i]) for i, f in enumerate(films)], issues
