"""The batch job on a dask LocalCluster with 2 worker processes (tiny stacks, untrained SAM2).

One cluster serves the whole module; each worker loads the model once (the worker plugin
keeps it across jobs). Results are compared with direct ``Session`` runs in this process.
"""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from lora_fixtures import identity_adapter_file
from untrained import TEST_IMAGE_SIZE, TEST_MODEL

distributed = pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

from napari_sam_lora.batch import outputs, segment, segment_steps  # noqa: E402
from napari_sam_lora.cli import main as cli_main  # noqa: E402
from napari_sam_lora.data.readers import open_stack  # noqa: E402
from napari_sam_lora.engine.tracking.session import Session  # noqa: E402

N_FRAMES = 4
SHAPE = (64, 64)
SEED_FRAME = N_FRAMES // 2  # --start middle
#: Workers and direct runs use one torch thread: float sums in another order (other thread
#: counts) can flip a boundary pixel (1 of 16384 measured), which is not a second path.
JOB = {"model": TEST_MODEL, "image_size": TEST_IMAGE_SIZE, "torch_threads": 1}


@pytest.fixture
def one_thread():
    """Direct runs in this process with the workers' single torch thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A LocalCluster with 2 worker processes; workers cache checkpoints in a temp folder."""
    cache = tmp_path_factory.mktemp("worker_cache")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        env={"NAPARI_SAM_LORA_CACHE": str(cache)},
    )
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


def _experiment(root, kinds=("two_objects", "moving_disk", "moving_disk")):
    """TIFF stacks s0, s1, ... and 2D seed labels (the middle frame's truth) in seeds/."""
    from napari_sam_lora.synthetic import make_stack

    (root / "seeds").mkdir(parents=True)
    truths = {}
    for i, kind in enumerate(kinds):
        image, truth = make_stack(kind, n_frames=N_FRAMES, shape=SHAPE, seed=i)
        tifffile.imwrite(root / f"s{i}.tif", image, photometric="minisblack")
        tifffile.imwrite(root / "seeds" / f"s{i}.tif", truth[SEED_FRAME])
        truths[f"s{i}"] = (image, truth)
    return truths


def _direct(model, image, seed):
    """What the widget does: a Session, one mask per object, propagate both ways."""
    session = Session(image, model=model)
    for obj_id in np.unique(seed)[1:]:
        session.add_mask(SEED_FRAME, int(obj_id), seed == obj_id)
    return session.propagate_all(direction="both")


def _labels(path):
    return np.asarray(open_stack(path)[...])


def _read_summary(folder):
    with open(folder / "summary.csv", newline="") as handle:
        return {row["stack"]: row for row in csv.DictReader(handle)}


def _summary(result):
    return _read_summary(result.summary.parent)


@pytest.mark.slow
def test_two_workers_give_the_labels_of_direct_sessions(client, tiny_model, tmp_path, one_thread):
    truths = _experiment(tmp_path / "data")
    result = segment(
        str(tmp_path / "data" / "s*.tif"),
        tmp_path / "out",
        seeds=tmp_path / "data" / "seeds",
        client=client,
        **JOB,
    )
    assert [r["status"] for r in result.rows] == ["done"] * 3
    assert len({r["worker"] for r in result.rows}) == 2  # both worker processes took stacks
    for name, (image, truth) in truths.items():
        batch = _labels(tmp_path / "out" / f"{name}_labels.ome.zarr")
        assert batch.shape == truth.shape and batch.dtype == np.int32
        assert np.array_equal(batch, _direct(tiny_model, image, truth[SEED_FRAME])), name
    summary = _summary(result)
    assert summary["s0"]["objects"] == "2" and summary["s1"]["objects"] == "1"
    assert {r["frames"] for r in summary.values()} == {str(N_FRAMES)}
    manifest = json.loads(result.manifest.read_text())
    assert {n: e["status"] for n, e in manifest["stacks"].items()} == dict.fromkeys(truths, "done")


