"""What CIPL shows: "this region looks like that training patch" (model and tensors in; run folders: cipl.api).

- `reason_tensor`: for each predicted finding (single-label: the predicted class; nothing predicted: the reference
  class; or the `target` output asked for), the image's similarity maps to that class's most activated
  prototypes, upsampled and overlaid, next to each prototype's source patch, with the similarity, the last-layer
  weight and their product, the prototype's contribution to the class logit; above them the class map (all the
  class's prototype maps summed with their last-layer weights: where the class logit comes from, the map the
  localisation metrics score). A `Reasoning`, which implements medimg-core's Explanation protocol.
- `gallery_figures` / `gallery_overview`: every class's prototypes after the push, on their source images with
  the contour.

Prototype pictures come from a push folder, a `PushIndex` or `PrototypePictures` (cipl.push). matplotlib and
medimg_core.figures (which switches matplotlib to its Agg backend when imported) are imported where a figure is
drawn, so that importing this module leaves a notebook's plotting backend alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cipl.maps import sampled_distance_maps, upsample_numpy, weighted_class_maps
from cipl.model import CIPL
from cipl.push import PrototypePictures, PushIndex, overlay
from medimg_core.explain import jsonable


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


def _capped(evidence: list[PrototypeEvidence], top_k: int | None) -> list[PrototypeEvidence]:
    if top_k is None:
        return evidence
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1 (or None for every prototype computed), got {top_k}")
    return evidence[:int(top_k)]


@dataclass
class Reasoning:
    """CIPL's explanation of one image (medimg_core.explain.Explanation): per explained class, its class map and
    its most activated prototypes with their contributions to the class logit.

    `target`: the output index asked for (None: the classes chosen by the prediction, see `reason_tensor`);
    `predicted`: the most probable output (multi-label: the finding with the highest probability).
    """

    image: np.ndarray  # (H, W, 3) in [0, 1]
    image_id: str
    probabilities: dict[str, float]
    reference_name: str | None
    classes: list[ClassReasoning]
    target: int | None = None
    predicted: int | None = None

    def to_text(self, top_k: int | None = None) -> str:
        """The probabilities, then per explained class its logit, class-map peak and (at most `top_k`) prototypes."""
        lines = [f"image {self.image_id}: " + ", ".join(f"{n} {p:.3f}" for n, p in self.probabilities.items())]
        for c in self.classes:
            evidence = _capped(c.evidence, top_k)
            ref = (f" vs {self.reference_name} {c.reference_logit:.3f}" if c.reference_logit is not None
                   and c.name != self.reference_name else "")
            peak = f"; class map peak at (y={c.class_peak[0]}, x={c.class_peak[1]})" if c.class_peak else ""
            added = float(sum(e.contribution for e in evidence))
            lines.append(f"{c.name}: probability {c.probability:.3f}, logit {c.logit:.3f}{ref}{peak}; the "
                         f"{len(evidence)} most activated prototypes add {added:.3f}:")
            for e in evidence:
                src = f" (from {e.source_id})" if e.source_id else ""
                lines.append(f"  prototype {e.index}{src}: similarity {e.similarity:.4f} x weight {e.weight:.4f} "
                             f"= {e.contribution:.4f}, at (y={e.peak[0]}, x={e.peak[1]})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The numbers of the reasoning (no pictures), JSON-serialisable."""
        return jsonable({
            "image_id": self.image_id, "target": self.target, "predicted": self.predicted,
            "probabilities": self.probabilities, "reference_name": self.reference_name,
            "classes": [{"name": c.name, "probability": c.probability, "logit": c.logit,
                         "reference_logit": c.reference_logit, "class_peak": c.class_peak,
                         "evidence": [{"index": e.index, "source_id": e.source_id, "similarity": e.similarity,
                                       "weight": e.weight, "contribution": e.contribution, "peak": e.peak}
                                      for e in c.evidence]}
                        for c in self.classes]})

    def figure(self, path: str | Path, top_k: int | None = None) -> Path:
        """One PNG at `path`: every explained class's rows (class map, then at most `top_k` prototypes: this
        region, that patch, its training image, similarity x weight), one block per class."""
        import matplotlib.pyplot as plt

        from medimg_core.figures import PAPER_RC, save_figure

        blocks = [(c, _capped(c.evidence, top_k)) for c in self.classes]
        heights = [2.3 * (len(ev) + int(c.class_map is not None)) + 0.6 for c, ev in blocks]
        with plt.rc_context(PAPER_RC):
            fig = plt.figure(figsize=(9.5, sum(heights)), layout="constrained")
            subfigures = fig.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
            for sub, (c, evidence) in zip(subfigures, blocks, strict=True):
                axes = sub.subplots(len(evidence) + int(c.class_map is not None), 4, squeeze=False,
                                    gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
                self._draw(axes, c, evidence)
                sub.suptitle(self._title(c, evidence), fontsize=10)
            return save_figure(fig, path)

    def figures(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        """One PNG per explained class: out_dir/<stem>-<class>.png (what `cipl reason` writes)."""
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
                self._draw(axes, c, c.evidence)
                fig.suptitle(self._title(c, c.evidence), fontsize=10)
                fig.tight_layout()
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in c.name)
                paths.append(save_figure(fig, out_dir / f"{stem}-{safe}.png"))
        return paths

    def _title(self, c: ClassReasoning, evidence: list[PrototypeEvidence]) -> str:
        ref = (f" vs {self.reference_name} {c.reference_logit:.2f}" if c.reference_logit is not None
               and c.name != self.reference_name else "")
        added = float(sum(e.contribution for e in evidence))
        return f"{c.name}: p = {c.probability:.3f}; logit {c.logit:.2f}{ref}; top {len(evidence)} prototypes add {added:.2f}"

    def _draw(self, axes: np.ndarray, c: ClassReasoning, evidence: list[PrototypeEvidence]) -> None:
        """Fill axes (rows, 4): the class-map row (when there is a class map), then one row per prototype."""
        top = int(c.class_map is not None)
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
        for row, e in enumerate(evidence):
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


@torch.no_grad()
def reason_tensor(model: CIPL, x: torch.Tensor, image: np.ndarray,
                  push: str | Path | PushIndex | PrototypePictures | None = None, top_k: int = 5,
                  threshold: float = 0.5, image_id: str = "image", classes: list[str] | None = None,
                  map_step: int | None = None, target: int | None = None) -> Reasoning:
    """Explain one model input x (C, H, W) or (1, C, H, W), shown as `image` (H, W, 3).

    Which classes: `target` (an output index) explains that output; `classes` (prototype class names, the
    reference class allowed) forces a list; otherwise the findings above `threshold` (none: the reference class),
    or the predicted class of single-label data. `push` (a push folder, its index or its pictures) names each
    prototype's source and gives its pictures; `map_step` samples the similarity maps every `map_step` pixels
    (`cipl.maps.dense_distance_maps`).
    """
    model = model.eval()
    device = model.prototypes.device
    x = x.to(device)
    x = x if x.ndim == 4 else x[None]
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
    if target is not None:
        if not 0 <= int(target) < len(names):
            raise ValueError(f"target {target} is out of range; the outputs are 0..{len(names) - 1} ({', '.join(names)})")
        classes = [names[int(target)]]
    elif classes is None:
        if labels.multilabel:
            classes = [n for n, p in zip(names, probs, strict=True) if p > threshold] or [ref_name]
        else:
            classes = [names[int(np.argmax(probs))]]
    pictures = PrototypePictures.of(push) if push is not None else None
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
            evidence.append(PrototypeEvidence(
                j, float(sims[j]), float(weights[k, j]), float(sims[j] * weights[k, j]), up,
                (int(peak[0]), int(peak[1])), pictures.index.source_id(j) if pictures else "",
                pictures.maybe(j, "patch") if pictures else None,
                pictures.maybe(j, "contour") if pictures else None))
        prob = float(probs[names.index(name)]) if name in names else float(1 - probs.max()) if labels.multilabel \
            else float("nan")
        class_map = upsample_numpy(class_maps[k], size, grid)
        class_peak = np.unravel_index(int(np.argmax(class_map)), class_map.shape)
        explained.append(ClassReasoning(name, prob, float(logits[k]),
                                        float(logits[-1]) if labels.multilabel else None, evidence,
                                        class_map, (int(class_peak[0]), int(class_peak[1]))))
    return Reasoning(image, image_id, dict(zip(names, map(float, probs), strict=True)), ref_name, explained,
                     None if target is None else int(target), int(np.argmax(probs)))


def gallery_figures(model: CIPL, push: str | Path | PushIndex | PrototypePictures, out_dir: str | Path,
                    ncols: int = 10) -> list[Path]:
    """One figure per class: its prototypes on their source images (contour of the activation >= 0.65).
    `push`: a push folder, its index or its pictures; when no picture can be had, PicturesUnavailable says why."""
    from medimg_core.figures import image_grid

    pictures = PrototypePictures.of(push)
    out_dir = Path(out_dir)
    paths = []
    for k, name in enumerate(model.labels.class_names):
        idx = list(range(*model.class_slice(k).indices(model.num_prototypes)))
        images = [pictures.maybe(j, "contour") for j in idx]
        keep = [(j, im) for j, im in zip(idx, images, strict=True) if im is not None]
        if not keep:
            continue
        captions = [f"#{j} {pictures.index.source_id(j)}" for j, _ in keep]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        paths.append(image_grid([im for _, im in keep], captions, out_dir / f"{safe}.png", ncols=min(ncols, len(keep)),
                                title=f"{name}: {len(keep)} prototypes after the push"))
    if not paths and pictures.index.prototypes:
        pictures.get(int(pictures.index.prototypes[0]["index"]), "contour")  # raises, saying why there is none
    return paths


def gallery_overview(model: CIPL, push: str | Path | PushIndex | PrototypePictures, path: str | Path,
                     per_class: int = 6) -> Path:
    """One figure, one row per class: its first `per_class` prototypes on their source images (contour)."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure

    pictures = PrototypePictures.of(push)
    n_cls = model.num_classes
    cols = min(per_class, model.prototypes_per_class)
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(n_cls, cols, figsize=(1.5 * cols + 1.2, 1.55 * n_cls + 0.4), squeeze=False)
        for k, name in enumerate(model.labels.class_names):
            idx = list(range(*model.class_slice(k).indices(model.num_prototypes)))[:cols]
            for c, j in enumerate(idx):
                ax = axes[k, c]
                image = pictures.maybe(j, "contour")
                if image is not None:
                    ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"#{j} {pictures.index.source_id(j)}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(name, fontsize=8)
        fig.suptitle("Prototypes after the push (source image, yellow: activation >= 0.65 of its range)", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)
