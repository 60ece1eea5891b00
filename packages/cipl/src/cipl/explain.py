"""What CIPL shows: "this region looks like that training patch".

- `reason_tensor` / `reason_image`: for each predicted finding (single-label: the predicted class; nothing
  predicted: the reference class), the image's similarity maps to that class's most activated prototypes,
  upsampled and overlaid, next to each prototype's source patch, with the similarity, the last-layer weight
  and their product, the prototype's contribution to the class logit; above them the class map (all the
  class's prototype maps summed with their last-layer weights: where the class logit comes from, the map
  the localisation metrics score). One figure per class and a text summary.
- `gallery_figures`: every class's prototypes after the push, on their source images with the contour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cipl.evaluate import weighted_class_maps
from cipl.maps import sampled_distance_maps, upsample_numpy
from cipl.model import CIPL
from cipl.push import find_push_dir, load_push, overlay, prototype_file
from cipl.run import display_fn, eval_transform_for, load_cipl


@dataclass
class PrototypeEvidence:
    """One prototype's part in a class logit: contribution = similarity x weight."""

    index: int
    similarity: float
    weight: float
    contribution: float
    activation: np.ndarray  # (H, W) upsampled similarity map on the explained image
    peak: tuple[int, int]  # (y, x) of the map's maximum
    source_id: str = ""
    patch: np.ndarray | None = None  # (h, w, 3) the prototype's source patch
    source: np.ndarray | None = None  # (H, W, 3) its source image with the contour


@dataclass
class ClassReasoning:
    name: str
    probability: float
    logit: float
    reference_logit: float | None
    evidence: list[PrototypeEvidence] = field(default_factory=list)
    class_map: np.ndarray | None = None  # (H, W) the prototype maps summed with their last-layer weights
    class_peak: tuple[int, int] | None = None  # (y, x) of its maximum

    @property
    def shown_contribution(self) -> float:
        return float(sum(e.contribution for e in self.evidence))


