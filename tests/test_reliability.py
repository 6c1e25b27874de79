"""Scale and reliability: an existing Dask cluster, kill -9 and resume, untrusted shards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_extract import tree_digest

from filmmine.corpus.reader import ShardError, iter_samples
from filmmine.run.extract import extract

DASK = Path(sys.executable).parent / "dask"


def _wait_for(path: Path, timeout_s: float = 60) -> None:
    t0 = time.monotonic()
    while not path.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(path)
        time.sleep(0.1)


class _DaskCluster:
    """`dask scheduler` and single-threaded `dask worker` processes on loopback."""

    def __init__(self, tmp_path: Path, tag: str = "") -> None:
        self.sched_file = tmp_path / f"scheduler{tag}.json"
        self.scheduler = subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", ":0", "--scheduler-file", str(self.sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers: list[subprocess.Popen] = []
        try:
            _wait_for(self.sched_file)
        except BaseException:
            self.close()
            raise
        self.address = json.loads(self.sched_file.read_text())["address"]

    def add_worker(self, cwd: Path | None = None, hide: Path | None = None,
                   name: str | None = None, env: dict | None = None) -> None:
        """A worker process; ``hide``: a directory it sees empty (a tmpfs mounted over it in
        its own mount namespace: a node without that file system); ``env``: its environment
        (default: this process's)."""
        argv = [str(DASK), "worker", "--scheduler-file", str(self.sched_file), "--nworkers",
                "1", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                *(("--name", name) if name else ())]
        if hide is not None:
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs none "$0" && exec "$@"', str(hide), *argv]
        self.workers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, cwd=cwd, env=env))

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(n, timeout=60)
            assert len(c.scheduler_info()["workers"]) == n

    def close(self) -> None:
        procs = [*self.workers, self.scheduler]
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)

    def __enter__(self) -> _DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_existing_scheduler_gives_the_same_corpus(library, corpus, tmp_path):
    """`dask scheduler` + two `dask worker` processes on loopback, then --scheduler."""
    with _DaskCluster(tmp_path) as cluster:
        for _ in range(2):
            cluster.add_worker()
        cluster.wait_for_workers(2)
        out = tmp_path / "remote"
        report = extract([str(library / "library.json")], out, scheduler=cluster.address,
                         progress=False)
        assert report.exit_code == 0, report.summary()
        assert tree_digest(out) == tree_digest(corpus)


