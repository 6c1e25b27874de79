"""Training configuration: dataclasses filled from TOML files in ``trainer/configs/`` (a file
may inherit with ``base = "NAME"``; unknown keys are errors), then from command-line flags. The
resolved configuration is saved beside the run (``RUN/config.json``) and in every checkpoint.

A resumed run keeps what its model learns from (model, optimizer, loss, data, seed, validation
set): only the keys in ``RESUMABLE`` (how long, how it is logged and run) may change.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import TrainerError
from .data import AugmentConfig, MixConfig, unique_names
from .model import ModelConfig
from .names import VAL_METRICS
from .sources import DatasetSpec

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class OptimConfig:
    lr: float = 1e-4  # new layers (paper)
    lr_pretrained: float = 1e-5  # pretrained encoder layers (paper)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (after a linear warmup)
    warmup_steps: int = 0
    schedule_steps: int = 0  # cosine length (0 = run.steps); fix it before extending a run
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak
    clip_grad_norm: float = 1.0  # 0 = off
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | off | fp16 | bf16


@dataclass
class LossConfig:
    data: str = "ssitrim"  # ssitrim | ssimae | ssimse
    trim: float = 0.2
    alpha: float = 0.5  # gradient matching weight
    scales: int = 4


@dataclass
class DataConfig:
    mix: MixConfig = field(default_factory=MixConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    workers: int = 2  # DataLoader worker processes per rank
    datasets: list[DatasetSpec] = field(default_factory=list)


@dataclass
class RunConfig:
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500  # RUN/checkpoints/last.pt
    keep_every: int = 0  # also RUN/checkpoints/step-NNNNNNN.pt (0 = never)
    tensorboard: bool = False
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise TrainerError for values the loop cannot run with (also after CLI overrides)."""
        # 0 would divide by zero at the first step (step % every)
        for name in ("log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise TrainerError(f"config run.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_every < 0:
            raise TrainerError(f"config run.keep_every must be >= 0, got {self.keep_every}")


@dataclass
class ValConfig:
    """Validation during training: ``trainer.evaluate`` on datasets with true labels."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    every: int = 1000  # steps between passes; the last step is always validated
    metric: str = "absrel"  # RUN/checkpoints/best.pt keeps its lowest mean over the datasets

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.every < 1:
            raise TrainerError(f"config val.every must be >= 1, got {self.every}")
        if self.metric not in VAL_METRICS:
            raise TrainerError(f"config val.metric {self.metric!r}: choose from "
                               f"{', '.join(VAL_METRICS)}")
        for s in self.datasets:
            if s.type == "corpus":
                # the eval metrics need true disparity; a corpus has it up to an unknown shift
                raise TrainerError(f"validation dataset {s.path} is a mined corpus (labels up "
                                   "to scale and shift, of both signs): validate on data with "
                                   "true disparity or depth")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    val: ValConfig = field(default_factory=ValConfig)
    eval_size: int = 384  # inference (and validation): longer side, sides multiples of 32

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(cls, d, "")


# how long a run trains, and how it is logged and run: a resumed run may change these
RESUMABLE = ("run.steps", "run.log_every", "run.ckpt_every", "run.keep_every", "run.tensorboard",
             "run.device", "data.workers", "val.every")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    for where in (d["data"], d["val"]):
        # as the run names them (build_sources): a saved run holds the unique names
        specs = where["datasets"]
        for spec, name in zip(specs, unique_names([s["name"] for s in specs]), strict=True):
            spec["name"], spec["path"] = name, os.path.normpath(spec["path"])  # c/ is c
    return _flat(d)


def resume_conflicts(saved: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (wanted, saved)}`` for the keys outside ``RESUMABLE`` that differ."""
    a, b = _comparable(wanted), _comparable(saved)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RESUMABLE and a.get(k) != b.get(k)}


def resumed_config(saved: TrainConfig, wanted: TrainConfig) -> TrainConfig:
    """``saved`` with ``wanted``'s ``RESUMABLE`` values."""
    out = TrainConfig.from_dict(saved.to_dict())
    for key in RESUMABLE:
        section, name = key.split(".")
        setattr(getattr(out, section), name, getattr(getattr(wanted, section), name))
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise TrainerError(f"config section {where or 'top'} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise TrainerError(f"unknown config key(s) {sorted(unknown)} in [{where or 'top'}]; "
                           f"known: {sorted(known)}")
    kw = {}
    defaults = cls()
    for name, value in d.items():
        cur = getattr(defaults, name)
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(cur):
            kw[name] = _build(type(cur), value, sub)
        elif name == "datasets":
            kw[name] = [v if isinstance(v, DatasetSpec) else DatasetSpec.from_dict(v)
                        for v in value]
        elif isinstance(cur, tuple):
            kw[name] = tuple(value)
        elif isinstance(cur, float) and isinstance(value, int) and not isinstance(value, bool):
            kw[name] = float(value)
        else:
            if cur is not None and value is not None and not isinstance(value, type(cur)):
                raise TrainerError(f"config {sub}: expected {type(cur).__name__}, "
                                   f"got {value!r}")
            kw[name] = value
    return cls(**kw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = CONFIG_DIR / f"{name}.toml"
    if q.is_file():
        return q
    known = sorted(x.stem for x in CONFIG_DIR.glob("*.toml"))
    raise TrainerError(f"config {name!r} not found (a .toml file or one of {known})")


def read_config_dict(name: str, _seen: tuple[str, ...] = ()) -> dict:
    path = config_path(name)
    if str(path) in _seen:
        raise TrainerError(f"config inheritance loop through {path}")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TrainerError(f"config {path}: {e}") from None
    base = d.pop("base", None)
    if base:
        d = _merge(read_config_dict(base, (*_seen, str(path))), d)
    return d


def load_config(name: str = "default") -> TrainConfig:
    return TrainConfig.from_dict(read_config_dict(name))
