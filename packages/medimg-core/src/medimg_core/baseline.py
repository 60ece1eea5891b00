"""The black-box baseline: a plain classifier on any medimg dataset, the reference every interpretable method is
compared with.

    from medimg_core.baseline import BaselineClassifier
    model = BaselineClassifier("baseline-synth-derm", train__epochs=5).fit(train, val)
    model.predict_proba(test)

or, from a config, the command line's `medimg train-baseline`:

    cfg = load_config(BaselineConfig, None, {"data.dataset": "wbcatt", "data.root": "path/to/wbcatt"})
    run = train_baseline(cfg)

Either writes a run folder with config.yaml, metrics.jsonl (per epoch), metrics.json (test metrics with
bootstrap confidence intervals, wall time, peak memory), checkpoints/{best,last}, figures/ and log.txt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.checkpoint import load_weights
from medimg_core.config import FieldError, check_range, load_config
from medimg_core.data import DatasetCard, MedicalImageDataset

# DataConfig and build_transforms live in medimg_core.data.preprocess, parse_pretrained in medimg_core.models,
# peak_memory_mb in medimg_core.runs; importing them from here keeps older code working.
from medimg_core.data.preprocess import DataConfig, Preprocess, build_transforms, load_split
from medimg_core.estimator import Estimator
from medimg_core.experiment import Built, FitContext, RunConfig, Splits, TaskFunctions, fit_run
from medimg_core.models.backbones import create_backbone, parse_pretrained
from medimg_core.pretrained import checkpoint_config, read_checkpoint_config
from medimg_core.runs import Run, peak_memory_mb  # noqa: F401
from medimg_core.training import OptimConfig, TrainConfig

KIND = "medimg-baseline"
CONFIGS = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """The backbone (any timm name or torchvision alias) and how its weights start."""

    backbone: str = "resnet18"
    pretrained: str = "false"
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if not str(self.backbone).strip():
            raise FieldError("backbone", "expected a timm model name or torchvision alias, got an empty string")
        check_range(self, "drop_rate", minimum=0, below=1)


@dataclass
class BaselineConfig(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


class ImageClassifier(nn.Module):
    """Backbone -> dropout -> linear head. `forward(x (B, C, H, W)) -> logits (B, num_outputs)`."""

    def __init__(self, backbone: nn.Module, num_outputs: int, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(backbone.num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class probabilities (B, C) from logits: sigmoid per label (multilabel), else softmax."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def load_splits(cfg: DataConfig) -> dict[str, MedicalImageDataset]:
    """Train, val and test datasets with the baseline's train/eval transforms."""
    first = load_split(cfg, "train")
    train_tf, eval_tf = build_transforms(cfg, first.card)
    first.transform = train_tf
    out = {"train": first}
    for key in ("val", "test"):
        out[key] = load_split(cfg, key, transform=eval_tf)
    return out


