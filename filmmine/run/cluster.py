"""The Dask cluster a run uses: a local one (worker processes, their environment and
malloc tuning, GPU workers), or an existing scheduler; and how many units it runs at once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading

import dask
from dask.distributed import (
    Client,
    LocalCluster,
    Nanny,
    Scheduler,
    SpecCluster,
)

from ..errors import (
    ClusterError,
    FilmmineError,
)
from ..flow import GPU_SHARE_ENV
from ..media.decode import DECODE_THREADS_ENV


def _worker_setup() -> None:
    import cv2

    # one Dask worker per core: OpenCV's and torch's own threads would only contend (and the
    # result of a single-threaded DIS is the same on every machine). torch is imported only
    # by the backends that use it: OMP_NUM_THREADS gives it one thread when it is; a worker
    # that has it already is set.
    cv2.setNumThreads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    tune_malloc()


# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """In this process, glibc malloc as ``_worker_environ`` sets it for local workers: buffers
    up to 32 MiB from the heap, kept (trimmed past 128 MiB). Done again at run time because
    workers started by `dask worker` (a remote cluster: its nanny sets Dask's
    ``MALLOC_TRIM_THRESHOLD_=64 KiB``) never see the local cluster's environment, where each
    frame buffer would be a fresh mmap, faulted in and unmapped again. False where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 128 * 2**20))


def unit_resources(device: str) -> dict[str, int] | None:
    """Dask resources a work unit needs: one GPU when its flow runs on one.

    Given to ``client.submit(resources=...)`` directly: resources set with ``dask.annotate``
    are dropped when a graph is optimised.
    """
    return {"GPU": 1} if device.startswith("cuda") else None


def unit_slots(client: Client, device: str) -> int:
    """How many work units the cluster runs at once, as its workers stand when asked: their
    threads, or on a GPU run their GPU resources (a unit holds one). At least 1."""
    return max(1, _slots_now(client, device))


def _slots_now(client: Client, device: str) -> int:
    """``unit_slots`` as it is: 0 while no worker (or, on a GPU run, no GPU worker) is
    connected."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    if unit_resources(device):
        return sum(min(int(w.get("nthreads", 1)), int(w.get("resources", {}).get("GPU", 0)))
                   for w in workers)
    return sum(int(w.get("nthreads", 1)) for w in workers)


def no_slots_warning(device: str, address: str, waited_s: float) -> str:
    """What the driver says when the cluster has had no slot for a unit for ``waited_s``:
    its workers have not started yet (batch jobs still queued), or on a GPU run none was
    started with the GPU resource the units need (they would wait for ever)."""
    if unit_resources(device):
        return (f"no worker of the Dask cluster at {address} offers the GPU resource a "
                f"--device {device} unit needs, for {waited_s:.0f} s: the run waits for one "
                "(start GPU workers with --resources GPU=1, one per GPU)")
    return (f"no Dask worker connected to the scheduler at {address} for {waited_s:.0f} s: "
            "the run waits for one")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


# A local cluster's housekeeping, which its workers inherit: Dask's periodic callbacks (the
# profiler walking the task thread's stack, the system and memory monitors, the event-loop
# tick) take a share of a busy worker; a unit runs for tens of seconds, so coarser
# housekeeping loses nothing.
LOCAL_DASK_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _client(workers: int | None, scheduler: str | None,
            device: str = "cpu") -> tuple[Client, SpecCluster | None]:
    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as e:   # refused, timed out, no such address
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {why}") from e
        client.register_worker_callbacks(_worker_setup)
        return client, None
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(),
                          **LOCAL_DASK_CONFIG}):
        cluster = _local_cluster(workers, device)
    client = Client(cluster)
    client.register_worker_callbacks(_worker_setup)
    return client, cluster


def _worker_environ() -> dict:
    """Dask's worker environment with glibc malloc tuned for frame-sized buffers.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=64 KiB``, which also freezes glibc's mmap threshold at
    128 KiB, so that every decoded frame (12 MB at 3840x1080) would be a fresh mmap,
    page-faulted in and unmapped again: buffers up to 32 MiB come from the heap and are
    reused instead."""
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env["MALLOC_MMAP_THRESHOLD_"] = 32 * 2**20
    env["MALLOC_TRIM_THRESHOLD_"] = 128 * 2**20
    return env


def _default_workers(cpu_count: int | None) -> int:
    """Local worker processes when ``--workers`` is not given: one per core, at most 8."""
    return max(1, min(cpu_count or 1, 8))


def _gpu_worker_layout(workers: int | None, cpu_count: int | None, gpus: int) -> list[int]:
    """The GPU (index among the visible ones) of each local worker process of a CUDA run.

    ``workers`` processes in all when given, else as many as on the CPU (one per core, at most
    8) but at least one per GPU; dealt round robin over the GPUs. A work unit runs all its
    stages (decode, shot detection, filters, flow, encoding) in one worker, so one worker per
    GPU would leave the other cores idle.
    """
    if gpus < 1:
        raise ValueError("no GPU to lay workers out on")
    n = workers if workers is not None else max(gpus, _default_workers(cpu_count))
    return [i % gpus for i in range(max(1, n))]


def _cuda_visible(index: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` of a worker on visible GPU ``index``: that entry of the
    driver's own setting (a job scheduler's "2,5" or GPU UUIDs), else the index."""
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
             if d.strip()]
    return given[index] if index < len(given) else str(index)


