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
    raise RecipeError(f"recipe {str(name_or_path)!r} not found (looked in {PIPELINES_DIR})")


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
    """Resolved recipe (base chain merged) as a plain dict."""
    path = _resolve_path(name_or_path)
    data = _read(path)
    default = _read(_resolve_path("default"))
    base_name = data.pop("base", None)
    if base_name is None:
        return _merge(default, data, "") if path != _resolve_path("default") else default
    base = load_recipe(_resolve_path(base_name, path.parent))
    return _merge(base, data, "")


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