def task_functions(card: DatasetCard) -> TaskFunctions:
    """The Trainer's functions for a plain classifier of the card's task."""
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
        return {"scores": scores_from_logits(model(batch["image"]), card.task), "target": batch["target"]}

    def metrics_fn(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        target = outputs["target"] if multilabel else outputs["target"].astype(np.int64)
        return classification_metrics(card.task, target, outputs["scores"], list(card.class_names))

    return TaskFunctions(step_fn, predict_fn, metrics_fn)


def build_model(model_cfg: ModelConfig, card: DatasetCard, in_chans: int, pretrained: bool | str | None = None
                ) -> ImageClassifier:
    """The classifier; `pretrained` overrides the config's weights (False when loading a checkpoint)."""
    weights = parse_pretrained(model_cfg.pretrained) if pretrained is None else pretrained
    backbone = create_backbone(model_cfg.backbone, pretrained=weights, in_chans=in_chans)
    return ImageClassifier(backbone, card.num_classes, model_cfg.drop_rate)


def default_monitor(card: DatasetCard) -> str:
    return "val/auroc_mean" if card.task == "multilabel" else "val/accuracy"


class BaselineRecipe:
    """The baseline's side of `medimg_core.experiment.fit_run`."""

    method = "baseline"

    def load_data(self, cfg: BaselineConfig) -> Splits:
        data = load_splits(cfg.data)
        return Splits(data["train"], data["val"], data["test"], data["train"].card)

    def splits_of(self, cfg: BaselineConfig, train: MedicalImageDataset, val: MedicalImageDataset | None) -> Splits:
        """Datasets given to `fit`, with this config's transforms (copies: the originals stay as they are)."""
        return Splits.with_transforms(cfg.data, train, val)

    def build(self, cfg: BaselineConfig, splits: Splits, device: Any, dist_info: Any) -> Built:
        card = splits.card
        in_chans = cfg.data.channels or card.channels
        model = build_model(cfg.model, card, in_chans)
        if cfg.train.monitor == TrainConfig.monitor and card.task == "multilabel":
            cfg.train.monitor = default_monitor(card)
        preprocess = Preprocess.from_config(cfg.data, card)
        model_config = checkpoint_config(
            KIND, cfg, card, preprocess, backbone=cfg.model.backbone, num_outputs=card.num_classes,
            in_chans=in_chans, drop_rate=cfg.model.drop_rate, image_size=cfg.data.image_size,
            normalize=cfg.data.normalize)
        return Built(model, task_functions(card), model_config, model_card(cfg, card), cfg.model.backbone,
                     output_task=card.task, output_names=list(card.class_names),
                     pretrained_source=model.backbone.pretrained_source)

    def report(self, ctx: FitContext) -> dict[str, Any]:
        from medimg_core.figures import confusion_matrix_figure

        card = ctx.splits.card
        if card.task != "multilabel" and ctx.test_outputs is not None:
            target = ctx.test_outputs["target"].astype(np.int64)
            confusion_matrix_figure(target, ctx.test_outputs["scores"].argmax(axis=1), list(card.class_names),
                                    ctx.run.figures_dir / "confusion_test.png")
        return {}


def train_baseline(cfg: BaselineConfig, resume_dir: str | Path | None = None) -> Run:
    """Train, select the best epoch on validation, evaluate on test with CIs; return the run folder."""
    return fit_run(BaselineRecipe(), cfg, resume_dir)


def model_card(cfg: BaselineConfig, card: DatasetCard) -> str:
    return (
        f"# Baseline classifier: {cfg.model.backbone} on {card.title}\n\n"
        f"- task: {card.task}, classes: {', '.join(card.class_names)}\n"
        f"- input: {cfg.data.channels or card.channels} channels, {cfg.data.image_size} px, "
        f"normalisation {cfg.data.normalize}\n"
        f"- dataset licence: {card.license or 'see the dataset card'}\n"
        f"- trained with medimg-core `medimg train-baseline` (seed {cfg.seed})\n"
    )


def load_baseline(path: str | Path, map_location: str = "cpu") -> tuple[ImageClassifier, dict[str, Any]]:
    """A trained baseline from a run folder (its best checkpoint) or a checkpoint folder, with its config.json."""
    folder, config = read_checkpoint_config(path, KIND)
    backbone = create_backbone(config["backbone"], pretrained=False, in_chans=config["in_chans"])
    model = ImageClassifier(backbone, config["num_outputs"], config.get("drop_rate", 0.0))
    load_weights(model, folder)
    return model.to(map_location).eval(), config


def config_for_resume(run_dir: str | Path) -> BaselineConfig:
    return load_config(BaselineConfig, Path(run_dir) / "config.yaml")


class BaselineClassifier(Estimator):
    """The black-box baseline as an estimator (see the module docstring). It has no explanation of its own:
    post-hoc explainers (Grad-CAM, Integrated Gradients) run on its `model_`."""

    config_class = BaselineConfig
    configs_dir = CONFIGS
    kind = KIND

    def fit(self, train: MedicalImageDataset, val: MedicalImageDataset | None = None) -> BaselineClassifier:
        cfg = self.resolved_config()
        recipe = BaselineRecipe()
        run = fit_run(recipe, cfg, splits=recipe.splits_of(cfg, train, val), command=[f"{type(self).__name__}.fit"])
        return self._fitted_from(run.checkpoint("best"), read_checkpoint_config(run)[1], run)

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        self.model_, _ = load_baseline(folder)
        self.model_.to(self.device_)

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> np.ndarray:
        self.model_.to(self.device_).eval()
        return scores_from_logits(self.model_(x.to(self.device_)), self.card_.task).cpu().numpy()

    def explain(self, x: Any, target: int | str | None = None):
        raise NotImplementedError("the baseline is the black box the methods are compared with: it has no "
                                  "explanation of its own (run a post-hoc explainer on model_)")
