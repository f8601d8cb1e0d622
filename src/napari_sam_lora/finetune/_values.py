"""Checking and converting config values: the engine's one validator (kept for imports).

Everything lives in :mod:`napari_sam_lora.engine.validation`; this module only re-exports
the names :mod:`.config` uses.
"""

from __future__ import annotations

from napari_sam_lora.engine.errors import ConfigError
from napari_sam_lora.engine.validation import check_keys, kind_of, to_int
from napari_sam_lora.engine.validation import coerce_value as value_of

__all__ = ["ConfigError", "check_keys", "kind_of", "to_int", "value_of"]
