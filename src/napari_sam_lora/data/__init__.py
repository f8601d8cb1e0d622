"""Reading stacks, labels and suite indexes for evaluation, fine-tuning and batch runs.

:mod:`.readers` opens stacks lazily (TIFF, zarr / OME-Zarr, ``.npy``, folders of frames),
:mod:`.ome_zarr_labels` writes label stacks as OME-Zarr (for ``segment`` and ``export``),
:mod:`.stacks` reads image/label pairs with the engine's checks, :mod:`.suite` reads a
``suite.json`` index. Shared by the applications, so none imports another's readers.
"""
