"""filmmine.recipe: inheritance, strict keys, TOML round trip and the recipe digest."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from filmmine.errors import RecipeError
from filmmine.recipe import PIPELINES_DIR, dump_toml, load_recipe, recipe_digest


@pytest.fixture(scope="module")
def default() -> dict:
    return load_recipe()


def test_default_is_the_default_file(default: dict) -> None:
    """load_recipe() is exactly pipelines/default.toml."""
    raw = tomllib.loads((PIPELINES_DIR / "default.toml").read_text())
    assert default == raw
    assert default["name"] == "default"
    assert load_recipe("default") == load_recipe(PIPELINES_DIR / "default.toml") == default


def test_preview_inherits_default_and_overrides(default: dict) -> None:
    """preview = default with exactly the keys preview.toml sets replaced."""
    preview = load_recipe("preview")
    over = tomllib.loads((PIPELINES_DIR / "preview.toml").read_text())
    over.pop("base")
    assert preview.keys() == default.keys()
    for table, value in default.items():
        if not isinstance(value, dict):
            assert preview[table] == over.get(table, value)
            continue
        assert preview[table].keys() == value.keys(), table
        for key, v in value.items():
            assert preview[table][key] == over.get(table, {}).get(key, v), (table, key)
    assert preview["name"] == "preview"
    assert preview["sampling"]["fps"] == 1.0 and preview["output"]["max_width"] == 640
    assert preview["shots"] == default["shots"]
    assert preview["sampling"]["margin_s"] == default["sampling"]["margin_s"]


def test_chain_of_bases(tmp_path: Path, default: dict) -> None:
    """A recipe based on preview gets preview's overrides, then its own."""
    p = tmp_path / "mine.toml"
    p.write_text('base = "preview"\nname = "mine"\n[sampling]\nfps = 2.0\n')
    r = load_recipe(p)
    assert r["name"] == "mine"
    assert r["sampling"] == {"fps": 2.0, "margin_s": 0.25, "max_per_shot": 4}
    assert r["output"]["max_width"] == 640
    assert r["crop"] == default["crop"]


@pytest.mark.parametrize("text", [
    'base = "default"\nbogus = 1\n',
    'base = "default"\n[shots]\ncontent_treshold = 20.0\n',
    'base = "default"\n[nosuchtable]\nx = 1\n',
    '[decode]\nlowres_widht = 10\n',  # no base: still checked against default
])
def test_unknown_key_raises(tmp_path: Path, text: str) -> None:
    p = tmp_path / "typo.toml"
    p.write_text(text)
    with pytest.raises(RecipeError, match="unknown recipe key"):
        load_recipe(p)


def test_scalar_for_table_and_bad_files_raise(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('base = "default"\nshots = 3\n')
    with pytest.raises(RecipeError, match="must be a table"):
        load_recipe(p)
    p.write_text("this is = = not toml")
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe")


def test_gpu_recipe_is_the_default_with_the_torch_backend(default: dict) -> None:
    """--recipe gpu: the default's labels and checks, with a backend that runs on CUDA (the
    default's dis_sgbm refuses cuda with a hint naming this recipe)."""
    from filmmine.flow import backend_options, get_backend

    gpu = load_recipe("gpu")
    assert gpu["disparity"]["backend"] == "census_sgm"
    assert {k: v for k, v in gpu["disparity"].items() if k != "backend"} == \
        {k: v for k, v in default["disparity"].items() if k != "backend"}
    assert get_backend("census_sgm", device="cpu", **backend_options(gpu["disparity"])).name \
        == "census_sgm"
    with pytest.raises(ValueError, match="--recipe gpu"):
        get_backend(default["disparity"]["backend"], device="cuda")


@pytest.mark.parametrize("name", ["default", "preview", "gpu"])
def test_dump_toml_round_trips(name: str) -> None:
    """tomllib reads back exactly the resolved recipe (types included)."""
    r = load_recipe(name)
    back = tomllib.loads(dump_toml(r))
    assert back == r
    assert type(back["sampling"]["max_per_shot"]) is int
    assert type(back["sampling"]["fps"]) is float


def test_dump_toml_round_trips_awkward_scalars(default: dict) -> None:
    r = copy.deepcopy(default)
    r["name"] = 'quote " back\\slash tab\t é'
    r["crop"]["side_frac"] = 1e-7
    r["output"]["shard_max_bytes"] = 10**15
    r["disparity"]["range_percentiles"] = [0.5, 99.5]
    assert tomllib.loads(dump_toml(r)) == r


def test_dump_toml_round_trips_non_bmp_text(default: dict) -> None:
    r = copy.deepcopy(default)
    r["name"] = "film \N{CLAPPER BOARD}"
    assert tomllib.loads(dump_toml(r)) == r


def test_dumped_recipe_loads_as_a_recipe(tmp_path: Path) -> None:
    """What the runner writes into a corpus (dump_toml) reads back with load_recipe."""
    r = load_recipe("preview")
    p = tmp_path / "recipe.toml"
    p.write_text(dump_toml(r))
    assert load_recipe(p) == r


def test_recipe_digest_stable_and_sensitive(default: dict) -> None:
    d = recipe_digest(default)
    assert len(d) == 16 and int(d, 16) >= 0
    assert recipe_digest(load_recipe()) == d
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v)
                 for k, v in reversed(list(default.items()))}
    assert recipe_digest(reordered) == d
    assert recipe_digest(load_recipe("preview")) != d
    changed = copy.deepcopy(default)
    changed["filters"]["dark_max_luma"] += 1.0
    assert recipe_digest(changed) != d


@pytest.mark.parametrize(("text", "says"), [
    ('[sampling]\nfps = "two"\n', "recipe key sampling.fps must be a number, got 'two'"),
    ("[sampling]\nfps = 0\n", "recipe key sampling.fps must be > 0, got 0"),
    ("[sampling]\nmax_per_shot = 2.5\n", "sampling.max_per_shot must be a whole number"),
    ("[output]\nconfidence = 1\n", "output.confidence must be true or false, got 1"),
    ("[output]\njpeg_quality = 101\n", "output.jpeg_quality must be >= 1 and <= 100"),
    ("[disparity]\nmin_valid_frac = 1.5\n", "disparity.min_valid_frac must be >= 0 and <= 1"),
    ("[disparity]\nrange_percentiles = [1.0]\n", "must be a list of 2"),
    ('[disparity]\nverdict = "loose"\n', "must be one of evidence, paper, got 'loose'"),
    ("[decode]\nchunk_s = nan\n", "decode.chunk_s must be a number, got nan"),
])
def test_values_are_checked_before_anything_starts(tmp_path: Path, text: str,
                                                  says: str) -> None:
    """A recipe's values have the default's types, their ranges and choices; the error names
    the key (a text fps reached the cluster and failed there with a TypeError)."""
    p = tmp_path / "r.toml"
    p.write_text('base = "default"\n' + text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert says in str(e.value)


def test_a_whole_number_stands_for_a_number(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text('base = "default"\n[sampling]\nfps = 2\n')
    assert load_recipe(p)["sampling"]["fps"] == 2


def test_extract_checks_the_recipe_before_it_starts(tmp_path: Path) -> None:
    """`filmmine extract` with a bad recipe: exit 2, one line naming the key, nothing written."""
    import subprocess
    import sys

    p = tmp_path / "r.toml"
    p.write_text('base = "default"\n[sampling]\nfps = "two"\n')
    done = subprocess.run([sys.executable, "-m", "filmmine.cli", "extract", str(tmp_path),
                           "--out", str(tmp_path / "out"), "--recipe", str(p)],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "sampling.fps must be a number, got 'two'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
