"""The optical-flow interface every backend implements: a backend maps pairs of grey images to
dense flow, ``flow[y, x] = (u, v)`` such that ``src[y, x]`` matches ``dst[y + v, x + u]``.
Disparity is derived from it elsewhere (``filmmine.stages.disparity``), which asks for both
directions of a batch of stereo pairs at once through ``FlowBackend.stereo``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # torch is imported by the backends that use it: the OpenCV ones do not
    import torch

# [B, ...] per-pair arrays: numpy from the OpenCV backends, torch tensors from the torch ones
Batch = Union[np.ndarray, "torch.Tensor"]

# the torch device types a backend may be asked for (`filmmine extract --device`)
DEVICES = ("cpu", "cuda")

# worker processes sharing this process's GPU (set by `filmmine extract --device cuda` for
# each worker; census_sgm sizes its chunks by it)
GPU_SHARE_ENV = "FILMMINE_GPU_SHARE"


@lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel of an [h, w] image (float32, read-only; one per size)."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


@dataclass
class StereoFlows:
    """Both flow directions of a batch of same-size stereo pairs, on the backend's device:
    numpy arrays from the OpenCV (CPU) backends, so that extraction with them never imports
    torch (hundreds of MiB and seconds in every worker), torch tensors from the torch
    backends."""

    lr: Batch                              # [B, 2, H, W] float32 px, left -> right (u, v)
    rl: Batch                              # [B, 2, H, W] float32 px, right -> left
    match_confidence: Batch | None = None  # [B, H, W] in [0, 1], left view; None = 1


class FlowBackend(ABC):
    """Dense optical flow on batches of grey uint8 image pairs."""

    name: str = "?"
    device: str = "cpu"

    @abstractmethod
    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Flow [H, W, 2] float32 (px) from each ``src[i]`` to ``dst[i]``."""

    def stereo(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> StereoFlows:
        """Left->right and right->left flow of same-size pairs (default: one ``flow`` call)."""
        n = len(left)
        flows = self.flow([*left, *right], [*right, *left])
        t = np.stack(flows).transpose(0, 3, 1, 2)  # [2B, 2, H, W]
        return StereoFlows(np.ascontiguousarray(t[:n]), np.ascontiguousarray(t[n:]))


def check_device(name: str, device: str) -> torch.device:
    """A torch device a backend can run on, or a one-line error."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"the {name} backend was asked for {device!r} but CUDA is not "
                         "available here")
    if dev.type not in DEVICES:
        raise ValueError(f"the {name} backend runs on {' or '.join(DEVICES)}, not {device!r}")
    return dev
