"""Each method installs alone: its built wheel plus medimg-core's, in a fresh virtual environment that has
only torch, resolves its dependencies from the package index, imports and answers --help. medimg-benchmark,
which depends on every method, installs with their wheels and adds `medimg benchmark` to core's command.

Between packages, everything the previous install added is removed again, so a dependency missing from a
package's metadata cannot hide behind another package's. The fresh environment borrows torch, torchvision and
their own dependencies from the interpreter running the tests (symlinks on a .pth path, read-only to the
environment's pip: it never uninstalls outside its prefix), because a second torch with its CUDA libraries
is about 6 GB and filled CI's disk. MEDIMG_WHEEL_TORCH=install installs torch from the package index instead
(TORCH_PINS; minutes and ~6 GB). Set MEDIMG_SKIP_WHEEL_INSTALL=1 to skip the file on a machine without a
package index.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"crl": ("crl", "crl"), "neuron-concepts": ("neuron_concepts", "neuron-concepts"),
           "cipl": ("cipl", "cipl"), "iis": ("iis", "iis"), "dae-counterfactual": ("dae_counterfactual", "dae-cf")}
#: not a method: it depends on all of them and adds `medimg benchmark` through the entry-point group medimg.commands
BENCHMARK = "medimg-benchmark"
TORCH_PINS = os.environ.get("MEDIMG_TORCH_PINS", "torch==2.14.1 torchvision==0.29.1").split()

pytestmark = pytest.mark.skipif(os.environ.get("MEDIMG_SKIP_WHEEL_INSTALL") == "1",
                                reason="MEDIMG_SKIP_WHEEL_INSTALL=1")


def _hatch() -> str:
    local = Path(sys.executable).parent / "hatch"
    return str(local) if local.exists() else (shutil.which("hatch") or "hatch")


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    for dist in ["medimg-core", *METHODS, BENCHMARK]:
        _run([_hatch(), "build", "-t", "wheel", str(out)], cwd=ROOT / "packages" / dist, timeout=600)
    found = {w.name.split("-")[0].replace("_", "-"): w for w in out.glob("*.whl")}
    assert set(found) == {"medimg-core", *METHODS, BENCHMARK}, found
    return found


def _requirement_closure(names: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions `names` need, following their unconditional requirements."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _share_host_torch(venv_python: Path, shared: Path) -> None:
    """Make this interpreter's torch and torchvision (with their dependencies) importable in the venv."""
    shared.mkdir()
    for key, dist in _requirement_closure(["torch", "torchvision"]).items():
        if key in {"pip", "setuptools"}:  # the venv has its own
            continue
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or []}:
            if top in {"..", "__pycache__"} or top.endswith(".pth") or (shared / top).exists():
                continue
            if (site / top).exists():
                (shared / top).symlink_to(site / top)
    purelib = _run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   timeout=300).stdout.strip()
    (Path(purelib) / "_medimg_host_torch.pth").write_text(f"{shared}\n")


@pytest.fixture(scope="module")
def torch_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    venv = root / "env"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    if os.environ.get("MEDIMG_WHEEL_TORCH") == "install":
        _run([str(python), "-m", "pip", "install", "-q", *TORCH_PINS], timeout=1800)
    else:
        _share_host_torch(python, root / "host-torch")
    _run([str(python), "-c", "import torch, torchvision"], timeout=300)
    return python


def _installed(python: Path) -> set[str]:
    out = _run([str(python), "-m", "pip", "list", "--format=freeze"], timeout=300).stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if "==" in line}


@pytest.mark.parametrize("dist", sorted(METHODS))
def test_method_wheel_installs_alone_and_answers_help(wheels, torch_venv, dist):
    module, command = METHODS[dist]
    before = _installed(torch_venv)
    try:
        _run([str(torch_venv), "-m", "pip", "install", "-q", str(wheels["medimg-core"]), str(wheels[dist])],
             timeout=1800)
        _run([str(torch_venv), "-m", "pip", "check"], timeout=300)
        _run([str(torch_venv), "-c", f"import {module}, medimg_core; print({module}.__version__)"], timeout=300)
        result = _run([str(torch_venv.parent / command), "--help"], timeout=300,
                      env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert "Usage" in result.stdout
    finally:
        added = sorted(_installed(torch_venv) - before)
        if added:
            _run([str(torch_venv), "-m", "pip", "uninstall", "-y", "-q", *added], timeout=600)


def test_benchmark_wheel_installs_with_the_methods_and_adds_its_command_to_medimg(wheels, torch_venv):
    """medimg-benchmark with the wheels of the core and the five methods (its dependencies) and the posthoc extra
    from the index: `medimg benchmark --help` works, so the entry point reached core's `medimg` group."""
    before = _installed(torch_venv)
    try:
        _run([str(torch_venv), "-m", "pip", "install", "-q", str(wheels["medimg-core"]) + "[posthoc]",
              *(str(wheels[d]) for d in sorted(METHODS)), str(wheels[BENCHMARK])], timeout=1800)
        _run([str(torch_venv), "-m", "pip", "check"], timeout=300)
        _run([str(torch_venv), "-c", "import medimg_benchmark, captum, pytorch_grad_cam; "
              "print(medimg_benchmark.__version__)"], timeout=300)
        result = _run([str(torch_venv.parent / "medimg"), "benchmark", "--help"], timeout=300,
                      env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert "Usage: medimg benchmark" in result.stdout and "--quick" in result.stdout
    finally:
        added = sorted(_installed(torch_venv) - before)
        if added:
            _run([str(torch_venv), "-m", "pip", "uninstall", "-y", "-q", *added], timeout=600)
