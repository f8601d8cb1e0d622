"""The Graph Exchange File Format (GEFF, https://liveimagingtrackingtools.org/geff): a zarr
group holding the tracking graph.

One node per (frame, object) with ``t`` (frame), ``y``, ``x`` (centroid, pixels),
``area`` (pixels), ``seg_id`` (the object's id in the label images), ``tracklet_id`` and
``lineage_id`` (GEFF's track properties); edges join an object's nodes on consecutive
frames, the last node before a gap to the first after it, and a parent's last node to each
daughter's first. Written with the ``geff`` package, which validates the structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_sam_lora.export.tracks import ExportError, Scan, Tracks

__all__ = ["graph_arrays", "write_geff"]


def _tracklets(tracks: Tracks) -> tuple[dict[int, int], dict[int, int]]:
    """Track id → GEFF tracklet id and lineage id.

    A tracklet is a maximal simple path: a track continues its parent's tracklet when it is
    the parent's only child (the run after a gap, or a lone daughter).
    """
    children = tracks.children()
    parent_of = {t.track_id: t.parent for t in tracks.tracks}
    tracklet: dict[int, int] = {}
    lineage: dict[int, int] = {}
    for track in sorted(tracks.tracks, key=lambda t: (t.start, t.track_id)):
        parent = parent_of[track.track_id]
        only_child = parent and len(children.get(parent, ())) == 1
        tracklet[track.track_id] = tracklet[parent] if only_child else track.track_id
        lineage[track.track_id] = lineage[parent] if parent else track.track_id
    return tracklet, lineage


def graph_arrays(found: Scan, tracks: Tracks) -> tuple[np.ndarray, dict, np.ndarray]:
    """Node ids, node properties (``{name: {"values", "missing"}}``) and edges."""
    tracklet, lineage = _tracklets(tracks)
    props: dict[str, list] = {
        name: [] for name in ("t", "y", "x", "area", "seg_id", "tracklet_id", "lineage_id")
    }
    first: dict[int, int] = {}  # track id → its first node
    last: dict[int, int] = {}  # track id → its latest node so far
    edges: list[tuple[int, int]] = []
    node = 0
    for t, objects in enumerate(found.frames):
        for obj, area, y, x in zip(
            objects.ids.tolist(), objects.area.tolist(), objects.y, objects.x, strict=True
        ):
            track_id = tracks.track_of(t, obj)
            for name, value in (
                ("t", t),
                ("y", float(y)),
                ("x", float(x)),
                ("area", int(area)),
                ("seg_id", obj),
                ("tracklet_id", tracklet[track_id]),
                ("lineage_id", lineage[track_id]),
            ):
                props[name].append(value)
            if track_id in last:
                edges.append((last[track_id], node))
            else:
                first[track_id] = node
            last[track_id] = node
            node += 1
    for track in tracks.tracks:
        if track.parent:
            edges.append((last[track.parent], first[track.track_id]))
    dtypes = {"t": np.int64, "area": np.int64, "seg_id": np.int64}
    node_props = {
        name: {"values": np.asarray(values, dtype=dtypes.get(name, np.float64)), "missing": None}
        for name, values in props.items()
    }
    for name in ("tracklet_id", "lineage_id"):
        node_props[name]["values"] = node_props[name]["values"].astype(np.int64)
    node_ids = np.arange(node, dtype=np.uint64)
    edge_ids = np.asarray(edges, dtype=np.uint64).reshape(-1, 2)
    return node_ids, node_props, edge_ids


def write_geff(store: Path, found: Scan, tracks: Tracks) -> None:
    """Write the GEFF zarr group ``store`` (created here)."""
    try:
        import geff
        from geff.core_io import write_arrays
        from geff_spec import Axis, GeffMetadata
    except ImportError as exc:  # pragma: no cover - the export extra is not installed
        raise ExportError(
            "the geff format needs the geff package: pip install 'napari-sam-lora[export]'"
        ) from exc

    node_ids, node_props, edge_ids = graph_arrays(found, tracks)
    metadata = GeffMetadata(
        geff_version=geff.__version__,
        directed=True,
        axes=[
            Axis(name="t", type="time", unit="frame"),
            Axis(name="y", type="space"),
            Axis(name="x", type="space"),
        ],
        node_props_metadata={},
        edge_props_metadata={},
        track_node_props={"tracklet": "tracklet_id", "lineage": "lineage_id"},
        extra={"napari_sam_lora": {"seg_id": "the object's id in the label images"}},
    )
    write_arrays(
        geff_store=str(store),
        node_ids=node_ids,
        node_props=node_props,
        edge_ids=edge_ids,
        edge_props={},
        metadata=metadata,
    )
