"""Every package's command line trains, evaluates and explains on the session's synthetic data in a short
run; each run folder holds its config, metrics, checkpoint and figures, and `medimg report` renders it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = ["--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def baseline_run(synth_data, runs_root, e2e) -> Path:
    result = e2e.run_cli("medimg", "train-baseline", "--config", "baseline-synth-derm", "--root",
                     str(synth_data["synth-derm"]), "--out", str(runs_root / "baseline"), "--backbone", "test_resnet",
                     "--image-size", "32", "--epochs", "2", *SMALL)
    run = e2e.run_folder(result)
    metrics = e2e.check_run_folder(run)
    assert 0 <= metrics["test"]["accuracy"] <= 1
    return run


def _first_image(data: Path) -> Path:
    return sorted((data / "images").glob("*.png"))[0]


def test_crl_train_rules_explain_report(synth_data, runs_root, baseline_run, e2e):
    data = synth_data["synth-derm"]
    result = e2e.run_cli("crl", "train", "--config", "synthetic-cpu", "--root", str(data), "--out", str(runs_root / "crl"),
                     "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "2", *SMALL)
    run = e2e.run_folder(result)
    metrics = e2e.check_run_folder(run)
    assert {"test", "rules"} <= set(metrics) and (run / "rules.txt").is_file()
    assert "<-" in e2e.run_cli("crl", "rules", str(run)).stdout or metrics["rules"]["count"] == 0
    out = run / "figures" / "explain.png"
    e2e.run_cli("crl", "explain", str(run), str(_first_image(data)), "--out", str(out))
    assert out.is_file()
    page = e2e.run_cli("medimg", "report", str(run), "--compare", str(baseline_run)).stdout
    html = (run / "report.html").read_text()
    assert "wrote" in page and html.count("<img ") >= 3 and "baseline" in html
    json.loads((run / "metrics.json").read_text())


def _report(e2e, run: Path, *compare: Path) -> str:
    """`medimg report RUN [--compare ...]`: the page exists and embeds the run's figures."""
    args = ["medimg", "report", str(run)] + [a for c in compare for a in ("--compare", str(c))]
    e2e.run_cli(*args)
    html = (run / "report.html").read_text()
    assert html.count("<img ") >= 1 and "metrics" in html.lower()
    return html


def test_cipl_train_reason_gallery_report(synth_data, runs_root, e2e):
    data = synth_data["synth-cxr"]
    result = e2e.run_cli("cipl", "train", "--config", "synth-cxr-cpu", "--root", str(data), "--out",
                         str(runs_root / "cipl"), "--model.backbone", "test_resnet", "--model.output_stride", "8",
                         "--data.image_size", "32", "--train.epochs", "2", "--train.batch_size", "8",
                         "--model.prototypes_per_class", "2", "--model.prototype_dim", "16", "--model.reduce_dim", "16",
                         "--schedule.warm_epochs", "1", "--schedule.push_epochs", "[1, 2]",
                         "--schedule.last_layer_epochs", "1", "--bootstrap", "20", *SMALL)
    run = e2e.run_folder(result)
    metrics = e2e.check_run_folder(run)
    assert metrics["classes"][-1] == "No Finding" and 0 <= metrics["test"]["auroc_mean"] <= 1
    assert "test_localisation" in metrics
    out = runs_root / "cipl-reason"
    stdout = e2e.run_cli("cipl", "reason", str(run), str(_first_image(data)), "--top-k", "2", "--out", str(out)).stdout
    assert "prototype" in stdout and list(out.glob("reason-*.png")) and (out / "summary.txt").is_file()
    e2e.run_cli("cipl", "gallery", str(run), "--out", str(runs_root / "cipl-gallery"))
    assert list((runs_root / "cipl-gallery").glob("*.png"))
    _report(e2e, run)


