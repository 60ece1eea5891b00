"""Counterfactual series: the same image rendered at other grades, and their figures (pure: a model, a boundary
and image tensors in).

For each image x: z = Enc(x), x_T = encode_stochastic(x, z), the reconstruction render(x_T, z), and
for each target the edited latent z' (LatentBoundary.edit_to_grade, or the notebooks' fixed step)
rendered with the image's own x_T. Each counterfactual is re-encoded, so its calibrated grade can be
read back and compared with the target.

A `CounterfactualSeries` is the method's explanation (`medimg_core.explain.Explanation`): `to_text(top_k)`,
`figure(path, top_k)`, `to_dict()`, with `predicted` (the side of the hyperplane the image's latent is on: 0 =
negative, 1 = pathology) and `target` (the side it is moved to, when the series was made for one; see
`CounterfactualExplainer.explain`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.model import DiffusionAutoencoder
from medimg_core.explain import jsonable
from medimg_core.figures import PAPER_RC, save_figure, to_display

#: the two sides of the hyperplane when a series carries no class names
SIDES = ("negative", "positive")


@dataclass
class CounterfactualSeries:
    """One image and its counterfactuals. Images are (C, H, W) tensors in the data range [0, 1].

    `predicted`: the class of the image's own latent (1 when it lies on the pathology side of the hyperplane);
    `target`: the class the image is moved to (None for a series of arbitrary grades or steps); `classes`: the
    names of both classes (e.g. "grade < 1", "grade >= 1").
    """

    id: str
    image: torch.Tensor
    reconstruction: torch.Tensor
    mode: Literal["grade", "step"]
    targets: np.ndarray  # (K,) target grades (mode "grade") or signed step sizes (mode "step")
    counterfactuals: torch.Tensor  # (K, C, H, W)
    grade: float  # calibrated grade of the image's own latent
    distance: float  # its signed distance to the hyperplane
    edited_grades: np.ndarray  # (K,) calibrated grades of the edited latents (= targets in grade mode)
    edited_distances: np.ndarray  # (K,)
    reencoded_grades: np.ndarray  # (K,) calibrated grades of Enc(counterfactual)
    reencoded_distances: np.ndarray  # (K,)
    true_grade: float | None = None
    extra: dict = field(default_factory=dict)
    target: int | None = None
    predicted: int | None = None
    classes: tuple[str, ...] = ()

    def class_name(self, index: int) -> str:
        names = self.classes or SIDES
        return names[index]

    def first(self, k: int | None) -> CounterfactualSeries:
        """The same series cut to its first k targets (all for None)."""
        if k is None or k >= len(self.targets):
            return self
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {k}")
        return dataclasses.replace(
            self, targets=self.targets[:k], counterfactuals=self.counterfactuals[:k],
            edited_grades=self.edited_grades[:k], edited_distances=self.edited_distances[:k],
            reencoded_grades=self.reencoded_grades[:k], reencoded_distances=self.reencoded_distances[:k])

    def to_text(self, top_k: int | None = None) -> str:
        """The image's calibrated grade and class, then one line per target (the first top_k; None: all): the
        target, the edited latent's grade, and the re-encoded counterfactual's grade, distance and side."""
        head = f"{self.id}: calibrated grade {self.grade:.2f}, signed distance {self.distance:+.3f}"
        if self.true_grade is not None:
            head += f" (true grade {self.true_grade:g})"
        if self.predicted is not None:
            head += f"; predicted {self.class_name(self.predicted)}"
        lines = [head]
        if self.target is not None:
            lines.append(f"moved to {self.class_name(self.target)}:")
        shown = self.first(top_k)
        for j, t in enumerate(shown.targets):
            label = f"target grade {t:g}" if self.mode == "grade" else f"step {t:g}"
            side = self.class_name(int(shown.reencoded_distances[j] > 0))
            lines.append(f"  {label}: edited grade {shown.edited_grades[j]:.2f}, re-encoded grade "
                         f"{shown.reencoded_grades[j]:.2f} (distance {shown.reencoded_distances[j]:+.3f}, {side})")
        if len(shown.targets) < len(self.targets):
            lines.append(f"  ({len(self.targets) - len(shown.targets)} more)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The numbers of the series (no images), JSON-serialisable."""
        return jsonable({"id": self.id, "mode": self.mode, "true_grade": self.true_grade, "grade": self.grade,
                         "distance": self.distance, "targets": self.targets.tolist(),
                         "edited_grades": self.edited_grades.tolist(),
                         "reencoded_grades": self.reencoded_grades.tolist(),
                         "reencoded_distances": self.reencoded_distances.tolist(), **self.extra,
                         "target": self.target, "predicted": self.predicted, "classes": list(self.classes)})

    def figure(self, path: str | Path, top_k: int | None = None, *, title: str | None = None) -> Path:
        """Input, reconstruction, the counterfactuals (the first top_k targets; None: all) and their difference
        maps, as one PNG at `path` (see `series_figure`)."""
        if isinstance(top_k, str):  # the former signature figure(path, title)
            top_k, title = None, top_k
        return series_figure([self.first(top_k)], path, title)


