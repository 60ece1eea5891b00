"""Figures: every function writes a readable PNG of plausible size, atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medimg_core.figures import (
    concept_bar_chart,
    confusion_matrix_figure,
    heatmap_overlay,
    overlay_grid,
    training_curves,
)


def _check_png(path, min_side: int = 150) -> None:
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side and max(im.size) < 6000
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_heatmap_overlay_shape_range_and_upsampling():
    image = torch.rand(3, 40, 48)
    out = heatmap_overlay(image, torch.rand(1, 7, 6), alpha=0.4)
    assert out.shape == (40, 48, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    gray = heatmap_overlay(np.full((20, 20), 128, dtype=np.uint8), np.arange(16.0).reshape(4, 4), alpha=1.0)
    assert gray.shape == (20, 20, 3)
    # alpha 0 leaves the image; a constant heatmap maps to the colour of 0
    assert np.allclose(heatmap_overlay(image, np.ones((5, 5)), alpha=0.0), image.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(image, np.ones((5, 5)), alpha=1.5)


def test_overlay_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.random((3, 32, 32)) for _ in range(3)]
    heatmaps = [rng.random((4, 4)) for _ in range(3)]
    masks = [np.pad(np.ones((1, 10, 10)), ((0, 0), (8, 14), (8, 14))) for _ in range(3)]
    path = overlay_grid(images, heatmaps, ["a", "b", "c"], tmp_path / "figs" / "overlay.png",
                        contours=masks, contour_names=["lesion"], title="saliency")
    _check_png(path)
    with pytest.raises(ValueError, match="captions"):
        overlay_grid(images, heatmaps, ["a"], tmp_path / "bad.png")


def test_concept_bar_chart(tmp_path):
    names = [f"concept {i}" for i in range(12)]
    values = np.linspace(-1, 1.5, 12)
    _check_png(concept_bar_chart(names, values, tmp_path / "bars.png", title="why", top_k=8), min_side=200)
    with pytest.raises(ValueError, match="names"):
        concept_bar_chart(names[:3], values, tmp_path / "bad.png")


def test_training_curves(tmp_path):
    history = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.1 / e, "val/accuracy": 0.5 + 0.05 * e,
                "val/auroc/a": 0.7, "lr": 1e-3, "time/epoch_s": 2.0} for e in range(1, 6)]
    history[2]["val/accuracy"] = float("nan")  # a missing point is a gap, not an error
    _check_png(training_curves(history, tmp_path / "curves.png"))
    _check_png(training_curves(history, tmp_path / "curves_lr.png", keys=["val/loss", "lr"]))
    with pytest.raises(ValueError, match="no history key"):
        training_curves(history, tmp_path / "bad.png", keys=["auroc"])


def test_confusion_matrix_figure(tmp_path):
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    _check_png(confusion_matrix_figure(y_true, y_pred, ["nevus", "melanoma", "bcc"], tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix_figure(y_true, y_pred + 1, ["a", "b", "c"], tmp_path / "bad.png")
