"""Qt widgets of napari-sam-lora (the only part of the package that imports Qt)."""
