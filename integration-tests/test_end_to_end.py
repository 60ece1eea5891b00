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
