"""The README's scripting and learning examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    """Python blocks of the Scripting and Learning sections that need no viewer."""
    text = README.read_text("utf-8")
    blocks = []
    for section in ("## Scripting", "## Learning from corrections"):
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        blocks += re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return [b for b in blocks if "import napari\n" not in b]


@pytest.mark.slow
def test_readme_scripting_and_learning_examples_run(tmp_path, monkeypatch):
    examples = _examples()
    assert len(examples) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in examples:
        exec(compile(code, str(README), "exec"), namespace)
    labels, session = namespace["labels"], namespace["session"]
    assert labels.shape == (session.num_frames, *session.frame_shape)
    assert namespace["report"].trained
    assert session.annotations.source(4, 1) == "correction"
    assert (tmp_path / "cells_adapter.safetensors").is_file()
    assert (tmp_path / "cells.session.json").is_file()
