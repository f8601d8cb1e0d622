"""``python -m napari_sam_lora.batch ...``: the ``segment`` command on its own."""

from __future__ import annotations

import sys

from napari_sam_lora.batch.command import main

if __name__ == "__main__":
    sys.exit(main())
