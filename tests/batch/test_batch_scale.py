"""The batch job at scale: memory limits, lost workers, paths, dead schedulers, the
dashboard's interface and per-frame progress (issue 18, item 6).

Tiny stacks with the untrained model; network only on 127.0.0.1; every test bounded in time.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from untrained import TEST_IMAGE_SIZE, TEST_MODEL

distributed = pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

from napari_sam_lora.batch import cluster, job, memory_limits, segment, segment_steps  # noqa: E402
from napari_sam_lora.cli import main as cli_main  # noqa: E402

N_FRAMES = 6
SHAPE = (64, 64)
JOB = {"model": TEST_MODEL, "image_size": TEST_IMAGE_SIZE, "torch_threads": 1}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A LocalCluster with one worker process, started in this (the repository's) folder."""
    cache = tmp_path_factory.mktemp("worker_cache")
    local = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
        env={"NAPARI_SAM_LORA_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
    )
    with distributed.Client(local) as dask_client:
        yield dask_client
    local.close()


def _experiment(root, n=2):
    """TIFF stacks s0, s1... and 2D seed labels (the middle frame's truth) in seeds/."""
    from napari_sam_lora.synthetic import make_stack

    (root / "seeds").mkdir(parents=True)
    for i in range(n):
        image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=SHAPE, seed=i)
        tifffile.imwrite(root / f"s{i}.tif", image, photometric="minisblack")
        tifffile.imwrite(root / "seeds" / f"s{i}.tif", truth[N_FRAMES // 2])


def _cli(*args):
    return cli_main(["segment", *map(str, args), "--model", TEST_MODEL, "--no-progress"])


def _no_cluster(*args, **kwargs):
    raise AssertionError("no cluster may be started")


# --------------------------------------------------------------------------- memory


def test_too_small_memory_limit_fails_clearly_without_running(tmp_path, capsys, monkeypatch):
    _experiment(tmp_path / "data", n=1)
    monkeypatch.setattr(cluster, "client", _no_cluster)
    began = time.monotonic()
    code = _cli(
        tmp_path / "data" / "s0.tif",
        "-o",
        tmp_path / "out",
        "--seeds",
        tmp_path / "data" / "seeds",
        "--image-size",
        TEST_IMAGE_SIZE,
        "--memory-limit",
        "300MB",
    )
    out, _ = capsys.readouterr()
    assert time.monotonic() - began < 30
    assert code == 1
    assert "1 failed" in out
    assert "FAILED s0: stack s0 needs about" in out
    assert "a worker has 0.3 GB (--memory-limit)" in out
    assert not (tmp_path / "out" / "s0_labels.ome.zarr").exists()
    assert "needs about" in (tmp_path / "out" / "summary.csv").read_text()


def _huge_stack(root):
    """A 3×20000×20000 zarr stack (nothing written: chunks are the fill value) and a click."""
    root.mkdir(parents=True)
    zarr.open_array(
        str(root / "huge.zarr"),
        mode="w",
        shape=(3, 20000, 20000),
        chunks=(1, 2000, 2000),
        dtype="uint8",
        zarr_format=2,
    )
    table = root / "clicks.csv"
    table.write_text("stack,frame,object,row,col,positive\nhuge,1,1,100,100,1\n")
    return root / "huge.zarr", table


def test_huge_stack_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    path, table = _huge_stack(tmp_path / "data")
    monkeypatch.setattr(cluster, "client", _no_cluster)
    result = segment(path, tmp_path / "out", points=table, memory_limit="4GB", **JOB)
    (row,) = result.rows
    assert row["status"] == "failed"
    assert row["error"].startswith("stack huge: 3 frame(s) of 20000×20000 need about")
    assert "what fits is" in row["error"]  # the engine's message (check_stack_fits)
    assert "(a worker has 4.0 GB, --memory-limit)" in row["error"]

    # a new LocalCluster: this machine's free memory is the limit
    monkeypatch.setattr(job.memory, "available_bytes", lambda: 3_000_000_000)
    again = segment(path, tmp_path / "out2", points=table, **JOB)
    assert "the memory free on this machine" in again.rows[0]["error"]
    assert "what fits" in again.rows[0]["error"]


def test_memory_refusal_counts_pixels_labels_and_model():
    size = memory_limits.StackSize(frames=10, shape=(1000, 1000), channels=1, pixels=10_000_000)
    model = memory_limits.model_bytes(TEST_MODEL)
    assert 1e9 < model < 2e9
    assert memory_limits.memory_refusal("s", size, 64e9, "--memory-limit", model) is None
    assert memory_limits.memory_refusal("s", size, None, "--memory-limit", model) is None  # unknown
    assert memory_limits.memory_refusal("s", None, 1e6, "--memory-limit", model) is None
    why = memory_limits.memory_refusal("s", size, 1.4e9, "the workers' memory_limit", model)
    needed = size.needs(model) / 1e9
    assert why.startswith(f"stack s needs about {needed:.1f} GB, a worker has 1.4 GB")
    assert "the workers' memory_limit" in why and "pauses a worker at 80%" in why


def test_paused_workers_end_the_wait():
    now = [0.0]
    watch = memory_limits.PauseWatch(timeout=30, clock=lambda: now[0])
    paused = {"workers": {"a": {"status": "paused", "memory_limit": 1e9}}}
    running = {"workers": {"a": {"status": "running", "memory_limit": 1e9}}}
    busy = {"status": "running", "memory_limit": 1e9, "metrics": {"memory": 9e8}}
    over = {"workers": {"a": busy}}  # over dask's pause share, not yet marked paused
    assert watch.update(paused) is None
    now[0] = 20
    assert watch.update(running) is None  # a worker ran again: the clock restarts
    now[0] = 25
    assert watch.update(over) is None
    now[0] = 56
    assert watch.update(paused) == pytest.approx(31)
    mixed = {"workers": {**paused["workers"], "b": running["workers"]["a"]}}
    assert memory_limits.PauseWatch(0).update(mixed) is None  # one worker still runs
    assert memory_limits.PauseWatch(0).update({"workers": {}}) is None
    message = memory_limits.paused_message(31, paused, "--memory-limit")
    assert "paused for 31 s" in message and "(1.0 GB, --memory-limit)" in message


# --------------------------------------------------------------------------- scheduler


def _dead_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_closed_scheduler_port_is_a_clear_error_within_10_s(tmp_path, capsys):
    _experiment(tmp_path / "data", n=1)
    address = f"tcp://127.0.0.1:{_dead_port()}"
    began = time.monotonic()
    code = _cli(
        tmp_path / "data" / "s0.tif",
        "-o",
        tmp_path / "out",
        "--seeds",
        tmp_path / "data" / "seeds",
        "--scheduler",
        address,
    )
    _, err = capsys.readouterr()
    assert time.monotonic() - began < 10
    assert code == 1
    assert f"no dask scheduler answers at {address}" in err
    assert "start one with `dask scheduler` or leave out --scheduler" in err
    assert "Traceback" not in err


def test_local_cluster_listens_on_localhost_only():
    import psutil

    with cluster.client(None, None, 1, 1, "1GB", "cpu", None) as (own, _):
        link = own.dashboard_link
        listening = [
            c.laddr
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert link.startswith("http://127.0.0.1:")
    assert listening  # the scheduler and its dashboard
    assert {a.ip for a in listening} <= {"127.0.0.1"}, listening


# --------------------------------------------------------------------------- a real job


def _scheduler_keys(dask_scheduler):
    return [str(k) for k in dask_scheduler.tasks if "napari-sam-lora" in str(k)]


@pytest.mark.slow
def test_relative_paths_frame_progress_and_released_results(client, tmp_path, monkeypatch):
    """Relative paths from another folder than the workers'; per-frame steps; each result
    released once recorded (nothing left on the scheduler to recompute)."""
    _experiment(tmp_path / "data", n=2)
    monkeypatch.chdir(tmp_path)  # the worker runs in the repository's folder
    steps = segment_steps("data/s*.tif", "out", seeds="data/seeds", client=client, **JOB)
    seen, held = [], []
    try:
        while True:
            step = next(steps)
            seen.append(step)
            if step.row is not None:  # wait (bounded) until the scheduler forgot the stack
                name = step.row["stack"]
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    keys = client.run_on_scheduler(_scheduler_keys)
                    if not any(f"-{name}-" in k for k in keys):
                        break
                    time.sleep(0.1)
                held.append([k for k in keys if f"-{name}-" in k])
    except StopIteration as stop:
        result = stop.value
    assert [r["status"] for r in result.rows] == ["done", "done"], result.rows
    assert held == [[], []]  # released as soon as recorded
    assert (tmp_path / "out" / "s0_labels.ome.zarr").is_dir()
    frame_steps = [s for s in seen if s.row is None and s.stack is not None]
    assert frame_steps, "no per-frame progress"
    assert any(0 < s.frames_done < s.frames_total for s in frame_steps)
    done = [s.frames_done for s in seen]
    assert done == sorted(done)  # never backwards
    assert seen[-1].frames_done == seen[-1].frames_total >= 2 * (N_FRAMES - 1)
    assert client.run_on_scheduler(_scheduler_keys) == []
