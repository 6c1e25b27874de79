"""MiDaS-style encoder-decoder: a timm backbone and multi-scale feature fusion (paper, Training).

Decoder: 3x3 convs map the four encoder stages to F channels; four fusion blocks (residual conv
unit on the skip, add, residual conv unit, bilinear x2) from the deepest stage up; head conv
F -> F/2, x2, conv -> 32, ReLU, 1x1 -> 1, ReLU. Output: non-negative relative disparity at the
input resolution. Input: RGB in [0, 1]; ImageNet normalisation is inside the model.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import TrainerError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    encoder: str = "resnext101_32x8d"  # any timm model with features_only support
    features: int = 256  # F: decoder width
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # strides 4..32
    pretrained: bool = False  # True: fetch through timm (needs the network)
    weights: str = ""  # a local encoder state dict (.pt / .pth / .safetensors)


class ResidualConvUnit(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """out = up2(RCU2(x + RCU1(skip))); ``size`` replaces x2 when strides are not powers of 2."""

    def __init__(self, ch: int, skip: bool = True):
        super().__init__()
        # the deepest block has no skip input: no unit that DDP would see unused
        self.skip_unit = ResidualConvUnit(ch) if skip else None
        self.unit = ResidualConvUnit(ch)

    def forward(self, x: Tensor, skip: Tensor | None = None,
                size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            if self.skip_unit is None:
                raise ValueError("this fusion block takes no skip input")
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        if size is None:
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class MidasNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = create_encoder(cfg)
        chans = self.encoder.feature_info.channels()
        f = cfg.features
        self.project = nn.ModuleList(nn.Conv2d(c, f, 3, padding=1, bias=False) for c in chans)
        self.fusion = nn.ModuleList(FusionBlock(f, skip=i < len(chans) - 1)
                                    for i in range(len(chans)))
        self.head = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(inplace=True),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.pretrained_encoder = bool(cfg.pretrained or cfg.weights)

    def forward(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, H, W]`` relative disparity (>= 0)."""
        h, w = image.shape[-2:]
        feats = self.encoder((image - self.mean) / self.std)
        feats = [p(x) for p, x in zip(self.project, feats, strict=True)]
        x = None
        for i in range(len(feats) - 1, -1, -1):
            size = tuple(feats[i - 1].shape[-2:]) if i > 0 else None
            x = self.fusion[i](feats[i] if x is None else x, None if x is None else feats[i],
                               size)
        out = self.head(x)
        if out.shape[-2:] != (h, w):  # encoders whose first stage is not at stride 4
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return out[:, 0]

    def param_groups(self, lr: float, lr_pretrained: float) -> list[dict]:
        """Pretrained encoder layers get ``lr_pretrained``; new layers (and an encoder trained
        from scratch) get ``lr``."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in enc}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": enc, "lr": lr_pretrained if self.pretrained_encoder else lr,
             "name": "encoder"},
            {"params": new, "lr": lr, "name": "decoder"},
        ]


def create_encoder(cfg: ModelConfig) -> nn.Module:
    kw = dict(features_only=True, out_indices=tuple(cfg.out_indices))
    try:
        enc = timm.create_model(cfg.encoder, pretrained=False, **kw)
    except RuntimeError as e:  # timm: unknown model name
        raise TrainerError(f"encoder {cfg.encoder!r}: {e}") from None
    except (IndexError, ValueError) as e:
        raise TrainerError(f"encoder {cfg.encoder!r} has no feature levels "
                           f"{cfg.out_indices}: {e}") from None
    if len(enc.feature_info.channels()) < 2:
        raise TrainerError("the decoder needs at least 2 encoder feature levels")
    if cfg.weights:
        load_encoder_weights(enc, cfg.weights)
    elif cfg.pretrained:
        try:
            enc = timm.create_model(cfg.encoder, pretrained=True, **kw)
        except (OSError, RuntimeError, ValueError) as e:  # offline: hub errors of many kinds
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrainerError(f"pretrained weights for {cfg.encoder} could not be fetched "
                               f"through timm ({msg}); pass a local file with --weights") from None
    return enc


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (loaded with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise TrainerError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise TrainerError(f"cannot read weights {p}: {str(e).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise TrainerError(f"{p} holds no state dict")
    return sd


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a classification checkpoint of the same timm architecture into the feature
    encoder: matching names and shapes are loaded, the classifier is ignored."""
    sd = read_state_dict(path)
    own = encoder.state_dict()

    def strip(k: str) -> str:
        return k[len("module."):] if k.startswith("module.") else k

    cand = {strip(k): v for k, v in sd.items()}
    if not set(cand) & set(own):  # timm wrappers that nest the model under "model."
        cand = {("model." + k if "model." + k in own else k): v for k, v in cand.items()}
    ok = {k: v for k, v in cand.items() if k in own and v.shape == own[k].shape}
    if not ok:
        raise TrainerError(f"{path}: no tensor matches the encoder {type(encoder).__name__}; "
                           "is it a state dict of the same timm architecture?")
    missing = [k for k in own if k not in ok]
    encoder.load_state_dict(ok, strict=False)
    log.info("encoder weights: %d tensors loaded from %s, %d left at init", len(ok), path,
             len(missing))
    if missing:
        log.warning("encoder weights %s: %d tensors missing (e.g. %s)", path, len(missing),
                    missing[:3])


def build_model(cfg: ModelConfig) -> MidasNet:
    return MidasNet(cfg)
