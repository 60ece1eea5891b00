"""The black-box baseline: a plain classifier on any medimg dataset, the reference every
interpretable method is compared with.

    cfg = load_config(BaselineConfig, None, ["--data.dataset", "wbcatt", "--data.root", "path/to/wbcatt"])
    run_dir = train_baseline(cfg)

writes a run folder with config.yaml, metrics.jsonl (per epoch), metrics.json (test metrics with
bootstrap confidence intervals, wall time, peak memory), checkpoints/{best,last}, figures/ and log.txt.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.checkpoint import best_checkpoint, load_config_json, load_weights
from medimg_core.config import config_to_dict, load_config
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset
from medimg_core.data.transforms import TransformConfig, eval_transform, train_transform
from medimg_core.distributed import (
    cleanup_distributed,
    init_distributed,
    seed_everything,
    select_device,
)
from medimg_core.training import OptimConfig, TrainConfig, Trainer


@dataclass
class DataConfig:
    """Which dataset, where, and how images are prepared for the model."""

    dataset: str = "csv"
    root: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    channels: int | None = None
    normalize: str | None = "imagenet"
    hflip: bool = True
    vflip: bool = False
    rotation: float = 0.0
    scale_min: float = 0.8
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


@dataclass
class ModelConfig:
    """The backbone (any timm name or torchvision alias) and how its weights start."""

    backbone: str = "resnet18"
    pretrained: str = "false"
    drop_rate: float = 0.0


@dataclass
class BaselineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    bootstrap: int = 1000


def parse_pretrained(value: str | bool) -> bool | str:
    """'false'/'true' -> bool; anything else is a path to a local weights file."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("false", "no", "0", "none", ""):
        return False
    if low in ("true", "yes", "1", "hub"):
        return True
    return str(value)


