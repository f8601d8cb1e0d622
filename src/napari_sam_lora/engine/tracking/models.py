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
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_sam_lora.engine.core.errors import (
    CheckpointError,
    DownloadError,
    ModelError,
    SamLoraError,
)

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
        Published SHA-256 of the file (:data:`META_SHA256`): a download, a cached file or a
        local file with Meta's file name must have it.
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


#: Meta's published SHA-256 digests (the ones micro-sam pins for the same URLs; see
#: the team's CHECKPOINTS.md). A download or a cached/local file named like one of these
#: must match, or it is refused.
META_SHA256 = {
    "sam2.1_hiera_tiny": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    "sam2.1_hiera_small": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    "sam2.1_hiera_base_plus": "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    "sam2.1_hiera_large": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
    "sam2_hiera_tiny": "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
    "sam2_hiera_small": "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
    "sam2_hiera_base_plus": "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
    "sam2_hiera_large": "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
}


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
            table[name] = Variant(
                name, config, url + f"{name}.pt", mb, META_SHA256[name], blocks, dim
            )
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
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the .pt file")
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        meta = next((v for v in VARIANTS.values() if v.filename == path.name), None)
        if meta is not None:  # named like Meta's file: it must be Meta's file
            verify_checksum(meta, path)
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


def _read_sidecar(path: Path) -> tuple[str, int, int] | None:
    """``(digest, size, mtime_ns)`` recorded beside a verified file; ``None`` if unusable.

    An empty or garbage sidecar (e.g. left by a full disk) is ignored: the file is hashed.
    """
    try:
        parts = _sidecar(path).read_text(encoding="ascii").split()
        digest, size, mtime = parts[0], int(parts[2]), int(parts[3])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest, size, mtime


def _write_sidecar(path: Path, digest: str) -> None:
    """Record a verified digest with the file's size and mtime (best effort)."""
    stat = path.stat()
    text = f"{digest}  {path.name} {stat.st_size} {stat.st_mtime_ns}\n"
    with suppress(OSError):  # a read-only cache only costs a re-hash next time
        from napari_sam_lora.engine.core.atomic import write_files

        write_files({_sidecar(path): text})


def expected_sha256(variant: Variant, path: Path) -> str | None:
    """The digest a checkpoint of ``variant`` must have: Meta's published one."""
    if variant.sha256:
        return variant.sha256
    recorded = _read_sidecar(path)
    return recorded[0] if recorded else None


def verify_checksum(variant: Variant, path: Path) -> None:
    """Raise :class:`CheckpointError` when ``path``'s SHA-256 differs from Meta's.

    A file verified before (same size and mtime, recorded in ``<file>.sha256``) is not
    hashed again. On a mismatch the message says what the file holds when its weights can
    be recognised (another variant), and never suggests trusting it.
    """
    expected = expected_sha256(variant, path)
    if expected is None:
        return
    stat = path.stat()
    if _read_sidecar(path) == (expected, stat.st_size, stat.st_mtime_ns):
        return
    actual = file_sha256(path)
    if actual == expected:
        _write_sidecar(path, actual)
        return
    try:
        found = variant_of_state(read_checkpoint(path))
    except CheckpointError:
        found = None
    if found is not None and found != variant:
        raise CheckpointError(
            f"{path} is a {found.name} checkpoint, not {variant.name}; choose {found.name} "
            f"or put Meta's {variant.filename} there"
        )
    raise CheckpointError(
        f"checkpoint {path} is damaged or not Meta's {variant.filename}: SHA-256 "
        f"{actual[:12]}… differs from the published {expected[:12]}…. Delete it and download "
        f"it again from {variant.url} (or rename it if it is your own checkpoint)."
    )


