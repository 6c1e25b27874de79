"""RAFT (Teed & Deng 2020, torchvision ``raft_large`` / ``raft_small``) as a flow backend.

``raft_weights`` in the recipe says where the weights come from:

- a local state-dict file (offline), e.g. one saved from
  ``torchvision.models.optical_flow.Raft_Large_Weights.DEFAULT`` on a machine with internet
  access (``torch.save(model.state_dict(), path)``);
- ``"torchvision"``: torchvision's published weights for ``raft_model``
  (``Raft_Large_Weights.DEFAULT`` / ``Raft_Small_Weights.DEFAULT``), fetched by torchvision's
  own download into torch's cache (``$TORCH_HOME/hub/checkpoints``, default
  ``~/.cache/torch``) on first use and read from there afterwards. A local file named
  ``torchvision`` is given as ``./torchvision``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .base import FlowBackend, StereoFlows, check_device

PUBLISHED = "torchvision"  # raft_weights value: torchvision's published weights
PUBLISHED_WEIGHTS = {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}


def _published_model(optical_flow: Any, raft_model: str) -> torch.nn.Module:
    """``raft_model`` with torchvision's published weights, through torchvision's download and
    cache; ValueError in one line when they cannot be had (offline, a damaged download)."""
    weights = getattr(optical_flow, PUBLISHED_WEIGHTS[raft_model]).DEFAULT
    try:
        return getattr(optical_flow, raft_model)(weights=weights, progress=False)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        # URLError is an OSError; a hash mismatch or a truncated file a RuntimeError
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot fetch torchvision's RAFT weights {weights} for {raft_model} "
                         f"({weights.url}): {why}; offline, set disparity.raft_weights to a "
                         "local state-dict file") from e


class RaftFlow(FlowBackend):
    """Learned optical flow; both directions of a batch run as one forward pass."""

    name = "raft"
    MODELS: ClassVar[tuple[str, ...]] = ("raft_large", "raft_small")

    def __init__(self, device: str = "cpu", raft_model: str = "raft_large",
                 raft_weights: str = "", raft_iters: int = 12, half_precision: bool = True,
                 **_other: Any) -> None:
        from torchvision.models import optical_flow

        if raft_model not in self.MODELS:
            raise ValueError(f"unknown RAFT model {raft_model!r}; choose from {self.MODELS}")
        if not raft_weights:
            raise ValueError("the raft backend needs weights: set disparity.raft_weights in "
                             f"the recipe to a local state-dict file, or to {PUBLISHED!r} for "
                             "torchvision's published weights (downloaded once, then cached)")
        if raft_iters < 1:
            raise ValueError(f"raft_iters must be >= 1, got {raft_iters}")
        self._device = check_device(self.name, device)
        self.device = str(self._device)
        self.iters = raft_iters
        if raft_weights == PUBLISHED:
            model = _published_model(optical_flow, raft_model)
        else:
            model = self._local_model(optical_flow, raft_model, raft_weights)
        self.model = model.eval().to(self._device)
        # RAFT's correlation pyramid and GRU run fine in fp16 with autocast on CUDA
        self.autocast = half_precision and self._device.type == "cuda"

    @staticmethod
    def _local_model(optical_flow: Any, raft_model: str, raft_weights: str) -> torch.nn.Module:
        path = Path(raft_weights).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"cannot read RAFT weights {path}: {str(e).splitlines()[0]}") from e
        if not isinstance(state, dict):
            raise ValueError(f"RAFT weights {path} hold a {type(state).__name__}, not a state "
                             "dict")
        model = getattr(optical_flow, raft_model)(weights=None)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            # the full message lists every key; the first line says what is wrong
            raise ValueError(f"RAFT weights {path} do not fit {raft_model}: "
                             f"{str(e).splitlines()[0]}") from e
        return model

    @torch.inference_mode()
    def _run(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """[N, H, W] uint8 -> flow [N, 2, H, W] float32 px."""
        _n, h, w = src.shape
        # RAFT needs sizes divisible by 8 and at least 128 px (its correlation pyramid)
        ph, pw = max((-h) % 8, 128 - h), max((-w) % 8, 128 - w)

        def prep(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self._device, torch.float32)[:, None].expand(-1, 3, -1, -1) / 127.5 - 1.0
            return F.pad(x, (0, pw, 0, ph), mode="replicate")

        with torch.autocast("cuda", enabled=self.autocast):
            flows = self.model(prep(src), prep(dst), num_flow_updates=self.iters)
        return flows[-1][:, :, :h, :w].float()

    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        a = torch.from_numpy(np.stack(src))
        b = torch.from_numpy(np.stack(dst))
        out = self._run(a, b).permute(0, 2, 3, 1).cpu().numpy()
        return list(out)

    def stereo(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> StereoFlows:
        n = len(left)
        lt, rt = torch.from_numpy(np.stack(left)), torch.from_numpy(np.stack(right))
        f = self._run(torch.cat([lt, rt]), torch.cat([rt, lt]))
        return StereoFlows(f[:n], f[n:])