class ImageClassifier(nn.Module):
    """Backbone -> dropout -> linear head. `forward(x (B, C, H, W)) -> logits (B, num_outputs)`."""

    def __init__(self, backbone: nn.Module, num_outputs: int, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(backbone.num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def build_transforms(cfg: DataConfig, card: DatasetCard) -> tuple[Any, Any]:
    tc = TransformConfig(size=cfg.image_size, channels=cfg.channels or card.channels, normalize=cfg.normalize,
                         hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, scale=(cfg.scale_min, 1.0))
    return train_transform(tc), eval_transform(tc)


def load_splits(cfg: DataConfig) -> dict[str, MedicalImageDataset]:
    """Train, val and test datasets with the baseline's train/eval transforms."""
    first = load_dataset(cfg.dataset, cfg.root, cfg.train_split, **cfg.options)
    train_tf, eval_tf = build_transforms(cfg, first.card)
    first.transform = train_tf
    out = {"train": first}
    for key, split in (("val", cfg.val_split), ("test", cfg.test_split)):
        out[key] = load_dataset(cfg.dataset, cfg.root, split, transform=eval_tf, **cfg.options)
    return out


def task_functions(card: DatasetCard):
    """(step_fn, predict_fn, metrics_fn) of a plain classifier for the card's task."""
    from medimg_core.metrics import classification_metrics

    multilabel = card.task == "multilabel"

    def step_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"])
        if multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["target"].float())
        else:
            loss = nn.functional.cross_entropy(logits, batch["target"])
        return loss, {}

    def predict_fn(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).float()
        scores = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
        return {"scores": scores, "target": batch["target"]}

    def metrics_fn(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        target = outputs["target"] if multilabel else outputs["target"].astype(np.int64)
        return classification_metrics(card.task, target, outputs["scores"], list(card.class_names))

    return step_fn, predict_fn, metrics_fn


def build_model(model_cfg: ModelConfig, card: DatasetCard, in_chans: int) -> ImageClassifier:
    from medimg_core.models import create_backbone

    backbone = create_backbone(model_cfg.backbone, pretrained=parse_pretrained(model_cfg.pretrained),
                               in_chans=in_chans)
    return ImageClassifier(backbone, card.num_classes, model_cfg.drop_rate)


def default_monitor(card: DatasetCard) -> str:
    return "val/auroc_mean" if card.task == "multilabel" else "val/accuracy"


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def train_baseline(cfg: BaselineConfig, resume_dir: str | Path | None = None) -> Path:
    """Train, select the best epoch on validation, evaluate on test with CIs; return the run folder."""
    from medimg_core.figures import confusion_matrix_figure, training_curves
    from medimg_core.metrics import metrics_with_ci
    from medimg_core.runs import prepare_run

    start = time.perf_counter()
    device = select_device(cfg.device)
    dist_info = init_distributed(device)
    device = select_device(cfg.device, dist_info.local_rank)
    seed_everything(cfg.seed, cfg.train.deterministic)
    data = load_splits(cfg.data)
    card = data["train"].card
    run_dir = prepare_run(cfg, "baseline", card.name, cfg.model.backbone, dist_info, resume_dir)
    in_chans = cfg.data.channels or card.channels
    model = build_model(cfg.model, card, in_chans)
    if cfg.train.monitor == TrainConfig.monitor and card.task == "multilabel":
        cfg.train.monitor = default_monitor(card)
    step_fn, predict_fn, metrics_fn = task_functions(card)
    model_config = {
        "kind": "medimg-baseline", "backbone": cfg.model.backbone, "num_outputs": card.num_classes,
        "in_chans": in_chans, "drop_rate": cfg.model.drop_rate, "image_size": cfg.data.image_size,
        "normalize": cfg.data.normalize, "card": card.to_dict(), "config": config_to_dict(cfg),
    }
    trainer = Trainer(
        model, data["train"], data["val"], step_fn, predict_fn, metrics_fn,
        train=cfg.train, optim=cfg.optim, run_dir=run_dir, model_config=model_config, device=device,
        seed=cfg.seed, dist_info=dist_info, model_card=_model_card(cfg, card),
    )
    result = trainer.fit(resume=resume_dir is not None)
    load_weights(trainer.eval_model, trainer.checkpoint_dir / "best")
    test_outputs = trainer.predict(data["test"])
    if dist_info.is_main:
        target = test_outputs["target"] if card.task == "multilabel" else test_outputs["target"].astype(np.int64)
        test = metrics_with_ci(card.task, target, test_outputs["scores"], list(card.class_names),
                               n_boot=cfg.bootstrap, seed=cfg.seed)
        final = {
            "method": "baseline", "dataset": card.name, "backbone": cfg.model.backbone,
            "pretrained_source": model.backbone.pretrained_source, "test": test, "best_epoch": result.best_epoch, "monitor": cfg.train.monitor,
            "best_val": result.best_metric, "epochs_run": len(result.history),
            "stopped_early": result.stopped_early, "wall_time_s": time.perf_counter() - start,
            "peak_memory_mb": peak_memory_mb(), "device": str(device), "world_size": dist_info.world_size,
            "sizes": {k: len(v) for k, v in data.items()}, "command": " ".join(sys.argv),
        }
        trainer.write_final_metrics(final)
        training_curves(result.history, run_dir / "figures" / "training_curves.png")
        if card.task != "multilabel":
            pred = test_outputs["scores"].argmax(axis=1)
            confusion_matrix_figure(target, pred, list(card.class_names), run_dir / "figures" / "confusion_test.png")
    cleanup_distributed()
    return run_dir


def _model_card(cfg: BaselineConfig, card: DatasetCard) -> str:
    return (
        f"# Baseline classifier: {cfg.model.backbone} on {card.title}\n\n"
        f"- task: {card.task}, classes: {', '.join(card.class_names)}\n"
        f"- input: {cfg.data.channels or card.channels} channels, {cfg.data.image_size} px, "
        f"normalisation {cfg.data.normalize}\n"
        f"- dataset licence: {card.license or 'see the dataset card'}\n"
        f"- trained with medimg-core `medimg train-baseline` (seed {cfg.seed})\n"
    )


def load_baseline(path: str | Path, map_location: str = "cpu") -> tuple[ImageClassifier, dict[str, Any]]:
    """A trained baseline from a run folder (its best checkpoint) or a checkpoint folder."""
    folder = best_checkpoint(path)
    config = load_config_json(folder)
    if config.get("kind") != "medimg-baseline":
        raise ValueError(f"{folder}: not a baseline checkpoint (kind {config.get('kind')!r})")
    from medimg_core.models import create_backbone

    backbone = create_backbone(config["backbone"], pretrained=False, in_chans=config["in_chans"])
    model = ImageClassifier(backbone, config["num_outputs"], config.get("drop_rate", 0.0))
    load_weights(model, folder)
    return model.to(map_location).eval(), config


def config_for_resume(run_dir: str | Path) -> BaselineConfig:
    return load_config(BaselineConfig, Path(run_dir) / "config.yaml")
