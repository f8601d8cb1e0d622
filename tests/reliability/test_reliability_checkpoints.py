"""Checkpoints: Meta's digests, sidecars, folders, malicious files, devices (issue 11)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import pathlib
from typing import ClassVar

import pytest

from napari_sam_lora.engine.core.atomic import temp_paths
from napari_sam_lora.engine.core.errors import CheckpointError, DownloadError, ModelError
from napari_sam_lora.engine.tracking import models
from napari_sam_lora.engine.tracking.models import META_SHA256, VARIANTS, parse_model


class _Response(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_variant_knows_metas_digest():
    assert {v.name: v.sha256 for v in VARIANTS.values()} == META_SHA256
    assert VARIANTS["sam2.1_hiera_tiny"].sha256.startswith("7402e0d864fa")


def test_a_download_with_another_digest_is_refused_not_trusted(monkeypatch):
    payload = b"not meta's file" * 1000  # was: recorded as the new truth
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _Response(payload))
    variant = VARIANTS["sam2.1_hiera_tiny"]
    with pytest.raises(DownloadError, match="differs from the published 7402e0d864fa"):
        list(models.iter_download(variant))
    folder = models.cache_dir()
    assert not (folder / variant.filename).exists()
    assert not (folder / f"{variant.filename}.sha256").exists()
    assert temp_paths(folder) == []


def _cached(content: bytes, sidecar: str | None):
    variant = VARIANTS["sam2_hiera_small"]
    path = models.cache_dir() / variant.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if sidecar is not None:
        (path.parent / f"{path.name}.sha256").write_text(sidecar)
    return variant, path


@pytest.mark.parametrize("sidecar", ["", "garbage", "zz" * 32 + "  x 1 2", None])
def test_empty_or_garbage_sidecar_is_ignored(sidecar):  # FAIL 11: IndexError
    content = b"\x00" * 64 + b"weights" * 100  # 64 zeroed bytes: detected by the digest
    variant, path = _cached(content, sidecar)
    with pytest.raises(CheckpointError, match=r"damaged or not Meta's sam2_hiera_small.pt"):
        models.verify_checksum(variant, path)
    good = dataclasses.replace(variant, sha256=hashlib.sha256(content).hexdigest())
    models.verify_checksum(good, path)  # hashed, then recorded
    assert (path.parent / f"{path.name}.sha256").read_text().split()[0] == good.sha256
    models.verify_checksum(good, path)


def test_a_folder_named_like_a_checkpoint(tmp_path):  # WEAK: "checkpoint file not found"
    (tmp_path / "x.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"x\.pt is a folder, not a checkpoint file"):
        parse_model(tmp_path / "x.pt")


def test_a_local_file_with_metas_name_must_be_metas_file(tmp_path):
    fake = tmp_path / "sam2.1_hiera_tiny.pt"
    fake.write_bytes(b"\x00" * 64 + b"rest")
    with pytest.raises(CheckpointError, match=r"not Meta.s sam2\.1_hiera_tiny\.pt: SHA-256"):
        parse_model(fake)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_malicious_checkpoint_message_is_one_line_without_unsafe_advice(tmp_path, capsys):
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        models.read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert "never unpickles" in message and "evil.pt" in message
    assert "must never run" not in capsys.readouterr().out


def test_cache_folder_below_a_regular_file(monkeypatch, tmp_path):  # WEAK: NotADirectoryError
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "file" / "cache"))
    with pytest.raises(DownloadError, match=r"file is a file, not a folder\. Set NAPARI_SAM_LORA"):
        list(models.iter_download(VARIANTS["sam2.1_hiera_tiny"]))


def test_read_only_cache_offline_keeps_the_guidance(monkeypatch):  # WEAK
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    variant = VARIANTS["sam2.1_hiera_tiny"]
    with pytest.raises(DownloadError) as info:
        list(models.iter_download(variant))
    message = str(info.value)
    assert f"put it in {models.cache_dir()}" in message and variant.url in message


@pytest.mark.parametrize("device", ["cpu:abc", "cuda:x", "cpu:", "mps:-1"])
def test_bad_device_strings(device):  # FAIL 11: --device cpu:abc traceback
    with pytest.raises(ModelError, match=r"is not valid|not available"):
        models.pick_device(device)


def test_nan_weights_in_a_checkpoint_are_refused(tmp_path):  # WEAK: empty masks silently
    import torch

    path = tmp_path / "mine.pt"
    torch.save({"model": {"a.weight": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(CheckpointError, match=r"a\.weight holds NaN or infinite values"):
        models.read_checkpoint(path)


def test_zeroed_bytes_inside_a_local_checkpoint_are_detected(tmp_path):  # WEAK: loaded silently
    import torch

    path = tmp_path / "mine.pt"
    torch.save({"model": {"w": torch.ones(100_000)}}, path)
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 64] = bytes(64)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(blob))
    assert set(models.read_checkpoint(path)) == {"w"}
    with pytest.raises(CheckpointError, match=r"fails its CRC-32 check"):
        models.read_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="CRC-32"):
        parse_model(damaged)
