"""What an IIS head shows for one image: the concepts that survive the sparsity mask and what each adds to
the class scores (logit_k = bias_k + sum_m c_s[m] * W[k, m]), with the concepts' prototype pictures
(visual libraries) or phrases (text libraries)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iis.model import kept_count

__all__ = ["Explanation", "explain_image"]


@dataclass
class Explanation:
    """One image's decision by the head at sparsity `ratio`; concepts sorted by |contribution| to the
    explained class (largest first)."""

    image: np.ndarray  # (H, W, 3) float in [0, 1], as the backbone saw it (before normalisation)
    backbone: str
    library: str
    ratio: float
    num_concepts: int
    class_names: list[str]
    probabilities: np.ndarray  # (K,)
    explained: int  # the class whose score is explained (default: the predicted one)
    concept_index: list[int]  # surviving concepts (indices into the library)
    concept_names: list[str]
    activations: np.ndarray  # (S,) their normalised activations
    contributions: np.ndarray  # (S, K)
    bias: np.ndarray  # (K,)
    pictures: list[np.ndarray | None]  # per surviving concept, a picture of it (None for text concepts)

    def to_text(self, top_k: int = 10) -> str:
        c = self.explained
        lines = [f"backbone {self.backbone}, {self.library} concepts, sparsity {self.ratio:g}: "
                 f"{len(self.concept_index)} of {self.num_concepts} concepts survive",
                 f"prediction: {self.class_names[int(self.probabilities.argmax())]} ("
                 + ", ".join(f"{n} {p:.3f}" for n, p in zip(self.class_names, self.probabilities, strict=True)) + ")",
                 f"contributions to the score of {self.class_names[c]} (top {min(top_k, len(self.concept_index))}):"]
        for j in range(min(top_k, len(self.concept_index))):
            lines.append(f"  {self.contributions[j, c]:+.3f}  concept {self.concept_index[j]}: {self.concept_names[j]} "
                         f"(activation {self.activations[j]:+.2f})")
        rest = self.contributions[top_k:, c].sum() if len(self.concept_index) > top_k else 0.0
        if len(self.concept_index) > top_k:
            lines.append(f"  {rest:+.3f}  (the other {len(self.concept_index) - top_k} surviving concepts)")
        lines.append(f"  {self.bias[c]:+.3f}  (bias)")
        return "\n".join(lines)

    def figure(self, path: str | Path, top_k: int = 10) -> Path:
        import matplotlib.pyplot as plt

        from medimg_core.figures import NEGATIVE_COLOUR, POSITIVE_COLOUR, save_figure, to_display

        c, n = self.explained, min(top_k, len(self.concept_index))
        pics = [(j, p) for j, p in enumerate(self.pictures[:n]) if p is not None][:8]
        rows = 2 if pics else 1
        fig = plt.figure(figsize=(11, 4.4 + 2.0 * (rows - 1)), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[2.2, 1]) if pics else (fig, None)
        ax_img, ax = top.subplots(1, 2, width_ratios=[1, 1.7])
        ax_img.imshow(self.image)
        ax_img.set_title(f"{self.backbone}\nprediction: {self.class_names[int(self.probabilities.argmax())]}",
                         fontsize=9)
        ax_img.axis("off")
        vals = self.contributions[:n, c][::-1]
        labels = [f"{self.concept_index[j]}: {self.concept_names[j]}"[:48] for j in range(n)][::-1]
        ax.barh(np.arange(n), vals, color=[POSITIVE_COLOUR if v >= 0 else NEGATIVE_COLOUR for v in vals])
        ax.set_yticks(np.arange(n), labels, fontsize=7)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"contribution to the score of '{self.class_names[c]}'", fontsize=8)
        ax.set_title(f"{len(self.concept_index)} of {self.num_concepts} {self.library} concepts survive "
                     f"at s = {self.ratio:g}", fontsize=9)
        if bottom is not None:
            for k, axp in enumerate(bottom.subplots(1, 8)):
                axp.axis("off")
                if k < len(pics):
                    j, pic = pics[k]
                    axp.imshow(to_display(pic))
                    axp.set_title(f"concept {self.concept_index[j]}\n{self.contributions[j, c]:+.2f}", fontsize=7)
        return save_figure(fig, path)


def _pick_backbone(run_dir: Path, backbone: str | None) -> Path:
    from iis.pipeline import backbone_dirs

    folders = backbone_dirs(run_dir)
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no scored backbone found; is it a finished `iis score` run folder?")
    if backbone is None:
        return folders[0]
    labels = [json.loads((f / "backbone.json").read_text())["label"] for f in folders]
    if backbone.isdigit() and int(backbone) < len(folders):
        return folders[int(backbone)]
    if backbone in labels:
        return folders[labels.index(backbone)]
    raise ValueError(f"backbone {backbone!r} is not in {run_dir}; it scored {labels} (or give an index)")


def _pick_ratio(ratios: list[float], num_concepts: int, ratio: float | None, top_k: int) -> float:
    if ratio is not None:
        match = [s for s in ratios if abs(s - ratio) < 1e-9]
        if not match:
            raise ValueError(f"ratio {ratio:g} was not swept; the run has heads for {ratios}")
        return match[0]
    # the sparsest head that still keeps top_k concepts (or as many as the library can)
    want = min(top_k, num_concepts - 1)
    fitting = [s for s in ratios if kept_count(num_concepts, s) >= want]
    return max(fitting) if fitting else min(ratios)


def explain_image(run_dir: str | Path, image_path: str | Path, backbone: str | None = None,
                  ratio: float | None = None, top_k: int = 10, target_class: int | None = None,
                  device: str = "cpu", root: str | None = None) -> Explanation:
    """Explain IMAGE with the head of a finished `iis score` run (see `Explanation`)."""
    from iis.backbones import load_backbone
    from iis.concepts import ConceptLibrary, end2end_members
    from iis.pipeline import head_state, load_elements
    from iis.train import IISConfig
    from medimg_core.checkpoint import load_config_json
    from medimg_core.config import load_config
    from medimg_core.data.images import read_image
    from medimg_core.data.transforms import TransformConfig, eval_transform
    from medimg_core.figures import to_display

    run_dir = Path(run_dir)
    cfg = load_config(IISConfig, run_dir / "config.yaml")
    if root is not None:
        cfg.data.root = root
    folder = _pick_backbone(run_dir, backbone)
    info = json.loads((folder / "backbone.json").read_text())
    loaded = load_backbone(info["spec"], info["in_chans"], info.get("seed", cfg.seed))
    if loaded.fingerprint != info["weights_fingerprint"]:
        raise ValueError(f"{info['spec']}: the weights loaded now (fingerprint {loaded.fingerprint}) are not the "
                         f"ones scored in {folder} ({info['weights_fingerprint']})")
    library = ConceptLibrary.load(folder / "library")
    heads = load_config_json(folder / "heads")
    s = _pick_ratio([float(r) for r in heads["ratios"]], library.num_concepts, ratio, top_k)
    head = library.make_head(heads["num_outputs"], s, heads.get("gumbel_tau", 0.1))
    head.load_state_dict(head_state(folder / "heads", f"s{s:g}"))
    head.eval()
    card = json.loads((run_dir / "card.json").read_text())
    arr = read_image(image_path, 1 if info["in_chans"] == 1 else 3)
    tensor = torch.from_numpy(arr)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    tf = TransformConfig(size=info["image_size"], channels=info["in_chans"], normalize=info["normalize"])
    x = eval_transform(tf)(tensor)[None].to(device)
    with torch.no_grad():
        features = loaded.backbone.to(device)(x)
        logits = head.to(device)(features)[0].cpu()
        contrib = head.contributions(features)[0].cpu().numpy()
        acts = head.sparse_scores(features)[0].cpu().numpy()
    multilabel = card["task"] == "multilabel"
    probs = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, 0)).numpy()
    explained = int(probs.argmax()) if target_class is None else int(target_class)
    if not 0 <= explained < len(probs):
        raise ValueError(f"class {explained} is outside 0..{len(probs) - 1}")
    alive = np.flatnonzero(acts != 0)
    alive = alive[np.argsort(-np.abs(contrib[alive, explained]), kind="stable")]
    pictures: list[np.ndarray | None] = [None] * len(alive)
    if library.kind != "text" and (run_dir / "elements.json").is_file():
        members = library.members
        rows = None
        if library.kind == "end2end":
            members = end2end_members(head.cpu(), 1)
            rows = library.extra.get("element_rows")
        try:
            from medimg_core.data import load_dataset

            train = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **cfg.data.options)
            elements = load_elements(run_dir, train, cfg)
            for j, m in enumerate(alive[:top_k]):
                if members[m]:
                    index = members[m][0] if rows is None else rows[members[m][0]]
                    pictures[j] = elements.picture(index, size=(64, 64))
        except (OSError, ValueError) as exc:  # the training images moved: explain without pictures
            import logging

            logging.getLogger("medimg").warning("concept pictures unavailable (%s); pass --root", exc)
    shown = eval_transform(tf, normalize=None)(tensor)
    return Explanation(
        image=to_display(shown), backbone=info["label"], library=library.kind, ratio=s,
        num_concepts=library.num_concepts, class_names=list(card["class_names"]), probabilities=probs,
        explained=explained, concept_index=[int(m) for m in alive],
        concept_names=[library.names[m] for m in alive], activations=acts[alive], contributions=contrib[alive],
        bias=head.linear.bias.detach().cpu().numpy(), pictures=pictures)
