"""``python -m napari_sam_lora``: the same as the ``napari-sam-lora`` command."""

import sys

from napari_sam_lora.cli import main

if __name__ == "__main__":
    sys.exit(main())
