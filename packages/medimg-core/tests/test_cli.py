import json

import numpy as np
from click.testing import CliRunner

from medimg_core import __version__
from medimg_core.cli import main
from medimg_core.testing import write_truncated_image, write_wbcatt_fixture


def test_help_version_info():
    runner = CliRunner()
    assert runner.invoke(main, ["--help"]).exit_code == 0
    result = runner.invoke(main, ["--version"])
    assert __version__ in result.output
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0 and "torch" in result.output and "devices" in result.output


def test_datasets_list_and_info():
    runner = CliRunner()
    result = runner.invoke(main, ["datasets", "list"])
    assert result.exit_code == 0
    for name in ("wbcatt", "chestxray14", "retinamnist", "csv"):
        assert name in result.output
    result = runner.invoke(main, ["datasets", "info", "wbcatt"])
    assert "24" in result.output and "licence" in result.output
    result = runner.invoke(main, ["datasets", "info", "wbcat"])
    assert result.exit_code != 0 and "did you mean 'wbcatt'" in result.output


def test_verify_reports_and_exit_codes(tmp_path):
    root = write_wbcatt_fixture(tmp_path / "wbc")
    runner = CliRunner()
    result = runner.invoke(main, ["datasets", "verify", str(root), "--format", "wbcatt"])
    assert result.exit_code == 0, result.output
    assert "images: 18" in result.output and "errors: none" in result.output
    write_truncated_image(root / "PBC_dataset_normal_DIB/basophil/test_BA_1.jpg")
    (root / "PBC_dataset_normal_DIB/monocyte/val_MO_1.jpg").unlink()
    result = runner.invoke(main, ["datasets", "verify", str(root), "--format", "wbcatt", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert len(report["problems"]) == 2 and not report["ok"]
    assert any("val_MO_1.jpg" in p and "not found" in p for p in report["problems"])
    assert any("test_BA_1.jpg" in p and "truncated" in p for p in report["problems"])


def test_download_refuses_unknown_and_explains_manual_sets(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["datasets", "download", "wbcatt", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "cannot be downloaded automatically" in result.output


def test_synth_then_verify_preview_and_load(tmp_path):
    from medimg_core.data import load_dataset
    from medimg_core.synthetic import parse_rule

    out = tmp_path / "d"
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "synth-derm", "--n", "40", "--out", str(out), "--seed", "1",
                                  "--size", "32", "--rule", "streaks | ~dots_and_globules"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["datasets", "verify", str(out), "--format", "csv"])
    assert result.exit_code == 0 and "images: 40" in result.output and "errors: none" in result.output
    result = runner.invoke(main, ["datasets", "preview", str(out), "--format", "csv", "--n", "6",
                                  "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 1000
    ds = load_dataset("csv", out, "train")
    rule = parse_rule(ds.card.extra["rule"], ds.card.concept_names)
    assert np.array_equal(rule.evaluate(ds.concepts).astype(int), ds.targets)
    assert ds[0]["masks"].shape == (6, 32, 32)
    result = runner.invoke(main, ["synth", "synth-derm", "--n", "4", "--out", str(tmp_path / "e"),
                                  "--rule", "streaks & blue"])
    assert result.exit_code != 0 and "blue_white_veil" in result.output