def _local_cluster(workers: int | None, device: str) -> SpecCluster:
    quiet = {"dashboard_address": ":0", "silence_logs": logging.CRITICAL}
    if unit_resources(device):
        gpus = _gpu_count()
        if gpus == 0:
            raise FilmmineError(f"--device {device}: no CUDA device visible to torch")
        if workers == 0:  # in-process thread, on the device as named: for debugging
            return LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                resources={"GPU": 1}, **quiet)
        return _gpu_cluster(_gpu_worker_layout(workers, os.cpu_count(), gpus), device)
    n = workers if workers is not None else _default_workers(os.cpu_count())
    if n == 0:  # in-process threads: for debugging
        return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, **quiet)
    # CPU: one single-threaded worker process per core, its ffmpeg on its share of the cores
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                        env=_decode_threads_env(n, os.cpu_count()), **quiet)


def _decode_threads_env(workers: int, cpu_count: int | None) -> dict[str, str]:
    """The worker environment giving each worker's ffmpeg the cores per local worker (at
    least one): with a worker on every core, ffmpeg's frame threads only add work."""
    return {DECODE_THREADS_ENV: str(max(1, (cpu_count or 1) // max(1, workers)))}


def _gpu_cluster(layout: list[int], device: str) -> SpecCluster:
    """Single-threaded worker processes holding GPU=1 each, several per GPU, each building its
    own flow model. ``--device cuda`` pins each to its GPU (``CUDA_VISIBLE_DEVICES``, set before
    the process starts: "cuda" is then that GPU); a named one ("cuda:1") is used by all."""
    pin = device == "cuda"
    workers = {}
    for i, gpu in enumerate(layout):
        env = {"CUDA_VISIBLE_DEVICES": _cuda_visible(gpu)} if pin else {}
        env.update(_decode_threads_env(len(layout), os.cpu_count()))
        # the workers sharing a GPU split its memory (census_sgm sizes its chunks by it): 8
        # workers each sized for the whole H100 failed every unit of the benchmark film
        env[GPU_SHARE_ENV] = str(layout.count(gpu) if pin else len(layout))
        # fewer stranded blocks when chunk shapes vary from batch to batch
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        workers[f"gpu{gpu}-{i}" if pin else f"worker-{i}"] = {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": 1, "resources": {"GPU": 1}, "env": env,
            "memory_limit": 1 / len(layout), "silence_logs": logging.CRITICAL}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": True,
                                               "dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.CRITICAL)


@contextlib.contextmanager
def ctrl_c_deferred():
    """Start the run's processes without handing them Ctrl-C. At a terminal Ctrl-C reaches
    every process of the group: local workers interrupted in their imports print tracebacks of
    their own, and driver-side ffprobes die, to be reported as unreadable films.
    SIGINT is ignored while they start (an ignored signal stays ignored across exec, and
    Python keeps it so: they leave Ctrl-C to the driver, which closes them). A Ctrl-C of that
    time is not lost: a ``sleep`` started before, in the same group and not ignoring it, dies
    of it, and KeyboardInterrupt is raised on leaving. (Blocking SIGINT instead would leave it
    to native threads, OpenBLAS's among them, which drop an ignored signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        canary = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        canary = None   # no sleep(1): a Ctrl-C of the next seconds goes unseen
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if canary is not None:
            died = canary.poll()
            canary.kill()
            canary.wait()
            if died == -signal.SIGINT:
                raise KeyboardInterrupt
