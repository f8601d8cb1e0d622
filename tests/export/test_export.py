"""Export to CTC, GEFF and OME-Zarr, read back with each field's own library."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam_lora.cli import main
from napari_sam_lora.export import ExportError, build_tracks, export_tracks, scan

#: daughters 4 and 5 of object 2, which divides on frame 3
PARENTS = {4: 2, 5: 2}


def tracks_stack() -> np.ndarray:
    """(5, 32, 32): objects 1 and 3 on every frame, 2 on frames 0–2, its daughters 4 and 5
    on frames 3–4."""
    labels = np.zeros((5, 32, 32), np.int32)
    for t in range(5):
        labels[t, 2:7, 2 + t : 7 + t] = 1  # moves right
        labels[t, 24:30, 24:30] = 3
    labels[:3, 12:20, 12:20] = 2
    labels[3:, 10:15, 12:20] = 4
    labels[3:, 17:22, 12:20] = 5
    return labels


class LazyStack:
    """A stack that hands out one frame at a time and refuses to be read whole."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = labels
        self.shape, self.dtype, self.ndim = labels.shape, labels.dtype, labels.ndim
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, int | np.integer):
            raise AssertionError(f"read {index!r}, not one frame")
        self.reads.append(int(index))
        return self._labels[index].copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was read at once")


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- CTC ---------------------------------------------------------------------------------


def _read_ctc(folder: Path, track_file: str = "man_track.txt"):
    """The track table, mask files and the labels of each, by py-ctcmetrics' readers; and
    its validity check (1 = valid)."""
    from ctc_metrics.metrics import valid
    from ctc_metrics.utils.filesystem import parse_masks, read_tracking_file
    from ctc_metrics.utils.representations import match

    tracks = read_tracking_file(str(folder / track_file))
    masks = parse_masks(str(folder))
    labels_in_frames = [match(None, mask)[1] for mask in masks]
    with warnings.catch_warnings(record=True) as caught:  # valid() warns what is wrong
        warnings.simplefilter("always")
        ok = valid(masks, tracks, labels_in_frames)
    assert not caught, [str(w.message) for w in caught]
    return tracks, masks, ok


def test_ctc_round_trip(tmp_path):
    labels = tracks_stack()
    out = tmp_path / "cells_ctc"
    assert export_tracks(labels, PARENTS, "ctc", out) == [out]
    tracks, masks, ok = _read_ctc(out)
    assert ok == 1
    assert tracks.tolist() == [[1, 0, 4, 0], [2, 0, 2, 0], [3, 0, 4, 0], [4, 3, 4, 2], [5, 3, 4, 2]]
    assert [Path(m).name for m in masks] == [f"man_track{t:03d}.tif" for t in range(5)]
    for t, mask in enumerate(masks):
        image = tifffile.imread(mask)
        assert image.dtype == np.uint16
        assert np.array_equal(image, labels[t])


def test_ctc_splits_a_gap_and_a_parent_that_keeps_a_daughters_id(tmp_path):
    labels = tracks_stack()
    labels[2][labels[2] == 3] = 0  # object 3 is missing on frame 2
    labels[3:][labels[3:] == 5] = 2  # object 2 goes on as one daughter, 4 is the other
    out = tmp_path / "res"
    export_tracks(labels, {4: 2}, "ctc", out, ctc_layout="res")
    tracks, masks, ok = _read_ctc(out, "res_track.txt")
    assert ok == 1
    # new ids above the largest (4), by first frame then id: 2 goes on after the division
    # as track 5 (a daughter of 2), 3 after its gap as track 6 (child of 3)
    assert tracks.tolist() == [
        [1, 0, 4, 0],
        [2, 0, 2, 0],
        [3, 0, 1, 0],
        [4, 3, 4, 2],
        [5, 3, 4, 2],
        [6, 3, 4, 3],
    ]
    assert [Path(m).name for m in masks] == [f"mask{t:03d}.tif" for t in range(5)]
    frame3 = tifffile.imread(masks[3])
    assert set(np.unique(frame3)) == {0, 1, 4, 5, 6}
    assert np.array_equal(frame3 == 5, labels[3] == 2)


