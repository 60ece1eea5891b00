"""Every README's Python examples run as written.

A Python code block right after the line `<!-- tested example -->` in README.md or packages/*/README.md is
executed, unchanged, in a fresh interpreter whose working folder holds the synthetic datasets the READMEs use
(`data/synth-derm`, `data/synth-cxr`, `data/synth-grade`, written as `medimg synth NAME --out data/NAME`
would, but with 96 images of 32 px so that an example trains in seconds). Blocks of one README run in order in
the same folder, so a later block can read what an earlier one wrote; an example that fails shows its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tested example -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```", re.S)


def readmes() -> list[Path]:
    return [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]


def examples(readme: Path) -> list[str]:
    return BLOCK.findall(readme.read_text())


def test_every_package_readme_has_a_tested_python_example():
    missing = [p.parent.name for p in sorted(ROOT.glob("packages/*/README.md")) if not examples(p)]
    assert not missing, f"READMEs without a `{MARKER}` Python block: {missing}"


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    from medimg_core.synthetic import generate

    folder = tmp_path_factory.mktemp("readme")
    for name in ("synth-derm", "synth-cxr", "synth-grade"):
        generate(name, n=96, out=folder / "data" / name, seed=0, size=32)
    return folder


@pytest.mark.parametrize("readme", [p for p in readmes() if examples(p)],
                         ids=lambda p: str(p.relative_to(ROOT).parent) if p.parent != ROOT else "README")
def test_readme_examples_run_as_written(readme: Path, example_dir: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "data").symlink_to(example_dir / "data", target_is_directory=True)
    env = {**os.environ, "MEDIMG_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    for i, code in enumerate(examples(readme), 1):
        result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 0, (f"{readme.relative_to(ROOT)}, example {i} failed:\n{code}\n--- stdout\n"
                                        f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
