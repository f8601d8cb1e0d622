"""The model every test uses: untrained SAM2 (random weights) at a small image size.

A plain module (not ``conftest``): test modules in any folder import it by this name.
"""

TEST_MODEL = "untrained:sam2.1_hiera_tiny"
TEST_IMAGE_SIZE = 256
