"""Every method's command line on the project's real data in ../shared/data, with short budgets (one or two
epochs, tiny heads, 32 px or less): the real loaders, splits and concept tables go through each method's
whole path. Skipped cleanly where the data folder is absent. Accuracy is not the point here (see
docs/benchmarks.md); each run must finish and write a complete run folder with sane metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medimg_core.testing import shared_data_dir

SHARED = shared_data_dir()
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(SHARED is None, reason="real data folder ../shared/data (or $MEDIMG_SHARED_DATA) is absent"),
]
CPU = ["--device", "cpu", "--seed", "0"]


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "medimg-home"))


def test_crl_on_wbcatt(tmp_path, e2e):
    result = e2e.run_cli("crl", "train", "--config", "wbc-cpu", "--root", str(SHARED / "wbcatt"), "--out",
                         str(tmp_path), "--model.backbone", "test_resnet", "--data.image_size", "32",
                         "--train.epochs", "1", *CPU)
    metrics = e2e.check_run_folder(e2e.run_folder(result))
    assert 0 <= metrics["test"]["accuracy"] <= 1 and "rules" in metrics


def test_cipl_on_pneumoniamnist(tmp_path, e2e):
    result = e2e.run_cli("cipl", "train", "--config", "medmnist-cpu", "--dataset", "pneumoniamnist", "--root",
                         str(SHARED / "medmnist"), "--out", str(tmp_path), "--model.backbone", "test_resnet",
                         "--model.output_stride", "8", "--train.epochs", "1", "--model.prototypes_per_class", "2",
                         "--model.prototype_dim", "16", "--model.reduce_dim", "16", "--schedule.warm_epochs", "1",
                         "--schedule.push_epochs", "[1]", "--schedule.last_layer_epochs", "1", "--bootstrap", "20",
                         *CPU)
    metrics = e2e.check_run_folder(e2e.run_folder(result))
    assert metrics["task"] == "binary" and 0 <= metrics["test"]["auroc"] <= 1


def test_neuron_concepts_on_wbcatt(tmp_path, e2e):
    e2e.run_cli("neuron-concepts", "run", "--config", "wbcatt-cpu", "--root", str(SHARED / "wbcatt"), "--out",
                str(tmp_path / "runs"), "--model.backbone", "test_resnet", "--data.image_size", "32",
                "--train.epochs", "1", "--sae.epochs", "5", "--naming.figures", "2", "--select.k", "16",
                "--cbm.n_nonzero", "4", "--cbm.c_search_steps", "1", "--bootstrap", "20", "--no-progress", *CPU)
    folder = next((tmp_path / "runs").iterdir())
    summary = json.loads((folder / "metrics.json").read_text())
    assert 0 <= summary["cbm_test"]["accuracy"] <= 1
    matching = json.loads((folder / "name" / "metrics.json").read_text())["concept_matching"]
    assert len(matching) == 24  # every annotated WBCAtt concept value is matched against the latents


def test_iis_on_wbcatt(tmp_path, e2e):
    e2e.run_cli("iis", "score", "--config", "wbcatt-cpu", "--root", str(SHARED / "wbcatt"), "--out", str(tmp_path),
                "--backbone", "test_resnet:random", "--elements.images_per_class", "2", "--num-concepts", "16",
                "--sweep.ratios", "[0.0, 0.9]", "--sweep.lrs", "[0.01]", "--sweep.epochs", "2", "--bootstrap", "20",
                "--data.image_size", "32", "--no-progress", *CPU)
    run = next(tmp_path.iterdir())
    metrics = e2e.check_run_folder(run, checkpoint=False)
    assert metrics["backbones"][0]["result"]["num_concepts"] >= 1


def test_dae_on_retinamnist(tmp_path, e2e):
    result = e2e.run_cli("dae-cf", "train", "--config", "retinamnist-cpu", "--root", str(SHARED / "medmnist"),
                         "--out", str(tmp_path), *e2e.dae_tiny, "--train.epochs", "1", "--diffusion.encode_steps", "4",
                         "--diffusion.render_steps", "4", "--recon_images", "2", "--bootstrap", "20", *CPU)
    run = e2e.run_folder(result)
    e2e.run_cli("dae-cf", "encode", str(run), "--device", "cpu")
    e2e.run_cli("dae-cf", "fit-boundary", str(run), "--bootstrap", "20", "--device", "cpu")
    boundary = json.loads((run / "metrics.json").read_text())["boundary"]
    assert 0 <= boundary["test"]["binary"]["auroc"] <= 1
    latents = sorted(Path(run).rglob("latents*"))
    assert latents, "encode wrote no latents"
