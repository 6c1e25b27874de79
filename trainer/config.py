"""Training configuration: dataclasses filled from TOML files in ``trainer/configs/`` (a file
may inherit with ``base = "NAME"``; unknown keys are errors), then from command-line flags. The
resolved configuration is saved beside the run (``RUN/config.json``) and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import TrainerError
from .data import AugmentConfig, MixConfig
from .model import ModelConfig
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
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval_size: int = 384  # inference: longer side, sides multiples of 32

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(cls, d, "")


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