def _frame_buffer_faults():
    """A function for a worker (defined in a function: pickled by value) returning the
    MALLOC_TRIM_THRESHOLD_ it was started with, and the page faults of allocating, filling
    and freeing 20 frame-sized (12 MB) buffers after a warm-up one."""

    def faults() -> tuple[str | None, int]:
        import os
        import resource

        import numpy as np

        def churn(n: int) -> None:
            for _ in range(n):
                a = np.empty(3840 * 1080 * 3, np.uint8)
                a.fill(1)
                del a

        churn(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        churn(20)
        return (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    return faults


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc")
def test_remote_workers_reuse_frame_buffers(tmp_path):
    """A `dask worker` started by hand (its nanny sets Dask's MALLOC_TRIM_THRESHOLD_ of
    64 KiB, which made every frame buffer a fresh mmap) reuses freed frame buffers once an
    extract client has set it up: next to no page faults for 20 buffers, not hundreds each."""
    from distributed import Client

    from filmmine.run.cluster import _client

    with _DaskCluster(tmp_path) as cluster:
        # the environment of a fresh node: a local cluster started in this process earlier
        # left its malloc settings in os.environ (Dask's nanny sets them there to spawn)
        cluster.add_worker(env={k: v for k, v in os.environ.items()
                                if not k.startswith("MALLOC_")})
        cluster.wait_for_workers(1)
        with Client(cluster.address, timeout=30) as plain:
            [(trim, untuned)] = plain.run(_frame_buffer_faults()).values()
        client, _ = _client(None, cluster.address)
        try:
            [(_, tuned)] = client.run(_frame_buffer_faults()).values()
        finally:
            client.close()
    assert trim == "65536"
    # untuned: 480-1,000 a buffer (12 MB: 3,000 pages, some mapped as huge pages); tuned: 0
    assert untuned > 20 * 200, (untuned, tuned)
    assert tuned < 200, (untuned, tuned)


def test_a_relative_out_on_workers_started_elsewhere(library, corpus, tmp_path):
    """`--out corpus` relative to the driver's directory, on workers started in another one
    (as on any other node): the corpus is where the driver was told, a clean run's bytes,
    and nothing is written where the workers run."""
    elsewhere = tmp_path / "workers-cwd"
    elsewhere.mkdir()
    here = tmp_path / "driver-cwd"
    here.mkdir()
    with _DaskCluster(tmp_path) as cluster:
        for _ in range(2):
            cluster.add_worker(cwd=elsewhere)
        cluster.wait_for_workers(2)
        done = subprocess.run([sys.executable, "-m", "filmmine.cli", "extract",
                               str(library / "library.json"), "--out", "corpus",
                               "--scheduler", cluster.address, "--quiet"],
                              cwd=here, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list(elsewhere.iterdir()) == []
    assert tree_digest(here / "corpus") == tree_digest(corpus)


def test_a_lost_scheduler_stops_in_one_line_and_the_rerun_resumes(library, corpus, tmp_path):
    """The scheduler process dies mid-run (its node went away): the run stops at once with
    one line saying so, exit 2 and no traceback, writing no manifest; the same command on a
    new cluster resumes, and the corpus is a clean run's bytes."""
    out = tmp_path / "out"

    def cmd(address: str) -> list[str]:
        return [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
                "--out", str(out), "--scheduler", address, "--quiet"]

    with _DaskCluster(tmp_path, "1") as cluster:
        for _ in range(2):
            cluster.add_worker()
        cluster.wait_for_workers(2)
        run = subprocess.Popen(cmd(cluster.address), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while not list((out / "films").glob("*.json")):    # a film is finished
            assert time.monotonic() - t0 < 300 and run.poll() is None
            time.sleep(0.05)
        cluster.scheduler.kill()
        _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"lost the Dask scheduler at {cluster.address}" in lines[0], err
    assert "rerun the same command" in lines[0]
    assert not (out / "manifest.json").exists()
    finished = len(list((out / "films").glob("*.json")))
    assert 1 <= finished < 5
    with _DaskCluster(tmp_path, "2") as cluster:
        for _ in range(2):
            cluster.add_worker()
        cluster.wait_for_workers(2)
        again = subprocess.run(cmd(cluster.address), capture_output=True, text=True,
                               timeout=600)
    assert again.returncode == 0, again.stderr
    assert not list(out.rglob(".tmp-*"))
    assert tree_digest(out) == tree_digest(corpus)


def test_an_unreachable_scheduler_is_one_line(library, tmp_path):
    """--scheduler naming no scheduler (refused, or not an address): exit 2, one line."""
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    for address, why in [("tcp://127.0.0.1:1", "Timed out trying to connect"),
                         ("nonsense", "missing port number")]:
        done = subprocess.run([sys.executable, "-m", "filmmine.cli", "extract",
                               str(library / "library.json"), "--out", str(tmp_path / "out"),
                               "--scheduler", address, "--quiet"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"cannot reach the Dask scheduler at {address}: " in lines[0] and why in lines[0]


def _records_consistent(out: Path) -> None:
    """No film record names a shard that is missing or differs from what it says."""
    for rec_path in (out / "films").glob("*.json"):
        rec = json.loads(rec_path.read_text())
        for s in rec["shards"]:
            path = out / "shards" / s["name"]
            assert path.is_file(), s["name"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"], s["name"]


def test_kill_9_at_several_points_then_rerun_is_byte_identical(library, corpus, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
           "--out", str(out), "--workers", "2", "--quiet"]
    for delay_s in (3.0, 5.5, 8.0, 10.5):
        # a new session: the kill takes the driver, the scheduler and every worker at once
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(delay_s)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            _records_consistent(out)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(out.rglob(".tmp-*"))
    assert tree_digest(out) == tree_digest(corpus)


@pytest.mark.parametrize("name", ["../../etc/key.json", "/abs/key.json", "dir/key.json",
                                  "key", ".hidden.json", "key.../x", "ke y.jpg"])
def test_shard_member_names_are_validated(tmp_path, name):
    """A shard from elsewhere with an unsafe member name is refused, not extracted."""
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        data = tmp_path / "x"
        data.write_bytes(b"{}")
        tf.add(data, arcname=name)
    with pytest.raises(ShardError, match=r"evil\.tar: member .*: "):
        list(iter_samples(evil))


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def test_awkward_but_valid_films_are_mined(library, tmp_path):
    """Odd frame size, a variable frame rate (a dropped frame), a truncated mkv."""
    src = library / "film_sbs.mp4"
    lib = tmp_path / "awkward"
    lib.mkdir()
    # odd size: 641x181 (4:4:4 allows odd sizes); the split keeps 2 x 320 columns
    _ffmpeg("-i", str(src), "-vf", "format=yuv444p,pad=641:181", "-c:v", "libx264",
            "-pix_fmt", "yuv444p", "-crf", "12", str(lib / "odd.mp4"))
    # variable frame rate: frame 50 dropped, timestamps keep the gap
    _ffmpeg("-i", str(src), "-vf", "select='not(eq(n\\,50))'", "-fps_mode", "vfr",
            "-c:v", "libx264", "-crf", "12", str(lib / "vfr.mp4"))
    # the same in mkv, which has no frame count in its header (duration x fps would say 336)
    _ffmpeg("-i", str(src), "-vf", "select='not(eq(n\\,50)+eq(n\\,51)+eq(n\\,90))'",
            "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "12", str(lib / "vfrmkv.mkv"))
    # truncated mkv: the end of the file is lost
    _ffmpeg("-i", str(src), "-c", "copy", str(tmp_path / "full.mkv"))
    data = (tmp_path / "full.mkv").read_bytes()
    (lib / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    report = extract([str(lib)], out, layout="sbs", workers=0, progress=False)
    by_film = {i.film: i for i in report.inputs}
    assert {f: i.status for f, i in by_film.items()} == {"odd": "ok", "vfr": "ok", "cut": "ok",
                                                             "vfrmkv": "ok"}
    for film in ("odd", "vfr", "cut", "vfrmkv"):
        assert report.records[film]["counts"]["accepted"] >= 5, film
    vfrmkv = report.records["vfrmkv"]["counts"]
    assert vfrmkv["frames"] == vfrmkv["decoded"] == 333 and by_film["vfrmkv"].reason is None
    cut = report.records["cut"]
    assert cut["counts"]["decoded"] < cut["counts"]["frames"]
    assert by_film["cut"].reason.startswith(f"decoded {cut['counts']['decoded']} of ")
    odd = report.records["odd"]["probe"]
    assert odd["frame_size"] == [640, 181] and odd["layout"] == "sbs"


def _where() -> str:
    from distributed import get_worker

    return get_worker().name


def test_gpu_units_are_placed_on_workers_with_the_gpu_resource():
    """Work units for a GPU device carry GPU=1 and run only where a worker offers it."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    from filmmine.run.cluster import unit_resources

    assert unit_resources("cpu") is None
    assert unit_resources("cuda") == {"GPU": 1}
    workers = {"gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu": {"cls": Worker, "options": {"nthreads": 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        gpu = [client.submit(_where, pure=False, resources=unit_resources("cuda"))
               for _ in range(12)]
        assert {f.result() for f in gpu} == {"gpu"}
        anywhere = [client.submit(_where, pure=False) for _ in range(24)]
        assert set(client.gather(anywhere)) <= {"gpu", "cpu"}


def test_gpu_workers_several_per_gpu():
    """--device cuda: as many worker processes as on the CPU (one per core, at most 8; at
    least one per GPU), or --workers in all, dealt round robin over the GPUs."""
    from filmmine.run.cluster import _gpu_worker_layout

    assert _gpu_worker_layout(None, 16, 1) == [0] * 8
    assert _gpu_worker_layout(None, 16, 2) == [0, 1] * 4
    assert _gpu_worker_layout(None, 2, 1) == [0, 0]
    assert _gpu_worker_layout(None, 2, 4) == [0, 1, 2, 3]
    assert _gpu_worker_layout(3, 16, 2) == [0, 1, 0]
    assert _gpu_worker_layout(1, 16, 2) == [0]
    with pytest.raises(ValueError):
        _gpu_worker_layout(None, 16, 0)


def _gpu_worker_env() -> tuple:
    return (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            os.environ.get("OMP_NUM_THREADS"), os.environ.get("FILMMINE_GPU_SHARE"),
            os.environ.get("FILMMINE_DECODE_THREADS"))


def test_local_cuda_cluster_pins_each_worker_to_one_gpu(monkeypatch):
    """The local cluster of a CUDA run (no CUDA needed: torch's GPU count is faked): 3 workers
    on 2 GPUs each hold GPU=1 and see only their GPU, named as the driver's own
    CUDA_VISIBLE_DEVICES names it, and knows how many workers share that GPU (census_sgm
    sizes its chunks by it); with no GPU, a one-line error."""
    import filmmine.run.cluster as run_cluster
    from filmmine.errors import FilmmineError

    monkeypatch.setattr(run_cluster, "_gpu_count", lambda: 0)
    with pytest.raises(FilmmineError, match="--device cuda: no CUDA device visible"):
        run_cluster._client(None, None, "cuda")
    monkeypatch.setattr(run_cluster, "_gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    client, cluster = run_cluster._client(3, None, "cuda")
    try:
        client.wait_for_workers(3)
        info = client.scheduler_info()["workers"]
        env = client.run(_gpu_worker_env)
    finally:
        client.close()
        cluster.close()
    assert {w["name"]: w["resources"] for w in info.values()} == {
        "gpu0-0": {"GPU": 1}, "gpu1-1": {"GPU": 1}, "gpu0-2": {"GPU": 1}}
    malloc = str(32 * 2**20)
    ffmpeg = str(max(1, (os.cpu_count() or 1) // 3))  # the cores per worker
    assert {info[a]["name"]: e for a, e in env.items()} == {
        "gpu0-0": ("5", malloc, "1", "2", ffmpeg), "gpu1-1": ("7", malloc, "1", "1", ffmpeg),
        "gpu0-2": ("5", malloc, "1", "2", ffmpeg)}


@pytest.fixture
def tiny_fs(tmp_path):
    """A 400 KiB tmpfs (root only): a disk that fills up in the middle of a run."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("mode", ["full", "read-only"])
def test_write_errors_stop_cleanly(library, tiny_fs, mode):
    if mode == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    out = tiny_fs / "corpus"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
           "--out", str(out), "--workers", "0", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot write to" in err[0], done.stderr
    assert ("No space left on device" if mode == "full" else "Read-only file system") in err[0]
    assert "Traceback" not in done.stderr
    if out.exists():
        _records_consistent(out)
        assert not list(out.rglob(".tmp-*"))


def _worker_state(dask_worker) -> dict:
    import os

    import cv2
    import torch

    return {"mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "ffmpeg": os.environ.get("FILMMINE_DECODE_THREADS"),
            "cv2": cv2.getNumThreads(), "torch": torch.get_num_threads(),
            "profiler": "profile" in dask_worker.periodic_callbacks}


@pytest.mark.parametrize("workers", [1, 2])
def test_local_workers_reuse_frame_buffers_and_run_single_threaded(workers: int) -> None:
    """Dask's default MALLOC_TRIM_THRESHOLD_ froze glibc's mmap threshold at 128 KiB (every
    frame buffer a fresh mmap: 30 s of system time on the 60 s benchmark film); local workers
    get a 32 MiB mmap threshold, one OpenCV and one torch thread each, their ffmpeg the cores
    per worker, and no statistical profiler sampling their task thread every 10 ms."""
    from filmmine.run.cluster import _client

    client, cluster = _client(workers, None)
    try:
        client.wait_for_workers(workers)
        states = list(client.run(_worker_state).values())
    finally:
        client.close()
        cluster.close()
    ffmpeg = str(max(1, (os.cpu_count() or 1) // workers))
    assert states == [{"mmap": str(32 * 2**20), "trim": str(128 * 2**20), "omp": "1",
                       "ffmpeg": ffmpeg, "cv2": 1, "torch": 1, "profiler": False}] * workers


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_film_gets_a_reason_and_the_rest_is_mined(library, tmp_path):
    """A film without read permission. Root reads anything, so as root the run drops the
    capabilities that bypass file permissions (setpriv), as an ordinary user would run."""
    lib = json.loads((library / "library.json").read_text())
    film = next(f for f in lib["films"] if f["name"] == "film_sbs")
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(library / film["path"], films / "good.mp4")
    locked = films / "locked.mp4"
    shutil.copy(library / film["path"], locked)
    locked.chmod(0)
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(films), "--layout", "sbs",
           "--out", str(tmp_path / "out"), "--workers", "0", "--quiet"]
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: every file is readable")
        cmd = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == ""
    lines = run.stdout.splitlines()
    assert f"  failed  {locked}: unreadable file: Permission denied" in lines, lines
    assert any(line.startswith(f"  ok      {films / 'good.mp4'}: ") for line in lines), lines
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    by_source = {i["source"]: i for i in man["inputs"]}
    assert by_source[str(locked)]["reason"] == "unreadable file: Permission denied"
    assert man["totals"]["films_ok"] == 1 and man["totals"]["samples"] > 0


def _no_space(*_args, **_kwargs):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_fails_on_commit_leaves_no_temp_file(tmp_path, monkeypatch):
    """Disk full at the last moment (the final flush or the fsync of a small file, as on a
    full tmpfs or over quota on NFS): the error propagates and no `.tmp-*` file is left."""
    from filmmine.corpus.atomic import write_bytes

    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError, match="No space left"):
        write_bytes(tmp_path / "marker.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_while_writing_shards_leaves_no_temp_file(tmp_path, monkeypatch):
    """Disk full while a film's shards are written: the run stops with the one-line output
    error, and the shard being written does not stay behind as a temp file."""
    from filmmine import synth
    from filmmine.corpus import shards
    from filmmine.run.tasks import OutputError
    from filmmine.synth import FilmSpec, ShotSpec

    spec = FilmSpec(shots=(ShotSpec("textured", 30, seed=2),), view_width=320,
                    view_height=180, seed=3)
    film = tmp_path / "f.mp4"
    synth.write_film(spec, film, "sbs")
    write = shards.StagingWriter.write

    def full_in_shards(self, sample):
        if self.path.parent.name == "shards" and self.count == 2:
            _no_space()
        write(self, sample)

    monkeypatch.setattr(shards.StagingWriter, "write", full_in_shards)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="No space left"):
        extract([str(film)], out, layout="sbs", workers=0, progress=False)
    assert not list(out.rglob(".tmp-*"))
    assert not (out / "films" / "f.json").exists()


def test_two_runs_on_one_scheduler_into_different_corpora(tmp_path):
    """Task keys named the film, unit and recipe but not the corpus: a second run of the same
    film and recipe on a shared `--scheduler` got the first run's tasks (Dask dedupes keys),
    its work units were staged in the other corpus, and both films failed with
    FileNotFoundError .../.work/f/unit-00000.json."""
    import threading

    from distributed import LocalCluster

    from filmmine import synth
    from filmmine.synth import FilmSpec, ShotSpec

    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), view_width=320,
                    view_height=180, seed=1)
    synth.write_film(spec, tmp_path / "f.mp4", "sbs")
    reports = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        def run(name):
            reports[name] = extract([str(tmp_path / "f.mp4")], tmp_path / name, layout="sbs",
                                    scheduler=cluster.scheduler_address, progress=False)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name in ("a", "b"):
        assert reports[name].exit_code == 0, reports[name].summary()
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_staged_units_of_other_inputs_are_mined_again(library, tmp_path):
    """A run killed after staging units, then run again with another --layout: the staged
    units were made from other views, so they are mined again, never mixed into the film
    (the corpus equals a clean run's); and a finished film asked for in another layout is
    refused with a reason, not silently kept."""
    from filmmine.media.probe import probe_film
    from filmmine.recipe import load_recipe
    from filmmine.run.plan import plan_units, unit_context
    from filmmine.run.unit import mine_unit

    film = str(library / "film_sbs.mp4")
    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "default"\n[decode]\nchunk_s = 2.0\n')
    rec = load_recipe(recipe)
    out = tmp_path / "out"
    stale = probe_film("film_sbs", (film,), "sbs")
    units = plan_units(stale, 2.0, lead=unit_context(stale.fps, rec)[0])  # the runner's plan
    assert len(units) >= 3
    for u in units[:2]:  # what the killed --layout sbs run had staged
        mine_unit(stale, u, rec, out / ".work" / "film_sbs")
    report = extract([film], out, layout="half-sbs", recipe=recipe, workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    clean = tmp_path / "clean"
    assert extract([film], clean, layout="half-sbs", recipe=recipe, workers=0,
                   progress=False).exit_code == 0
    for name in ("shards/film_sbs-00000.tar", "films/film_sbs.frames.parquet"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    again = extract([film], out, layout="sbs", recipe=recipe, workers=0, progress=False)
    (entry,) = [i for i in again.inputs if i.film == "film_sbs"]
    assert entry.status == "failed" and "as half-sbs, not sbs" in entry.reason


def test_films_probed_in_the_driver_or_in_tasks_get_the_same_outcome(tmp_path, monkeypatch):
    """A local run probes its first films in the driver while the cluster starts, the rest in
    probe tasks. Either way a film gets the same status, reason and corpus: run once with every
    film probed in the driver and once with none, on good, empty, random and mono files."""
    import numpy as np

    import filmmine.run.extract as run_extract
    from filmmine import synth

    lib = tmp_path / "lib"
    lib.mkdir()
    spec = synth.FilmSpec(shots=(synth.ShotSpec("textured", 30, seed=2),), seed=3)
    synth.write_film(spec, lib / "good.mp4", "sbs")
    (lib / "good.mp4.truth.json").unlink()
    (lib / "empty.mp4").write_bytes(b"")
    (lib / "noise.mkv").write_bytes(np.random.default_rng(0).bytes(50_000))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=24:duration=2", "-pix_fmt", "yuv420p",
                    str(lib / "mono.mp4")], check=True)
    real = run_extract.early_probes
    asked: dict[str, list[str]] = {}
    outcome = {}
    for name, n in (("driver", 99), ("tasks", 0)):
        def early(films, _n, name=name, n=n):
            asked[name] = [f.name for f in films[:n]]
            return real(films, n)
        monkeypatch.setattr(run_extract, "early_probes", early)
        out = tmp_path / name
        report = extract([str(lib)], out, workers=0, progress=False)
        outcome[name] = ([(i.film, i.status, i.reason) for i in report.inputs],
                         tree_digest(out / "shards"))
    assert sorted(asked["driver"]) == ["empty", "good", "mono", "noise"] and asked["tasks"] == []
    assert outcome["driver"] == outcome["tasks"]
    statuses = {film: status for film, status, _ in outcome["driver"][0]}
    assert statuses == {"good": "ok", "empty": "failed", "noise": "failed", "mono": "skipped"}


def test_films_are_mined_while_the_library_is_still_being_probed(tmp_path):
    """A film's units run before the next films' probes once enough units wait to fill the
    slots: on one worker, each film is mined before the next film is probed. Before, every
    film of the library was probed first (each ffprobe reads a whole film), and a run killed
    during that had no film to keep."""
    from filmmine import synth

    lib = tmp_path / "lib"
    lib.mkdir()
    spec = synth.FilmSpec(shots=(synth.ShotSpec("textured", 24, seed=1),), view_width=160,
                          view_height=96, seed=4)
    synth.write_film(spec, lib / "f0.mp4", "sbs")
    (lib / "f0.mp4.truth.json").unlink()
    for k in range(1, 4):
        shutil.copy(lib / "f0.mp4", lib / f"f{k}.mp4")
    log = tmp_path / "run.jsonl"
    report = extract([str(lib)], tmp_path / "out", layout="sbs", workers=1, progress=False,
                     log_jsonl=log)
    assert report.exit_code == 0, report.summary()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    order = [(e["event"], e["film"]) for e in events if e["event"] in ("probed", "film")]
    assert order == [(what, f"f{k}") for k in range(4) for what in ("probed", "film")], order


def _executing(dask_worker) -> list[str]:
    """Keys of the tasks a worker is running now."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def test_a_worker_killed_while_mining_loses_nothing(library, corpus, tmp_path):
    """A worker process killed (SIGKILL: preemption, the OOM killer) while it runs a work
    unit: Dask's nanny starts another, the scheduler gives the unit to a worker again, and
    the corpus is byte-identical to an uninterrupted run's, with no temp file left."""
    import threading

    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    killed: list[tuple[str, str]] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_one_mid_unit() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                running = client.run(_executing)
                for addr, keys in running.items():
                    units = [k for k in keys if k.startswith("unit-")]
                    if units and addr in pids:
                        time.sleep(0.2)   # into the unit: decoding, staging samples
                        os.kill(pids[addr], signal.SIGKILL)
                        killed.append((addr, units[0]))
                        return
                time.sleep(0.02)

        thread = threading.Thread(target=kill_one_mid_unit)
        thread.start()
        report = extract([str(library / "library.json")], out,
                         scheduler=cluster.scheduler_address, progress=False)
        thread.join()
    assert killed, "no work unit was seen running"
    assert report.exit_code == 0, report.summary()
    assert not list(out.rglob(".tmp-*"))
    assert tree_digest(out) == tree_digest(corpus)


def _unit_killer(film: str, log: Path):
    """A Dask worker plugin that SIGKILLs its worker when it starts a unit of ``film`` (as
    the OOM killer would), after appending the task's key to ``log``."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnUnit(WorkerPlugin):   # defined in a function: pickled by value for workers
        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith(f"unit-{film}-"):
                with open(log, "a") as f:
                    f.write(f"{key}\n")
                os.kill(os.getpid(), signal.SIGKILL)

    return KillOnUnit()


def test_a_film_whose_unit_kills_every_worker_fails_alone(library, corpus, tmp_path):
    """A work unit that kills each worker that runs it (a film too big for a worker's
    memory) fails its film after Dask's retries with a one-line reason that says so; the
    other films are mined as in a clean run."""
    from distributed import Client, LocalCluster

    victim = "film_tab"
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(_unit_killer(victim, tmp_path / "deaths.txt"),
                               name="kill-on-unit")
        report = extract([str(library / "library.json")], out,
                         scheduler=cluster.scheduler_address, progress=False)
    assert report.exit_code == 1, report.summary()
    by_film = {i.film: i for i in report.inputs}
    assert by_film[victim].status == "failed"
    reason = by_film[victim].reason
    assert "\n" not in reason and "internal error" not in reason, reason
    assert "worker" in reason and "died" in reason and "memory" in reason, reason
    assert not (out / "films" / f"{victim}.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    failed = {i["film"]: i["reason"] for i in manifest["inputs"] if i["status"] != "ok"}
    assert failed == {victim: reason}
    clean, got = tree_digest(corpus), tree_digest(out)
    others = [k for k in clean if k.startswith(("films/", "shards/")) and victim not in k]
    assert len(others) >= 8
    assert {k: got.get(k) for k in others} == {k: clean[k] for k in others}
    assert not list(out.rglob(".tmp-*"))


def test_a_film_given_up_stops_killing_workers(library, tmp_path):
    """A film cut into 7 units, each of which kills the worker that starts it: once one of
    them has failed (Dask's four tries), the film's units still queued are dropped, not each
    run to four more worker deaths (28 in all): at most the 4 tries of each of the two units
    that can be running at once."""
    from distributed import Client, LocalCluster

    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "default"\n[decode]\nchunk_s = 2.0\n')
    deaths = tmp_path / "deaths.txt"
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(_unit_killer("film_tab", deaths), name="kill-on-unit")
        report = extract([str(library / "film_tab.mp4")], out, layout="tab", recipe=recipe,
                         scheduler=cluster.scheduler_address, progress=False)
    (entry,) = report.inputs
    assert entry.status == "failed" and "died on each of 4 tries" in entry.reason
    assert [i["status"] for i in json.loads((out / "manifest.json").read_text())["inputs"]] \
        == ["failed"]
    keys = deaths.read_text().split()
    assert 4 <= len(keys) <= 8, keys
    assert len({k.split("-")[2] for k in keys}) <= 2, keys     # units ever started


def test_a_second_run_on_a_corpus_being_written_stops_at_once(library, corpus, tmp_path):
    """The same command started twice (a job submitted again): the second stops at once with
    one line naming the first, which is not disturbed (its corpus is a clean run's bytes);
    the lock file is gone when the first ends. (After kill -9 the kernel drops the lock:
    test_kill_9_at_several_points_then_rerun_is_byte_identical resumes through it.)"""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
           "--out", str(out), "--workers", "2", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / ".extract.lock"
    t0 = time.monotonic()
    while not (lock.is_file() and lock.read_text()):   # the holder writes its pid once locked
        assert time.monotonic() - t0 < 60 and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    still_running = first.poll() is None
    _, first_err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr
    assert still_running, "the first run ended before the second started: no overlap tested"
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and "being written by another filmmine extract" in err[0], err
    assert f"pid {first.pid} on " in err[0]
    assert first.returncode == 0, first_err
    assert not lock.exists()
    assert tree_digest(out) == tree_digest(corpus)


def _gate_unit_0(flag: Path, log: Path):
    """A Dask worker plugin (set up on each worker, those that join later too) that holds
    the start of unit 0 until another unit has started somewhere, for at most 60 s, and
    appends how the wait ended to ``log``; ``flag``'s parent gets ``unit0-started``."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class GateUnit0(WorkerPlugin):   # defined in a function: pickled by value for workers
        def setup(self, worker):
            import filmmine.run.tasks as tasks

            mine = tasks.mine_unit

            def gated(probe, unit, *args, **kwargs):
                if unit.index == 0:
                    (flag.parent / "unit0-started").touch()
                    t0 = time.monotonic()
                    while not flag.exists() and time.monotonic() - t0 < 60:
                        time.sleep(0.05)
                    with open(log, "a") as f:
                        f.write("released\n" if flag.exists() else "timed out\n")
                else:
                    flag.touch()
                return mine(probe, unit, *args, **kwargs)

            tasks.mine_unit = gated

    return GateUnit0()


def test_a_worker_that_joins_mid_unit_gets_work_at_once(library, tmp_path):
    """A remote cluster whose workers arrive one by one (a batch system starting jobs): a
    worker that joins while every slot is busy gets a waiting unit within seconds, not only
    once a running unit ends. Unit 0 is held until another unit starts; the second worker
    joins while it is held."""
    import threading

    from distributed import Client

    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "default"\n[decode]\nchunk_s = 4.0\n')
    gate = tmp_path / "gate"
    gate.mkdir()
    out, result = tmp_path / "out", {}
    with _DaskCluster(tmp_path) as cluster:
        cluster.add_worker()
        cluster.wait_for_workers(1)
        with Client(cluster.address, timeout=30) as client:
            client.register_plugin(_gate_unit_0(gate / "other-unit-started",
                                                tmp_path / "gate.log"), name="gate-unit-0")

            def run() -> None:
                result["report"] = extract([str(library / "film_tab.mp4")], out,
                                           layout="tab", recipe=recipe,
                                           scheduler=cluster.address, progress=False)

            thread = threading.Thread(target=run)
            thread.start()
            _wait_for(gate / "unit0-started", timeout_s=120)
            cluster.add_worker()
            thread.join(timeout=300)
    report = result["report"]
    assert report.exit_code == 0, report.summary()
    assert report.records["film_tab"]["units"] >= 2, report.records
    assert (tmp_path / "gate.log").read_text() == "released\n"


def _other_opencv_on_worker(name):
    """A Dask worker plugin: the worker called ``name`` reports another OpenCV version (a
    node set up with other packages than the driver's)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class OtherOpenCV(WorkerPlugin):   # defined in a function: pickled by value for workers
        def setup(self, worker):
            if worker.name != name:
                return
            import filmmine.run.tasks as tasks

            real = tasks.software_stack

            def other(torch=False):
                return tuple(sorted({**dict(real(torch)), "opencv": "0.0.0"}.items()))

            tasks.software_stack = other

    return OtherOpenCV()


def test_a_worker_with_other_versions_stops_the_run(library, tmp_path):
    """One worker of the cluster has another OpenCV than the driver: its labels would be
    other bytes, mixed silently into the corpus. The first task it gets stops the run with
    one line naming the worker and the versions; nothing of its is staged or assembled."""
    import cv2
    from distributed import Client, LocalCluster

    from filmmine.errors import ClusterError

    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(_other_opencv_on_worker(1), name="other-opencv")
        odd = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == 1)
        with pytest.raises(ClusterError) as e:
            extract([str(library / "library.json")], out, scheduler=cluster.scheduler_address,
                    progress=False)
    why = str(e.value)
    assert "\n" not in why
    assert f"Dask worker {odd} " in why, why
    assert f"opencv 0.0.0 (driver: {cv2.__version__})" in why, why
    assert "install the same versions on every node" in why
    assert not (out / "manifest.json").exists()


def test_the_software_stack_names_what_differs():
    from filmmine.run.tasks import software_stack, stack_mismatch

    mine = software_stack()
    keys = dict(mine)
    assert {"filmmine", "ffmpeg", "numpy", "opencv", "zlib", "scenedetect"} <= keys.keys()
    assert "torch" in dict(software_stack(True)) and "torch" not in keys
    assert stack_mismatch(mine, mine, "w") is None
    other = tuple(sorted({**keys, "numpy": "1.0", "zlib": "9"}.items()))
    why = stack_mismatch(mine, other, "worker w")
    assert why.startswith("worker w runs other versions than the driver: numpy 1.0 (driver: ")
    assert f"zlib 9 (driver: {keys['zlib']})" in why


def test_a_cluster_without_workers_is_said_to_be_waited_for(library, tmp_path, monkeypatch,
                                                            caplog):
    """A scheduler whose workers have not started (batch jobs still queued): the run says
    once that it waits for a worker, and goes on when one joins."""
    import logging
    import threading

    import filmmine.run.scheduler as scheduler

    monkeypatch.setattr(scheduler, "NO_SLOTS_WARN_S", 1.0)
    monkeypatch.setattr(scheduler, "SLOTS_REFRESH_S", 0.2)
    out, result = tmp_path / "out", {}
    caplog.set_level(logging.WARNING, logger="filmmine.run.scheduler")
    with _DaskCluster(tmp_path) as cluster:
        def run() -> None:
            result["report"] = extract([str(library / "film_sbs.mp4")], out, layout="sbs",
                                       scheduler=cluster.address, progress=False)

        thread = threading.Thread(target=run)
        thread.start()
        t0 = time.monotonic()
        while not any("waits for one" in r.getMessage() for r in caplog.records):
            assert time.monotonic() - t0 < 60 and thread.is_alive()
            time.sleep(0.1)
        cluster.add_worker()
        thread.join(timeout=300)
    said = [r.getMessage() for r in caplog.records if "waits for one" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"no Dask worker connected to the scheduler at {cluster.address}")
    assert result["report"].exit_code == 0, result["report"].summary()


def test_a_gpu_run_without_gpu_workers_says_how_to_start_them():
    from filmmine.run.cluster import no_slots_warning

    gpu = no_slots_warning("cuda", "tcp://h:1", 31.2)
    assert "offers the GPU resource a --device cuda unit needs, for 31 s" in gpu
    assert "--resources GPU=1" in gpu
    assert "GPU" not in no_slots_warning("cpu", "tcp://h:1", 30)


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare_mounts(),
                    reason="needs unshare -m (mount namespaces) to give a worker its own disk")
def test_a_worker_that_does_not_see_the_corpus_stops_the_run(library, tmp_path):
    """A worker whose --out path is its own disk (a node-local /scratch instead of a shared
    file system; here a tmpfs mounted over it in the worker's own mount namespace): the
    first task it gets stops the run with one line naming the worker and saying what every
    worker must see; nothing it mined is referenced."""
    from distributed import Client

    from filmmine.errors import ClusterError

    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "corpus"
    with _DaskCluster(tmp_path) as cluster:
        cluster.add_worker()                                    # sees the driver's disk
        cluster.add_worker(hide=shared, name="local-disk")      # its own disk, same path
        cluster.wait_for_workers(2)
        with Client(cluster.address, timeout=30) as c:
            odd = next(a for a, w in c.scheduler_info()["workers"].items()
                       if w["name"] == "local-disk")
        with pytest.raises(ClusterError) as e:
            extract([str(library / "library.json")], out, scheduler=cluster.address,
                    progress=False)
    why = str(e.value)
    assert "\n" not in why
    assert why.startswith(f"Dask worker {odd} (host "), why
    assert f"does not see {out} as the driver does (.extract.run of this run is not there)" \
        in why, why
    assert "every worker must see --out and the library at the same paths" in why
    assert not (out / "manifest.json").exists() and not (out / ".extract.run").exists()


@pytest.mark.skipif(not _can_unshare_mounts(),
                    reason="needs unshare -m (mount namespaces) to hide the library from a worker")
def test_a_worker_that_does_not_see_the_library_stops_the_run(library, tmp_path):
    """A worker on a node without the library's mount (an empty tmpfs over it, in the
    worker's own mount namespace): the run stops in one line naming the worker and the file
    it does not see, instead of failing good films as missing."""
    from distributed import Client

    from filmmine.errors import ClusterError

    out = tmp_path / "out"
    with _DaskCluster(tmp_path) as cluster:
        cluster.add_worker(hide=library, name="no-library")
        cluster.wait_for_workers(1)
        with Client(cluster.address, timeout=30) as c:
            (odd,) = c.scheduler_info()["workers"]
        with pytest.raises(ClusterError) as e:
            extract([str(library / "film_sbs.mp4")], out, layout="sbs",
                    scheduler=cluster.address, progress=False)
    why = str(e.value)
    assert "\n" not in why
    assert why.startswith(f"Dask worker {odd} (host "), why
    assert f"does not see {library / 'film_sbs.mp4'}, which the driver does" in why, why
    assert not (out / "manifest.json").exists()


def _delete_on_first_unit(victim: Path):
    """A Dask worker plugin: the first unit that starts on a worker deletes ``victim`` (a
    film file removed from the library during a long run)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class DeleteOnFirstUnit(WorkerPlugin):   # defined in a function: pickled by value
        def setup(self, worker):
            import filmmine.run.tasks as tasks

            mine = tasks.mine_unit

            def deleting(probe, unit, *args, **kwargs):
                victim.unlink(missing_ok=True)
                return mine(probe, unit, *args, **kwargs)

            tasks.mine_unit = deleting

    return DeleteOnFirstUnit()


def test_a_film_deleted_during_the_run_fails_alone(library, tmp_path):
    """A film file that the driver saw at the start is gone by the time a worker opens it
    (deleted or moved during a run of days): that film fails with a one-line reason and
    the rest is mined, not "a worker does not see it", which stops the run."""
    from distributed import Client

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(library / "film_sbs.mp4", lib / name)
    out = tmp_path / "out"
    with _DaskCluster(tmp_path) as cluster:
        cluster.add_worker()
        cluster.wait_for_workers(1)
        with Client(cluster.address, timeout=30) as client:
            client.register_plugin(_delete_on_first_unit(lib / "b.mp4"), name="delete-b")
            report = extract([str(lib / "a.mp4"), str(lib / "b.mp4")], out, layout="sbs",
                             scheduler=cluster.address, progress=False)
    assert report.exit_code == 1, report.summary()
    assert report.records["a"]["counts"]["accepted"] > 0, report.records
    why = f"missing file: {lib / 'b.mp4'} (gone since the run started)"
    assert [(i.film, i.reason) for i in report.failed] == [("b", why)], report.failed
    man = json.loads((out / "manifest.json").read_text())
    assert {i["film"]: i["status"] for i in man["inputs"]} == {"a": "ok", "b": "failed"}
    assert list(man["films"]) == ["a"]


def test_sigterm_closes_the_run_in_one_line_and_the_rerun_resumes(library, corpus, tmp_path):
    """SIGTERM to `filmmine extract` (a batch system's walltime): exit 143 with one line
    saying how to go on, no traceback, the lock and the run token gone; the same command
    then gives a clean run's bytes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
           "--out", str(out), "--workers", "2", "--quiet"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list((out / ".work").glob("*/unit-*.json")):    # a unit is staged
        assert time.monotonic() - t0 < 300 and run.poll() is None
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["filmmine: terminated (SIGTERM); rerun the same command to resume"], err
    assert not (out / ".extract.lock").exists() and not (out / ".extract.run").exists()
    assert not (out / "manifest.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert tree_digest(out) == tree_digest(corpus)


KILLING_FFMPEG = '''#!{python}
"""ffmpeg, except that decodes (the runs with a showinfo filter) of a film named in
KILL_EVERY die mid-stream, and so does the first decode of any other film (KILL_ONCE: the
marker file it creates). Dying: after a few low-resolution frames, the real ffmpeg and this
process are killed by SIGKILL, as the OOM killer or a kill -9 would."""
import os, signal, subprocess, sys

REAL = {real!r}
args = sys.argv[1:]
decode = any("showinfo" in a for a in args)
every = os.environ.get("KILL_EVERY", "")
die = decode and bool(every) and any(every in a for a in args)
if decode and not die:
    try:
        os.close(os.open(os.environ["KILL_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        die = True
    except FileExistsError:
        pass
if not die:
    os.execv(REAL, [REAL, *args])
proc = subprocess.Popen([REAL, *args], stdout=subprocess.PIPE, close_fds=False)
got = 0
while got < 300000:   # some frames of the unit (160x90 BGR: 43 kB each)
    chunk = proc.stdout.read1(65536)
    if not chunk:
        break
    os.write(1, chunk)
    got += len(chunk)
proc.kill()
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_killed_decoder_is_mined_again_never_recorded_as_finished(library, corpus, tmp_path,
                                                                    monkeypatch):
    """ffmpeg killed mid-unit (kill -9 of the decoder alone, not its worker): the unit fails
    and is run again. Killed once: the film is mined as in a clean run. Killed on every try:
    its film fails with the reason (not "ok ... decoded 37 of 120 frames"), the others are
    mined, and a rerun with a working decoder gives the clean corpus."""
    import shutil as sh

    fake = tmp_path / "ffmpeg"
    fake.write_text(KILLING_FFMPEG.format(python=sys.executable, real=sh.which("ffmpeg")))
    fake.chmod(0o755)
    from filmmine.media.ffmpeg_bin import find_binary

    monkeypatch.setenv("FILMMINE_FFMPEG", str(fake))
    monkeypatch.setenv("KILL_EVERY", "film_tab.")
    monkeypatch.setenv("KILL_ONCE", str(tmp_path / "killed-once"))
    find_binary.cache_clear()
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    try:
        report = extract([str(library / "library.json")], out, workers=2, progress=False,
                         log_jsonl=log)
    finally:
        monkeypatch.delenv("FILMMINE_FFMPEG")
        find_binary.cache_clear()
    assert (tmp_path / "killed-once").exists()
    by_film = {i.film: i for i in report.inputs}
    assert by_film["film_tab"].status == "failed", report.summary()
    assert by_film["film_tab"].reason.startswith("decoder killed by SIGKILL after ")
    assert {f: i.status for f, i in by_film.items() if f != "film_tab"} == \
        dict.fromkeys(("film_sbs", "film_half-sbs", "film_half-tab", "film_separate"), "ok")
    assert not (out / "films" / "film_tab.json").exists()
    retries = [json.loads(line) for line in log.read_text().splitlines()
               if json.loads(line)["event"] == "retry"]
    tab = [r for r in retries if r["film"] == "film_tab"]
    assert [r["attempt"] for r in tab] == [2, 3] and len(retries) == 3, retries
    clean, got = tree_digest(corpus), tree_digest(out)
    others = [k for k in clean if k.startswith(("films/", "shards/")) and "film_tab" not in k]
    assert {k: got.get(k) for k in others} == {k: clean[k] for k in others}

    again = extract([str(library / "library.json")], out, workers=2, progress=False)
    assert again.exit_code == 0, again.summary()
    assert tree_digest(out) == tree_digest(corpus)


def test_ctrl_c_at_a_terminal_while_workers_start_is_one_line(library, tmp_path):
    """Ctrl-C at a terminal interrupts the whole process group. While the local workers were
    starting, they printed some 100 lines of tracebacks (KeyboardInterrupt in their imports)
    before the run's one line. Now the workers leave it to the driver: exit 130 and the one
    line, also when the Ctrl-C comes while the driver waits for them to start."""
    import psutil

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(library / "library.json"),
           "--out", str(out), "--workers", "2", "--quiet"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True,   # a group of its own, as a terminal's job
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()

    def started() -> bool:   # the first worker process exists, still importing
        with contextlib.suppress(psutil.Error):
            return any("--multiprocessing-fork" in c.cmdline()
                       for c in psutil.Process(run.pid).children(recursive=True))
        return False

    while not started():
        assert time.monotonic() - t0 < 300 and run.poll() is None
        time.sleep(0.005)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["filmmine: interrupted; rerun the same command to resume"], err
