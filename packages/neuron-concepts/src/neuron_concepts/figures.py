"""The figures and tables of the naming, SAE and selection stages: per-latent mosaics of top-activating images,
a grid of the most telling latents, the latents' activation frequencies, the selection's marginal gains, and
names.csv.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw

from medimg_core.figures import image_grid, save_figure
from neuron_concepts.naming import LatentName
from neuron_concepts.sae import SparseAutoencoder, encode_all


class ImageRows:
    """Raw uint8 images (H, W, 3) of a dataset split by row, cached: `images(row)`."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, row: int) -> np.ndarray:
        if row not in self.cache:
            img = self.dataset.load_image(int(row))
            self.cache[row] = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
        return self.cache[row]


def activation_figure(sae: SparseAutoencoder, x: torch.Tensor, path: Path) -> None:
    """Histogram of the latents' log10 activation frequency over features x (N, d), and the dead count."""
    freq = (encode_all(sae, x) > 0).float().mean(0).numpy()
    fig, ax = plt.subplots(figsize=(5, 3))
    alive = freq[freq > 0]
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="#0072b2")
    ax.set_xlabel("log10 activation frequency (train images), alive latents")
    ax.set_ylabel("latents")
    ax.set_title(f"{(freq == 0).sum()} of {freq.size} latents dead", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def marginal_gains_figure(gains: np.ndarray, path: Path) -> None:
    """The marginal gain (k,) of each greedy pick against the number of concepts selected."""
    k = len(gains)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, k + 1), gains, color="#0072b2")
    ax.set_xlabel("concepts selected")
    ax.set_ylabel("marginal gain")
    ax.set_yscale("log" if gains.min() > 0 else "linear")
    fig.tight_layout()
    save_figure(fig, path)


def _thumb(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR))


def latent_mosaics(latents: list[int], names: dict[int, LatentName], A: np.ndarray, top: np.ndarray,
                   images: ImageRows, folder: Path, size: int, ncols: int = 8) -> None:
    """One PNG per latent: its top-activating images (activation under each) below a caption line.

    A: (N, m) latent activations of the train images; top: (m, n) their top-activating rows per latent."""
    folder.mkdir(parents=True, exist_ok=True)
    header, footer = 14, 11
    for k in latents:
        rows = [int(i) for i in top[k] if A[i, k] > 0][:ncols * 2]
        if not rows:
            continue
        nrows = math.ceil(len(rows) / ncols)
        cols = min(ncols, len(rows))
        canvas = Image.new("RGB", (max(cols * size, 360), header + nrows * (size + footer)), "white")
        draw = ImageDraw.Draw(canvas)
        v = names[k]
        score = "" if v.score is None else f" {v.score:.3f}"
        draw.text((2, 1), f"latent {k}: {v.name} [{v.source}{score}]"[:120], fill="black")
        for j, i in enumerate(rows):
            x0, y0 = (j % ncols) * size, header + (j // ncols) * (size + footer)
            canvas.paste(Image.fromarray(_thumb(images(i), size)), (x0, y0))
            draw.text((x0 + 2, y0 + size), f"{A[i, k]:.2f}", fill="black")
        tmp = folder / f".latent_{k:05d}.tmp.png"
        canvas.save(tmp, compress_level=1)  # fast: thousands of latents
        os.replace(tmp, folder / f"latent_{k:05d}.png")


def top_images_figure(latents: list[int | None], names: dict[int, LatentName], A: np.ndarray, top: np.ndarray,
                      images: ImageRows, path: Path, per_row: int = 6) -> None:
    """A grid: one row per latent, its top-activating images, the name on the first (A, top as in latent_mosaics)."""
    imgs, captions = [], []
    for k in latents:
        if k is None or k not in names:
            continue
        rows = [int(i) for i in top[k][:per_row]]
        for j, i in enumerate(rows):
            imgs.append(images(i))
            score = "" if names[k].score is None else f" {names[k].score:.2f}"
            captions.append((f"#{k} {names[k].name}"[:24] + score + "\n" if j == 0 else "\n") + f"a={A[i, k]:.2f}")
        for _ in range(per_row - len(rows)):
            imgs.append(np.ones((8, 8, 3)))
            captions.append("")
    if imgs:
        image_grid(imgs, captions, path, ncols=per_row, cell_inches=1.6,
                   title="top-activating train images of SAE latents")


def write_names_csv(path: Path, records: list[dict]) -> None:
    """names.csv: latent, name, source, score, frequency per named latent."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["latent", "name", "source", "score", "frequency"])
        for r in records:
            w.writerow([r["latent"], r["name"], r["source"], "" if r["score"] is None else f"{r['score']:.4f}",
                        f"{r['frequency']:.4f}"])
