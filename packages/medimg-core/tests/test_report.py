"""`medimg report`: a self-contained HTML page of a run folder, checked in headless Chromium."""

import json
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from click.testing import CliRunner

from medimg_core.cli import main
from medimg_core.figures import save_figure
from medimg_core.report import build_report
from medimg_core.testing.browser import CHROMIUM, images_decoded

REQUIRE_CHROMIUM = os.environ.get("MEDIMG_REQUIRE_CHROMIUM") == "1"  # set by .ci/run


def _fake_run(root: Path, name: str, accuracy: float, with_figures: bool = True) -> Path:
    run = root / name
    (run / "figures" / "prototypes").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  dataset: synth-derm\n  root: null\nseed: 0\n")
    metrics = {"method": "crl", "dataset": "synth-derm", "backbone": "resnet18", "wall_time_s": 12.5,
               "test": {"accuracy": accuracy, "accuracy_ci": [accuracy - 0.05, accuracy + 0.03], "auroc": 0.9}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    history = [{"epoch": e, "train/loss": 1.0 / e, "val/accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(h) for h in history) + "\n{\"epoch\": 4, \"tra")
    (run / "rules.txt").write_text("class <b>melanoma</b> <- irregular_border & streaks\n")
    (run / "log.txt").write_text("not shown\n")
    if with_figures:
        for path in (run / "figures" / "confusion_test.png", run / "figures" / "prototypes" / "class_0.png"):
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.imshow([[0, 1], [1, 0]])
            save_figure(fig, path)
    return run


def test_report_embeds_every_figure_and_escapes_text(tmp_path):
    run = _fake_run(tmp_path, "crl-run", 0.91)
    base = _fake_run(tmp_path, "baseline-run", 0.88, with_figures=False)
    page = build_report(run, compare=[base]).read_text()
    # 2 figures + a training-curve figure for each run; every image is a data URI, nothing is fetched
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    assert "0.9100 [0.8600, 0.9400]" in page and "0.8800 [0.8300, 0.9100]" in page
    assert "(crl-run)" in page and "(baseline-run)" in page  # same method/dataset/backbone: folders tell them apart
    assert "&lt;b&gt;melanoma&lt;/b&gt;" in page and "<b>melanoma</b>" not in page
    assert "not shown" not in page
    assert "Dataset card" in page and "irregular_border" in page
    assert not list(run.glob(".report.html.tmp*"))


def test_report_cli_and_bad_folder(tmp_path):
    run = _fake_run(tmp_path, "run", 0.9)
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "page.html").is_file()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "does not exist" in result.output


@pytest.mark.skipif(CHROMIUM is None and not REQUIRE_CHROMIUM,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_every_image(tmp_path):
    assert CHROMIUM is not None, "MEDIMG_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    run = _fake_run(tmp_path, "run", 0.9)
    page = build_report(run)
    n_images = page.read_text().count("<img ")
    assert images_decoded(page, tmp_path) == (n_images, n_images) and n_images == 3


def test_report_never_follows_a_link_out_of_the_run_folder(tmp_path):
    """A shared run folder is untrusted: linked files and folders are listed as left out, never embedded."""
    run = _fake_run(tmp_path, "run", 0.9)
    outside = tmp_path / "outside"
    (outside / "secrets").mkdir(parents=True)
    secret = "root:*:20228:0:99999:7:::"
    (outside / "shadow").write_text(secret + "\n")
    (outside / "secrets" / "notes.md").write_text(secret + "\n")
    (outside / "metrics.json").write_text(json.dumps({"test": {"leaked_metric": 0.123}}))
    (outside / "config.yaml").write_text(f"leaked: '{secret}'\n")
    fig, _ax = plt.subplots(figsize=(1, 1))
    save_figure(fig, outside / "private.png")
    os.symlink(outside / "shadow", run / "notes.txt")
    os.symlink(outside / "shadow", run / "figures" / "passwd.md")
    os.symlink(outside / "secrets", run / "figures" / "linked_folder")
    os.symlink(outside / "private.png", run / "figures" / "private.png")
    other = _fake_run(tmp_path, "other", 0.8, with_figures=False)
    (other / "metrics.json").unlink()
    os.symlink(outside / "metrics.json", other / "metrics.json")
    (run / "config.yaml").rename(run / "config.real")
    os.symlink(outside / "config.yaml", run / "config.yaml")
    page = build_report(run, compare=[other]).read_text()
    assert secret not in page and "leaked" not in page
    assert page.count("<img ") == 4  # the two real figures and both runs' training curves, not private.png
    left_out = page.split("<h2>Left out</h2>")[1]
    for rel in ("notes.txt", "figures/passwd.md", "figures/linked_folder", "figures/private.png", "config.yaml",
                "other/metrics.json"):
        assert rel in left_out, rel


def test_report_card_comes_from_structured_fields_not_a_linked_text(tmp_path):
    """The data root named by an untrusted config is only parsed as a dataset descriptor."""
    run = _fake_run(tmp_path, "run", 0.9)
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "card.md").write_text("SECRET CARD TEXT\n")
    (run / "config.yaml").write_text(f"data:\n  dataset: synth-derm\n  root: {data_root}\n")
    page = build_report(run).read_text()
    assert "SECRET CARD TEXT" not in page and "irregular_border" in page
