"""A trained CIPL run: rebuild its networks, load a checkpoint, and feed it images as training did.

Below the training recipe (`cipl.train`) and the run-folder entry points (`cipl.evaluate.evaluate_run`,
`cipl.explain.reason_image`, `cipl.train.push_run`), which all read runs through `load_cipl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cipl.config import CIPLConfig
from cipl.model import CIPL, CIPLWithTeacher, LabelSpace, StageBackbone
from medimg_core.baseline import parse_pretrained
from medimg_core.checkpoint import best_checkpoint, find_checkpoint, load_config_json, load_weights
from medimg_core.config import config_from_dict
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset


def output_task(labels: LabelSpace) -> str:
    return "multilabel" if labels.multilabel else ("binary" if labels.num_classes == 2 else "multiclass")


def build_model(cfg: CIPLConfig, labels: LabelSpace, in_chans: int, pretrained: bool | str | None = None
                ) -> CIPLWithTeacher:
    """Student and teacher CIPL networks on fresh backbones (the teacher's weights are copied later)."""
    from medimg_core.models import create_backbone

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
    from medimg_core.data.transforms import TransformConfig, eval_transform

    return eval_transform(TransformConfig(size=cfg.data.image_size, channels=channels, normalize=cfg.data.normalize))


def display_fn(cfg: CIPLConfig, channels: int):
    """Model input (C, H, W) -> (H, W, 3) float in [0, 1] (undoes the normalisation)."""
    from medimg_core.data.transforms import normalization

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
    ds = load_dataset(cfg.data.dataset, cfg.data.root, split, **cfg.data.options)
    ds.transform = eval_transform_for(cfg, channels or cfg.data.channels or ds.card.channels)
    return ds


def load_cipl(path: str | Path, checkpoint: str = "best") -> tuple[CIPL, dict[str, Any]]:
    """A trained CIPL (the student) from a run folder (its checkpoints/<checkpoint>) or a checkpoint folder,
    with its checkpoint config plus "cfg" (CIPLConfig), "card_obj", "labels_obj" and "run_dir"."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        folder = find_checkpoint(path / "checkpoints" / checkpoint) if checkpoint != "best" else best_checkpoint(path)
        run_dir = path
    else:
        folder = find_checkpoint(path)
        run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    config = load_config_json(folder)
    if config.get("kind") != "cipl":
        raise ValueError(f"{folder}: not a CIPL checkpoint (kind {config.get('kind')!r})")
    cfg = config_from_dict(CIPLConfig, config["config"])
    labels = LabelSpace.from_dict(config["labels"])
    module = build_model(cfg, labels, config["in_chans"], pretrained=False)
    load_weights(module, folder)
    student = module.student.eval()
    return student, {**config, "cfg": cfg, "card_obj": DatasetCard.from_dict(config["card"]), "labels_obj": labels,
                     "run_dir": run_dir, "checkpoint": folder}
