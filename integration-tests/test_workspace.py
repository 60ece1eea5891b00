"""The workspace as a whole: every member is installed, answers --help and --version, and builds."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"medimg": "medimg-core", "crl": "crl", "neuron-concepts": "neuron-concepts", "cipl": "cipl",
            "iis": "iis", "dae-cf": "dae-counterfactual"}


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_answers_help_and_version(command):
    for flag in ("--help", "--version"):
        result = subprocess.run([_bin(command), flag], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert "0.1.0" in result.stdout


#: members without a command of their own (medimg-benchmark adds `medimg benchmark` through an entry point)
OTHER_MEMBERS = ("medimg-benchmark",)


def test_every_member_has_the_required_layout():
    members = {p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file()}
    assert members == {*COMMANDS.values(), *OTHER_MEMBERS}
    for dist in members:
        pkg = ROOT / "packages" / dist
        module = dist.replace("-", "_")
        assert (pkg / "pyproject.toml").is_file() and (pkg / "README.md").is_file()
        assert (pkg / "src" / module / "__init__.py").is_file() and (pkg / "tests").is_dir()


@pytest.mark.skipif(shutil.which("hatch") is None and not (Path(sys.executable).parent / "hatch").exists(),
                    reason="hatch is not installed")
def test_wheels_keep_the_published_dependency_range(tmp_path):
    hatch = _bin("hatch")
    for dist in ("medimg-core", "crl"):
        subprocess.run([hatch, "build", "-t", "wheel", str(tmp_path)], cwd=ROOT / "packages" / dist, check=True,
                       capture_output=True, timeout=300)
    wheels = {w.name.split("-")[0]: w for w in tmp_path.glob("*.whl")}
    assert set(wheels) == {"medimg_core", "crl"}
    with zipfile.ZipFile(wheels["crl"]) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
        assert "Requires-Dist: medimg-core<0.2,>=0.1" in meta
        assert any(n.startswith("crl/") for n in zf.namelist())
    with zipfile.ZipFile(wheels["medimg_core"]) as zf:
        assert "medimg_core/data/base.py" in zf.namelist()
