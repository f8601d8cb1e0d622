"""Make the README screenshots from a real napari viewer (run it again after UI changes).

Opens the viewer at 1366×768 with the *decoy* sample and the SAM2 LoRA panel, then drives
the panel's own methods the way a user's clicks do: prompts (positive and negative
clicks), propagation, a correction learned with its loss plot, the adapter's candidates,
and a whole field of nuclei seeded from a label image with its tracks. Everything uses the untrained model (``untrained:sam2.1_hiera_tiny``, random
weights): the canvas says so. Writes PNGs (< 300 KB each) into ``docs/images/``.

Usage (no display needed)::

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--out docs/images] [--image-size 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

MAX_BYTES = 300_000
SIZE = (1366, 768)


def wait(widget, app, timeout: float = 600.0) -> None:
    """Process Qt events until the dock's job slot is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if widget.job is None or not widget.job.is_running:
            for _ in range(20):  # let chained jobs (re-propagation) start
                app.processEvents()
                time.sleep(0.01)
            if widget.job is None or not widget.job.is_running:
                return
        time.sleep(0.02)
    raise TimeoutError("the panel's job did not finish")


def settle(app, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(viewer, app, path: Path) -> None:
    """Screenshot the whole window; shrink it until the PNG is under MAX_BYTES."""
    from qtpy.QtCore import Qt

    settle(app)
    window = viewer.window._qt_window
    image = window.grab().toImage()
    scale = 1.0
    while True:
        shown = (
            image
            if scale == 1.0
            else image.scaledToWidth(int(image.width() * scale), Qt.SmoothTransformation)
        )
        shown.save(str(path), "PNG", 9)
        if path.stat().st_size < MAX_BYTES or scale < 0.4:
            break
        scale *= 0.85
    print(f"{path}: {shown.width()}×{shown.height()}, {path.stat().st_size // 1024} KB")


def show_sections(widget, *names: str) -> None:
    for name, box in widget.sections.items():
        if name in names:
            box.expand(animate=False)
        else:
            box.collapse(animate=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--sample", default="decoy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam_lora.sample_data import sample_layers

    viewer = napari.Viewer(show=True, title="napari-sam-lora")
    app = QApplication.instance()
    window = viewer.window._qt_window
    window.resize(*SIZE)
    (image, meta, _), (truth, _, _) = sample_layers(args.sample)
    layer = viewer.add_image(image, **meta)
    viewer.text_overlay.visible = True
    viewer.text_overlay.text = "UNTRAINED SAM2 (random weights): pictures show the mechanics"
    viewer.text_overlay.font_size = 9
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    widget.set_model("untrained:sam2.1_hiera_tiny")
    widget.image_size = args.image_size
    settle(app, 1.0)

    # 1. prompting: a positive click on the disk, a negative one on the decoy
    viewer.dims.set_current_step(0, 0)
    widget.add_prompt_layers()
    points = widget.points_combo.layer
    rows, cols = np.nonzero(truth[0] == 1)
    points.add(np.array([0.0, rows.mean(), cols.mean()]))
    decoy = np.argwhere((image[0] > np.percentile(image[0], 99)) & (truth[0] == 0))
    if len(decoy):
        widget.negative_check.setChecked(True)
        points.add(np.array([0.0, *decoy.mean(axis=0)]))
        widget.negative_check.setChecked(False)
    show_sections(widget, "setup", "prompts")
    save(viewer, app, args.out / "prompting.png")

    # 2. propagation
    show_sections(widget, "prompts", "propagate")
    assert widget.propagate(), widget.status.text()
    wait(widget, app)
    viewer.dims.set_current_step(0, 4)
    save(viewer, app, args.out / "propagation.png")

    # 3. a correction on frame 5, learned: the loss plot
    masks = viewer.layers[f"{layer.name} masks"]
    viewer.dims.set_current_step(0, 5)
    user = masks.data[5].copy()
    user[user == 1] = 0
    user[truth[5] == 1] = 1
    changed = np.nonzero(masks.data[5] != user)
    if changed[0].size:
        masks.data_setitem((np.full(changed[0].size, 5), *changed), user[changed])
    show_sections(widget, "learn")
    panel = widget.learning
    panel.learn()
    wait(widget, app)
    save(viewer, app, args.out / "learning.png")

    # 4. the adapter's candidates
    panel.propose(0, image.shape[0] - 1)
    wait(widget, app)
    viewer.dims.set_current_step(0, 6)
    show_sections(widget, "prompts", "learn")
    save(viewer, app, args.out / "candidates.png")

    # 5. whole fields: nuclei seeded from a label image, propagated, their tracks shown
    from napari_sam_lora.synthetic import make_stack

    nuclei, nuclei_truth = make_stack("nuclei", n_frames=6, shape=(192, 192))
    for name in [layer.name for layer in viewer.layers]:
        viewer.layers.remove(name)
    field = viewer.add_image(nuclei, name="nuclei")
    seeds = viewer.add_labels(nuclei_truth[0].astype(np.int32), name="nuclei seeds")
    widget.image_combo.set_layer(field)
    viewer.dims.set_current_step(0, 0)
    settle(app)
    assert widget.fields.seed(seeds), widget.fields.status.text()
    wait(widget, app)
    seeds.visible = False
    assert widget.propagate(), widget.status.text()
    wait(widget, app)
    widget.fields.tracks_check.setChecked(True)
    settle(app, 1.0)
    viewer.dims.set_current_step(0, 5)
    show_sections(widget, "fields")
    save(viewer, app, args.out / "fields.png")
    viewer.close()


if __name__ == "__main__":
    main()