def _blocking_file(folder: Path) -> Path | None:
    """The regular file standing where ``folder`` or one of its parents should be."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


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
    written through :mod:`.atomic` (a temporary file in the cache) and renamed only when
    complete and its SHA-256 is Meta's published one; otherwise nothing is kept.

    Raises
    ------
    DownloadError
        Offline, server error or checksum mismatch; the message names the file, the URL
        and the folder to put it in.
    """
    folder = cache_dir()
    blocker = _blocking_file(folder)
    if blocker is not None:
        raise DownloadError(
            f"the checkpoint cache {folder} cannot be used: {blocker} is a file, not a folder. "
            f"Set {CACHE_ENV} to a folder, or remove that file."
        )
    target = folder / variant.filename
    if target.is_dir():
        raise DownloadError(f"{target} is a folder, not a checkpoint file; remove it")
    if target.is_file():
        return target
    from napari_sam_lora.engine.core.atomic import FileSet

    files = FileSet()
    digest = hashlib.sha256()
    try:
        partial = files.path(target)
        with urllib.request.urlopen(variant.url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or variant.size_mb * 2**20)
            done = 0
            with open(partial, "wb") as handle:
                while block := response.read(chunk):
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    yield done, total
        if variant.sha256 and digest.hexdigest() != variant.sha256:
            files.discard()
            raise DownloadError(
                offline_message(
                    variant,
                    f"the download's SHA-256 {digest.hexdigest()[:12]}… differs from the "
                    f"published {variant.sha256[:12]}…, so it was not kept",
                )
            )
        files.commit()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        files.discard()  # never raises: a read-only cache keeps the guidance below
        reason = str(exc) if isinstance(exc, SamLoraError) else f"{exc}"
        raise DownloadError(offline_message(variant, reason)) from exc
    except BaseException:
        files.discard()
        raise
    _write_sidecar(target, digest.hexdigest())
    return target


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's state dict with ``weights_only=True`` (never unpickles code)."""
    import torch

    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    _check_zip_records(Path(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not read checkpoint {path}: it is corrupt or not a SAM2 checkpoint "
            f"({load_failure(exc)})"
        ) from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no SAM2 model weights (expected a 'model' dict)")
    for key, tensor in state.items():
        floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
        if floating and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path} is damaged: weight {key} holds NaN or infinite values (the model "
                "would output empty masks); download or export it again"
            )
    return state


def _check_zip_records(path: Path, chunk: int = 1 << 22) -> None:
    """Check the CRC-32 torch records for every entry of a zip checkpoint.

    ``torch.load`` does not verify them, so a few overwritten bytes (a bad copy, a disk
    error) would load silently as wrong weights. Legacy (non-zip) files cannot be checked.
    """
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue  # written without checksums
                try:
                    with archive.open(info) as member:  # zipfile checks the CRC at the end
                        while member.read(chunk):
                            pass
                except zipfile.BadZipFile as exc:
                    if "crc" not in str(exc).lower():
                        raise
                    raise CheckpointError(
                        f"{path} is damaged: its record {info.filename} fails its CRC-32 "
                        "check (bytes were overwritten or lost); copy or download it again"
                    ) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"could not read checkpoint {path}: it is corrupt or not a SAM2 checkpoint "
            f"({load_failure(exc)})"
        ) from None


def load_failure(exc: BaseException) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused a file.

    Never repeats torch's advice to retry with ``weights_only=False``: that would run
    whatever code the file holds.
    """
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text.lower():
        return "it holds Python objects other than tensors, which napari-sam-lora never unpickles"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first or type(exc).__name__
    return first if len(first) <= 120 else first[:119] + "…"


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
    base, colon, index = wanted.partition(":")
    shown = wanted if len(wanted) <= 40 else wanted[:39] + "…"
    if base not in available:
        raise ModelError(f"unknown device {shown!r}; choose auto, cuda, mps or cpu")
    if colon and not ((index.isdigit() and base != "cpu") or index == "0"):
        raise ModelError(
            f"device {shown!r} is not valid: write {base} or {base}:<number> (e.g. cuda:0)"
        )
    if not available[base]:
        raise ModelError(f"device {shown!r} is not available on this machine; use auto or cpu")
    if base == "cuda" and colon and int(index) >= torch.cuda.device_count():
        raise ModelError(
            f"device {shown!r} does not exist: this machine has {torch.cuda.device_count()} "
            "CUDA device(s), cuda:0 …"
        )
    try:
        return torch.device(wanted)
    except RuntimeError as exc:
        raise ModelError(f"device {shown!r} is not valid ({exc})") from None


ProgressCallback = Callable[[int, int], None]
