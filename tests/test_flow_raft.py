"""filmmine.flow.raft: the RAFT backend loads a local state dict, or torchvision's published
weights through torchvision's download, and runs both directions.

No weights can be downloaded here: the tests build an untrained ``raft_small``, save its state
dict and load it through the backend (what a user does with real weights), or hand it to
torchvision in place of the download. Output values of
an untrained model are meaningless; shape, finiteness and the loading errors are checked.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from filmmine.flow import backend_options, get_backend
from filmmine.recipe import apply_overrides, load_recipe, parse_overrides
from filmmine.stages.disparity import compute_disparity

optical_flow = pytest.importorskip("torchvision.models.optical_flow")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(optical_flow.raft_small(weights=None).state_dict(), path)
    return path


def pair(h: int = 60, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return left, np.roll(left, -3, axis=1)


def test_loads_local_weights_and_runs_both_directions(weights: Path) -> None:
    be = get_backend("raft", device="cpu", raft_model="raft_small", raft_weights=str(weights),
                     raft_iters=2, preset="medium", sgm_paths=4)   # others' options ignored
    left, right = pair()                     # 60 x 90: padded to multiples of 8 inside
    flows = be.stereo([left, left], [right, right])
    assert flows.lr.shape == flows.rl.shape == (2, 2, 60, 90)
    assert torch.isfinite(flows.lr).all() and torch.isfinite(flows.rl).all()
    (f,) = be.flow([left], [right])
    assert f.shape == (60, 90, 2) and f.dtype == np.float32
    # the batched call gives the same flow as the single one
    assert np.allclose(f, flows.lr[0].permute(1, 2, 0).numpy(), atol=1e-4)
    res = compute_disparity([left], [right], be, load_recipe()["disparity"])[0]
    assert res.disparity.shape == (60, 90)


def test_mismatched_weights_give_one_line_error(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit raft_large") as e:
        get_backend("raft", raft_model="raft_large", raft_weights=str(weights))
    assert "\n" not in str(e.value)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot read RAFT weights") as e:
        get_backend("raft", raft_model="raft_small", raft_weights=str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="cannot read RAFT weights"):
        get_backend("raft", raft_model="raft_small", raft_weights=str(tmp_path / "none.pth"))


def test_needs_a_weights_file_and_a_known_model() -> None:
    with pytest.raises(ValueError, match="raft_weights"):
        get_backend("raft")
    with pytest.raises(ValueError, match="unknown RAFT model"):
        get_backend("raft", raft_model="raft_huge", raft_weights="x.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_a_gpu_is_a_clear_error(weights: Path) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_backend("raft", device="cuda", raft_model="raft_small", raft_weights=str(weights))


def test_torchvision_weights_come_through_torchvision_download(weights: Path, monkeypatch
                                                                ) -> None:
    """raft_weights = "torchvision": torchvision's own fetcher (the function its weight enums
    download with, patched here: no network) is asked for the published weights' URL, and the
    backend runs with what it returned."""
    from torchvision.models import _api

    state = torch.load(weights, map_location="cpu", weights_only=True)
    asked: list[tuple[str, dict]] = []

    def fetch(url: str, *args, **kwargs) -> dict:
        asked.append((url, kwargs))
        return state

    monkeypatch.setattr(_api, "load_state_dict_from_url", fetch)
    recipe = apply_overrides(load_recipe(), parse_overrides(
        ["disparity.raft_weights=torchvision", "disparity.raft_model=raft_small",
         "disparity.raft_iters=2"]))
    be = get_backend("raft", device="cpu", **backend_options(recipe["disparity"]))
    assert [url for url, _ in asked] == [optical_flow.Raft_Small_Weights.DEFAULT.url]
    assert asked[0][1].get("check_hash") is True  # torchvision verifies the published file
    for name, value in be.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    left, right = pair()
    flows = be.stereo([left], [right])
    assert flows.lr.shape == (1, 2, 60, 90) and torch.isfinite(flows.lr).all()
    res = compute_disparity([left], [right], be, recipe["disparity"])[0]
    assert res.disparity.shape == (60, 90)

    def offline(url: str, *args, **kwargs) -> dict:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="cannot fetch torchvision's RAFT weights") as e:
        get_backend("raft", raft_model="raft_large", raft_weights="torchvision")
    assert "\n" not in str(e.value) and "local state-dict file" in str(e.value)
    assert optical_flow.Raft_Large_Weights.DEFAULT.url in str(e.value)