def test_ctc_frame_names_have_four_digits_beyond_1000_frames():
    from napari_sam_lora.export.ctc import frame_name

    assert frame_name(7, 1000) == "man_track007.tif"
    assert frame_name(7, 1001, "res") == "mask0007.tif"


# -- GEFF --------------------------------------------------------------------------------


def test_geff_round_trip_passes_geffs_validators(tmp_path):
    import geff
    from geff.validate.data import ValidationConfig

    labels = tracks_stack()
    store = tmp_path / "cells.geff"
    export_tracks(labels, PARENTS, "geff", store)
    geff.validate_structure(str(store))
    config = ValidationConfig(graph=True, tracklet=True, lineage=True)
    graph, metadata = geff.read(str(store), data_validation=config)
    assert [axis.name for axis in metadata.axes] == ["t", "y", "x"]
    nodes = {(d["t"], d["seg_id"]): n for n, d in graph.nodes(data=True)}
    assert len(nodes) == graph.number_of_nodes() == 5 + 5 + 3 + 2 + 2
    # centroid and area of object 3 on frame 0
    three = graph.nodes[nodes[(0, 3)]]
    assert (three["y"], three["x"], three["area"]) == (26.5, 26.5, 36)
    edges = set(graph.edges)
    assert (nodes[(0, 1)], nodes[(1, 1)]) in edges  # same object, consecutive frames
    assert (nodes[(2, 2)], nodes[(3, 4)]) in edges  # the division
    assert (nodes[(2, 2)], nodes[(3, 5)]) in edges
    assert graph.number_of_edges() == 4 + 2 + 4 + 2 + 1 + 1
    lineage = {d["seg_id"]: d["lineage_id"] for _, d in graph.nodes(data=True)}
    assert lineage[4] == lineage[5] == lineage[2] != lineage[1]


def test_geff_links_across_a_gap(tmp_path):
    import geff

    labels = tracks_stack()
    labels[2][labels[2] == 3] = 0
    store = tmp_path / "gap.geff"
    export_tracks(labels, PARENTS, "geff", store)
    graph, _ = geff.read(str(store))
    nodes = {(d["t"], d["seg_id"]): n for n, d in graph.nodes(data=True)}
    assert (nodes[(1, 3)], nodes[(3, 3)]) in set(graph.edges)
    # one tracklet: the gap does not branch
    assert graph.nodes[nodes[(1, 3)]]["tracklet_id"] == graph.nodes[nodes[(3, 3)]]["tracklet_id"]


# -- OME-Zarr ----------------------------------------------------------------------------


