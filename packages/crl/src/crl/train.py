"""How CRL learns: the published loss and optimisation, as a recipe for medimg-core's training lifecycle.

loss = CE(class scores / temperature, y) + concept_weight * BCE(concept logits, annotated concepts)
       + l2_weight * (||W_logic||^2 + ||W_final||^2)

Two AdamW parameter groups (backbone + concept head at lr_backbone, weight decay 1e-2; logical layers,
final layer and temperature at optim.lr, no weight decay), cosine schedule, logical weights clipped to
[0, 1] after every optimizer step. Modes: "end2end" (the backbone trains with everything else) and
"features" (a frozen backbone's pooled features are cached once by medimg-core and CRL trains on them).

`train_crl(cfg)` is `fit_run(CRLRecipe(), cfg)`: the core runs the lifecycle (seeding, run folder, Trainer,
best checkpoint, test metrics with intervals) and calls the recipe for the data, the model and CRL's own report
(the rules, read out of the best model on the non-augmented training set). Every checkpoint folder rebuilds the
method on its own: `model.safetensors`, in features mode `frozen_backbone.safetensors` (the backbone whose
features CRL reads), and in `checkpoints/best` the learned rules (`rules.json`, `rules.txt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crl.compact import compact_rules
from crl.config import CRLConfig, CRLLossConfig, CRLModelConfig
from crl.model import CRL
from crl.rules import concepts_of, extract_rules
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.preprocess import Preprocess, build_transforms, load_split
from medimg_core.distributed import DistInfo
from medimg_core.estimator import with_transform
from medimg_core.experiment import Built, FitContext, Splits, TaskFunctions, fit_run
from medimg_core.features import FeatureCache
from medimg_core.figures import confusion_matrix_figure
from medimg_core.metrics import classification_metrics, concept_metrics
from medimg_core.models import create_backbone
from medimg_core.models.backbones import Backbone, parse_pretrained
from medimg_core.pretrained import checkpoint_config
from medimg_core.runs import Run
from medimg_core.training import Hook, Trainer, show_progress

__all__ = ["FROZEN_BACKBONE", "KIND", "CRLConfig", "CRLLossConfig", "CRLModelConfig", "CRLRecipe",
           "ClipLogicalWeights", "FeatureDataset", "build_model", "crl_loss", "load_data", "task_functions",
           "train_crl"]

#: the checkpoint kind of CRL (config.json "kind"; the entry point of `medimg_core.pretrained.load_pretrained`)
KIND = "crl"
#: in features mode, the frozen backbone's weights, inside every checkpoint folder
FROZEN_BACKBONE = "frozen_backbone.safetensors"


class ClipLogicalWeights(Hook):
    """Keep every logical weight in [0, 1] after each optimizer step, as the published training does."""

    def on_step_end(self, trainer: Trainer) -> None:
        trainer.model.clip()


class FeatureDataset(Dataset):
    """Cached features as samples: {"features": (D,), "target", "concepts": (K,), "id"}."""

    def __init__(self, cached: dict[str, Any]):
        self.features = cached["features"].float()
        self.targets = torch.as_tensor(np.asarray(cached["targets"]))
        self.concepts = torch.as_tensor(np.asarray(cached["concepts"]), dtype=torch.float32)
        self.ids = list(cached["ids"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "target": self.targets[i], "concepts": self.concepts[i], "id": self.ids[i]}


def _inputs(batch: dict) -> torch.Tensor:
    """The model input of a batch: cached features (B, D) in features mode, else images (B, C, H, W)."""
    return batch["features"] if "features" in batch else batch["image"]


def crl_loss(out: dict, batch: dict, model: CRL, loss_cfg: CRLLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The published loss; concept terms only over annotated entries (NaN = unannotated).

    `out` is the model's output dict (scaled_logits (B, C), concept_logits (B, K)), `batch` has "target" (B,)
    and "concepts" (B, K). Returns (loss, {"task", "concept"} as floats for the logs).
    """
    task = nn.functional.cross_entropy(out["scaled_logits"].float(), batch["target"])
    c_true = batch["concepts"].float()
    known = ~torch.isnan(c_true)
    if known.any():
        concept = nn.functional.binary_cross_entropy_with_logits(
            out["concept_logits"].float()[known], c_true[known])
    else:
        concept = task.new_zeros(())
    module = model.module if hasattr(model, "module") else model
    l2 = module.l2()
    loss = task + loss_cfg.concept_weight * concept + loss_cfg.l2_weight * l2
    return loss, {"task": float(task.detach()), "concept": float(concept.detach())}


