"""``napari-sam-lora demo``: napari with a synthetic stack and the plugin docked."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from napari_sam_lora.cli._args import image_size
from napari_sam_lora.cli._boundary import PROG, CliError
from napari_sam_lora.synthetic import KINDS

__all__ = [
    "DEFAULT_DEMO_MODEL",
    "DEFAULT_DEMO_SAMPLE",
    "PLUGIN_NAME",
    "WIDGET_NAME",
    "add_parser",
    "build_demo_viewer",
    "run",
]

PLUGIN_NAME = "napari-sam-lora"
WIDGET_NAME = "SAM2 LoRA"
#: No weights can be downloaded everywhere; the demo uses random weights unless asked.
DEFAULT_DEMO_MODEL = "untrained:sam2.1_hiera_tiny"
DEFAULT_DEMO_SAMPLE = "decoy"


def build_demo_viewer(
    sample: str = DEFAULT_DEMO_SAMPLE,
    model: str = DEFAULT_DEMO_MODEL,
    image_size: int | None = None,
    show: bool = True,
) -> Any:
    """Create a napari viewer with a synthetic stack and the plugin widget docked.

    Parameters
    ----------
    sample : str
        Synthetic kind (see :data:`napari_sam_lora.synthetic.KINDS`).
    model : str
        Model name handed to the widget's ``set_model`` (when it has one).
    image_size : int, optional
        SAM2 input size handed to the widget's ``set_image_size``, or set as its
        ``image_size`` attribute (when it has either).
    show : bool
        Show the viewer window.

    Returns
    -------
    napari.Viewer
        The viewer; the widget is ``viewer.window._dock_widgets[...]``.
    """
    from napari_sam_lora.sample_data import sample_layers

    layers = sample_layers(sample)  # validates ``sample`` before any window opens
    _check_display()
    try:
        import napari

        viewer = napari.Viewer(title=f"napari-sam-lora demo: synthetic {sample}", show=show)
    except ImportError as exc:
        raise CliError(
            f"cannot start the napari viewer ({exc}); install a Qt binding, e.g. "
            "pip install 'napari-sam-lora[pyqt6]'"
        ) from exc

    image_layer = None
    for data, kwargs, layer_type in layers:
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        if layer_type == "image":
            image_layer = layer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    if image_layer is not None:
        viewer.layers.selection.active = image_layer

    set_model = getattr(widget, "set_model", None)
    if callable(set_model):
        set_model(model)
    elif model != DEFAULT_DEMO_MODEL:
        print(f"{PROG} demo: the widget cannot be told the model; choose {model!r} in it")
    if image_size is not None:
        set_image_size = getattr(widget, "set_image_size", None)
        if callable(set_image_size):
            set_image_size(image_size)
        elif hasattr(widget, "image_size"):
            widget.image_size = image_size
        else:
            print(f"{PROG} demo: the widget has no image-size setting; --image-size ignored")
    return viewer


def _check_display() -> None:
    """Fail with a clear message instead of letting Qt abort the process."""
    if not sys.platform.startswith("linux"):
        return
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY"):
        return
    if os.environ.get("WAYLAND_DISPLAY"):
        return
    raise CliError(
        "no display found (DISPLAY is not set); run on a desktop session, or on a headless "
        "machine under a virtual display: xvfb-run -a napari-sam-lora demo"
    )


def run(args: argparse.Namespace) -> int:
    """Open the demo viewer (``--no-run``: build it and return)."""
    from napari_sam_lora import cli  # looked up at run time, so tests can replace it

    viewer = cli.build_demo_viewer(
        sample=args.sample, model=args.model, image_size=args.image_size, show=True
    )
    if args.no_run:
        return 0
    print(
        f"{PROG} demo: synthetic {args.sample!r} stack, model {args.model!r}. "
        "Add a Points layer, click the object on a frame, then propagate in the widget."
    )
    import napari

    napari.run()
    del viewer
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``demo`` to the main command line's subparsers."""
    parser = subparsers.add_parser(
        "demo",
        help="open napari with a synthetic stack and the plugin docked",
        description=(
            "Open napari with a synthetic sample stack (image + hidden ground-truth labels) "
            "and the SAM2 LoRA widget docked."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_DEMO_MODEL,
        help=(
            "model: a variant name (sam2.1_hiera_tiny|small|base_plus|large, sam2_hiera_*), "
            "a local .pt checkpoint, or untrained:<variant> for random weights "
            f"(default: {DEFAULT_DEMO_MODEL})"
        ),
    )
    parser.add_argument(
        "--sample",
        default=DEFAULT_DEMO_SAMPLE,
        choices=KINDS,
        metavar="KIND",
        help=f"synthetic stack to open, one of: {', '.join(KINDS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        metavar="N",
        help="SAM2 input size in pixels, a multiple of 32 (smaller is faster on a CPU; "
        "default: the model's)",
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="build the viewer and return without starting the event loop (for tests)",
    )
    parser.set_defaults(handler=run)