def test_ome_zarr_round_trip(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    labels = tracks_stack()
    store = tmp_path / "cells.ome.zarr"
    export_tracks(labels, PARENTS, "ome-zarr", store)
    (node,) = list(Reader(parse_url(str(store)))())
    assert any(isinstance(spec, Label) for spec in node.specs)
    assert [axis["name"] for axis in node.metadata["axes"]] == ["t", "y", "x"]
    data = np.asarray(node.data[0])
    assert data.dtype == np.uint16 and np.array_equal(data, labels)
    properties = node.metadata["properties"]
    assert properties[4]["parent"] == 2 and properties[5]["parent"] == 2
    assert "parent" not in properties[1]
    assert (properties[2]["first-frame"], properties[2]["last-frame"]) == (0, 2)


# -- lazy stacks, refusals, overwrite ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["ctc", "geff", "ome-zarr"])
def test_a_lazy_stack_is_read_frame_by_frame(tmp_path, fmt):
    lazy = LazyStack(tracks_stack())
    export_tracks(lazy, PARENTS, fmt, tmp_path / "out")
    assert set(lazy.reads) == set(range(5))


@pytest.mark.parametrize(
    ("labels", "parents", "fmt", "message"),
    [
        (tracks_stack(), PARENTS, "trackmate", "unknown export format"),
        (tracks_stack().astype(np.float32), PARENTS, "ctc", "dtype float32"),
        (tracks_stack().astype(bool), {}, "geff", "dtype bool"),
        (tracks_stack()[0], {}, "ctc", "(T, H, W)"),
        (np.zeros((3, 8, 8), np.int32), {}, "ome-zarr", "no object"),
        (tracks_stack() * 20000, {}, "ctc", "16-bit"),
        (tracks_stack() - 1, {}, "geff", "negative"),
        (tracks_stack(), {4: 9}, "ctc", "hold no object 9"),
        (tracks_stack(), {8: 2}, "geff", "hold no object 8"),
        (tracks_stack(), {2: 4}, "ome-zarr", "must appear before its daughter"),
        (tracks_stack(), {4: 4}, "ctc", "its own parent"),
        (tracks_stack(), {4: "two"}, "ctc", "positive integers"),
    ],
)
def test_refusals_write_nothing(tmp_path, labels, parents, fmt, message):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_tracks(labels, parents, fmt, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["ctc", "geff", "ome-zarr"])
def test_an_existing_output_is_kept_unless_overwrite(tmp_path, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_tracks(tracks_stack(), PARENTS, fmt, out)
    assert _tree(tmp_path) == before
    export_tracks(tracks_stack(), PARENTS, fmt, out, overwrite=True)
    assert not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_an_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_tracks(tracks_stack(), PARENTS, "ctc", target, overwrite=True)
    assert target.read_text() == "x"


def test_an_empty_output_folder_is_filled(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    export_tracks(tracks_stack(), {}, "ctc", out)
    assert (out / "man_track.txt").is_file()


def test_tracks_keep_object_ids_and_link_daughters():
    tracks = build_tracks(scan(tracks_stack()), PARENTS)
    assert [(t.track_id, t.start, t.end, t.parent) for t in tracks.tracks] == [
        (1, 0, 4, 0),
        (2, 0, 2, 0),
        (3, 0, 4, 0),
        (4, 3, 4, 2),
        (5, 3, 4, 2),
    ]
    assert tracks.relabel == {}


# -- napari writers ----------------------------------------------------------------------


def test_napari_writers_are_in_the_manifest_and_write(tmp_path):
    from npe2 import PluginManifest

    from napari_sam_lora.export import napari_writers

    root = Path(__file__).resolve().parents[2]
    manifest = PluginManifest.from_file(root / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    writers = {w.command: w.filename_extensions for w in manifest.contributions.writers}
    assert writers == {
        "napari-sam-lora.write_ctc": [".ctc"],
        "napari-sam-lora.write_geff": [".geff"],
        "napari-sam-lora.write_ome_zarr": [".ome.zarr"],
    }
    for command in writers:
        module, name = commands[command].split(":")
        assert module == "napari_sam_lora.export.napari_writers"
        assert callable(getattr(napari_writers, name))
    meta = {"name": "masks", "metadata": {"lineage": {"4": 2, "5": 2}}}
    path = str(tmp_path / "masks.ctc")
    assert napari_writers.write_ctc(path, tracks_stack(), meta) == [path]
    tracks, _, ok = _read_ctc(Path(path))
    assert ok == 1 and tracks[:, 3].tolist() == [0, 0, 0, 2, 2]
    geff_path = str(tmp_path / "masks.geff")
    assert napari_writers.write_geff(geff_path, tracks_stack(), {"metadata": {}}) == [geff_path]


def test_napari_saves_a_labels_layer_through_the_writers(tmp_path):
    import npe2

    npe2.PluginManager.instance().discover()
    layer = (tracks_stack(), {"name": "masks", "metadata": {"lineage": PARENTS}}, "labels")
    for name in ("masks.ctc", "masks.geff", "masks.ome.zarr"):
        path = str(tmp_path / name)
        assert npe2.write(path, [layer]) == [path]
    tracks, _, ok = _read_ctc(tmp_path / "masks.ctc")
    assert ok == 1 and tracks[:, 3].tolist() == [0, 0, 0, 2, 2]
    # a refusal keeps its message (napari would read a ValueError as "no writer found")
    from napari_sam_lora.export.napari_writers import SaveRefused

    before = _tree(tmp_path)
    with pytest.raises(SaveRefused, match="exists and is not empty"):
        npe2.write(str(tmp_path / "masks.geff"), [layer])
    assert _tree(tmp_path) == before


# -- the command line on a saved session -------------------------------------------------


@pytest.fixture
def saved_session(tiny_model, tmp_path) -> Path:
    """A session saved by the engine, its labels painted as :func:`tracks_stack`."""
    from napari_sam_lora.engine import Session

    labels = tracks_stack()
    image = np.random.default_rng(0).integers(0, 4000, labels.shape, dtype=np.uint16)
    session = Session(image, model=tiny_model)
    for t in range(labels.shape[0]):
        for obj in np.unique(labels[t])[1:]:
            session.paint(t, np.nonzero(labels[t] == obj), int(obj))
    assert np.array_equal(np.asarray(session.labels), labels)
    base = tmp_path / "cells"
    session.save_state(base)
    return base


def test_cli_exports_a_saved_session_with_its_lineage(saved_session, tmp_path, capsys):
    json_path = saved_session.with_name("cells.session.json")
    doc = json.loads(json_path.read_text())
    doc["lineage"] = {"4": 2, "5": 2}  # as the session files save divisions
    json_path.write_text(json.dumps(doc))
    out = tmp_path / "ctc"
    assert main(["export", str(saved_session), "--format", "ctc", "--output", str(out)]) == 0
    assert "2 division(s)" in capsys.readouterr().out
    tracks, _, ok = _read_ctc(out)
    assert ok == 1
    assert tracks.tolist() == [[1, 0, 4, 0], [2, 0, 2, 0], [3, 0, 4, 0], [4, 3, 4, 2], [5, 3, 4, 2]]
    store = tmp_path / "cells.ome.zarr"
    argv = ["export", str(json_path), "--format", "ome-zarr", "--output", str(store)]
    assert main(argv) == 0


def test_cli_without_lineage_and_its_refusals(saved_session, tmp_path, capsys):
    out = tmp_path / "graph.geff"
    argv = ["export", str(saved_session), "--format", "geff", "--output", str(out)]
    assert main(argv) == 0
    assert "division" not in capsys.readouterr().out
    before = _tree(out)
    assert main(argv) == 1  # exists: refused, one line, untouched
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "Traceback" not in err
    assert _tree(out) == before
    assert main([*argv, "--overwrite"]) == 0
    missing = ["export", str(tmp_path / "nope"), "--format", "ctc", "--output", str(tmp_path / "x")]
    assert main(missing) == 1
    err = capsys.readouterr().err
    assert "no saved session" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert main(["export", str(saved_session), "--format", "bogus", "--output", "x"]) == 2


def test_export_needs_no_torch_and_no_qt(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from napari_sam_lora.export import export_tracks\n"
        "labels = np.zeros((2, 8, 8), np.int32); labels[:, 2:4, 2:4] = 1\n"
        f"export_tracks(labels, {{}}, 'ctc', {str(tmp_path / 'out')!r})\n"
        "heavy = [m for m in ('torch', 'sam2', 'qtpy', 'napari') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_division_made_in_a_session_reaches_ctc_as_a_parent(tiny_model, tmp_path):
    """split_object → save → export: the daughters' man_track lines name their parent."""
    from napari_sam_lora.engine.tracking.session import Session

    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (4, 48, 48)).astype(np.uint8)
    image[:, 10:30, 10:30] = 220
    session = Session(image, model=tiny_model)
    mother = np.zeros((48, 48), bool)
    mother[10:30, 10:30] = True
    session.add_mask(0, 1, mother)
    session.propagate_all("forward")
    left, right = np.zeros((48, 48), bool), np.zeros((48, 48), bool)
    left[10:30, 10:18], right[10:30, 22:30] = True, True
    daughters = session.split_object(2, 1, [left, right])
    session.propagate_all("forward")
    session.save_state(tmp_path / "cells")
    out = tmp_path / "ctc"
    assert main(["export", str(tmp_path / "cells"), "--format", "ctc", "--output", str(out)]) == 0
    rows = {
        int(r[0]): [int(v) for v in r[1:]]
        for r in map(str.split, (out / "man_track.txt").read_text().splitlines())
    }
    assert rows[1][1] <= 1  # the mother ends before the division frame
    for daughter in daughters:
        begin, _, parent = rows[daughter]
        assert (begin, parent) == (2, 1)
    assert _read_ctc(out)[2] == 1  # a valid CTC result for py-ctcmetrics
