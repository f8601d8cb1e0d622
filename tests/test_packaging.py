"""Packaging: npe2 manifest, sample data, entry points and dependencies."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from napari_sam_lora.synthetic import KINDS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ("moving_disk", "decoy", "deforming", "noisy16")


@pytest.fixture(scope="module")
def manifest():
    npe2 = pytest.importorskip("npe2")
    return npe2.PluginManifest.from_distribution("napari-sam-lora")


def test_manifest_basics(manifest):
    assert manifest.name == "napari-sam-lora"
    # napari titles a dock "<widget> (<plugin display name>)": "SAM2 LoRA (napari-sam-lora)",
    # the same title add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA") gives
    assert manifest.display_name == "napari-sam-lora"
    commands = {c.id: c for c in manifest.contributions.commands}
    assert all(cid.startswith("napari-sam-lora.") for cid in commands)
    widget = commands["napari-sam-lora.make_widget"]
    assert widget.python_name == "napari_sam_lora._qt.widget:SamLoraWidget"
    widgets = manifest.contributions.widgets
    assert [(w.command, w.display_name) for w in widgets] == [
        ("napari-sam-lora.make_widget", "SAM2 LoRA"),
        ("napari-sam-lora.make_finetune_widget", "SAM2 LoRA fine-tuning"),
        ("napari-sam-lora.make_batch_widget", "Segment a folder…"),
    ]
    batch = commands["napari-sam-lora.make_batch_widget"]
    assert batch.python_name == "napari_sam_lora._qt._batch:BatchWidget"


def test_manifest_sample_data(manifest):
    samples = {s.key: s for s in manifest.contributions.sample_data}
    assert set(SAMPLES) <= set(samples)
    commands = {c.id: c for c in manifest.contributions.commands}
    for key, sample in samples.items():
        assert key in KINDS
        assert commands[sample.command].python_name == f"napari_sam_lora.sample_data:{key}"


def test_manifest_file_is_shipped_in_the_package():
    packaged = ROOT / "src" / "napari_sam_lora" / "napari.yaml"
    assert packaged.is_file()
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


@pytest.mark.parametrize("key", SAMPLES)
def test_sample_functions_return_layer_data(manifest, key):
    from napari_sam_lora import sample_data

    commands = {c.id: c for c in manifest.contributions.commands}
    sample = next(s for s in manifest.contributions.sample_data if s.key == key)
    module, name = commands[sample.command].python_name.split(":")
    assert module == "napari_sam_lora.sample_data"
    layers = getattr(sample_data, name)()
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kwargs, _), (labels, labels_kwargs, _) = layers
    assert image.ndim == 3 and image.shape == labels.shape
    assert image.shape[0] <= 16 and max(image.shape[1:]) <= 256
    assert labels.dtype == np.int32
    assert image_kwargs["name"] == f"synthetic {key}"
    assert labels_kwargs["name"] == f"synthetic {key} ground truth"
    if key == "noisy16":
        assert image.dtype == np.uint16


def test_sample_tuples_make_napari_layers():
    layers_mod = pytest.importorskip("napari.layers")
    from napari_sam_lora.sample_data import decoy

    for data, kwargs, layer_type in decoy():
        layer = layers_mod.Layer.create(data, kwargs, layer_type)
        assert layer.name == kwargs["name"]
        assert layer.data.shape == data.shape


def test_entry_points():
    eps = md.entry_points(group="napari.manifest")
    ours = [ep for ep in eps if ep.name == "napari-sam-lora"]
    assert ours and ours[0].value == "napari_sam_lora:napari.yaml"
    scripts = md.entry_points(group="console_scripts")
    assert any(ep.value == "napari_sam_lora.cli:main" for ep in scripts)


def test_pyproject_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "Framework :: napari" in project["classifiers"]
    deps = " ".join(project["dependencies"]).lower()
    for binding in ("pyqt5", "pyqt6", "pyside2", "pyside6"):
        assert binding not in deps, f"{binding} must be optional, not a core dependency"
    assert "tifffile" in deps
    extras = project["optional-dependencies"]
    assert {"all", "pyqt5", "pyqt6", "testing", "batch", "export"} <= set(extras)
    assert extras["all"] == ["napari-sam-lora[pyqt6,batch,export]"]
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in project["classifiers"]


def test_version_from_git_tags():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"]
    assert config["project"]["dynamic"] == ["version"]
    assert config["tool"]["setuptools_scm"]["fallback_version"]
    import napari_sam_lora

    assert napari_sam_lora.__version__ == md.version("napari-sam-lora")


def test_installed_metadata_matches():
    meta = md.metadata("napari-sam-lora")
    assert "Framework :: napari" in meta.get_all("Classifier")
    core = [r.lower() for r in md.requires("napari-sam-lora") or [] if "extra ==" not in r]
    assert core
    assert not any("pyqt" in r or "pyside" in r for r in core)


def test_license_and_readme():
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/demo.sh" in readme
    for heading in ("## Installation", "## Quick start"):
        assert heading in readme


RAW = "https://raw.githubusercontent.com/napari-sam-lora/napari-sam-lora/main/"


def test_readme_images_are_absolute_links_to_files_in_the_repository():
    """PyPI and the napari hub show the README away from the repository: relative image
    links would be broken there."""
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme)
    assert images
    for url in images:
        assert url.startswith(RAW + "docs/images/"), url
        assert (ROOT / url.removeprefix(RAW)).is_file(), url
