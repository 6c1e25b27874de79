"""A non-editable install: the wheel carries the recipes and the trainer configs, and both
load from an installed copy that cannot see the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from filmmine.recipe import load_recipe
from trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]

LOADER = """
import json, filmmine, trainer
from filmmine.recipe import PIPELINES_DIR, load_recipe
from trainer.config import CONFIG_DIR, load_config
print(json.dumps({
    "filmmine": filmmine.__file__, "trainer": trainer.__file__,
    "pipelines": str(PIPELINES_DIR), "configs": str(CONFIG_DIR),
    "default": load_recipe("default"), "preview": load_recipe("preview"),
    "tiny": load_config("tiny").to_dict(), "small": load_config("small").to_dict(),
}))
"""


def _build_wheel(tmp: Path) -> Path:
    # from a copy of the sources: an in-tree build would leave build/ (whose stale files a
    # later wheel picks up) and an egg-info in the checkout
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("filmmine", "trainer", "pipelines"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp / "dist")],
        cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp / "dist").glob("filmmine-*.whl")
    return wheel


def test_wheel_ships_recipes_and_configs_and_they_load_when_installed(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (REPO / "pipelines").glob("*.toml"))
    configs = sorted(p.name for p in (REPO / "trainer" / "configs").glob("*.toml"))
    assert "default.toml" in recipes and "tiny.toml" in configs
    assert {f"filmmine/pipelines/{n}" for n in recipes} <= names
    assert {f"trainer/configs/{n}" for n in configs} <= names
    modules = {p.relative_to(REPO).as_posix() for pkg in ("filmmine", "trainer")
               for p in (REPO / pkg).rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # a subpackage missing from pyproject

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S: no site-packages .pth files, so no editable-install finder pointing at a checkout;
    # the dependencies come from this interpreter's site-packages, after the installed copy
    deps = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    env = {"PYTHONPATH": ":".join([str(site), *sorted(deps)]), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-S", "-c", LOADER], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("filmmine", "trainer", "pipelines", "configs"):
        assert Path(got[key]).resolve().is_relative_to(site.resolve()), (key, got[key])
    assert got["default"] == load_recipe("default")
    assert got["preview"] == load_recipe("preview")
    assert got["tiny"] == load_config("tiny").to_dict()
    assert got["small"] == load_config("small").to_dict()
