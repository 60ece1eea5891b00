"""How CRL learns: the published loss and optimisation on medimg-core's training loop.

loss = CE(class scores / temperature, y) + concept_weight * BCE(concept logits, annotated concepts)
       + l2_weight * (||W_logic||^2 + ||W_final||^2)

Two AdamW parameter groups (backbone + concept head at lr_backbone, weight decay 1e-2; logical layers,
final layer and temperature at optim.lr, no weight decay), cosine schedule, logical weights clipped to
[0, 1] after every optimizer step. Modes: "end2end" (the backbone trains with everything else) and
"features" (a frozen backbone's pooled features are cached once by medimg-core and CRL trains on them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from crl.model import CRL
from crl.rules import RuleSet, concepts_of, extract_rules
from medimg_core.baseline import DataConfig, build_transforms, parse_pretrained, peak_memory_mb
from medimg_core.checkpoint import best_checkpoint, load_config_json, load_weights
from medimg_core.config import config_from_dict, config_to_dict
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset
from medimg_core.distributed import cleanup_distributed, init_distributed, seed_everything, select_device
from medimg_core.training import Hook, OptimConfig, TrainConfig, Trainer


@dataclass
class CRLModelConfig:
    backbone: str = "resnet34"
    pretrained: str = "true"
    logic_layers: tuple[int, ...] = (256, 256)
    use_skip: bool = True
    temperature: float = 1.0


@dataclass
class CRLLossConfig:
    concept_weight: float = 1.0
    l2_weight: float = 5e-6


@dataclass
class CRLConfig:
    """Defaults are the paper's (ResNet-34, 224 px, 300 epochs, lr 5e-4 / 5e-6); see configs/ for CPU presets."""

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=224, vflip=True, rotation=15.0))
    model: CRLModelConfig = field(default_factory=CRLModelConfig)
    loss: CRLLossConfig = field(default_factory=CRLLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=300, batch_size=64))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=5e-4, weight_decay=0.0,
                                                                   scheduler="cosine"))
    lr_backbone: float = 5e-6
    wd_backbone: float = 1e-2
    mode: Literal["end2end", "features"] = "end2end"
    rule_pruning: Literal["support", "logical"] = "support"
    seed: int = 3
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    bootstrap: int = 1000


#: in features mode, the frozen backbone's weights, saved in the run folder
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
    return batch["features"] if "features" in batch else batch["image"]


