"""Release: the built sdist and wheel pass ``twine check``, and the wheel works installed.

The wheel is installed (not editable) into a fresh virtual environment. Installing torch,
napari and the rest there would take many minutes, so the new environment borrows the
dependencies already installed here: a ``.pth`` file makes a view of this interpreter's
site-packages (every entry but this package's own) a site directory of the new one. The
package itself, its metadata, entry points and manifest come from the wheel alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "napari-sam-lora"
PACKAGE = "napari_sam_lora"

_MISSING = [name for name in ("build", "twine") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"{' and '.join(_MISSING)} not installed (pip install -e '.[testing]')",
    ),
]


def _env() -> dict[str, str]:
    """The environment for subprocesses: nothing that puts this checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", QT_QPA_PLATFORM="offscreen", PIP_NO_INPUT="1")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _build_args() -> list[str]:
    """Build offline with this environment's setuptools and setuptools-scm (the testing
    extra has them); without them, in build's own isolated environment (needs PyPI)."""
    try:
        import setuptools
        import setuptools_scm  # noqa: F401
    except ImportError:
        return []
    return ["--no-isolation"] if int(setuptools.__version__.split(".")[0]) >= 77 else []


def _build(source: Path, outdir: Path, *what: str) -> list[Path]:
    _run(sys.executable, "-m", "build", *_build_args(), *what, "--outdir", outdir, source)
    return sorted(outdir.iterdir())


def _copy_checkout(dest: Path) -> Path:
    """This checkout as it is (git history, tracked and untracked files, not what git
    ignores), so that building writes nothing (``*.egg-info``) into the working tree."""
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in dict.fromkeys(filter(None, listed.split("\0"))):
        src, dst = ROOT / name, dest / name
        if not src.is_symlink() and not src.is_file():
            continue  # deleted, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    git = ROOT / ".git"
    if git.is_dir():
        shutil.copytree(git, dest / ".git", symlinks=True)
    else:  # a worktree's or submodule's pointer file
        shutil.copy2(git, dest / ".git")
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``python -m build``: the sdist, and the wheel built from that sdist."""
    checkout = (ROOT / ".git").exists()
    source = _copy_checkout(tmp_path_factory.mktemp("checkout")) if checkout else ROOT
    outdir = tmp_path_factory.mktemp("dist")
    built = _build(source, outdir)
    sdists = [p for p in built if p.name.endswith(".tar.gz")]
    wheels = [p for p in built if p.suffix == ".whl"]
    assert len(sdists) == 1 and len(wheels) == 1, [p.name for p in built]
    return {"sdist": sdists[0], "wheel": wheels[0]}


def _wheel_version(wheel: Path) -> str:
    name, version, *_ = wheel.name.split("-")
    assert name == PACKAGE
    return version


def test_sdist_and_wheel_pass_twine_check(dists):
    version = _wheel_version(dists["wheel"])
    assert dists["sdist"].name == f"{PACKAGE}-{version}.tar.gz"
    assert dists["wheel"].name == f"{PACKAGE}-{version}-py3-none-any.whl"
    out = _run(sys.executable, "-m", "twine", "check", "--strict", *dists.values())
    assert out.count("PASSED") == 2, out


def test_wheel_contents(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta_name).decode()
        entry_points = whl.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    for data in ("napari.yaml", "configs/default.yaml", "configs/finetune/example.yaml"):
        assert f"{PACKAGE}/{data}" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    assert "Classifier: Framework :: napari" in metadata
    assert "Classifier: Programming Language :: Python :: 3.13" in metadata
    assert "Provides-Extra: all" in metadata
    assert "https://raw.githubusercontent.com/" in metadata  # README images work on PyPI
    assert f"{DIST} = {PACKAGE}:napari.yaml" in entry_points
    assert f"{DIST} = {PACKAGE}.cli:main" in entry_points


def _site_packages_view(view: Path) -> Path:
    """A folder with a link to every entry of this interpreter's site-packages except this
    package (its code, its metadata and the editable install's hooks)."""
    view.mkdir()
    ours = (PACKAGE, f"__editable__.{PACKAGE}", f"__editable___{PACKAGE}", f"{PACKAGE}-")
    paths = sysconfig.get_paths()
    for site in dict.fromkeys((paths["purelib"], paths["platlib"])):
        for entry in Path(site).iterdir():
            if entry.name.startswith(ours) or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return view


@pytest.fixture(scope="module")
def fresh_venv(dists, tmp_path_factory) -> Path:
    """A new virtual environment with the built wheel installed (``--no-deps``) and this
    environment's other packages visible through a ``.pth`` file."""
    tmp = tmp_path_factory.mktemp("fresh")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    view = _site_packages_view(tmp / "deps")
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    pth = Path(site.strip()) / "_borrowed_dependencies.pth"
    pth.write_text(f"import site; site.addsitedir({str(view)!r})\n")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
        "--no-index", "--no-compile", dists["wheel"],
    )  # fmt: skip
    return venv


def test_installed_wheel_is_the_package(fresh_venv, dists):
    python = fresh_venv / "bin" / "python"
    code = (
        "import importlib.metadata as md, json, sys, napari_sam_lora as m; "
        "print(json.dumps({'file': m.__file__, 'version': m.__version__, "
        "'dists': [d.version for d in md.distributions() "
        "if d.metadata['Name'] == 'napari-sam-lora'], 'torch': 'torch' in sys.modules}))"
    )
    info = json.loads(_run(python, "-c", code))
    assert Path(info["file"]).resolve().is_relative_to(fresh_venv.resolve()), info
    assert info["dists"] == [_wheel_version(dists["wheel"])]  # the wheel's, only
    assert info["version"] == info["dists"][0]
    assert not info["torch"]  # importing the package stays cheap


def test_installed_cli(fresh_venv, dists):
    cli = fresh_venv / "bin" / DIST
    assert cli.is_file()
    assert _run(cli, "--version").strip() == f"{DIST} {_wheel_version(dists['wheel'])}"
    usage = _run(cli, "--help")
    for command in ("demo", "synthetic", "evaluate", "train", "check-data", "segment"):
        assert command in usage


def test_installed_manifest_validates_with_imports(fresh_venv):
    python = fresh_venv / "bin" / "python"
    out = _run(python, "-m", "npe2", "validate", "--imports", DIST, timeout=180)
    assert "valid" in out.lower(), out


def test_version_without_git_is_the_fallback(tmp_path):
    """A source tree without git history (a downloaded archive) builds, with the
    fallback version."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    fallback = config["tool"]["setuptools_scm"]["fallback_version"]
    source = tmp_path / "src-archive"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "napari.yaml"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("configs", "src"):
        shutil.copytree(
            ROOT / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    built = _build(source, tmp_path / "dist", "--sdist")
    assert [p.name for p in built] == [f"{PACKAGE}-{fallback}.tar.gz"]
