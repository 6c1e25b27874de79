"""Trainer input pipeline: can the shard loader keep the model fed?

Corpus: samples in the mined format (``KEY.jpg`` 960x540 JPEG, ``KEY.disp.png`` uint16,
``KEY.json``), cut from the real stereo pairs with ground truth in ``../shared/data`` and
scikit-image (random crops, scales and flips), written once to ``--cache``. Training crops:
384 x 384, batch 8. Measured, each after a warm-up:

1. loader alone: samples/s out of the DataLoader (``--workers`` processes);
2. the model fed in-memory tensors (one batch reused): samples/s of forward, loss, backward
   and Adam step;
3. the model fed by the loader: samples/s of the same steps on streamed batches.

(2) and (3) alternate over ``--rounds`` rounds. Printed: the three rates and
``ratio = (3) / (2)`` (1.0 = the loader costs nothing; on a 2-core CPU the loader's workers and
the model share the cores), and how many times the model's rate the loader alone delivers.
With a CUDA device, also GPU steps/s with real batches vs synthetic batches already on the GPU
(goal >= 0.9).

    .venv/bin/python benchmarks/trainer_loader.py [--config tiny] [--workers 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from trainer.config import load_config
from trainer.data import MixedStream, build_loader, build_sources
from trainer.losses import MidasLoss
from trainer.model import build_model
from trainer.sources import DatasetSpec, read_pfm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
W, H = 960, 540


def real_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB image, disparity with NaN = unknown) of every real pair we have."""
    from skimage.data import stereo_motorcycle

    left, _, disp = stereo_motorcycle()
    out = [(left, np.where(np.isfinite(disp), disp, np.nan).astype(np.float32))]
    mb = SHARED / "middlebury2014_motorcycle_imperfect"
    if mb.is_dir():
        im = cv2.cvtColor(cv2.imread(str(mb / "im0.png")), cv2.COLOR_BGR2RGB)
        d = read_pfm((mb / "disp0GT.pfm").read_bytes())
        out.append((im, np.where(np.isfinite(d), d, np.nan)))
    kitti = SHARED / "kitti2015_000046"
    if kitti.is_dir():
        im_p = next(kitti.glob("image_2_*"), None)
        d_p = next(kitti.glob("disp_occ_0_*"), None)
        if im_p and d_p:
            im = cv2.cvtColor(cv2.imread(str(im_p)), cv2.COLOR_BGR2RGB)
            q = cv2.imread(str(d_p), cv2.IMREAD_UNCHANGED).astype(np.float32)
            out.append((im, np.where(q > 0, q / 256, np.nan)))
    return out


