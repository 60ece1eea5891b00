"""A trained DAE run: rebuild the model, save and load checkpoint folders, and the run's splits for evaluation.

Below the training recipe (`dae_counterfactual.train`) and the run-folder entry points
(`dae_counterfactual.evaluate.evaluate_run`, `dae_counterfactual.explain.counterfactual_run`), which read runs
through `load_dae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dae_counterfactual.config import DAEConfig
from dae_counterfactual.model import DiffusionAutoencoder
from medimg_core.baseline import DataConfig, build_transforms
from medimg_core.checkpoint import best_checkpoint, find_checkpoint, load_config_json, load_weights
from medimg_core.config import config_from_dict, config_to_dict
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset

KIND = "dae-counterfactual"


def build_dae(cfg: DAEConfig, in_channels: int) -> DiffusionAutoencoder:
    """A fresh DiffusionAutoencoder for `cfg` (architecture, image size, schedule) and 1 or 3 channels."""
    return DiffusionAutoencoder(cfg.model, in_channels, cfg.data.image_size, cfg.diffusion)


def checkpoint_config(cfg: DAEConfig, card: DatasetCard, in_channels: int) -> dict[str, Any]:
    """What a checkpoint's config.json holds to rebuild the model: kind, resolved config, dataset card, shape."""
    return {"kind": KIND, "config": config_to_dict(cfg), "card": card.to_dict(), "in_channels": in_channels,
            "image_size": cfg.data.image_size}


def save_dae(model: DiffusionAutoencoder, cfg: DAEConfig, card: DatasetCard, directory: str | Path) -> Path:
    """Write `model` as a checkpoint folder (model.safetensors + config.json, atomically) that `load_dae` reads.

    Training writes its checkpoints itself (EMA and raw weights, optimizer state); this is for models
    built or changed in Python.
    """
    from medimg_core.checkpoint import save_checkpoint

    if model.image_size != cfg.data.image_size:
        raise ValueError(f"the model takes {model.image_size} px images but cfg.data.image_size is "
                         f"{cfg.data.image_size}")
    return save_checkpoint(directory, model, checkpoint_config(cfg, card, model.in_channels),
                           card=model_card(cfg, card, model.in_channels))


def model_card(cfg: DAEConfig, card: DatasetCard, in_channels: int) -> str:
    """The README.md of a checkpoint folder: architecture, diffusion schedule, dataset licence."""
    m = cfg.model
    return (f"# Diffusion autoencoder on {card.title}\n\n"
            f"- input {cfg.data.image_size} px, {in_channels} channels, [0, 1] mapped to [-1, 1]\n"
            f"- conditional UNet: {m.base_channels} channels x {list(m.channel_mult)}, {m.num_res_blocks} blocks "
            f"per level, attention at {list(m.attention_resolutions)} px; z_sem {m.z_dim}-d from {m.encoder}\n"
            f"- linear betas {cfg.diffusion.beta_start}..{cfg.diffusion.beta_end} over "
            f"{cfg.diffusion.num_train_timesteps} steps, {cfg.diffusion.prediction} prediction; "
            f"EMA {cfg.train.ema_decay}\n"
            f"- dataset licence: {card.license or 'see the dataset card'}\n"
            "- trained with `dae-cf train` (dae-counterfactual; Atad et al., MELBA 2024)\n")


def eval_datasets(cfg: DAEConfig, splits: tuple[str, ...] = ("train", "val", "test"),
                  root: str | None = None) -> dict[str, MedicalImageDataset]:
    """The splits with eval transforms (resize, no augmentation, range [0, 1])."""
    data_cfg = cfg.data if root is None else DataConfig(**{**config_to_dict(cfg.data), "root": root})
    names = {"train": data_cfg.train_split, "val": data_cfg.val_split, "test": data_cfg.test_split}
    out = {}
    for key in splits:
        ds = load_dataset(data_cfg.dataset, data_cfg.root, names.get(key, key), **data_cfg.options)
        ds.transform = build_transforms(data_cfg, ds.card)[1]
        out[key] = ds
    return out


@dataclass
class LoadedRun:
    """A trained DAE with its run folder, config and dataset card."""

    model: DiffusionAutoencoder
    cfg: DAEConfig
    card: DatasetCard
    run_dir: Path | None
    in_channels: int
    image_size: int


def load_dae(path: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best") -> LoadedRun:
    """The EMA model of a run folder (checkpoints/<checkpoint>) or of a checkpoint folder, in eval mode."""
    path = Path(path)
    folder = find_checkpoint(path / "checkpoints" / checkpoint) if (path / "checkpoints").is_dir() else \
        best_checkpoint(path)
    config = load_config_json(folder)
    if config.get("kind") != KIND:
        raise ValueError(f"{folder}: not a dae-counterfactual checkpoint (kind {config.get('kind')!r})")
    cfg = config_from_dict(DAEConfig, config["config"])
    model = DiffusionAutoencoder(cfg.model, config["in_channels"], config["image_size"], cfg.diffusion)
    load_weights(model, folder)
    run_dir = path if (path / "checkpoints").is_dir() else None
    return LoadedRun(model.to(device).eval(), cfg, DatasetCard.from_dict(config["card"]), run_dir,
                     config["in_channels"], config["image_size"])


def require_run_dir(run: LoadedRun, what: str) -> Path:
    if run.run_dir is None:
        raise ValueError(f"{what} needs a run folder (with checkpoints/), not a checkpoint folder")
    return run.run_dir
