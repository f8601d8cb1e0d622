"""What keeps the event loop running while the dock works (issue 12: no stall > 200 ms).

The causes measured with ``benchmarks/bench_responsiveness.py --stalls`` are tested here
without timing anything: the masks layer exists before the worker's first frame (napari's
layer creation took the main thread for 0.6-1 s mid-propagation), the engine's and
learning's imports run on the worker with garbage collection paused and the heap frozen
afterwards (full collections of a heap holding torch took 0.2-0.8 s), and a layer that was
frozen with the heap is freed once removed.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import weakref

import numpy as np
import pytest
from test_widget import add_image_and_point, fake_load, use_fake, wait_done

from napari_sam_lora.annotator import SessionCache
from napari_sam_lora.annotator import imports as _imports
from napari_sam_lora.annotator import sessions as _sessions
from napari_sam_lora.layers import same_layer

pytestmark = pytest.mark.viewer

WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def _unfrozen():
    """Leave the heap as other tests expect it (nothing frozen)."""
    yield
    _imports.reset()


def test_masks_layer_exists_before_the_first_frame(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=0)  # the job waits before its first frame
    image = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="img")
    widget.points_combo.set_layer(viewer.add_points(ndim=3, name="mine"))  # not "Add prompt layers"
    widget.points_combo.layer.add(np.array([0.0, 10, 10]))
    assert "img masks" not in [x.name for x in viewer.layers]
    assert widget.propagate()
    masks = viewer.layers["img masks"]  # made by the click, before any frame
    # the dock sees napari's public proxies of layers: compare layers with same_layer
    assert same_layer(widget._run.output, masks) and widget.job.is_running
    assert widget._run.written == 0
    gate.set()
    wait_done(qtbot, widget)
    assert notes == [] and widget.job.state == "finished"
    assert viewer.layers["img masks"] is masks and masks.data.any()
    assert [x.name for x in viewer.layers].count("img masks") == 1
    assert viewer.layers.index(masks) < viewer.layers.index(widget.points_combo.layer)
    assert image in viewer.layers


def test_add_prompt_layers_prepares_the_masks_layer(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget)
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    masks = viewer.layers["img masks"]
    assert not masks.data.any()
    below = min(
        viewer.layers.index(widget.points_combo.layer),
        viewer.layers.index(widget.shapes_combo.layer),
    )
    assert viewer.layers.index(masks) < below  # does not tint the clicks
    widget.propagate()
    wait_done(qtbot, widget)
    assert viewer.layers["img masks"] is masks and masks.data.any() and notes == []


def test_engine_and_learning_imports_run_on_the_worker(viewer_widget, qtbot, monkeypatch, notes):
    viewer, widget = viewer_widget
    threads: list[tuple[str, bool]] = []

    def record(what):
        return lambda: threads.append((what, threading.current_thread() is threading.main_thread()))

    monkeypatch.setattr(_sessions, "prepare_engine", record("engine"))
    import napari_sam_lora.engine.tracking.predictor as predictor

    monkeypatch.setattr(predictor, "iter_load_model", fake_load)  # what _default_load runs
    sessions = use_fake(widget)
    make = widget.sessions._make
    widget.sessions = SessionCache(make_session=make, warm_up=record("learning"))
    add_image_and_point(viewer, widget)
    for _ in range(2):
        widget.propagate()
        wait_done(qtbot, widget)
        assert widget.job.state == "finished", widget.status.text()
    assert len(sessions) == 1 and notes == []
    # the engine's imports before the model loads, learning's once after the first run
    assert threads == [("engine", False), ("learning", False)]


def test_default_cache_warms_up_learning():
    assert SessionCache().warm_up is _imports.prepare_learning
    assert SessionCache(load_model=fake_load).warm_up is None  # a custom loader: nothing


def test_imports_pause_collection_and_freeze_the_heap():
    name = "napari_sam_lora._qt._never_imported_probe"
    assert name not in sys.modules
    frozen = gc.get_freeze_count()
    seen = {}

    class Finder:  # records whether automatic collection runs during the import
        def find_spec(self, fullname, path=None, target=None):
            if fullname == name:
                seen["enabled"] = gc.isenabled()
            return None

    sys.meta_path.insert(0, Finder())
    try:
        with pytest.raises(ModuleNotFoundError):
            _imports.import_modules(name)
    finally:
        sys.meta_path.pop(0)
    assert seen == {"enabled": False} and gc.isenabled()
    assert gc.get_freeze_count() >= frozen
    _imports.import_modules("colorsys")  # imported or not: the heap ends frozen
    with _imports.paused_collection():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    before = _imports.freezes()
    _imports.thaw()
    assert gc.get_freeze_count() == 0
    gc.collect()  # the first full collection after a thaw freezes the survivors again
    assert gc.get_freeze_count() > 0 and _imports.freezes() == before + 1


def test_a_removed_layer_frozen_with_the_heap_is_freed(viewer_widget, qtbot, notes):
    viewer, _widget = viewer_widget
    layer = viewer.add_labels(np.zeros((4, 32, 32), np.int32), name="old")
    with _imports.paused_collection():  # what the engine's imports do on the worker
        pass
    assert gc.get_freeze_count() > 0
    ref = weakref.ref(layer)
    viewer.layers.remove(layer)
    del layer
    qtbot.wait(50)
    gc.collect()
    assert ref() is None  # napari layers are reference cycles: frozen, they would stay


def test_importing_the_dock_imports_no_engine():
    """Opening the dock must not import torch, SAM2 or peft on the main thread (5 s there:
    measured 'dock' phase of the benchmark); the worker imports them (see _imports)."""
    code = (
        "import sys; import napari_sam_lora._qt.widget; "
        "print(sorted(m for m in ('torch', 'sam2', 'peft', 'triton') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_dock_imports_pandas_on_a_worker(make_napari_viewer, qtbot, monkeypatch, notes):
    threads: list[bool] = []
    monkeypatch.setattr(
        _imports,
        "prepare_panel",
        lambda: threads.append(threading.current_thread() is threading.main_thread()),
    )
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    qtbot.waitUntil(lambda: not widget._panel_imports.is_running, timeout=WAIT_MS)
    assert threads == [False] and notes == []
    widget.shutdown()
