"""A trained CIPL: rebuild its networks, load a checkpoint with its push index, and feed it images as training did.

Below the training recipe (`cipl.train`), the pure evaluation and explanation (`cipl.evaluate`, `cipl.explain`)
and the run-folder entry points (`cipl.api`), which all read checkpoints through `load_cipl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cipl.config import CIPLConfig
from cipl.model import CIPL, CIPLWithTeacher, LabelSpace, StageBackbone
from cipl.push import PushIndex, find_push_dir
from medimg_core.checkpoint import best_checkpoint, find_checkpoint, load_weights
from medimg_core.config import config_from_dict
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.preprocess import load_split as load_data_split
from medimg_core.data.transforms import TransformConfig, eval_transform, normalization
from medimg_core.models import create_backbone, parse_pretrained
from medimg_core.pretrained import read_checkpoint_config

#: the checkpoint kind of CIPL (config.json "kind")
KIND = "cipl"


def output_task(labels: LabelSpace) -> str:
    """The metrics task of CIPL's outputs: multilabel (findings against the reference), binary or multiclass."""
    return "multilabel" if labels.multilabel else ("binary" if labels.num_classes == 2 else "multiclass")


def build_model(cfg: CIPLConfig, labels: LabelSpace, in_chans: int, pretrained: bool | str | None = None
                ) -> CIPLWithTeacher:
    """Student and teacher CIPL networks on fresh backbones (the teacher's weights are copied later)."""
    kwargs = {"output_stride": cfg.model.output_stride} if cfg.model.output_stride else {}
    weights = parse_pretrained(cfg.model.pretrained) if pretrained is None else pretrained

    def net(weights) -> CIPL:
        backbone = create_backbone(cfg.model.backbone, pretrained=weights, in_chans=in_chans, **kwargs)
        if cfg.model.feature_stage is not None:
            backbone = StageBackbone(backbone, cfg.model.feature_stage)
        return CIPL(backbone, labels, cfg.model.prototypes_per_class, cfg.model.prototype_dim,
                    cfg.model.reduce_dim, cfg.model.add_on_layers, cfg.model.similarity_scale)

    student = net(weights)
    teacher = net(False)
    student.last_layer.weight.requires_grad_(False)
    return CIPLWithTeacher(student, teacher, cfg.schedule.ema_momentum)


def eval_transform_for(cfg: CIPLConfig, channels: int):
    """uint8 (C, H, W) image -> the model's input (channels, image_size, image_size) (resize, float, normalise)."""
    return eval_transform(TransformConfig(size=cfg.data.image_size, channels=channels, normalize=cfg.data.normalize))


def display_fn(cfg: CIPLConfig, channels: int):
    """Model input (C, H, W) -> (H, W, 3) float in [0, 1] (undoes the normalisation)."""
    stats = normalization(channels, cfg.data.normalize)

    def display(x: torch.Tensor) -> np.ndarray:
        arr = x.detach().float().cpu()
        if stats is not None:
            mean = torch.tensor(stats[0]).view(-1, 1, 1)
            std = torch.tensor(stats[1]).view(-1, 1, 1)
            arr = arr * std + mean
        arr = arr.clamp(0, 1).permute(1, 2, 0).numpy()
        return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr

    return display


def load_split(cfg: CIPLConfig, split: str, channels: int | None = None) -> MedicalImageDataset:
    """One split of the configured dataset with CIPL's evaluation transforms (resize, normalise)."""
    ds = load_data_split(cfg.data, split)
    ds.transform = eval_transform_for(cfg, channels or cfg.data.channels or ds.card.channels)
    return ds


def checkpoint_path(path: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint folder of a run folder (checkpoints/<checkpoint>: best, last, pushed) or, for any other
    folder, the folder itself (a checkpoint folder)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return best_checkpoint(path) if checkpoint == "best" else find_checkpoint(path / "checkpoints" / checkpoint)
    return find_checkpoint(path)


def load_cipl(path: str | Path, checkpoint: str = "best") -> tuple[CIPL, dict[str, Any]]:
    """A trained CIPL (the student, in eval mode, on the CPU) from a run folder (its checkpoints/<checkpoint>) or a
    checkpoint folder, with its checkpoint config plus "cfg" (CIPLConfig), "card_obj", "labels_obj", "run_dir",
    "checkpoint" (the folder) and "push_index" (a PushIndex, or None when its prototypes are no push's)."""
    path = Path(path)
    folder = checkpoint_path(path, checkpoint)
    if (path / "checkpoints").is_dir():
        run_dir = path
    else:
        run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    folder, config = read_checkpoint_config(folder, KIND)
    cfg = config_from_dict(CIPLConfig, config["config"])
    labels = LabelSpace.from_dict(config["labels"])
    module = build_model(cfg, labels, config["in_chans"], pretrained=False)
    load_weights(module, folder)
    student = module.student.eval()
    return student, {**config, "cfg": cfg, "card_obj": DatasetCard.from_dict(config["card"]), "labels_obj": labels,
                     "run_dir": run_dir, "checkpoint": folder,
                     "push_index": push_index_of(folder, config, run_dir, student)}


def push_index_of(folder: Path, config: dict[str, Any], run_dir: Path | None, model: CIPL) -> PushIndex | None:
    """Which training patch each prototype of a checkpoint is: the checkpoint's own push index; for checkpoints
    written before push indexes were stored (no "format" in config.json), the push folder under the run's
    prototypes/ whose prototype vectors equal the model's (None when none does)."""
    index = PushIndex.read(folder, run_dir)
    if index is not None or "format" in config or run_dir is None:
        return index
    push_dir = find_push_dir(run_dir, model)
    return PushIndex.from_folder(push_dir) if push_dir is not None else None


def model_card(cfg: CIPLConfig, card: DatasetCard, labels: LabelSpace) -> str:
    """The README.md of CIPL's checkpoints."""
    ref = f"; reference class {labels.class_names[-1]!r}" if labels.multilabel else ""
    return (f"# CIPL (Cross- and Intra-image Prototypical Learning) on {card.title}\n\n"
            f"- backbone {cfg.model.backbone}, {cfg.model.prototypes_per_class} prototypes x "
            f"{cfg.model.prototype_dim} channels per class, {labels.num_classes} prototype classes{ref}\n"
            f"- outputs: {', '.join(labels.output_names)} "
            f"({'two-way softmax against the reference' if labels.multilabel else 'softmax'})\n"
            f"- input {cfg.data.image_size} px, {cfg.data.channels or card.channels} channels\n"
            f"- dataset licence: {card.license or 'see the dataset card'}\n"
            "- push_index.json (when present): the training image and feature cell of every prototype\n")


def pretrained_source_of(backbone: Any) -> str:
    """Where the backbone's weights came from ("none", "imagenet-lite0:<folder>", ...), through a StageBackbone."""
    return str(getattr(backbone, "pretrained_source", None) or getattr(getattr(backbone, "backbone", None),
                                                                        "pretrained_source", ""))
