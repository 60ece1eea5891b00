"""Counterfactual series: the same image rendered at other grades, and their figures.

For each image x: z = Enc(x), x_T = encode_stochastic(x, z), the reconstruction render(x_T, z), and
for each target the edited latent z' (LatentBoundary.edit_to_grade, or the notebooks' fixed step)
rendered with the image's own x_T. Each counterfactual is re-encoded, so its calibrated grade can be
read back and compared with the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.run import load_dae, require_run_dir


@dataclass
class CounterfactualSeries:
    """One image and its counterfactuals. Images are (C, H, W) tensors in the data range [0, 1]."""

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

    def to_dict(self) -> dict:
        return {"id": self.id, "mode": self.mode, "true_grade": self.true_grade, "grade": self.grade,
                "distance": self.distance, "targets": self.targets.tolist(),
                "edited_grades": self.edited_grades.tolist(), "reencoded_grades": self.reencoded_grades.tolist(),
                "reencoded_distances": self.reencoded_distances.tolist(), **self.extra}

    def figure(self, path: str | Path, title: str | None = None) -> Path:
        return series_figure([self], path, title)


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
) -> list[CounterfactualSeries]:
    """Counterfactual series of images (B, C, H, W) in [0, 1] at each target (grade or fixed step)."""
    from tqdm.auto import tqdm

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
            edited = boundary.edit_fixed_step(z_np, targets_arr, None if directions is None else directions[s:s + b])
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
                true_grade=None if true_grades is None else float(true_grades[j])))
    return out


def _difference(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Signed difference a - b averaged over channels (H, W)."""
    return (a.float() - b.float()).mean(dim=0).numpy()


def series_figure(series: Sequence[CounterfactualSeries], path: str | Path, title: str | None = None,
                  extra_captions: Sequence[Sequence[str]] | None = None) -> Path:
    """Per image two rows: input, reconstruction and the counterfactuals (target -> re-encoded grade), then
    the difference maps counterfactual - reconstruction (red: brighter, blue: darker; one scale per image)."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure, to_display

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


# ------------------------------------------------------------------------------------ from files


def load_images(paths: Sequence[str | Path], transform, channels: int) -> torch.Tensor:
    """Image files -> (N, C, H, W) in [0, 1] through `transform` (the run's eval transform)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision import tv_tensors

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{p}: not an image file that can be read ({exc})") from None
        t = torch.from_numpy(np.array(arr, copy=True))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        x = transform(tv_tensors.Image(t)).as_subclass(torch.Tensor)
        out.append(x.float() / 255.0 if x.dtype == torch.uint8 else x.float())
    return torch.stack(out)


def save_png(image: torch.Tensor, path: Path) -> None:
    """(C, H, W) in [0, 1] -> PNG (uint8)."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def counterfactual_run(run_dir: str | Path, images: Sequence[str | Path], targets: Sequence[float],
                       mode: Literal["grade", "step"] = "grade", direction: float | None = None,
                       encode_steps: int | None = None, render_steps: int | None = None, device: str = "cpu",
                       out: str | Path | None = None, seed: int = 0, batch_size: int = 8,
                       progress: bool = True) -> tuple[Path, list[CounterfactualSeries]]:
    """Counterfactual series of image files; writes a folder with config.yaml, metrics.json, images/, figures/."""
    from medimg_core.baseline import build_transforms
    from medimg_core.checkpoint import write_json
    from medimg_core.config import save_config
    from medimg_core.distributed import seed_everything
    from medimg_core.runs import create_run_dir

    seed_everything(seed)
    run = load_dae(run_dir, device)
    run_dir = require_run_dir(run, "counterfactual")
    boundary = LatentBoundary.load(run_dir / "boundary.json")
    encode_steps = encode_steps or run.cfg.diffusion.encode_steps
    render_steps = render_steps or run.cfg.diffusion.render_steps
    x = load_images(images, build_transforms(run.cfg.data, run.card)[1], run.in_channels)
    ids = [Path(p).stem for p in images]
    series = generate_counterfactuals(run.model, boundary, x, targets, mode, encode_steps, render_steps, direction,
                                      ids, batch_size=batch_size, device=device, progress=progress)
    folder = create_run_dir(Path(out) if out else run_dir / "counterfactuals", f"{mode}-{len(ids)}-images")
    settings = {"run": str(run_dir), "images": [str(p) for p in images], "mode": mode,
                "targets": [float(t) for t in targets], "direction": direction, "encode_steps": encode_steps,
                "render_steps": render_steps, "device": device, "seed": seed}
    save_config(settings, folder / "config.yaml")
    (folder / "images").mkdir()
    for s in series:
        save_png(s.reconstruction, folder / "images" / f"{s.id}_reconstruction.png")
        for t, cf in zip(s.targets, s.counterfactuals, strict=True):
            save_png(cf, folder / "images" / f"{s.id}_{mode}{t:g}.png")
        s.figure(folder / "figures" / f"{s.id}.png")
    write_json(folder / "metrics.json", {**settings, "series": [s.to_dict() for s in series]})
    return folder, series
