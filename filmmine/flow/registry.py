"""The flow backends by name, each from its module; torch-heavy ones are imported on first use.

| name | module | what |
|---|---|---|
| `dis` | opencv | OpenCV DIS optical flow (CPU) |
| `sgbm` | opencv | OpenCV StereoSGBM: horizontal disparity only (v = 0), unmatched = NaN |
| `dis_sgbm` | opencv | SGBM over each frame's own range; vertical flow from a coarse DIS |
| `census_sgm` | census_sgm | PyTorch census + guided filter + SGM, 2-D flow (CPU / CUDA) |
| `raft` | raft | torchvision RAFT: local or torchvision's published weights (CPU / CUDA) |

Every backend takes the keyword options of ``backend_options`` and ignores the ones it does not
use, so one recipe table configures any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import FlowBackend
from .opencv import DisFlow, DisSgbmFlow, SgbmFlow


def _lazy(module: str, cls: str) -> Callable[..., FlowBackend]:
    """A factory importing an optional backend on first use (torch-heavy modules)."""

    def factory(**options: Any) -> FlowBackend:
        try:
            mod = importlib.import_module(f"filmmine.flow.{module}")
        except ImportError as e:  # report the original error, not a KeyError later
            raise ValueError(f"flow backend module {module} cannot be imported: {e}") from e
        return getattr(mod, cls)(**options)

    return factory


BACKENDS: dict[str, Callable[..., FlowBackend]] = {
    "dis": DisFlow,
    "sgbm": SgbmFlow,
    "dis_sgbm": DisSgbmFlow,
    "census_sgm": _lazy("census_sgm", "CensusSgmFlow"),
    "raft": _lazy("raft", "RaftFlow"),
}

TORCH_BACKENDS = frozenset({"census_sgm", "raft"})   # their labels depend on torch's version

# recipe [disparity] key -> backend keyword (DIS keeps its historical names)
_OPTION_KEYS: dict[str, str] = {
    "preset": "preset", "dis_finest_scale": "finest_scale", "dis_patch_size": "patch_size",
    "dis_patch_stride": "patch_stride", "dis_gd_iterations": "gd_iterations",
    "dis_vr_iterations": "vr_iterations",
    "dis_sgbm_coarse_width": "coarse_width", "dis_sgbm_margin_px": "margin_px",
    "dis_sgbm_margin_frac": "margin_frac", "dis_sgbm_v_median": "v_median",
    "dis_sgbm_v_model": "v_model", "dis_sgbm_v_sigma_px": "v_sigma_px",
    "dis_sgbm_v_deadband_px": "v_deadband_px", "dis_sgbm_v_local": "v_local",
    "dis_sgbm_v_warp_px": "v_warp_px",
    "dis_sgbm_coarse_preset": "coarse_preset",
}
_OPTION_PREFIXES = ("sgbm_", "sgm_", "raft_")
_OPTION_SHARED = ("max_disparity_frac", "half_precision")


def backend_options(cfg: dict) -> dict:
    """Keyword options for any backend from a recipe's ``[disparity]`` table."""
    out = {new: cfg[old] for old, new in _OPTION_KEYS.items() if old in cfg}
    out.update({k: v for k, v in cfg.items()
                if k.startswith(_OPTION_PREFIXES) or k in _OPTION_SHARED})
    return out


def get_backend(name: str, **options) -> FlowBackend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown flow backend {name!r}; available: {sorted(BACKENDS)}") from None
    return factory(**options)
