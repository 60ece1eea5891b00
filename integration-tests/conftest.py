"""Session-wide synthetic datasets, written to disk once and shared by every package's end-to-end test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medimg_core.synthetic import generate


def cli(name: str) -> str:
    """The console script `name` of the running environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command line; fail with its output when it does not exit 0."""
    result = subprocess.run([cli(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    return result


def run_folder(result: subprocess.CompletedProcess) -> Path:
    """The run folder a training command printed as `run folder: PATH` (its last such line)."""
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("run folder:")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return Path(lines[-1].split(":", 1)[1].strip())


def check_run_folder(run: Path, checkpoint: bool = True) -> dict:
    """A complete run folder: resolved config, metrics, figures and (for trainings) a safetensors checkpoint."""
    import json

    assert (run / "config.yaml").is_file(), run
    metrics = json.loads((run / "metrics.json").read_text())
    assert list((run / "figures").rglob("*.png")), f"{run}/figures has no PNG"
    if checkpoint:
        assert list(run.rglob("*.safetensors")), f"{run} has no safetensors checkpoint"
    return metrics


#: `dae-cf train` overrides for a DAE with a handful of channels on 16 px images (short test runs)
DAE_TINY = ["--model.base_channels", "8", "--model.channel_mult", "[1, 2]", "--model.num_res_blocks", "1",
            "--model.attention_resolutions", "[8]", "--model.groups", "4", "--model.time_embed_dim", "null",
            "--model.z_dim", "16", "--model.encoder_channel_mult", "[1, 2]", "--model.encoder_num_res_blocks", "1",
            "--model.encoder_attention_resolutions", "[]", "--data.image_size", "16"]


@pytest.fixture(scope="session")
def e2e():
    """The helpers above, for test modules (importlib mode cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(run_cli=run_cli, run_folder=run_folder, check_run_folder=check_run_folder, cli=cli,
                           dae_tiny=DAE_TINY)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict[str, Path]:
    """Small synth-derm, synth-cxr and synth-grade datasets at 32 px."""
    root = tmp_path_factory.mktemp("synthetic")
    return {name: Path(generate(name, n=160, out=root / name, seed=0, size=32))
            for name in ("synth-derm", "synth-cxr", "synth-grade")}


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")