@dataclass
class Reasoning:
    image: np.ndarray  # (H, W, 3) in [0, 1]
    image_id: str
    probabilities: dict[str, float]
    reference_name: str | None
    classes: list[ClassReasoning]

    def to_text(self) -> str:
        lines = [f"image {self.image_id}: " + ", ".join(f"{n} {p:.3f}" for n, p in self.probabilities.items())]
        for c in self.classes:
            ref = (f" vs {self.reference_name} {c.reference_logit:.3f}" if c.reference_logit is not None
                   and c.name != self.reference_name else "")
            peak = f"; class map peak at (y={c.class_peak[0]}, x={c.class_peak[1]})" if c.class_peak else ""
            lines.append(f"{c.name}: probability {c.probability:.3f}, logit {c.logit:.3f}{ref}{peak}; the "
                         f"{len(c.evidence)} most activated prototypes add {c.shown_contribution:.3f}:")
            for e in c.evidence:
                src = f" (from {e.source_id})" if e.source_id else ""
                lines.append(f"  prototype {e.index}{src}: similarity {e.similarity:.4f} x weight {e.weight:.4f} "
                             f"= {e.contribution:.4f}, at (y={e.peak[0]}, x={e.peak[1]})")
        return "\n".join(lines)

    def figures(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        """One PNG per explained class: out_dir/<stem>-<class>.png."""
        import matplotlib.pyplot as plt

        from medimg_core.figures import PAPER_RC, save_figure

        out_dir = Path(out_dir)
        stem = stem or f"reason-{self.image_id}"
        paths = []
        for c in self.classes:
            k = len(c.evidence)
            top = int(c.class_map is not None)
            with plt.rc_context(PAPER_RC):
                fig, axes = plt.subplots(k + top, 4, figsize=(9.5, 2.3 * (k + top) + 0.6), squeeze=False,
                                         gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
                if top:
                    ax = axes[0]
                    ax[0].imshow(overlay(self.image, c.class_map, alpha=0.45))
                    ax[0].plot(c.class_peak[1], c.class_peak[0], marker="+", color="white", markersize=10, mew=2)
                    ax[0].set_title("class map", fontsize=9)
                    ax[1].imshow(self.image)
                    ax[1].set_title("image", fontsize=9)
                    ax[3].text(0.0, 0.5, f"all {c.name} prototypes:\nsimilarity maps x weights,\nsummed "
                               f"(peak y={c.class_peak[0]}, x={c.class_peak[1]})", va="center", fontsize=9,
                               family="monospace")
                    for a in ax:
                        a.axis("off")
                for row, e in enumerate(c.evidence):
                    ax = axes[row + top]
                    ax[0].imshow(overlay(self.image, e.activation, alpha=0.45))
                    ax[0].plot(e.peak[1], e.peak[0], marker="+", color="white", markersize=10, mew=2)
                    ax[0].set_title("this region" if row == 0 else "", fontsize=9)
                    if e.patch is not None:
                        ax[1].imshow(e.patch)
                    ax[1].set_title("looks like that patch" if row == 0 else "", fontsize=9)
                    if e.source is not None:
                        ax[2].imshow(e.source)
                    ax[2].set_title("(its training image)" if row == 0 else "", fontsize=9)
                    ax[3].text(0.0, 0.5, f"prototype {e.index}\n{e.source_id}\nsimilarity {e.similarity:.4f}\n"
                               f"x weight {e.weight:.4f}\n= {e.contribution:.4f}", va="center", fontsize=9,
                               family="monospace")
                    for a in ax:
                        a.axis("off")
                ref = (f" vs {self.reference_name} {c.reference_logit:.2f}" if c.reference_logit is not None
                       and c.name != self.reference_name else "")
                fig.suptitle(f"{c.name}: p = {c.probability:.3f}; logit {c.logit:.2f}{ref}; top {k} prototypes add "
                             f"{c.shown_contribution:.2f}", fontsize=10)
                fig.tight_layout()
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in c.name)
                paths.append(save_figure(fig, out_dir / f"{stem}-{safe}.png"))
        return paths


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    if not path.is_file():
        return None
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


@torch.no_grad()
def reason_tensor(model: CIPL, x: torch.Tensor, image: np.ndarray, push_dir: str | Path | None = None,
                  top_k: int = 5, threshold: float = 0.5, image_id: str = "image",
                  classes: list[str] | None = None, map_step: int | None = None) -> Reasoning:
    """Explain one model input x (C, H, W) shown as `image` (H, W, 3); `classes` forces which classes to explain;
    `map_step` samples the similarity maps every `map_step` pixels (`cipl.maps.dense_distance_maps`)."""
    model = model.eval()
    device = model.prototypes.device
    x = x.to(device)[None]
    out = model(x)
    probs = out["probabilities"][0].cpu().numpy()
    logits = out["logits"][0].cpu().numpy()
    sims = out["similarities"][0].cpu().numpy()
    size = tuple(x.shape[-2:])
    distance_maps, grid = sampled_distance_maps(model, x, out["distance_maps"], map_step)
    similarity_maps = model.similarity(distance_maps)  # (1, P, h, w)
    maps = similarity_maps[0].cpu()
    class_maps = weighted_class_maps(model, similarity_maps)[0].cpu()  # (K, h, w)
    weights = model.last_layer.weight.detach().cpu().numpy()
    labels = model.labels
    names = list(labels.output_names)
    ref_name = labels.class_names[-1] if labels.multilabel else None
    if classes is None:
        if labels.multilabel:
            classes = [n for n, p in zip(names, probs, strict=True) if p > threshold] or [ref_name]
        else:
            classes = [names[int(np.argmax(probs))]]
    records = {}
    if push_dir is not None:
        push = load_push(push_dir)
        records = {r["index"]: r for r in push["prototypes"]}
    explained = []
    for name in classes:
        if name not in labels.class_names:
            raise ValueError(f"unknown class {name!r}; the model's classes are {list(labels.class_names)}")
        k = labels.class_names.index(name)
        block = range(*model.class_slice(k).indices(model.num_prototypes))
        order = sorted(block, key=lambda j: -sims[j])[:top_k]
        evidence = []
        for j in order:
            up = upsample_numpy(maps[j], size, grid)
            peak = np.unravel_index(int(np.argmax(up)), up.shape)
            rec = records.get(j, {})
            evidence.append(PrototypeEvidence(
                j, float(sims[j]), float(weights[k, j]), float(sims[j] * weights[k, j]), up,
                (int(peak[0]), int(peak[1])), rec.get("source_id", ""),
                _read_png(prototype_file(Path(push_dir), j, "patch")) if push_dir else None,
                _read_png(prototype_file(Path(push_dir), j, "contour")) if push_dir else None))
        prob = float(probs[names.index(name)]) if name in names else float(1 - probs.max()) if labels.multilabel \
            else float("nan")
        class_map = upsample_numpy(class_maps[k], size, grid)
        class_peak = np.unravel_index(int(np.argmax(class_map)), class_map.shape)
        explained.append(ClassReasoning(name, prob, float(logits[k]),
                                        float(logits[-1]) if labels.multilabel else None, evidence,
                                        class_map, (int(class_peak[0]), int(class_peak[1]))))
    return Reasoning(image, image_id, dict(zip(names, map(float, probs), strict=True)), ref_name, explained)


def reason_image(run_dir: str | Path, image_path: str | Path, device: str = "cpu", top_k: int = 5,
                 threshold: float = 0.5, checkpoint: str = "best", map_step: int | None = None) -> Reasoning:
    """Load a trained run, run one image file through it and explain each predicted finding."""
    from medimg_core.data.images import read_image

    model, info = load_cipl(run_dir, checkpoint)
    cfg = info["cfg"]
    arr = read_image(image_path, info["card"]["channels"])
    tensor = torch.from_numpy(np.ascontiguousarray(arr))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    x = eval_transform_for(cfg, info["in_chans"])(tensor)
    push_dir = find_push_dir(info["run_dir"], model)
    model = model.to(device)
    shown = display_fn(cfg, info["in_chans"])(x)
    return reason_tensor(model, x, shown, push_dir, top_k, threshold, Path(image_path).stem, map_step=map_step)


def gallery_figures(model: CIPL, push_dir: str | Path, out_dir: str | Path, ncols: int = 10) -> list[Path]:
    """One figure per class: its prototypes on their source images (contour of the activation >= 0.65)."""
    from medimg_core.figures import image_grid

    push = load_push(push_dir)
    records = {r["index"]: r for r in push["prototypes"]}
    out_dir = Path(out_dir)
    paths = []
    for k, name in enumerate(model.labels.class_names):
        idx = list(range(*model.class_slice(k).indices(model.num_prototypes)))
        images = [_read_png(prototype_file(Path(push_dir), j, "contour")) for j in idx]
        keep = [(j, im) for j, im in zip(idx, images, strict=True) if im is not None]
        if not keep:
            continue
        captions = [f"#{j} {records.get(j, {}).get('source_id', '')}" for j, _ in keep]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        paths.append(image_grid([im for _, im in keep], captions, out_dir / f"{safe}.png", ncols=min(ncols, len(keep)),
                                title=f"{name}: {len(keep)} prototypes after the push"))
    return paths


def gallery_overview(model: CIPL, push_dir: str | Path, path: str | Path, per_class: int = 6) -> Path:
    """One figure, one row per class: its first `per_class` prototypes on their source images (contour)."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure

    push = load_push(push_dir)
    records = {r["index"]: r for r in push["prototypes"]}
    n_cls = model.num_classes
    cols = min(per_class, model.prototypes_per_class)
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(n_cls, cols, figsize=(1.5 * cols + 1.2, 1.55 * n_cls + 0.4), squeeze=False)
        for k, name in enumerate(model.labels.class_names):
            idx = list(range(*model.class_slice(k).indices(model.num_prototypes)))[:cols]
            for c, j in enumerate(idx):
                ax = axes[k, c]
                image = _read_png(prototype_file(Path(push_dir), j, "contour"))
                if image is not None:
                    ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"#{j} {records.get(j, {}).get('source_id', '')}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(name, fontsize=8)
        fig.suptitle("Prototypes after the push (source image, yellow: activation >= 0.65 of its range)", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)
