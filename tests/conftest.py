"""Shared fixtures: tiny synthetic stacks and one untrained SAM2 shared by engine tests."""

from __future__ import annotations

import numpy as np
import pytest

from untrained import TEST_IMAGE_SIZE, TEST_MODEL


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No test touches the network; checkpoints go to a temporary cache."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setenv("NAPARI_SAM_LORA_CACHE", str(tmp_path_factory.mktemp("cache")))


def disk_stack(
    n_frames: int = 4, shape: tuple[int, int] = (64, 80), dtype: type = np.uint16
) -> np.ndarray:
    """A bright disk moving right over faint noise."""
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 200, size=(n_frames, *shape)).astype(np.float64)
    for t in range(n_frames):
        disk = (rows - height // 2) ** 2 + (cols - 20 - 5 * t) ** 2 < 100
        stack[t][disk] += 3000
    if np.dtype(dtype) == np.uint8:
        stack = stack / stack.max() * 255
    return stack.astype(dtype)


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every error notification the plugin shows (Qt is imported only by tests using it)."""
    from napari_sam_lora._qt import threading as qt_threading

    shown: list[str] = []
    monkeypatch.setattr(qt_threading, "show_error", lambda message: shown.append(str(message)))
    return shown


@pytest.fixture
def stack() -> np.ndarray:
    """A 4-frame 64×80 uint16 stack with one moving disk."""
    return disk_stack()


@pytest.fixture(scope="session")
def tiny_model():
    """One untrained hiera-tiny at 256 px, shared by the engine tests."""
    from napari_sam_lora.engine.tracking.predictor import load_model

    return load_model(TEST_MODEL, device="cpu", image_size=TEST_IMAGE_SIZE)


@pytest.fixture
def session(tiny_model, stack):
    """A fresh session on the disk stack."""
    from napari_sam_lora.engine.tracking.session import Session

    return Session(stack, model=tiny_model)
