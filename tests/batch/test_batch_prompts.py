"""Batch prompts and files: points tables checked up front, seed matching, atomic outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_lora.batch import outputs
from napari_sam_lora.batch.prompts import match_seeds, read_points_table
from napari_sam_lora.batch.stack import PointRow, point_prompts, resolve_start, seed_prompts
from napari_sam_lora.data.readers import open_stack
from napari_sam_lora.engine.core.atomic import write_files
from napari_sam_lora.engine.core.errors import PromptError

GEOMETRY = {"a": (4, (64, 80)), "b": (2, (32, 32))}


def _csv(path, lines):
    path.write_text("stack,frame,object,row,col,positive\n" + "\n".join(lines) + "\n")
    return path


def test_points_table_lists_every_bad_row_in_one_error(tmp_path):
    table = _csv(
        tmp_path / "p.csv",
        [
            "a,0,1,10,20,1",  # line 2: fine
            "a,4,1,10,20,1",  # line 3: frame out of range
            "zz,0,1,1,1,1",  # line 4: unknown stack
            "a,1,0,5,5,1",  # line 5: object 0
            "a,1,1,64,5,1",  # line 6: row outside 64 rows
            "a,1,1,5,nan,1",  # line 7: not finite
            "a,1,1,5,5,maybe",  # line 8: bad sign
            "a,1.5,1,5,5,1",  # line 9: fractional frame
            "b,0,2,3,3,0",  # line 10: only negative clicks
        ],
    )
    with pytest.raises(PromptError) as info:
        read_points_table(table, GEOMETRY)
    message = str(info.value)
    assert "8 problem(s)" in message and "nothing was run" in message
    for line, reason in [
        (3, "frame 4 is outside a"),
        (4, "unknown stack 'zz'"),
        (5, "object 0 is invalid"),
        (6, "outside a's 64×80"),
        (7, "finite"),
        (8, "positive must be"),
        (9, "whole number"),
    ]:
        assert f"line {line}: " in message and reason in message, (line, message)
    assert "line 2:" not in message
    assert "stack b, frame 0, object 2: only negative clicks" in message


def test_points_table_missing_columns_and_stacks_without_clicks(tmp_path):
    (tmp_path / "bad.csv").write_text("stack,frame,row,col\na,0,1,1\n")
    with pytest.raises(PromptError, match=r"lacks column.*object.*positive"):
        read_points_table(tmp_path / "bad.csv", GEOMETRY)
    with pytest.raises(PromptError, match=r"no clicks for stack.*: b"):
        read_points_table(_csv(tmp_path / "p.csv", ["a,0,1,10,20,1"]), GEOMETRY)


def test_points_table_json_groups_clicks_per_stack(tmp_path):
    rows = [
        {"stack": "a", "frame": 1, "object": 2, "row": 3, "col": 4, "positive": True},
        {"stack": "a", "frame": 1, "object": 2, "row": 5, "col": 6, "positive": "no"},
        {"stack": "b", "frame": 0, "object": 1, "row": 1.5, "col": 2, "positive": 1},
    ]
    (tmp_path / "p.json").write_text(json.dumps({"points": rows}))
    clicks = read_points_table(tmp_path / "p.json", GEOMETRY)
    assert clicks["a"] == [PointRow(1, 2, 3.0, 4.0, True), PointRow(1, 2, 5.0, 6.0, False)]
    (prompt,) = point_prompts(clicks["a"])
    assert (prompt.frame, prompt.obj_id) == (1, 2)
    assert prompt.points.tolist() == [[3, 4], [5, 6]] and prompt.labels.tolist() == [1, 0]


def test_seed_prompts_full_stack_and_single_frame():
    seeds = np.zeros((5, 8, 8), dtype=np.int32)
    seeds[1, :2, :2] = 1
    seeds[3, 4:, 4:] = 2
    seeds[3, :1, :1] = 1
    prompts = seed_prompts(seeds, 5, (8, 8))
    assert sorted((p.frame, p.obj_id) for p in prompts) == [(1, 1), (3, 1), (3, 2)]
    single = seed_prompts(seeds[3], 5, (8, 8), start="middle")
    assert {p.frame for p in single} == {2} and {p.obj_id for p in single} == {1, 2}
    assert resolve_start("last", 5) == 4 and resolve_start("1", 5) == 1
    with pytest.raises(PromptError, match="fit neither"):
        seed_prompts(seeds[:, :4], 5, (8, 8))
    with pytest.raises(PromptError, match="empty"):
        seed_prompts(np.zeros((8, 8)), 5, (8, 8))


def test_match_seeds_folder_pattern_and_every_missing_listed(tmp_path):
    folder = tmp_path / "seeds"
    folder.mkdir()
    np.save(folder / "s0.npy", np.ones((4, 4), np.int32))
    np.save(folder / "s1_masks.npy", np.ones((4, 4), np.int32))
    assert match_seeds(folder, ["s0"]) == {"s0": folder / "s0.npy"}
    pattern = str(folder / "{name}_masks.npy")
    assert match_seeds(pattern, ["s1"]) == {"s1": folder / "s1_masks.npy"}
    with pytest.raises(PromptError) as info:
        match_seeds(folder, ["s0", "s1", "s2"])
    assert "2 stack(s)" in str(info.value)
    assert "s1: no seed file" in str(info.value) and "s2: no seed file" in str(info.value)


def test_labels_written_atomically_and_read_back(tmp_path):
    labels = np.arange(3 * 8 * 8, dtype=np.int32).reshape(3, 8, 8) % 5
    for fmt in outputs.FORMATS:
        path = outputs.output_path(tmp_path, "s0", fmt)
        outputs.write_labels(labels, path, fmt, axis="z", attrs={"model": "m"})
        assert np.array_equal(np.asarray(open_stack(path)[...]), labels)
        # a rewrite failing halfway leaves the previous output and no temporary behind

        def half_then_fail(tmp, fmt=fmt):
            outputs.write_labels(labels[:1], tmp, fmt)
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError, match="disk full"):
            write_files({path: half_then_fail})
        assert np.array_equal(np.asarray(open_stack(path)[...]), labels)
    attrs = json.loads((tmp_path / "s0_labels.ome.zarr" / ".zattrs").read_text())
    (multiscale,) = attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert (tmp_path / "s0_labels.ome.zarr" / multiscale["datasets"][0]["path"]).is_dir()
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0_labels.ome.zarr", "s0_labels.tif"]
    assert attrs["napari-sam-lora"] == {"model": "m"}


def test_a_sessions_compressed_labels_are_written_frame_by_frame(tmp_path, monkeypatch):
    """segment hands the writers the session's compressed labels: they read one frame at a
    time and never ask for the whole dense stack."""
    from napari_sam_lora.engine.annotation.label_frames import LabelFrames

    labels = LabelFrames(3, (8, 9))
    expected = np.zeros((3, 8, 9), np.int32)
    for t in range(3):
        expected[t, t : t + 3, 2:5] = t + 1
        labels.write(t, expected[t])

    def dense(*_args, **_kwargs):
        raise AssertionError("the whole label stack was made dense")

    monkeypatch.setattr(LabelFrames, "__array__", dense)
    for fmt in outputs.FORMATS:
        path = outputs.output_path(tmp_path, "s0", fmt)
        outputs.write_labels(labels, path, fmt, axis="t", attrs={})
        assert np.array_equal(np.asarray(open_stack(path)[...]), expected)
        assert np.asarray(open_stack(path)[...]).dtype == np.int32


def test_ome_zarr_output_is_read_by_ome_zarr(tmp_path):
    """The batch output is a valid NGFF image for ome-zarr's own reader (not a look-alike)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels = (np.arange(2 * 6 * 7, dtype=np.int32).reshape(2, 6, 7) % 3).astype(np.int32)
    path = outputs.output_path(tmp_path, "s0", "ome-zarr")
    outputs.write_labels(labels, path, "ome-zarr", axis="t", attrs={"model": "m"})
    (node, *_) = list(Reader(parse_url(str(path)))())
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "y", "x"]
    assert np.array_equal(np.asarray(node.data[0]), labels)
    assert np.asarray(node.data[0]).dtype == np.int32


def test_ome_zarr_format_refused_up_front_without_ome_zarr(monkeypatch):
    import importlib.util

    from napari_sam_lora.batch.checks import check_options
    from napari_sam_lora.engine.core.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ome_zarr" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs the ome-zarr package.*--format tiff"):
        check_options("forward", "first", "ome-zarr", "t", None)
    assert check_options("forward", "first", "tiff", "t", None) is None


def test_partials_removed_and_manifest_round_trip(tmp_path):
    (tmp_path / ".s0_labels.ome.zarr.tmp-1234").mkdir()
    (tmp_path / ".s0_labels.tif.tmp-99").write_bytes(b"half")
    (tmp_path / "keep.txt").write_text("x")
    assert len(outputs.remove_partials(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    outputs.write_manifest(tmp_path, {"model": "m"}, {"s0": {"status": "done"}})
    assert outputs.read_manifest(tmp_path) == {
        "job": {"model": "m"},
        "stacks": {"s0": {"status": "done"}},
    }
    (tmp_path / outputs.MANIFEST_NAME).write_text("{broken")
    assert outputs.read_manifest(tmp_path)["stacks"] == {}
