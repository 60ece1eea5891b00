"""Figures shared by every method (matplotlib, headless): image grids with captions and mask contours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

MASK_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def to_display(image) -> np.ndarray:
    """(C, H, W) or (H, W[, C]) tensor/array, float in [0, 1] or uint8 -> (H, W, 3) float in [0, 1]."""
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr.astype(np.float32)
    if arr.max() > 1.5:
        arr = arr / 255.0
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0, 1)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save atomically (temp file, then rename) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def image_grid(
    images: Sequence,
    captions: Sequence[str] | None = None,
    path: str | Path | None = None,
    masks: Sequence | None = None,
    mask_names: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
    cell_inches: float = 2.2,
) -> plt.Figure | Path:
    """A grid of images with captions; per-image masks (K, H, W) drawn as coloured contours.

    Returns the saved path when `path` is given, else the open figure.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(to_display(image), interpolation="nearest")
        if masks is not None:
            m = np.asarray(masks[i].detach().cpu() if hasattr(masks[i], "detach") else masks[i])
            for k in range(m.shape[0]):
                if m[k].any():
                    ax.contour(m[k], levels=[0.5], colors=[MASK_COLOURS[k % len(MASK_COLOURS)]], linewidths=1)
        if captions is not None:
            ax.set_title(captions[i], fontsize=7)
    if masks is not None and mask_names:
        handles = [plt.Line2D([], [], color=MASK_COLOURS[k % len(MASK_COLOURS)], label=name)
                   for k, name in enumerate(mask_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if masks is not None and mask_names else 0, 1, 1))
    return save_figure(fig, path) if path is not None else fig