def crl_loss(out: dict, batch: dict, model: CRL, loss_cfg: CRLLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The published loss; concept terms only over annotated entries (NaN = unannotated)."""
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


def task_functions(card: DatasetCard, loss_cfg: CRLLossConfig):
    from medimg_core.metrics import classification_metrics, concept_metrics

    if card.task == "multilabel":
        raise ValueError(f"{card.name}: CRL classifies one label per image; multi-label tasks are not supported")
    if card.num_concepts == 0:
        raise ValueError(f"{card.name}: CRL needs concept annotations and this dataset has none")

    def step_fn(model: nn.Module, batch: dict):
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

    return step_fn, predict_fn, metrics_fn


def build_model(cfg: CRLConfig, card: DatasetCard, in_chans: int) -> tuple[CRL, Any]:
    """The CRL model and its backbone (the backbone sits inside the model in end2end mode only)."""
    from medimg_core.models import create_backbone

    backbone = create_backbone(cfg.model.backbone, pretrained=parse_pretrained(cfg.model.pretrained),
                               in_chans=in_chans)
    model = CRL(card.num_concepts, card.num_classes, backbone.num_features,
                backbone=backbone if cfg.mode == "end2end" else None,
                logic_layers=cfg.model.logic_layers, use_skip=cfg.model.use_skip,
                temperature=cfg.model.temperature)
    return model, backbone


def load_data(cfg: CRLConfig) -> tuple[dict[str, MedicalImageDataset], dict[str, MedicalImageDataset]]:
    """(datasets with train augmentation for training, the same splits with eval transforms)."""
    first = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **cfg.data.options)
    train_tf, eval_tf = build_transforms(cfg.data, first.card)
    splits = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    plain = {k: load_dataset(cfg.data.dataset, cfg.data.root, s, transform=eval_tf, **cfg.data.options)
             for k, s in splits.items()}
    first.transform = train_tf
    return {"train": first, "val": plain["val"], "test": plain["test"]}, plain


def train_crl(cfg: CRLConfig, resume_dir: str | Path | None = None) -> Path:
    """Train CRL, select the best epoch on validation, extract the rules, evaluate; return the run folder."""
    from medimg_core.figures import confusion_matrix_figure, training_curves
    from medimg_core.metrics import concept_metrics, metrics_with_ci
    from medimg_core.runs import prepare_run

    start = time.perf_counter()
    dist_info = init_distributed(select_device(cfg.device))
    device = select_device(cfg.device, dist_info.local_rank)
    seed_everything(cfg.seed, cfg.train.deterministic)
    data, plain = load_data(cfg)
    card = data["train"].card
    step_fn, predict_fn, metrics_fn = task_functions(card, cfg.loss)  # refuses unsuitable data before any work
    in_chans = cfg.data.channels or card.channels
    run_dir = prepare_run(cfg, "crl", card.name, cfg.model.backbone, dist_info, resume_dir)
    model, backbone = build_model(cfg, card, in_chans)
    if cfg.mode == "features":
        from medimg_core.features import FeatureCache

        if dist_info.is_main:  # the frozen backbone is part of the model: keep its exact weights with the run
            from safetensors.torch import save_file

            from medimg_core.checkpoint import state_dict_to_cpu

            save_file(state_dict_to_cpu(backbone), str(run_dir / FROZEN_BACKBONE))
        cache = FeatureCache()
        feats = {k: FeatureDataset(cache.get_or_extract(backbone, plain[k], split=k, device=device))
                 for k in ("train", "val", "test")}
        train_set, val_set, test_set, rules_set = feats["train"], feats["val"], feats["test"], feats["train"]
    else:
        train_set, val_set, test_set, rules_set = data["train"], data["val"], data["test"], plain["train"]
    model_config = {"kind": "crl", "config": config_to_dict(cfg), "card": card.to_dict(), "in_chans": in_chans,
                    "in_features": backbone.num_features}
    trainer = Trainer(
        model, train_set, val_set, step_fn, predict_fn, metrics_fn, train=cfg.train, optim=cfg.optim,
        run_dir=run_dir, model_config=model_config, device=device, seed=cfg.seed, dist_info=dist_info,
        param_groups=model.parameter_groups(cfg.lr_backbone, cfg.optim.lr, cfg.wd_backbone, cfg.optim.weight_decay),
        hooks=[ClipLogicalWeights()], model_card=_model_card(cfg, card),
    )
    result = trainer.fit(resume=resume_dir is not None)
    load_weights(trainer.eval_model, trainer.checkpoint_dir / "best")
    test_out = trainer.predict(test_set)
    if dist_info.is_main:
        model = trainer.eval_model.cpu().eval()
        loader = DataLoader(rules_set, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size)
        train_concepts = concepts_of(model, loader)
        rules = extract_rules(model, train_concepts, list(card.concept_names), list(card.class_names),
                              cfg.rule_pruning)
        rules.save(run_dir)
        network_train = model.predict_from_concepts(torch.from_numpy(train_concepts)).argmax(1).numpy()
        target = test_out["target"].astype(np.int64)
        test = metrics_with_ci(card.task, target, test_out["scores"], list(card.class_names),
                               n_boot=cfg.bootstrap, seed=cfg.seed)
        test_concepts = concept_metrics(test_out["concepts_true"], test_out["concept_scores"],
                                        list(card.concept_names))
        rule_pred = rules.predict(test_out["concepts_pred"])
        final = {
            "method": "crl", "dataset": card.name, "backbone": cfg.model.backbone, "mode": cfg.mode,
            "pretrained_source": getattr(backbone, "pretrained_source", ""), "test": test, "test_concepts": test_concepts,
            "rules": {"count": len(rules.rules), "mean_length": rules.mean_length, "pruning": rules.pruning,
                      "fidelity_train": float((rules.predict(train_concepts) == network_train).mean()),
                      "fidelity_test": float((rule_pred == test_out["scores"].argmax(1)).mean())},
            "best_epoch": result.best_epoch, "monitor": cfg.train.monitor, "best_val": result.best_metric,
            "epochs_run": len(result.history), "wall_time_s": time.perf_counter() - start,
            "peak_memory_mb": peak_memory_mb(), "device": str(device), "world_size": dist_info.world_size,
            "sizes": {k: len(v) for k, v in data.items()},
        }
        trainer.write_final_metrics(final)
        training_curves(result.history, run_dir / "figures" / "training_curves.png")
        confusion_matrix_figure(target, test_out["scores"].argmax(1), list(card.class_names),
                                run_dir / "figures" / "confusion_test.png")
    cleanup_distributed()
    return run_dir


def _model_card(cfg: CRLConfig, card: DatasetCard) -> str:
    return (f"# CRL (Concept Rule Learner) on {card.title}\n\n"
            f"- backbone {cfg.model.backbone} ({cfg.mode}), logical layers {list(cfg.model.logic_layers)}\n"
            f"- {card.num_concepts} concepts: {', '.join(card.concept_names)}\n"
            f"- classes: {', '.join(card.class_names)}; input {cfg.data.image_size} px, "
            f"{cfg.data.channels or card.channels} channels\n"
            f"- dataset licence: {card.license or 'see the dataset card'}\n")


def load_crl(run_dir: str | Path) -> tuple[CRL, dict[str, Any]]:
    """A trained CRL (best checkpoint, with its backbone) and its checkpoint config."""
    from medimg_core.models import create_backbone

    run_dir = Path(run_dir)
    folder = best_checkpoint(run_dir)
    config = load_config_json(folder)
    if config.get("kind") != "crl":
        raise ValueError(f"{folder}: not a CRL checkpoint (kind {config.get('kind')!r})")
    cfg = config_from_dict(CRLConfig, config["config"])
    card = DatasetCard.from_dict(config["card"])
    backbone = create_backbone(cfg.model.backbone, pretrained=False, in_chans=config["in_chans"])
    model = CRL(card.num_concepts, card.num_classes, backbone.num_features,
                backbone=backbone if cfg.mode == "end2end" else None, logic_layers=cfg.model.logic_layers,
                use_skip=cfg.model.use_skip)
    load_weights(model, folder)
    if cfg.mode == "features":  # the frozen backbone was saved next to the checkpoints
        from safetensors.torch import load_file

        frozen_path = run_dir / FROZEN_BACKBONE
        if not frozen_path.is_file():
            raise FileNotFoundError(f"{frozen_path}: the frozen backbone of this features-mode run is missing")
        backbone.load_state_dict(load_file(str(frozen_path)))
        model.backbone = backbone
    return model.eval(), {**config, "cfg": cfg, "card_obj": card}


def evaluate_run(run_dir: str | Path, dataset: str, root: str, split: str = "test",
                 options: dict | None = None, device: str = "cpu", n_boot: int = 1000, seed: int = 0,
                 progress: bool = False) -> dict[str, Any]:
    """Evaluate a trained CRL on another dataset's split (e.g. DDI as out-of-distribution test); `seed`
    draws the bootstrap resamples of the intervals."""
    from medimg_core.data.transforms import TransformConfig, eval_transform
    from medimg_core.metrics import concept_metrics, metrics_with_ci

    model, config = load_crl(run_dir)
    cfg, card = config["cfg"], config["card_obj"]
    tf = eval_transform(TransformConfig(size=cfg.data.image_size, channels=config["in_chans"],
                                        normalize=cfg.data.normalize))
    ds = load_dataset(dataset, root, split, transform=tf, **(options or {}))
    if list(ds.card.class_names) != list(card.class_names):
        raise ValueError(f"{dataset} classes {list(ds.card.class_names)} differ from the model's {list(card.class_names)}")
    if ds.card.num_concepts not in (0, card.num_concepts):
        raise ValueError(f"{dataset} has {ds.card.num_concepts} concepts; the model predicts {card.num_concepts}")
    model = model.to(device)
    scores, concepts, truth, targets = [], [], [], []
    with torch.no_grad():
        for batch in tqdm(DataLoader(ds, batch_size=64), desc=f"evaluating {dataset}/{split}", unit="batch",
                          disable=not progress, leave=False):
            out = model(batch["image"].to(device))
            scores.append(torch.softmax(out["scaled_logits"], 1).cpu().numpy())
            concepts.append(torch.sigmoid(out["concept_logits"]).cpu().numpy())
            truth.append(batch["concepts"].numpy())
            targets.append(batch["target"].numpy())
    scores, targets = np.concatenate(scores), np.concatenate(targets)
    result: dict[str, Any] = {"dataset": dataset, "split": split, "n": len(ds),
                              "test": metrics_with_ci(card.task, targets, scores, list(card.class_names), n_boot=n_boot,
                                                      seed=seed)}
    truth_arr = np.concatenate(truth)
    if truth_arr.shape[1] == card.num_concepts and not np.isnan(truth_arr).all():
        result["concepts"] = concept_metrics(truth_arr, np.concatenate(concepts), list(card.concept_names))
    return result


def rules_of(run_dir: str | Path) -> RuleSet:
    from crl.rules import load_rules

    return load_rules(Path(run_dir) / "rules.json")
