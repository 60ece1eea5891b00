"""The whole pipeline on the real WBCAtt data (../shared/data/wbcatt), with a tiny model: its 24 annotated
concepts name the latents, its five classes reach the CBM. Slow (extracts 10,298 images); skipped when the
shared data are absent."""

import json

import pytest
from click.testing import CliRunner

from medimg_core.testing import shared_data_dir
from neuron_concepts.cli import main

SHARED = shared_data_dir()

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(SHARED is None or not (SHARED / "wbcatt").is_dir(),
                       reason="the shared data folder ../shared/data/wbcatt is absent"),
]


def test_wbcatt_pipeline_from_the_cli(tmp_path):
    args = ["run", "--config", "wbcatt-cpu", "--root", str(SHARED / "wbcatt"), "--out", str(tmp_path), "--device",
            "cpu", "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "1",
            "--train.num_workers", "0", "--sae.expansion", "2", "--sae.epochs", "2", "--naming.figures", "3",
            "--select.k", "30", "--cbm.n_nonzero", "8", "--cbm.c_search_steps", "1", "--bootstrap", "20",
            "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next(tmp_path.iterdir())
    summary = json.loads((folder / "metrics.json").read_text())
    assert len(summary["concept_matching"]) == 24
    assert summary["cbm_test"]["bootstrap"]["n_samples"] == 3099
    assert 0.2 < summary["cbm_test"]["accuracy"] <= 1.0