@torch.no_grad()
def generate_counterfactuals(
    model: DiffusionAutoencoder,
    boundary: LatentBoundary,
    images: torch.Tensor,
    targets: Sequence[float],
    mode: Literal["grade", "step"] = "grade",
    encode_steps: int = 250,
    render_steps: int = 100,
    direction: float | Sequence[float] | None = None,
    ids: Sequence[str] | None = None,
    true_grades: Sequence[float] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    classes: Sequence[str] = (),
    along: Literal["normal", "mean-difference"] = "normal",
) -> list[CounterfactualSeries]:
    """Counterfactual series of images (B, C, H, W) in [0, 1] at each target (grade or fixed step).

    `classes` names the two sides of the hyperplane in the series' text (default "negative", "positive").
    `along`: the direction of the fixed steps (mode "step"; see LatentBoundary.edit_direction).
    """
    if mode == "grade" and along != "normal":
        raise ValueError("along='mean-difference' needs mode 'step': a target grade is reached along the normal")
    if mode not in ("grade", "step"):
        raise ValueError(f"mode must be 'grade' or 'step', got {mode!r}")
    targets_arr = np.asarray(targets, dtype=np.float64).reshape(-1)
    if targets_arr.size == 0:
        raise ValueError("give at least one target grade (or step)")
    n, k = images.shape[0], targets_arr.size
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    directions = None if direction is None else np.broadcast_to(np.asarray(direction, dtype=np.float64), (n,))
    out: list[CounterfactualSeries] = []
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc="counterfactuals", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        x = images[s:s + batch_size].to(device)
        b = x.shape[0]
        z = model.encode(x)
        x_T = model.encode_stochastic(x, z, encode_steps, progress=progress)
        recon = model.render(x_T, z, render_steps, progress=progress).cpu()
        z_np = z.cpu().numpy()
        if mode == "grade":
            edited = boundary.edit_to_grade(z_np, targets_arr)
        else:
            edited = boundary.edit_fixed_step(z_np, targets_arr, None if directions is None else directions[s:s + b],
                                              along)
        z_edit = torch.from_numpy(edited.reshape(b * k, -1)).to(device=device, dtype=z.dtype)
        cf = model.render(x_T.repeat_interleave(k, dim=0), z_edit, render_steps, progress=progress)
        z_cf = model.encode(cf).cpu().numpy()
        cf = cf.cpu().reshape(b, k, *cf.shape[1:])
        flat_edit = edited.reshape(b * k, -1)
        e_grade, e_dist = boundary.grade(flat_edit).reshape(b, k), boundary.distance(flat_edit).reshape(b, k)
        r_grade, r_dist = boundary.grade(z_cf).reshape(b, k), boundary.distance(z_cf).reshape(b, k)
        grade0, dist0 = boundary.grade(z_np), boundary.distance(z_np)
        for i in range(b):
            j = s + i
            out.append(CounterfactualSeries(
                id=ids[j], image=x[i].cpu(), reconstruction=recon[i], mode=mode, targets=targets_arr.copy(),
                counterfactuals=cf[i], grade=float(grade0[i]), distance=float(dist0[i]), edited_grades=e_grade[i],
                edited_distances=e_dist[i], reencoded_grades=r_grade[i], reencoded_distances=r_dist[i],
                true_grade=None if true_grades is None else float(true_grades[j]), predicted=int(dist0[i] > 0),
                classes=tuple(classes), extra={"along": along} if mode == "step" else {}))
    return out


def _difference(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Signed difference a - b averaged over channels (H, W)."""
    return (a.float() - b.float()).mean(dim=0).numpy()


def series_figure(series: Sequence[CounterfactualSeries], path: str | Path, title: str | None = None,
                  extra_captions: Sequence[Sequence[str]] | None = None) -> Path:
    """Per image two rows: input, reconstruction and the counterfactuals (target -> re-encoded grade), then
    the difference maps counterfactual - reconstruction (red: brighter, blue: darker; one scale per image)."""
    import matplotlib.pyplot as plt

    k = max(len(s.targets) for s in series)
    ncols = k + 2
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(2 * len(series), ncols, figsize=(1.45 * ncols, 2.9 * len(series) + 0.4),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for r, s in enumerate(series):
            top, bottom = axes[2 * r], axes[2 * r + 1]
            truth = "" if s.true_grade is None else f"grade {s.true_grade:g}, "
            top[0].imshow(to_display(s.image), interpolation="nearest")
            top[0].set_title(f"{s.id}\n{truth}est. {s.grade:.2f}", fontsize=7)
            top[1].imshow(to_display(s.reconstruction.clamp(0, 1)), interpolation="nearest")
            top[1].set_title("reconstruction", fontsize=7)
            diffs = [_difference(c, s.reconstruction) for c in s.counterfactuals]
            vmax = max(1e-3, max(float(np.abs(d).max()) for d in diffs))
            recon_diff = _difference(s.image, s.reconstruction)
            rmax = max(1e-3, float(np.abs(recon_diff).max()))
            bottom[1].imshow(recon_diff, cmap="RdBu_r", vmin=-rmax, vmax=rmax, interpolation="nearest")
            bottom[1].set_title(f"input - recon. (max {rmax:.2f})", fontsize=7)
            for j, (cf, d) in enumerate(zip(s.counterfactuals, diffs, strict=True)):
                label = (f"target {s.targets[j]:g}" if s.mode == "grade" else f"step {s.targets[j]:g}")
                caption = f"{label}\nre-enc. {s.reencoded_grades[j]:.2f}"
                if extra_captions is not None:
                    caption += f"\n{extra_captions[r][j]}"
                top[j + 2].imshow(to_display(cf.clamp(0, 1)), interpolation="nearest")
                top[j + 2].set_title(caption, fontsize=7)
                im = bottom[j + 2].imshow(d, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
                bottom[j + 2].set_title(f"diff. (max {vmax:.2f})" if j == 0 else "", fontsize=7)
            fig.colorbar(im, ax=bottom[0], location="left", fraction=0.5, shrink=0.8)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)
