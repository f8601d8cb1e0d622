"""Model names, checkpoints (cache, download, checksum, variant check) and devices."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path
from typing import ClassVar

import pytest

from napari_sam_lora.engine.core.errors import CheckpointError, DownloadError, ModelError
from napari_sam_lora.engine.tracking import models
from napari_sam_lora.engine.tracking.models import VARIANTS, parse_model


def test_variants_cover_meta_names():
    for family in ("sam2.1", "sam2"):
        for size in ("tiny", "small", "base_plus", "large"):
            variant = VARIANTS[f"{family}_hiera_{size}"]
            assert variant.url.endswith(f"/{family}_hiera_{size}.pt")
            assert variant.config.startswith(f"configs/{family}/")


def test_parse_untrained_is_labelled():
    spec = parse_model("untrained:sam2.1_hiera_tiny")
    assert spec.untrained and spec.variant.name == "sam2.1_hiera_tiny"
    assert "UNTRAINED" in spec.label


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match=r"sam2\.1_hiera_large"):
        parse_model("sam3_giant")
    with pytest.raises(ModelError, match="unknown SAM2 model"):
        parse_model("untrained:nope")


def test_missing_checkpoint_path():
    with pytest.raises(CheckpointError, match="not found"):
        parse_model("/nowhere/model.pt")


def test_corrupt_checkpoint(tmp_path: Path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt"):
        parse_model(bad)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "here"))
    assert models.cache_dir() == tmp_path / "here"


def test_offline_download_names_file_url_and_folder():
    variant = VARIANTS["sam2.1_hiera_tiny"]
    with pytest.raises(DownloadError) as info:
        list(models.iter_download(variant))
    message = str(info.value)
    assert variant.filename in message and variant.url in message
    assert str(models.cache_dir()) in message
    assert not (models.cache_dir() / variant.filename).exists()


class _FakeResponse(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {"Content-Length": "3000000"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_records_checksum_and_detects_damage(monkeypatch):
    import dataclasses
    import hashlib

    payload = b"x" * 3_000_000
    # Meta's digests are known now: pretend this payload is the published file.
    variant = dataclasses.replace(
        VARIANTS["sam2_hiera_tiny"], sha256=hashlib.sha256(payload).hexdigest()
    )
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _FakeResponse(payload))
    steps = models.iter_download(variant, chunk=1 << 20)
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as stop:
            path = stop.value
            break
    assert progress[-1] == (3_000_000, 3_000_000) and len(progress) == 3
    assert path.read_bytes() == payload
    models.verify_checksum(variant, path)  # recorded digest matches
    path.write_bytes(b"y" * 10)
    with pytest.raises(CheckpointError, match="damaged"):
        models.verify_checksum(variant, path)


def test_download_failure_mid_stream_leaves_nothing(monkeypatch):
    class Broken(_FakeResponse):
        def read(self, n=-1):
            raise urllib.error.URLError("connection reset")

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Broken(b""))
    variant = VARIANTS["sam2_hiera_small"]
    with pytest.raises(DownloadError, match="connection reset"):
        list(models.iter_download(variant))
    assert list(models.cache_dir().glob("sam2_hiera_small*")) == []


def test_pick_device():
    assert models.pick_device("cpu").type == "cpu"
    assert models.pick_device(None).type in {"cuda", "mps", "cpu"}
    with pytest.raises(ModelError, match="unknown device"):
        models.pick_device("tpu")


def test_unavailable_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelError, match="not available"):
        models.pick_device("cuda")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The untrained tiny model's weights saved as Meta's checkpoints are ({'model': ...})."""
    import torch

    from napari_sam_lora.engine.tracking.predictor import load_model

    model = load_model("untrained:sam2.1_hiera_tiny", device="cpu", image_size=256)
    path = tmp_path_factory.mktemp("ckpt") / "my_tiny.pt"
    torch.save({"model": model.predictor.state_dict()}, path)
    return path


def test_local_checkpoint_loads_and_is_recognised(tiny_checkpoint):
    from napari_sam_lora.engine.tracking.predictor import load_model

    spec = parse_model(tiny_checkpoint)
    assert spec.variant.name == "sam2.1_hiera_tiny" and not spec.untrained
    model = load_model(str(tiny_checkpoint), device="cpu", image_size=256)
    assert "my_tiny.pt" in model.label and "UNTRAINED" not in model.label


def test_wrong_variant_checkpoint_in_cache(tiny_checkpoint):
    from napari_sam_lora.engine.tracking.predictor import load_model

    cached = models.cache_dir() / "sam2.1_hiera_small.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(tiny_checkpoint.read_bytes())
    expected = r"sam2\.1_hiera_tiny checkpoint, not sam2\.1_hiera_small"
    with pytest.raises(CheckpointError, match=expected):
        load_model("sam2.1_hiera_small", device="cpu", image_size=256)


def test_checkpoints_load_weights_only(monkeypatch, tiny_checkpoint):
    import torch

    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    models.read_checkpoint(tiny_checkpoint)
    assert seen.get("weights_only") is True
