"""The values of the trainer's enumerated settings, shared by the config, the training loop and
the command line; kept free of torch, so that building the parser (``filmmine --help``) stays
fast."""

from __future__ import annotations

MIX_MODES = ("naive", "balanced", "pareto")     # data.mix.mode, train --mix
BALANCE_MODES = ("share", "per_batch")          # data.mix.balance, train --balance
AMP_MODES = ("auto", "off", "fp16", "bf16")     # optim.amp, train --amp
DEVICES = ("auto", "cpu", "cuda")               # run.device; train, eval, predict --device
VAL_METRICS = ("absrel", "delta_1.25_pct", "rmse", "whdr_pct")  # trainer.evaluate's; all errors
RAW_FORMATS = {"png16": ".disp16.png", "npy": ".npy", "pfm": ".pfm"}  # predict --raw -> suffix
