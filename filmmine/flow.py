"""Optical-flow backends behind one small interface, chosen by name from a registry.

A backend maps pairs of grey images to dense flow: ``flow[y, x] = (u, v)`` such that
``src[y, x]`` matches ``dst[y + v, x + u]``. Disparity is derived from it elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import cv2
import numpy as np


class FlowBackend(ABC):
    """Dense optical flow on batches of grey uint8 image pairs."""

    name: str = "?"

    @abstractmethod
    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Flow [H, W, 2] float32 (px) from each ``src[i]`` to ``dst[i]``."""


class DisFlow(FlowBackend):
    """OpenCV DIS (Kroeger et al. 2016): fast CPU flow, coarse-to-fine with variational refine."""

    name = "dis"
    PRESETS: ClassVar[dict[str, int]] = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }

    def __init__(self, preset: str = "medium", device: str = "cpu", finest_scale: int = -1,
                 patch_size: int = 0, patch_stride: int = 0, gd_iterations: int = -1,
                 vr_iterations: int = -1) -> None:
        if preset not in self.PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(self.PRESETS)}")
        if device != "cpu":
            raise ValueError("the dis backend runs on the CPU only")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        if finest_scale >= 0:
            # the presets stop at half resolution (scale 1); 0 refines at full resolution:
            # on the Middlebury motorcycle pair bad-2px 10.9 % -> 6.9 %, about 3x the time
            self._dis.setFinestScale(finest_scale)
        # 0 / -1 keep the preset's value
        if patch_size > 0:
            self._dis.setPatchSize(patch_size)
        if patch_stride > 0:
            self._dis.setPatchStride(patch_stride)
        if gd_iterations >= 0:
            self._dis.setGradientDescentIterations(gd_iterations)
        if vr_iterations >= 0:
            self._dis.setVariationalRefinementIterations(vr_iterations)

    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._dis.calc(a, b, None) for a, b in zip(src, dst, strict=True)]


BACKENDS: dict[str, Callable[..., FlowBackend]] = {"dis": DisFlow}


def get_backend(name: str, **options) -> FlowBackend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown flow backend {name!r}; available: {sorted(BACKENDS)}") from None
    return factory(**options)
