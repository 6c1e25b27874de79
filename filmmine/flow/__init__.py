"""Optical flow: one interface (``base``), the backends by name (``registry``), OpenCV's
(``opencv``), the torch census SGM (``census_sgm``, its building blocks in
``sgm_ops``, their Triton kernels in ``triton_kernels``) and RAFT."""

from .base import DEVICES, GPU_SHARE_ENV, Batch, FlowBackend, StereoFlows, check_device
from .registry import BACKENDS, TORCH_BACKENDS, backend_options, get_backend

__all__ = ["BACKENDS", "DEVICES", "GPU_SHARE_ENV", "TORCH_BACKENDS", "Batch", "FlowBackend",
           "StereoFlows", "backend_options", "check_device", "get_backend"]
