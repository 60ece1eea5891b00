"""Figures shared by every method (matplotlib, headless): image grids with captions and mask contours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medimg_core.metrics import to_numpy

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


# --------------------------------------------------------------------------- explanations and results

POSITIVE_COLOUR = "#d55e00"  # Okabe-Ito vermillion
NEGATIVE_COLOUR = "#0072b2"  # Okabe-Ito blue
SPLIT_STYLES = {"train": ("#0072b2", "-"), "val": ("#d55e00", "--"), "test": ("#009e73", ":")}
PAPER_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8,
            "ytick.labelsize": 8, "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False}


def heatmap_overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heatmap over an image -> (H, W, 3) float32 in [0, 1].

    image: anything `to_display` takes ((C, H, W) or (H, W[, C])). heatmap: (h, w) or (1, h, w) of
    any size, resized bilinearly to (H, W) and min-max normalised to [0, 1] (a constant map is 0);
    NaN counts as the minimum. alpha: weight of the heatmap.
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_display(image)
    hm = np.squeeze(to_numpy(heatmap).astype(np.float32))
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w) after squeezing, got shape {hm.shape}")
    finite = np.isfinite(hm)
    hm = np.where(finite, hm, np.min(hm[finite]) if finite.any() else 0.0)
    height, width = img.shape[:2]
    if hm.shape != (height, width):
        hm = np.asarray(Image.fromarray(np.ascontiguousarray(hm, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    lo, hi = float(hm.min()), float(hm.max())
    hm = (hm - lo) / (hi - lo) if hi > lo else np.zeros_like(hm)
    coloured = matplotlib.colormaps[cmap](hm)[..., :3]
    return np.clip((1.0 - alpha) * img + alpha * coloured, 0.0, 1.0).astype(np.float32)


def overlay_grid(
    images: Sequence,
    heatmaps: Sequence,
    captions: Sequence[str],
    path: str | Path,
    contours: Sequence | None = None,
    contour_names: Sequence[str] | None = None,
    ncols: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
    cell_inches: float = 2.2,
) -> Path:
    """A grid of heatmap overlays (`heatmap_overlay`) with captions, saved to `path`.

    images: N images; heatmaps: N maps (h, w) of any size; contours: optional N masks (K, H, W) or
    (H, W), drawn as coloured outlines (for example the ground-truth lesion), named by `contour_names`.
    A colour bar shows the heatmap scale (per image min to max).
    """
    n = len(images)
    if n == 0:
        raise ValueError("overlay_grid: no images")
    if len(heatmaps) != n or len(captions) != n or (contours is not None and len(contours) != n):
        raise ValueError(f"overlay_grid: {n} images but {len(heatmaps)} heatmaps, {len(captions)} captions"
                         + (f", {len(contours)} contours" if contours is not None else ""))
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    with plt.rc_context(PAPER_RC):
        legend_space = 0.3 if contours is not None and contour_names else 0.0
        height = (cell_inches + 0.35) * nrows + 0.6 + legend_space + (0.4 if title else 0.0)
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, height), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i in range(n):
            ax = axes.flat[i]
            ax.imshow(heatmap_overlay(images[i], heatmaps[i], alpha=alpha, cmap=cmap), interpolation="nearest")
            if contours is not None:
                m = to_numpy(contours[i])
                m = m[None] if m.ndim == 2 else m
                for k in range(m.shape[0]):
                    if m[k].any():
                        ax.contour(m[k].astype(np.float32), levels=[0.5], linewidths=1.2,
                                   colors=[MASK_COLOURS[k % len(MASK_COLOURS)]])
            ax.set_title(captions[i], fontsize=8)
        if title:
            fig.suptitle(title, fontsize=11)
        bottom = (0.5 + legend_space) / height
        fig.tight_layout(rect=(0, bottom, 1, 1))
        cax = fig.add_axes((0.3, (legend_space + 0.3) / height, 0.4, 0.1 / height))
        bar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap), cax=cax, orientation="horizontal")
        bar.set_ticks([0, 1], labels=["low", "high"])
        bar.ax.tick_params(labelsize=8)
        if contours is not None and contour_names:
            handles = [plt.Line2D([], [], color=MASK_COLOURS[k % len(MASK_COLOURS)], label=name)
                       for k, name in enumerate(contour_names)]
            fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False,
                       bbox_to_anchor=(0.5, 0.0))
        return save_figure(fig, path, dpi=150)


def concept_bar_chart(
    names: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    title: str | None = None,
    top_k: int | None = None,
    xlabel: str = "contribution",
) -> Path:
    """Horizontal bars of concept values sorted by |value| (largest on top), positive and negative coloured.

    names, values: (K,) each; top_k keeps the K largest |value|.
    """
    vals = to_numpy(values).astype(np.float64).ravel()
    names = [str(n) for n in names]
    if len(names) != vals.size:
        raise ValueError(f"concept_bar_chart: {len(names)} names but {vals.size} values")
    if vals.size == 0:
        raise ValueError("concept_bar_chart: no values")
    if not np.isfinite(vals).all():
        raise ValueError("concept_bar_chart: values contain NaN/inf")
    order = np.argsort(-np.abs(vals), kind="stable")[: top_k if top_k else None]
    vals, names = vals[order][::-1], [names[i] for i in order][::-1]  # barh draws bottom-up
    colours = [POSITIVE_COLOUR if v >= 0 else NEGATIVE_COLOUR for v in vals]
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(5.0, 0.8 + 0.28 * len(vals)))
        ax.barh(np.arange(len(vals)), vals, color=colours, height=0.7)
        ax.set_yticks(np.arange(len(vals)), labels=names)
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        span = float(np.abs(vals).max()) or 1.0
        for y, v in enumerate(vals):
            ax.text(v + (0.01 * span if v >= 0 else -0.01 * span), y, f"{v:.3g}", va="center",
                    ha="left" if v >= 0 else "right", fontsize=7)
        ax.set_xlim(min(0.0, vals.min()) - 0.15 * span, max(0.0, vals.max()) + 0.15 * span)
        ax.set_ylim(-0.6, len(vals) - 0.4)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)


def _history_series(history: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(value):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(value)
    return np.asarray(xs), np.asarray(ys)


def training_curves(history: Sequence[dict], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """One subplot per metric family, train/val/test curves of the family on the same axes.

    history: per-epoch dicts such as {"epoch": 1, "train/loss": .., "val/loss": .., "val/accuracy": ..}.
    keys: families to draw ("loss", "accuracy", or an unprefixed key such as "lr"); a prefixed key
    ("val/auroc") stands for its family. Default: every train/val/test family, per-class keys
    (such as "val/auroc/<class>") left out.
    """
    if not history:
        raise ValueError("training_curves: empty history")
    present: dict[str, None] = {}
    for row in history:
        present.update(dict.fromkeys(row))
    families: dict[str, list[tuple[str, str]]] = {}  # family -> [(split, key)]
    for key in present:
        split, _, family = key.partition("/")
        if split in SPLIT_STYLES and family:
            families.setdefault(family, []).append((split, key))
    if keys is None:
        wanted = [f for f in families if "/" not in f]
    else:
        wanted = []
        for k in keys:
            split, _, family = k.partition("/")
            family = family if split in SPLIT_STYLES and family else k
            if family not in wanted:
                wanted.append(family)
        for family in wanted:
            if family not in families and family in present:
                families[family] = [("", family)]
        missing = [f for f in wanted if f not in families]
        if missing:
            raise ValueError(f"training_curves: no history key for {missing}; keys present: {sorted(present)}")
    wanted = [f for f in wanted if any(_history_series(history, key)[0].size for _, key in families[f])]
    if not wanted:
        raise ValueError(f"training_curves: nothing to plot; keys present: {sorted(present)}")
    ncols = min(3, len(wanted))
    nrows = int(np.ceil(len(wanted) / ncols))
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows), squeeze=False)
        for ax in axes.flat[len(wanted):]:
            ax.axis("off")
        for ax, family in zip(axes.flat, wanted, strict=False):
            for split, key in sorted(families[family], key=lambda sk: list(SPLIT_STYLES).index(sk[0])
                                     if sk[0] in SPLIT_STYLES else -1):
                xs, ys = _history_series(history, key)
                if not xs.size:
                    continue
                colour, style = SPLIT_STYLES.get(split, ("0.2", "-"))
                ax.plot(xs, ys, color=colour, linestyle=style, marker="o" if xs.size < 30 else None,
                        markersize=3, linewidth=1.5, label=split or key)
            ax.set_title(family.replace("_", " "))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)


def confusion_matrix_figure(
    y_true,
    y_pred,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts and row percentages.

    y_true, y_pred: (N,) class indices in [0, len(class_names)). Colours are row-normalised
    (per-class recall) when `normalize`, raw counts otherwise.
    """
    from sklearn.metrics import confusion_matrix

    y_true = to_numpy(y_true).astype(np.int64).ravel()
    y_pred = to_numpy(y_pred).astype(np.int64).ravel()
    names = [str(n) for n in class_names]
    n_classes = len(names)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix_figure: y_true {y_true.shape} and y_pred {y_pred.shape} differ")
    for arr, what in ((y_true, "y_true"), (y_pred, "y_pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"confusion_matrix_figure: {what} has labels outside [0, {n_classes - 1}]")
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    size = max(3.2, 0.55 * n_classes + 1.8)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(size + 0.8, size))
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, cm.max()))
        ax.set_xticks(np.arange(n_classes), labels=names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(np.arange(n_classes), labels=names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.spines[:].set_visible(False)
        if n_classes <= 20:
            font = 8 if n_classes <= 10 else 6
            threshold = 0.5 * (1 if normalize else max(1, cm.max()))
            for i in range(n_classes):
                for j in range(n_classes):
                    ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%", ha="center", va="center",
                            fontsize=font, color="white" if shown[i, j] > threshold else "0.15")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("fraction of true class" if normalize else "count")
        ax.set_title(title or f"confusion matrix (n = {int(cm.sum())})")
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)