def check_card(card: DatasetCard) -> None:
    """CRL classifies one label per image from annotated concepts; anything else is a ValueError naming the data."""
    if card.task == "multilabel":
        raise ValueError(f"{card.name}: CRL classifies one label per image; multi-label tasks are not supported")
    if card.num_concepts == 0:
        raise ValueError(f"{card.name}: CRL needs concept annotations and this dataset has none")


def task_functions(card: DatasetCard, loss_cfg: CRLLossConfig) -> TaskFunctions:
    """The Trainer's step, predict and metrics functions for `card` (refused by `check_card` first).

    predict gives "scores" (B, C) softmax of the scaled logits, "target" (B,), "concept_scores" (B, K)
    sigmoid of the concept logits, "concepts_true" (B, K) and "concepts_pred" (B, K) in {0, 1}.
    """
    check_card(card)

    def step_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(_inputs(batch))
        return crl_loss(out, batch, model, loss_cfg)

    def predict_fn(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(_inputs(batch))
        return {"scores": torch.softmax(out["scaled_logits"].float(), dim=1), "target": batch["target"],
                "concept_scores": torch.sigmoid(out["concept_logits"].float()), "concepts_true": batch["concepts"],
                "concepts_pred": out["concepts"]}

    def metrics_fn(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        m = classification_metrics(card.task, outputs["target"].astype(np.int64), outputs["scores"],
                                   list(card.class_names))
        c = concept_metrics(outputs["concepts_true"], outputs["concept_scores"], list(card.concept_names))
        return {**m, **{k: v for k, v in c.items() if "/" not in k}}

    return TaskFunctions(step_fn, predict_fn, metrics_fn)


def build_model(cfg: CRLConfig, card: DatasetCard, in_chans: int, pretrained: bool | str | None = None
                ) -> tuple[CRL, Backbone]:
    """The CRL model and its backbone; the backbone sits inside the model in end2end mode only (in features
    mode the model reads features (B, D) and the caller keeps the frozen backbone). `pretrained` overrides the
    config's weights (False when a checkpoint's weights are loaded next). Training and loading both build here."""
    weights = parse_pretrained(cfg.model.pretrained) if pretrained is None else pretrained
    backbone = create_backbone(cfg.model.backbone, pretrained=weights, in_chans=in_chans)
    model = CRL(card.num_concepts, card.num_classes, backbone.num_features,
                backbone=backbone if cfg.mode == "end2end" else None,
                logic_layers=cfg.model.logic_layers, use_skip=cfg.model.use_skip,
                temperature=cfg.model.temperature)
    return model, backbone


def load_data(cfg: CRLConfig) -> tuple[dict[str, MedicalImageDataset], dict[str, MedicalImageDataset]]:
    """(datasets with train augmentation for training, the same splits with eval transforms)."""
    first = load_split(cfg.data, "train")
    train_tf, eval_tf = build_transforms(cfg.data, first.card)
    plain = {k: load_split(cfg.data, k, transform=eval_tf) for k in ("train", "val", "test")}
    first.transform = train_tf
    return {"train": first, "val": plain["val"], "test": plain["test"]}, plain


class CRLRecipe:
    """CRL's side of `medimg_core.experiment.fit_run`: data, model and optimiser groups, and the rules report."""

    method = "crl"

    def load_data(self, cfg: CRLConfig) -> Splits:
        data, _ = load_data(cfg)
        return Splits(data["train"], data["val"], data["test"], data["train"].card)

    def splits_of(self, cfg: CRLConfig, train: MedicalImageDataset, val: MedicalImageDataset | None) -> Splits:
        """Datasets given to `fit`, with this config's transforms (copies: the originals stay as they are)."""
        return Splits.with_transforms(cfg.data, train, val)

    def build(self, cfg: CRLConfig, splits: Splits, device: Any, dist_info: DistInfo) -> Built:
        card = splits.card
        task = task_functions(card, cfg.loss)  # refuses unsuitable data before any work
        in_chans = cfg.data.channels or card.channels
        model, backbone = build_model(cfg, card, in_chans)
        # the rules are read on the training set without augmentation
        rules_set: Dataset = with_transform(splits.train, build_transforms(cfg.data, card)[1])
        datasets: dict[str, Dataset | None] = {"train": None, "val": None, "test": None}
        extra_files = None
        if cfg.mode == "features":
            cache = FeatureCache()
            progress = show_progress(cfg.train.progress) and dist_info.is_main
            sources = {"train": rules_set, "val": splits.val, "test": splits.test}
            datasets = {k: None if ds is None else FeatureDataset(
                cache.get_or_extract(backbone, ds, split=k, device=device, progress=progress))
                for k, ds in sources.items()}
            rules_set = datasets["train"]

            def frozen_backbone_file() -> dict[str, Any]:  # part of the model: every checkpoint folder holds it
                return {FROZEN_BACKBONE: backbone}

            extra_files = frozen_backbone_file

        preprocess = Preprocess.from_config(cfg.data, card, in_chans)
        model_config = checkpoint_config(KIND, cfg, card, preprocess, package="crl", in_chans=in_chans,
                                         in_features=backbone.num_features)
        return Built(
            model, task, model_config, model_card(cfg, card), cfg.model.backbone,
            train_set=datasets["train"], val_set=datasets["val"], test_set=datasets["test"],
            param_groups=model.parameter_groups(cfg.lr_backbone, cfg.optim.lr, cfg.wd_backbone,
                                                cfg.optim.weight_decay),
            hooks=[ClipLogicalWeights()], extra_files=extra_files, output_task=card.task,
            output_names=list(card.class_names), pretrained_source=getattr(backbone, "pretrained_source", ""),
            state={"rules_set": rules_set})

    def report(self, ctx: FitContext) -> dict[str, Any]:
        """Read the rules out of the best model on the non-augmented training set, write them into the run folder
        and into checkpoints/best, with their compact form (`crl.compact`); the rule set's fidelity to the network and
        the concept metrics on test."""
        cfg, card = ctx.cfg, ctx.splits.card
        model = ctx.trainer.eval_model.cpu().eval()
        loader = DataLoader(ctx.built.state["rules_set"], batch_size=cfg.train.eval_batch_size or cfg.train.batch_size)
        train_concepts = concepts_of(model, loader)
        rules = extract_rules(model, train_concepts, list(card.concept_names), list(card.class_names),
                              cfg.rule_pruning)
        network_train = model.predict_from_concepts(torch.from_numpy(train_concepts)).argmax(1).numpy()
        test = ctx.test_outputs
        rules.compact = compact_rules(
            rules, train_concepts, network_train, None if test is None else test["concepts_pred"],
            None if test is None else test["scores"].argmax(1), cfg.compact.exact_max_concepts,
            cfg.compact.prefix_fidelity)
        rules.save(ctx.run)
        rules.save(ctx.run.checkpoint("best"))
        summary: dict[str, Any] = {"count": len(rules.rules), "mean_length": rules.mean_length,
                                   "pruning": rules.pruning,
                                   "fidelity_train": float((rules.predict(train_concepts) == network_train).mean())}
        summary["compact"] = rules.compact.to_json()
        out: dict[str, Any] = {"mode": cfg.mode}
        if test is not None:
            out["test_concepts"] = concept_metrics(test["concepts_true"], test["concept_scores"],
                                                   list(card.concept_names))
            summary["fidelity_test"] = float((rules.predict(test["concepts_pred"]) == test["scores"].argmax(1)).mean())
            confusion_matrix_figure(test["target"].astype(np.int64), test["scores"].argmax(1), list(card.class_names),
                                    ctx.run.figures_dir / "confusion_test.png")
        out["rules"] = summary
        return out


def train_crl(cfg: CRLConfig, resume_dir: str | Path | None = None) -> Run:
    """Train CRL, select the best epoch on validation, extract the rules, evaluate; return the run folder."""
    return fit_run(CRLRecipe(), cfg, resume_dir)


def model_card(cfg: CRLConfig, card: DatasetCard) -> str:
    """The README.md of every checkpoint folder."""
    return (f"# CRL (Concept Rule Learner) on {card.title}\n\n"
            f"- backbone {cfg.model.backbone} ({cfg.mode}), logical layers {list(cfg.model.logic_layers)}\n"
            f"- {card.num_concepts} concepts: {', '.join(card.concept_names)}\n"
            f"- classes: {', '.join(card.class_names)}; input {cfg.data.image_size} px, "
            f"{cfg.data.channels or card.channels} channels\n"
            f"- dataset licence: {card.license or 'see the dataset card'}\n")

