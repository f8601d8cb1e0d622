"""Argument types shared by the commands (each message names what is expected)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """``argparse`` type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def image_size(text: str) -> int:
    """``argparse`` type: a SAM2 input size (a multiple of 32 in the range SAM2 accepts)."""
    from napari_sam_lora.engine.core.errors import ConfigError
    from napari_sam_lora.engine.core.validation import check_image_size

    value = positive_int(text)
    try:
        return check_image_size(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