def encode_sample(key: str, image: np.ndarray, disp: np.ndarray) -> list[tuple[str, bytes]]:
    ok = np.isfinite(disp)
    scale = 1 / 64
    offset = float(np.nanmin(disp)) - 2 * scale if ok.any() else 0.0
    q = np.zeros(disp.shape, np.uint16)
    q[ok] = np.clip(np.rint((disp[ok] - offset) / scale), 1, 65535)
    jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    png = cv2.imencode(".png", q, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    meta = {"key": key, "disp_scale": scale, "disp_offset": offset, "size": [W, H]}
    return [(f"{key}.disp.png", png), (f"{key}.jpg", jpg), (f"{key}.json", json.dumps(meta)
                                                            .encode())]


def make_corpus(root: Path, n: int, per_shard: int = 64) -> Path:
    shards = root / "shards"
    if shards.is_dir() and len(list(shards.glob("*.tar"))) * per_shard >= n:
        return root
    shards.mkdir(parents=True, exist_ok=True)
    pairs = real_pairs()
    rng = np.random.default_rng(0)
    print(f"writing {n} samples of {W}x{H} to {root} once ...", flush=True)
    for s in range(0, n, per_shard):
        with tarfile.open(shards / f"bench-{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                image, disp = pairs[i % len(pairs)]
                h, w = disp.shape
                side_w = int(w * rng.uniform(0.6, 1.0))
                side_h = min(h, int(side_w * H / W))
                x0, y0 = rng.integers(0, w - side_w + 1), rng.integers(0, h - side_h + 1)
                crop = np.s_[y0 : y0 + side_h, x0 : x0 + side_w]
                im = cv2.resize(image[crop], (W, H), interpolation=cv2.INTER_CUBIC)
                d = cv2.resize(disp[crop], (W, H), interpolation=cv2.INTER_NEAREST)
                d = d * (W / side_w)
                if rng.random() < 0.5:
                    im, d = im[:, ::-1], d[:, ::-1]
                for name, data in encode_sample(f"bench_{i:08d}", np.ascontiguousarray(im),
                                                np.ascontiguousarray(d)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def step_fn(model, loss_fn, opt, device):
    def step(batch) -> None:
        image = batch["image"].to(device, non_blocking=True).float().div_(255)
        target = batch["disparity"].to(device, non_blocking=True)
        mask = batch["valid_mask"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(image), target, mask)
        loss.backward()
        opt.step()
    return step


def rate(fn, batches, warmup: int, steps: int, batch_size: int, sync) -> float:
    for _ in range(warmup):
        fn(next(batches))
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(next(batches))
    sync()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", help="model config (trainer/configs)")
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--features", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "filmmine-bench"))
    args = ap.parse_args()

    corpus = make_corpus(Path(args.cache) / "trainer-corpus", args.samples)
    cfg = load_config(args.config)
    if args.encoder:
        cfg.model.encoder = args.encoder
    if args.features:
        cfg.model.features = args.features
    cfg.data.mix.batch_size, cfg.data.augment.crop = args.batch_size, args.crop
    cfg.data.mix.shuffle_buffer = 64
    cfg.data.augment.jitter = 0.1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bs = args.batch_size
    print(f"model {cfg.model.encoder} F={cfg.model.features}, crop {args.crop}, batch {bs}, "
          f"{args.workers} loader workers, device {device}, torch threads "
          f"{torch.get_num_threads()}, {args.steps} timed steps", flush=True)

    def loader():
        sources = build_sources([DatasetSpec(path=str(corpus))])
        stream = MixedStream(sources, cfg.data.mix, cfg.data.augment, seed=0)
        return iter(build_loader(stream, args.workers, pin_memory=device.type == "cuda"))

    # a fresh loader's workers start one after another (each imports torch): warm up until every
    # one has delivered twice, or the first rates measure their start (on a 16-core H100 node
    # with 12 workers, a 3-batch warm-up read 101 samples/s while rounds 2-3 of the same
    # streams fed the model 331-349)
    warm = max(3, 2 * args.workers)
    it = loader()
    load_rate = rate(lambda b: None, it, warm, args.steps * 2, bs, lambda: None)
    del it
    print(f"loader alone:           {load_rate:7.2f} samples/s", flush=True)

    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    loss_fn = MidasLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = step_fn(model, loss_fn, opt, device)
    it = loader()
    fixed = next(it)
    del it

    def same_batch():
        while True:
            yield fixed

    # interleaved rounds: other load on a shared machine hits both measurements alike
    it = loader()
    rate(step, same_batch(), 2, 1, bs, sync)  # warm-up
    rate(step, it, warm, 1, bs, sync)
    mem, real = [], []
    for r in range(args.rounds):
        mem.append(rate(step, same_batch(), 0, args.steps, bs, sync))
        real.append(rate(step, it, 0, args.steps, bs, sync))
        print(f"round {r + 1}: in-memory {mem[-1]:.2f}, shards {real[-1]:.2f} samples/s, "
              f"ratio {real[-1] / mem[-1]:.2f}", flush=True)
    del it
    mem_rate, real_rate = float(np.median(mem)), float(np.median(real))
    ratio = float(np.median([b / a for a, b in zip(mem, real, strict=True)]))
    print(f"model, in-memory batch: {mem_rate:7.2f} samples/s (median)")
    print(f"model, from the shards: {real_rate:7.2f} samples/s (median)")
    print(f"ratio (shards / in-memory) = {ratio:.2f} (median of rounds); the loader alone "
          f"delivers {load_rate / mem_rate:.0f}x the model's in-memory rate")

    # CPU seconds, not wall: robust to other load on the machine. The loader in-process on
    # one thread (as a worker runs), the model with its torch threads.
    import cv2 as _cv2

    _cv2.setNumThreads(1)
    it = iter(build_loader(MixedStream(build_sources([DatasetSpec(path=str(corpus))]),
                                       cfg.data.mix, cfg.data.augment, seed=1), 0))
    next(it)
    c0 = time.process_time()
    for _ in range(args.steps * 2):
        next(it)
    load_cpu = (time.process_time() - c0) / (args.steps * 2 * bs)
    del it
    c0 = time.process_time()
    rate(step, same_batch(), 0, args.steps, bs, sync)
    model_cpu = (time.process_time() - c0) / (args.steps * bs)
    print(f"CPU time per sample: loader {load_cpu * 1e3:.1f} ms, model step "
          f"{model_cpu * 1e3:.0f} ms; a loader sharing the cores costs the model about "
          f"{100 * load_cpu / (load_cpu + model_cpu):.1f} % (ratio "
          f"{model_cpu / (load_cpu + model_cpu):.3f})")

    if device.type == "cuda":
        synth = {"image": torch.randint(0, 255, fixed["image"].shape, dtype=torch.uint8,
                                        device=device),
                 "disparity": torch.rand(fixed["disparity"].shape, device=device),
                 "valid_mask": torch.ones(fixed["valid_mask"].shape, dtype=torch.bool,
                                          device=device)}

        def synthetic():
            while True:
                yield synth

        syn = rate(step, synthetic(), 5, args.steps, bs, sync) / bs
        it = loader()
        real = rate(step, it, max(5, warm), args.steps, bs, sync) / bs
        print(f"GPU steps/s: real {real:.2f}, synthetic {syn:.2f}, ratio {real / syn:.2f} "
              "(goal >= 0.9)")


if __name__ == "__main__":
    main()
