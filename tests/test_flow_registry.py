"""The flow registry (filmmine.flow.registry): backends by name, options from one recipe
table, torch-heavy backends imported only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from filmmine.flow import BACKENDS, TORCH_BACKENDS, backend_options, get_backend, registry
from filmmine.recipe import load_recipe


@pytest.fixture
def cfg() -> dict:
    return load_recipe()["disparity"]


def test_registry_names_and_unknown_backend() -> None:
    assert {"dis", "sgbm", "dis_sgbm", "census_sgm", "raft"} <= set(BACKENDS)
    with pytest.raises(ValueError, match="unknown flow backend"):
        get_backend("pwcnet")


def test_every_backend_accepts_the_whole_recipe_table(cfg) -> None:
    """One [disparity] table configures any backend: options of the others are ignored."""
    opts = backend_options(cfg)
    for name in ("dis", "sgbm", "dis_sgbm", "census_sgm"):
        assert get_backend(name, device="cpu", **opts).name == name
    # the pipeline's historical DIS options still map to the same keywords
    assert {"preset", "finest_scale", "patch_size", "patch_stride", "gd_iterations",
            "vr_iterations"} <= set(opts)


def test_torch_backends_are_registered_and_imported_only_when_built() -> None:
    """Extraction with an OpenCV backend never imports torch (hundreds of MiB a worker);
    building census_sgm does."""
    assert set(BACKENDS) >= TORCH_BACKENDS
    code = ("import sys; from filmmine.flow import get_backend; get_backend('dis_sgbm'); "
            "print('torch' in sys.modules); get_backend('census_sgm'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "True"]


def test_a_backend_module_that_cannot_be_imported_is_one_line(monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "gone", registry._lazy("no_such_module", "Nope"))
    with pytest.raises(ValueError, match=r"^flow backend module no_such_module cannot be "
                                          r"imported: No module named"):
        get_backend("gone")


def test_options_come_from_the_recipe_keys_they_are_named_for() -> None:
    opts = backend_options({"dis_patch_size": 12, "sgbm_block_size": 5, "raft_iters": 4,
                            "max_disparity_frac": 0.2, "vertical_max_px": 1.5})
    assert opts == {"patch_size": 12, "sgbm_block_size": 5, "raft_iters": 4,
                    "max_disparity_frac": 0.2}