@pytest.mark.slow
def test_points_table_as_tiff_matches_direct_clicks(client, tiny_model, tmp_path, one_thread):
    truths = _experiment(tmp_path / "data", kinds=("moving_disk", "two_objects"))
    table = tmp_path / "clicks.csv"
    lines = ["stack,frame,object,row,col,positive"]
    clicks = {}
    for name, (_, truth) in truths.items():
        for obj_id in np.unique(truth[1])[1:]:
            rows, cols = np.nonzero(truth[1] == obj_id)
            clicks[(name, int(obj_id))] = [(rows.mean(), cols.mean(), 1), (0.0, 0.0, 0)]
            lines += [f"{name},1,{obj_id},{r},{c},{p}" for r, c, p in clicks[(name, obj_id)]]
    table.write_text("\n".join(lines) + "\n")
    result = segment(
        [tmp_path / "data" / "s0.tif", tmp_path / "data" / "s1.tif"],
        tmp_path / "out",
        points=table,
        output_format="tiff",
        client=client,
        **JOB,
    )
    assert result.ok
    for name, (image, _) in truths.items():
        session = Session(image, model=tiny_model)
        for (stack, obj_id), pts in sorted(clicks.items()):
            if stack == name:
                session.add_points(1, obj_id, [p[:2] for p in pts], [p[2] for p in pts])
        expected = session.propagate_all("both")
        assert np.array_equal(_labels(tmp_path / "out" / f"{name}_labels.tif"), expected)