def test_neuron_concepts_pipeline_explain_report(synth_data, runs_root, e2e, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(runs_root / "medimg-home"))
    data = synth_data["synth-derm"]
    out = runs_root / "neuron-concepts"
    e2e.run_cli("neuron-concepts", "run", "--config", "synth-derm-cpu", "--root", str(data), "--out", str(out),
                "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "2",
                "--train.batch_size", "16", "--sae.expansion", "2", "--sae.batch_size", "32", "--sae.epochs", "10",
                "--naming.figures", "3", "--cav.top_n", "10", "--cav.n_negative", "20", "--select.k", "12",
                "--cbm.n_nonzero", "4", "--cbm.c_search_steps", "1", "--bootstrap", "20", "--no-progress",
                "--naming.min_auroc", "0.6", "--device", "cpu", "--seed", "0")
    folder = next(out.iterdir())
    summary = json.loads((folder / "metrics.json").read_text())
    assert 0 <= summary["cbm_test"]["accuracy"] <= 1 and 0 <= summary["opaque_test"]["accuracy"] <= 1
    assert (folder / "cbm" / "cbm.safetensors").is_file() and (folder / "name" / "names.json").is_file()
    png = runs_root / "nc-explain.png"
    stdout = e2e.run_cli("neuron-concepts", "explain", str(folder / "cbm"), str(_first_image(data)),
                         "--out", str(png)).stdout
    assert "logit" in stdout and png.stat().st_size > 1000
    _report(e2e, folder / "cbm")


def test_iis_score_two_backbones_explain_report(synth_data, runs_root, baseline_run, e2e, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(runs_root / "medimg-home"))
    data = synth_data["synth-derm"]
    out = runs_root / "iis"
    e2e.run_cli("iis", "score", "--config", "synth-derm-cpu", "--root", str(data), "--out", str(out),
                "--backbone", "test_resnet:random", "--backbone", f"test_resnet:{baseline_run}",
                "--elements.images_per_class", "2", "--elements.slic_segments", "[10]", "--num-concepts", "12",
                "--sweep.ratios", "[0.0, 0.5, 0.9]", "--sweep.lrs", "[0.01, 0.1]", "--sweep.epochs", "3",
                "--bootstrap", "20", "--data.image_size", "32", "--no-progress", "--device", "cpu", "--seed", "0")
    run = next(out.iterdir())
    metrics = e2e.check_run_folder(run)
    assert len(metrics["backbones"]) == 2 and (run / "table.md").is_file()
    png = runs_root / "iis-explain.png"
    stdout = e2e.run_cli("iis", "explain", str(run), str(_first_image(data)), "--out", str(png)).stdout
    assert "prediction:" in stdout and png.stat().st_size > 1000
    _report(e2e, run)


def test_dae_train_boundary_counterfactual_report(synth_data, runs_root, e2e):
    data = synth_data["synth-grade"]
    result = e2e.run_cli("dae-cf", "train", "--config", "synth-grade-cpu", "--root", str(data), "--out",
                         str(runs_root / "dae"), *e2e.dae_tiny, "--train.epochs", "2", "--train.batch_size", "16",
                         "--diffusion.encode_steps", "4", "--diffusion.render_steps", "4", "--recon_images", "2",
                         "--bootstrap", "20", *SMALL)
    run = e2e.run_folder(result)
    e2e.check_run_folder(run)
    e2e.run_cli("dae-cf", "encode", str(run), "--device", "cpu")
    e2e.run_cli("dae-cf", "fit-boundary", str(run), "--bootstrap", "20", "--device", "cpu")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "auroc" in metrics["boundary"]["test"]["binary"] and "spearman" in metrics["boundary"]["test"]["grade"]
    e2e.run_cli("dae-cf", "counterfactual", str(run), str(_first_image(data)), "--grades", "0", "2", "4",
                "--device", "cpu")
    assert list((run / "counterfactuals").rglob("*.png"))
    _report(e2e, run)
