"""SAM2 model variants, checkpoints (download, checksum, cache), devices and the predictor.

A model is named by a string:

- a variant, e.g. ``"sam2.1_hiera_tiny"``: Meta's checkpoint, downloaded on first use into
  the per-user cache (:func:`cache_dir`, overridable with ``NAPARI_SAM_LORA_CACHE``);
- ``"untrained:<variant>"``: sam2's own config with random weights (fixed seed), for tests
  and the offline demo; labelled UNTRAINED wherever the model name is shown;
- a path to a local ``.pt`` checkpoint (the variant is read off its weights).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_sam_lora.engine.errors import CheckpointError, DownloadError, ModelError

if TYPE_CHECKING:
    import torch

UNTRAINED_PREFIX = "untrained:"
UNTRAINED_SEED = 0
CACHE_ENV = "NAPARI_SAM_LORA_CACHE"
DEVICE_ENV = "NAPARI_SAM_LORA_DEVICE"
_SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"


@dataclass(frozen=True)
class Variant:
    """One of Meta's published SAM2 models.

    Attributes
    ----------
    name : str
        Meta's name, also the checkpoint's file stem (``sam2.1_hiera_tiny``).
    config : str
        sam2's hydra config for it.
    url : str
        Where Meta publishes the checkpoint.
    size_mb : int
        Approximate download size, shown to users.
    sha256 : str or None
        Published SHA-256 of the file; ``None`` when unknown, in which case the digest of
        the first complete download is recorded beside the file and checked on every load.
    blocks : int
        Number of Hiera blocks (used to recognise a local checkpoint).
    embed_dim : int
        Hiera embedding width (used to recognise a local checkpoint).
    """

    name: str
    config: str
    url: str
    size_mb: int
    sha256: str | None
    blocks: int
    embed_dim: int

    @property
    def filename(self) -> str:
        """The checkpoint's file name."""
        return f"{self.name}.pt"

    @property
    def is_sam21(self) -> bool:
        """Whether this is a SAM 2.1 model."""
        return self.name.startswith("sam2.1")


def _variants() -> dict[str, Variant]:
    sizes = {  # name suffix: (config suffix, MB, blocks, embed_dim)
        "tiny": ("t", 149, 12, 96),
        "small": ("s", 176, 16, 96),
        "base_plus": ("b+", 309, 24, 112),
        "large": ("l", 857, 48, 144),
    }
    table: dict[str, Variant] = {}
    for family, url in (("sam2.1", _SAM21_URL), ("sam2", _SAM2_URL)):
        for size, (cfg, mb, blocks, dim) in sizes.items():
            name = f"{family}_hiera_{size}"
            config = f"configs/{family}/{family}_hiera_{cfg}.yaml"
            table[name] = Variant(name, config, url + f"{name}.pt", mb, None, blocks, dim)
    return table


VARIANTS: dict[str, Variant] = _variants()
DEFAULT_MODEL = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: which variant, whether untrained, and a local path if any."""

    variant: Variant
    untrained: bool = False
    path: Path | None = None

    @property
    def label(self) -> str:
        """How the model is shown to users."""
        if self.untrained:
            return f"{self.variant.name} (UNTRAINED: random weights)"
        if self.path is not None:
            return f"{self.variant.name} ({self.path.name})"
        return self.variant.name


def _unknown_variant(name: str) -> ModelError:
    valid = ", ".join(VARIANTS)
    return ModelError(
        f"unknown SAM2 model {name!r}. Valid names: {valid}; 'untrained:<name>' for random "
        "weights; or the path to a local .pt checkpoint."
    )


def parse_model(name: str | os.PathLike[str]) -> ModelSpec:
    """Turn a model name, ``untrained:<variant>`` or checkpoint path into a :class:`ModelSpec`.

    Raises
    ------
    ModelError
        The name is neither a known variant nor an existing file.
    CheckpointError
        The path exists but is not a readable SAM2 checkpoint.
    """
    text = os.fspath(name).strip()
    if text.startswith(UNTRAINED_PREFIX):
        variant = VARIANTS.get(text[len(UNTRAINED_PREFIX) :])
        if variant is None:
            raise _unknown_variant(text)
        return ModelSpec(variant, untrained=True)
    if text in VARIANTS:
        return ModelSpec(VARIANTS[text])
    path = Path(text).expanduser()
    if path.suffix in {".pt", ".pth"} or os.sep in text or "/" in text:
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        return ModelSpec(variant_of_checkpoint(path), path=path)
    raise _unknown_variant(text)


def cache_dir() -> Path:
    """The folder checkpoints are downloaded to (``NAPARI_SAM_LORA_CACHE`` overrides it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-sam-lora")) / "checkpoints"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_sha256(variant: Variant, path: Path) -> str | None:
    """The digest a cached checkpoint must have: published, or recorded at download."""
    if variant.sha256:
        return variant.sha256
    sidecar = _sidecar(path)
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


def verify_checksum(variant: Variant, path: Path) -> None:
    """Raise :class:`CheckpointError` when ``path``'s SHA-256 differs from the expected one."""
    expected = expected_sha256(variant, path)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} is damaged: SHA-256 {actual[:12]}… differs from the expected "
            f"{expected[:12]}…. Delete it; it is downloaded again from {variant.url}."
        )


