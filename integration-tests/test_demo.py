"""The five-minute demo (tools/demo.py, what `bash tools/demo.sh` runs after set-up): every method runs, the
summary lists each with its headline, and the index page opens in headless Chromium with every method's figure
decoded and visible (a screenshot that is not blank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg_core.testing.browser import CHROMIUM, images_decoded, screenshot

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_CHROMIUM = os.environ.get("MEDIMG_REQUIRE_CHROMIUM") == "1"  # set by .ci/run
TITLES = ("baseline", "CRL", "Concepts from Neurons", "IIS", "CIPL", "DAE")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_demo_runs_every_method_and_prints_the_summary(demo):
    out, stdout = demo
    summary = json.loads((out / "summary.json").read_text())
    assert [s["title"].split(" (")[0] for s in summary["steps"]] == [
        "baseline", "CRL", "Concepts from Neurons", "IIS", "CIPL", "DAE counterfactuals"]
    for step in summary["steps"]:
        assert Path(step["figure"]).is_file(), step
        assert (Path(step["run"]) / "report.html").is_file(), step
        assert step["headline"] and step["headline"] in stdout, step
        assert step["commands"], step
    assert summary["total_s"] > 0 and f"total {summary['total_s']:.0f} s" in stdout


def test_demo_refuses_to_mix_with_an_earlier_demo(demo):
    out, _ = demo
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "holds an earlier demo" in result.stderr


@pytest.mark.skipif(CHROMIUM is None and not REQUIRE_CHROMIUM,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_demo_index_shows_every_methods_figure_in_chromium(demo, tmp_path):
    assert CHROMIUM is not None, "MEDIMG_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    out, _ = demo
    page = out / "index.html"
    text = page.read_text()
    for title in TITLES:
        assert f"<h2>{title}" in text, title
    assert images_decoded(page, tmp_path) == (len(TITLES), len(TITLES))
    shot = np.asarray(Image.open(screenshot(page, tmp_path)).convert("L"), dtype=float)
    # a blank page is one flat colour; the rendered table and figures give many grey levels
    assert shot.std() > 20 and len(np.unique(shot.astype(int))) > 50, (shot.std(), len(np.unique(shot)))
    for link in ("runs/baseline/", "runs/crl/", "runs/cipl/", "runs/dae/"):
        assert f'href="{link}' in text, link
