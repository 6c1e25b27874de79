"""Recipes: TOML data with every threshold, inheriting from a base recipe.

A recipe file may set ``base = "default"`` (a name in ``pipelines/`` or a path relative to the
file); its tables are merged key by key over the base. Every key must exist in
``pipelines/default.toml``, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import RecipeError


def _pipelines_dir() -> Path:
    """Where the named recipes are: an installed wheel carries them as package data
    ``filmmine/pipelines/*.toml`` (pyproject.toml maps the repository's ``pipelines/`` to the
    package ``filmmine.pipelines``); a source checkout or an editable install reads the
    repository's ``pipelines/`` itself."""
    installed = importlib.resources.files(__package__) / "pipelines"
    if isinstance(installed, Path) and (installed / "default.toml").is_file():
        return installed
    return Path(__file__).resolve().parent.parent / "pipelines"


PIPELINES_DIR = _pipelines_dir()


def _resolve_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    p = Path(name_or_path)
    candidates = []
    if p.suffix == ".toml":
        candidates.append(p if p.is_absolute() or relative_to is None else relative_to / p)
        candidates.append(p)
    candidates.append(PIPELINES_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml"))
    for c in candidates:
        if c.is_file():
            return c
    names = ", ".join(sorted(f.stem for f in PIPELINES_DIR.glob("*.toml")))
    raise RecipeError(f"recipe {str(name_or_path)!r} not found: give one of {names} "
                      f"({PIPELINES_DIR}) or a .toml file")


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            raise RecipeError(f"unknown recipe key {where}{key}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise RecipeError(f"recipe key {where}{key} must be a table")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from e


def load_recipe(name_or_path: str | Path = "default") -> dict[str, Any]:
    """Resolved recipe (base chain merged) as a plain dict, validated (``validate_recipe``)."""
    return validate_recipe(_load(name_or_path))


def _load(name_or_path: str | Path) -> dict[str, Any]:
    path = _resolve_path(name_or_path)
    data = _read(path)
    default = _read(_resolve_path("default"))
    base_name = data.pop("base", None)
    if base_name is None:
        return _merge(default, data, "") if path != _resolve_path("default") else default
    base = _load(_resolve_path(base_name, path.parent))
    return _merge(base, data, "")


# value ranges checked before anything starts (types come from pipelines/default.toml):
# (table, key) -> (lowest, highest, whether the lowest itself is allowed)
RANGES: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("decode", "lowres_width"): (16, float("inf"), True),
    ("decode", "chunk_s"): (0, float("inf"), True),
    ("decode", "min_chunk_s"): (0, float("inf"), True),
    ("decode", "timeout_s"): (0, float("inf"), False),
    ("decode", "max_duration_s"): (0, float("inf"), True),
    ("shots", "min_shot_s"): (0, float("inf"), True),
    ("shots", "dissolve_window_s"): (0, float("inf"), False),
    ("sampling", "fps"): (0, float("inf"), False),
    ("sampling", "margin_s"): (0, float("inf"), True),
    ("sampling", "max_per_shot"): (0, float("inf"), True),
    ("crop", "side_frac"): (0, 0.5, True),
    ("crop", "min_content_frac"): (0, 1, True),
    ("disparity", "work_width"): (0, float("inf"), True),
    ("disparity", "lr_max_px"): (0, float("inf"), False),
    ("disparity", "vertical_max_px"): (0, float("inf"), False),
    ("disparity", "max_vertical_frac"): (0, 1, True),
    ("disparity", "min_valid_frac"): (0, 1, True),
    ("disparity", "min_consistency"): (0, 1, True),
    ("disparity", "max_rotation_deg"): (0, 90, True),
    ("disparity", "min_matches"): (4, float("inf"), True),
    ("disparity", "batch"): (0, float("inf"), True),
    ("spherical", "view_size"): (16, 8192, True),
    ("spherical", "fov_deg"): (0, 150, False),
    ("spherical", "yaw_step_deg"): (0, 360, False),
    ("spherical", "pitch_step_deg"): (0, 90, False),
    ("spherical", "max_pitch_deg"): (0, 80, True),
    ("spherical", "fisheye_fov_deg"): (0, 360, False),
    ("spherical", "rectify_width"): (64, float("inf"), True),
    ("output", "max_width"): (16, float("inf"), True),
    ("output", "jpeg_quality"): (1, 100, True),
    ("output", "disp_step_px"): (0, float("inf"), False),
    ("output", "shard_max_samples"): (1, float("inf"), True),
    ("output", "shard_max_bytes"): (1, float("inf"), True),
}
# text values with a fixed set of choices (the backends' own options are checked when the
# backend is built, also before anything starts)
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("disparity", "verdict"): ("evidence", "paper"),
    ("disparity", "post_filter"): ("none", "guided"),
    ("disparity", "sgbm_cost"): ("grey", "rank", "auto"),
    ("spherical", "view_rows"): ("auto", "pinhole", "ods"),
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _fits(value: Any, like: Any) -> bool:
    """Whether ``value`` has the type of the default's ``like`` (a whole number may stand
    for a number, never a boolean for either)."""
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float))
    if isinstance(like, list):
        return isinstance(value, list) and len(value) == len(like) and \
            all(_fits(v, w) for v, w in zip(value, like, strict=True))
    return isinstance(value, type(like))


def validate_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` when every key has the default's type, every ranged key its range and
    every key with choices one of them; else RecipeError naming the key (before any work
    starts, not as a TypeError once the cluster runs). Returns it."""
    default = _read(_resolve_path("default"))
    for table, keys in default.items():
        if not isinstance(keys, dict):
            if not _fits(recipe.get(table), keys):
                raise RecipeError(f"recipe key {table} must be {_kind(keys)}, got "
                                  f"{recipe.get(table)!r}")
            continue
        for key, like in keys.items():
            value = recipe[table][key]
            where = f"{table}.{key}"
            if not _fits(value, like):
                raise RecipeError(f"recipe key {where} must be {_kind(like)}"
                                  + (f" of {len(like)}" if isinstance(like, list) else "")
                                  + f", got {value!r}")
            if isinstance(value, float) and value != value:
                raise RecipeError(f"recipe key {where} must be a number, got nan")
            lo, hi, closed = RANGES.get((table, key), (None, None, True))
            if lo is not None and not ((value >= lo if closed else value > lo) and value <= hi):
                low = f"{'>=' if closed else '>'} {lo:g}"
                span = low if hi == float("inf") else f"{low} and <= {hi:g}"
                raise RecipeError(f"recipe key {where} must be {span}, got {value!r}")
            choices = CHOICES.get((table, key))
            if choices and value not in choices:
                raise RecipeError(f"recipe key {where} must be one of {', '.join(choices)}, "
                                  f"got {value!r}")
    return recipe


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``TABLE.KEY=VALUE`` strings (``--set``) as {table: {key: value}}, each value read as
    TOML (``4``, ``0.5``, ``true``, ``[1, 2]``, ``"dis"``), else kept as text."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise RecipeError(f"--set wants TABLE.KEY=VALUE (e.g. sampling.fps=2), got {item!r}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(table, {})[name] = parsed
    return out


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, dict[str, Any]]
                    ) -> dict[str, Any]:
    """A copy of ``recipe`` with ``overrides`` set, validated; an unknown key is an error."""
    out = copy.deepcopy(recipe)
    for table, kv in overrides.items():
        for key, value in kv.items():
            if not isinstance(out.get(table), dict) or key not in out[table]:
                raise RecipeError(f"unknown recipe key {table}.{key}")
            out[table][key] = value
    return validate_recipe(out)


def recipe_digest(recipe: dict[str, Any]) -> str:
    """Stable short hash of a resolved recipe (what changes it changes the corpus)."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_toml(recipe: dict[str, Any]) -> str:
    """Serialise a resolved recipe (flat scalars, lists and one level of tables) as TOML."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # TOML takes any Unicode, not \ud83c pairs
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        raise RecipeError(f"cannot serialise {v!r}")

    lines = [f"{k} = {fmt(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for k, v in recipe.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {fmt(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"
