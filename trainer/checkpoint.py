"""Trainer checkpoints: written atomically, read without unpickling code, and the model
they hold rebuilt (train, evaluate and predict share them)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from . import TrainerError, atomic
from .config import TrainConfig
from .model import MidasNet, build_model

CHECKPOINT_FORMAT = "filmmine-trainer/1"


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Durably: a kill or a failure midway leaves the previous checkpoint whole under ``path``
    (and no temp file); a power loss after this returns loses neither the bytes nor the name."""
    with atomic.atomic_open(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A trainer checkpoint, read with ``weights_only=True`` (never unpickles code)."""
    p = Path(path)
    if not p.is_file():
        raise TrainerError(f"checkpoint not found: {p}")
    try:
        with warnings.catch_warnings():   # its pickle-protocol notes: not the user's concern
            warnings.simplefilter("ignore")
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as e:
        raise TrainerError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    except Exception as e:
        # torch's own text advises weights_only=False, i.e. running the file's code: never
        raise TrainerError(f"{p} is not a {CHECKPOINT_FORMAT} checkpoint (torch.load: "
                           f"{type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainerError(f"{p} is not a {CHECKPOINT_FORMAT} checkpoint")
    return ck


def model_from_checkpoint(ck: dict[str, Any]) -> tuple[MidasNet, TrainConfig]:
    cfg = TrainConfig.from_dict(ck["config"])
    cfg.model.weights, cfg.model.pretrained = "", False  # the checkpoint holds every weight
    model = build_model(cfg.model)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, cfg