def offline_message(variant: Variant, reason: str) -> str:
    """The one message shown when a checkpoint cannot be downloaded."""
    folder = cache_dir()
    return (
        f"could not download {variant.filename} ({reason}). Download it from {variant.url} "
        f"and put it in {folder} (or set {CACHE_ENV} to the folder that holds it), "
        "or choose a local checkpoint file."
    )


def iter_download(
    variant: Variant, *, timeout: float = 30.0, chunk: int = 1 << 20
) -> Generator[tuple[int, int], None, Path]:
    """Download a variant's checkpoint into the cache, yielding ``(bytes_done, bytes_total)``.

    Returns the path of the checkpoint (at once when it is already cached). The file is
    written to ``*.part`` and renamed only when complete and its checksum matches.

    Raises
    ------
    DownloadError
        Offline, server error or checksum mismatch; the message names the file, the URL
        and the folder to put it in.
    """
    target = cache_dir() / variant.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(variant.url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or variant.size_mb * 2**20)
            done = 0
            with open(partial, "wb") as handle:
                while block := response.read(chunk):
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    yield done, total
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(offline_message(variant, str(exc))) from exc
    if variant.sha256 and digest.hexdigest() != variant.sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(offline_message(variant, "checksum mismatch after download"))
    partial.replace(target)
    _sidecar(target).write_text(f"{digest.hexdigest()}  {variant.filename}\n")
    return target


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's state dict with ``weights_only=True`` (never unpickles code)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not read checkpoint {path}: it is corrupt or not a SAM2 checkpoint ({exc})"
        ) from exc
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no SAM2 model weights (expected a 'model' dict)")
    return state


def variant_of_state(state: dict[str, Any]) -> Variant | None:
    """Recognise a SAM2 variant from its weights (Hiera depth, width, 2.1 keys)."""
    key = "image_encoder.trunk.patch_embed.proj.weight"
    if key not in state:
        return None
    dim = int(state[key].shape[0])
    blocks = 1 + max(
        (int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")),
        default=-1,
    )
    family = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    for variant in VARIANTS.values():
        same_family = variant.is_sam21 == (family == "sam2.1")
        if same_family and variant.blocks == blocks and variant.embed_dim == dim:
            return variant
    return None


def variant_of_checkpoint(path: Path) -> Variant:
    """The variant a local checkpoint file belongs to."""
    variant = variant_of_state(read_checkpoint(path))
    if variant is None:
        raise CheckpointError(f"{path} is not a checkpoint of any known SAM2 variant")
    return variant


def pick_device(preference: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU; ``preference`` or ``NAPARI_SAM_LORA_DEVICE`` overrides."""
    import torch

    wanted = (preference or os.environ.get(DEVICE_ENV) or "auto").lower()
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if wanted == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    base = wanted.split(":")[0]
    if base not in available:
        raise ModelError(f"unknown device {wanted!r}; choose auto, cuda, mps or cpu")
    if not available[base]:
        raise ModelError(f"device {wanted!r} is not available on this machine; use auto or cpu")
    return torch.device(wanted)


ProgressCallback = Callable[[int, int], None]