@pytest.mark.slow
def test_corrupt_stack_is_reported_and_the_cli_runs_on_a_scheduler_address(
    client, tmp_path, capsys
):
    _experiment(tmp_path / "data", kinds=("moving_disk", "moving_disk"))
    (tmp_path / "data" / "s9.tif").write_bytes(b"this is not a TIFF" * 10)
    tifffile.imwrite(tmp_path / "data" / "seeds" / "s9.tif", np.ones(SHAPE, np.uint8))
    code = cli_main(
        [
            "segment",
            str(tmp_path / "data" / "s*.tif"),
            "-o",
            str(tmp_path / "out"),
            "--seeds",
            str(tmp_path / "data" / "seeds"),
            "--model",
            TEST_MODEL,
            "--image-size",
            str(TEST_IMAGE_SIZE),
            "--scheduler",
            client.scheduler.address,
            "--no-progress",
            "--tracks",
            "ctc",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1  # not every stack is done
    assert "dashboard:" in err and "dashboard" not in out
    assert "2 done, 1 failed" in out and "FAILED s9: StackError" in out and "not a TIFF" in out
    summary = _read_summary(tmp_path / "out")
    assert [summary[n]["status"] for n in ("s0", "s1", "s9")] == ["done", "done", "failed"]
    assert "s9.tif: cannot read the stack" in summary["s9"]["error"]
    assert not (tmp_path / "out" / "s9_labels.ome.zarr").exists()
    for name in ("s0", "s1"):  # --tracks: CTC tracks beside each stack's labels
        tracks = tmp_path / "out" / f"{name}_labels.tracks.ctc"
        assert (tracks / "man_track.txt").read_text().split()[0] == "1"
        assert f"tracks: {tracks}" in out
    assert not (tmp_path / "out" / "s9_labels.tracks.ctc").exists()
    assert client.scheduler_info()["workers"]  # the test's cluster is still up


@pytest.mark.slow
def test_resume_after_an_interrupted_run(client, tmp_path):
    _experiment(tmp_path / "data")
    out = tmp_path / "out"
    args = dict(seeds=tmp_path / "data" / "seeds", client=client, **JOB)
    steps = segment_steps(str(tmp_path / "data" / "s*.tif"), out, **args)
    first = next(step for step in steps if step.row is not None)
    steps.close()  # interrupted after one stack
    summary = _read_summary(out)
    assert summary[first.row["stack"]]["status"] == "done"
    assert sorted(r["status"] for r in summary.values()).count("done") >= 1
    manifest = outputs.read_manifest(out)["stacks"]
    done = {n for n, e in manifest.items() if e["status"] == "done"}
    assert first.row["stack"] in done
    kept = out / f"{first.row['stack']}_labels.ome.zarr"
    stamp = (kept / ".zattrs").stat().st_mtime_ns
    (out / ".s1_labels.ome.zarr.tmp-dead").mkdir(exist_ok=True)  # a half-written output

    result = segment(str(tmp_path / "data" / "s*.tif"), out, **args)
    status = {r["stack"]: r["status"] for r in result.rows}
    assert {n for n, s in status.items() if s == "skipped"} == done
    assert {n for n, s in status.items() if s == "done"} == {"s0", "s1", "s2"} - done
    assert (kept / ".zattrs").stat().st_mtime_ns == stamp  # not rewritten
    assert not any(".tmp-" in p.name for p in out.iterdir())

    # a changed seed file makes its stack's output stale: only that stack is redone
    name = sorted(done)[0]
    seed_path = tmp_path / "data" / "seeds" / f"{name}.tif"
    seed = tifffile.imread(seed_path)
    tifffile.imwrite(seed_path, (seed > 0).astype(np.uint8))
    again = segment(str(tmp_path / "data" / "s*.tif"), out, **args)
    assert [r["stack"] for r in again.rows if r["status"] == "done"] == [name]


def _adapter_file(model, path):
    """An (untrained, identity) adapter for object 1 saved from ``model``."""
    return identity_adapter_file(model, path)


def _tamper(json_path, **base):
    doc = json.loads(json_path.read_text())
    doc["base"].update(base)
    json_path.write_text(json.dumps(doc))


def test_adapter_of_another_variant_refused_on_the_driver(tiny_model, tmp_path):
    from napari_sam_lora.engine.learning.adapters import AdapterFileError

    _experiment(tmp_path / "data", kinds=("moving_disk",))
    _tamper(_adapter_file(tiny_model, tmp_path / "small"), variant="sam2.1_hiera_small")
    with pytest.raises(
        AdapterFileError, match=r"(?s)refused; nothing was run.*trained on sam2\.1_hiera_small"
    ):
        segment(  # no client: the check comes before any cluster is started
            tmp_path / "data" / "s0.tif",
            tmp_path / "out",
            seeds=tmp_path / "data" / "seeds",
            adapters=[tmp_path / "small.safetensors"],
            **JOB,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_adapter_of_another_base_model_refused_before_any_stack(client, tiny_model, tmp_path):
    from napari_sam_lora.engine.learning.adapters import AdapterFileError

    _experiment(tmp_path / "data", kinds=("moving_disk",))
    _tamper(_adapter_file(tiny_model, tmp_path / "other"), decoder_sha256="0" * 64)
    with pytest.raises(AdapterFileError, match="another base model"):
        segment(
            tmp_path / "data" / "s0.tif",
            tmp_path / "out",
            seeds=tmp_path / "data" / "seeds",
            adapters=[tmp_path / "other"],
            client=client,
            **JOB,
        )
    assert not (tmp_path / "out").exists()  # no output, summary or manifest


@pytest.mark.slow
def test_adapter_assisted_batch_matches_a_direct_learner(client, tiny_model, tmp_path, one_thread):
    from napari_sam_lora import Learner
    from napari_sam_lora.engine.learning.adapters import adapter_names
    from napari_sam_lora.synthetic import make_stack

    # train an adapter on one stack, as a user correcting frame 2 in the viewer would
    image, truth = make_stack("moving_disk", n_frames=6, shape=SHAPE, seed=0)
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    with Learner(session, "strong") as learner:
        user = session.labels[2].copy()
        user[user == 1] = 0
        user[truth[2] == 1] = 1
        learner.learn(2, user)
        learner.save(tmp_path / "cells")
    assert adapter_names(tiny_model.predictor.sam_mask_decoder) == []

    data = tmp_path / "data"
    (data / "seeds").mkdir(parents=True)
    stacks = {}
    for i in (1, 2):
        image, truth = make_stack("moving_disk", n_frames=6, shape=SHAPE, seed=i)
        tifffile.imwrite(data / f"s{i}.tif", image, photometric="minisblack")
        tifffile.imwrite(data / "seeds" / f"s{i}.tif", truth[0])
        stacks[f"s{i}"] = (image, truth[0])
    result = segment(
        str(data / "s*.tif"),
        tmp_path / "out",
        seeds=data / "seeds",
        adapters=[tmp_path / "cells.safetensors"],
        start="first",
        direction="forward",
        client=client,
        **JOB,
    )
    assert result.ok
    for row in result.rows:
        image, seed = stacks[row["stack"]]
        with Learner(Session(image, model=tiny_model)) as direct:
            direct.load(tmp_path / "cells")
            direct.session.add_mask(0, 1, seed == 1)
            expected = direct.session.propagate_all("forward", assist=direct.assist_hook())
            expected = expected.copy()
            made = len(direct.adapter_frames)
        batch = _labels(tmp_path / "out" / f"{row['stack']}_labels.ome.zarr")
        assert np.array_equal(batch, expected)
        assert row["adapter_frames"] == made
    assert sum(r["adapter_frames"] for r in result.rows) > 0  # the adapter did assist


def _worker_state():
    """Run on a worker: dask's malloc variable and whether the plugin relaxed it."""
    import os

    from napari_sam_lora.batch import worker

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), worker._MALLOC_RELAXED


@pytest.mark.slow
def test_workers_allocate_like_the_direct_loop(client):
    """dask's MALLOC_TRIM_THRESHOLD_ (page faults on every tensor, docs/batch.md) is undone.

    A cluster started by the job spawns its workers without it, even after another cluster
    left it in this process's environment; on any other cluster the plugin relaxes malloc
    at setup.
    """
    from napari_sam_lora.batch import cluster
    from napari_sam_lora.batch.worker import PLUGIN_NAME, ModelPlugin

    plugin = ModelPlugin(TEST_MODEL, TEST_IMAGE_SIZE, "cpu", torch_threads=1)
    client.register_plugin(plugin, name=PLUGIN_NAME)
    for trim, relaxed in client.run(_worker_state).values():
        assert trim == "65536"  # dask's pre-spawn environment, on a cluster not ours
        assert relaxed is True

    with cluster.client(None, None, 1, 1, None, "cpu", None) as (own, threads):
        assert threads == max(1, cluster.cores())
        own.register_plugin(ModelPlugin(TEST_MODEL, TEST_IMAGE_SIZE, "cpu", (), threads))
        for trim, relaxed in own.run(_worker_state).values():
            assert trim is None  # spawned without it: glibc's own dynamic thresholds
            assert relaxed is False


def test_local_cluster_sized_to_the_machine(monkeypatch):
    from napari_sam_lora.batch import cluster

    monkeypatch.setattr(cluster, "cores", lambda: 16)
    monkeypatch.setattr(cluster, "gpus", lambda: 0)
    assert cluster.local_cluster_size(100) == (16, 1)
    assert cluster.local_cluster_size(3) == (3, 5)  # never more workers than stacks
    assert cluster.local_cluster_size(100, workers=4) == (4, 4)
    monkeypatch.setattr(cluster, "gpus", lambda: 2)
    assert cluster.local_cluster_size(100) == (2, 8)  # one worker per GPU
    assert cluster.local_cluster_size(100, device="cpu") == (16, 1)


def test_bad_options_and_missing_inputs_fail_before_anything(tmp_path):
    from napari_sam_lora.engine.core.errors import ConfigError, PromptError

    with pytest.raises(ConfigError, match="matched nothing"):
        segment(str(tmp_path / "*.tif"), tmp_path / "out", seeds=tmp_path, **JOB)
    (tmp_path / "a.tif").write_bytes(b"")
    with pytest.raises(ConfigError, match="direction"):
        segment(tmp_path / "a.tif", tmp_path / "out", seeds=tmp_path, direction="up", **JOB)
    with pytest.raises(PromptError, match=r"--seeds.*--points"):
        segment(tmp_path / "a.tif", tmp_path / "out", **JOB)
    with pytest.raises(ConfigError, match="image size"):
        segment(
            tmp_path / "a.tif", tmp_path / "out", seeds=tmp_path, model=TEST_MODEL, image_size=100
        )
    assert not (tmp_path / "out").exists()
