"""A trained DAE and what its folders hold: rebuild the model, save and load checkpoint folders, the latent
boundary stored in a checkpoint, the latents of a run, and the run's splits for evaluation.

Below the training recipe (`dae_counterfactual.train`) and the run-folder entry points (`dae_counterfactual.stages`,
`dae_counterfactual.api`), which read runs through `load_dae`.

A checkpoint folder (checkpoints/best of a run, or what `save_dae` / `CounterfactualExplainer.save_pretrained`
write) holds config.json (kind "dae-counterfactual", the resolved config, dataset card, preprocessing, `in_chans`,
`image_size`), model.safetensors (the EMA weights) and, once `fit-boundary` has run, boundary.json (the
LatentBoundary fitted on this checkpoint's latents), so the folder alone rebuilds the counterfactual explainer.

Folders written before that (checkpoint format 1) keep loading: their config.json says `in_channels` and has no
preprocessing (rebuilt from the config), and their boundary sits in the run folder (RUN/boundary.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.config import KIND, DAEConfig
from dae_counterfactual.model import DiffusionAutoencoder
from medimg_core import pretrained
from medimg_core.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_weights,
    read_tensors,
    save_checkpoint,
    write_json,
)
from medimg_core.config import config_from_dict, config_to_dict
from medimg_core.data import DatasetCard, MedicalImageDataset
from medimg_core.data.preprocess import DataConfig, Preprocess, build_transforms, load_split
from medimg_core.runs import RunFolderError, read_json_object

#: the latent boundary's file inside a checkpoint folder (and, in runs written before it moved there, the run)
BOUNDARY_FILE = "boundary.json"


def build_dae(cfg: DAEConfig, in_chans: int) -> DiffusionAutoencoder:
    """A fresh DiffusionAutoencoder for `cfg` (architecture, image size, schedule) and 1 or 3 channels."""
    return DiffusionAutoencoder(cfg.model, in_chans, cfg.data.image_size, cfg.diffusion)


def preprocess_of(cfg: DAEConfig, card: DatasetCard, in_chans: int) -> Preprocess:
    """What the model expects of an image: resized to data.image_size, in_chans channels, [0, 1] (no normalisation)."""
    return Preprocess.from_config(cfg.data, card, in_chans)


def checkpoint_config(cfg: DAEConfig, card: DatasetCard, in_chans: int) -> dict[str, Any]:
    """What a checkpoint's config.json holds: medimg-core's contract (kind, format, versions, resolved config,
    dataset card, preprocessing) plus the model's shape (`in_chans`, timm's name, and `image_size`)."""
    return pretrained.checkpoint_config(KIND, cfg, card, preprocess_of(cfg, card, in_chans),
                                        package="dae-counterfactual", in_chans=in_chans,
                                        image_size=cfg.data.image_size)


def checkpoint_channels(config: dict[str, Any], where: str | Path = "config.json") -> int:
    """The model's input channels of a checkpoint's config.json: `in_chans`, or `in_channels` (format 1)."""
    value = config.get("in_chans", config.get("in_channels"))
    if value is None:
        raise CheckpointError(f"{where}: neither in_chans nor in_channels is given; not a DAE checkpoint")
    return int(value)


def save_dae(model: DiffusionAutoencoder, cfg: DAEConfig, card: DatasetCard, directory: str | Path,
             boundary: LatentBoundary | None = None) -> Path:
    """Write `model` (and its latent boundary, if given) as a checkpoint folder (model.safetensors + config.json
    [+ boundary.json], atomically) that `load_dae` and `CounterfactualExplainer.from_pretrained` read.

    Training writes its checkpoints itself (EMA and raw weights, optimizer state); this is for models
    built or changed in Python.
    """
    if model.image_size != cfg.data.image_size:
        raise ValueError(f"the model takes {model.image_size} px images but cfg.data.image_size is "
                         f"{cfg.data.image_size}")
    extra = None if boundary is None else {BOUNDARY_FILE: boundary.to_dict()}
    return save_checkpoint(directory, model, checkpoint_config(cfg, card, model.in_channels),
                           card=model_card(cfg, card, model.in_channels), extra_files=extra)


def model_card(cfg: DAEConfig, card: DatasetCard, in_chans: int) -> str:
    """The README.md of a checkpoint folder: architecture, diffusion schedule, dataset licence."""
    m = cfg.model
    return (f"# Diffusion autoencoder on {card.title}\n\n"
            f"- input {cfg.data.image_size} px, {in_chans} channels, [0, 1] mapped to [-1, 1]\n"
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
    out = {}
    for key in splits:
        ds = load_split(data_cfg, key)
        ds.transform = build_transforms(data_cfg, ds.card)[1]
        out[key] = ds
    return out


# ------------------------------------------------------------------------------------ loading


@dataclass
class LoadedRun:
    """A trained DAE with its run folder, config and dataset card (and the checkpoint folder it came from)."""

    model: DiffusionAutoencoder
    cfg: DAEConfig
    card: DatasetCard
    run_dir: Path | None
    in_channels: int
    image_size: int
    checkpoint: Path | None = None


def model_from_checkpoint(folder: Path, config: dict[str, Any]) -> tuple[DiffusionAutoencoder, DAEConfig]:
    """The DAE of a checkpoint folder and its config.json (either format), with its weights, on the CPU."""
    cfg = config_from_dict(DAEConfig, config["config"])
    in_chans = checkpoint_channels(config, folder / "config.json")
    image_size = int(config.get("image_size", cfg.data.image_size))
    model = DiffusionAutoencoder(cfg.model, in_chans, image_size, cfg.diffusion)
    load_weights(model, folder)
    return model, cfg


def load_dae(path: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best") -> LoadedRun:
    """The EMA model of a run folder (checkpoints/<checkpoint>) or of a checkpoint folder, in eval mode."""
    path = Path(path)
    run_dir = path if (path / "checkpoints").is_dir() else None
    folder = find_checkpoint(path / "checkpoints" / checkpoint) if run_dir is not None else path
    folder, config = pretrained.read_checkpoint_config(folder, KIND)
    model, cfg = model_from_checkpoint(folder, config)
    return LoadedRun(model.to(device).eval(), cfg, DatasetCard.from_dict(config["card"]), run_dir,
                     model.in_channels, model.image_size, folder)


def require_run_dir(run: LoadedRun, what: str) -> Path:
    if run.run_dir is None:
        raise RunFolderError(f"{what} needs a run folder (with checkpoints/), not a checkpoint folder")
    return run.run_dir


# ------------------------------------------------------------------------------------ the boundary


def save_boundary(boundary: LatentBoundary, folder: str | Path) -> Path:
    """Add `boundary` to the checkpoint folder it was fitted for, as boundary.json (one atomic write)."""
    folder = find_checkpoint(folder)
    return boundary.save(folder / BOUNDARY_FILE)


def boundary_path(folder: str | Path, run_dir: str | Path | None = None) -> Path | None:
    """Where the boundary of a checkpoint folder is: in the folder, or (give `run_dir` only for checkpoints of
    format 1, written before boundaries moved into checkpoints) RUN/boundary.json; None when it has none."""
    inside = Path(folder) / BOUNDARY_FILE
    if inside.is_file():
        return inside
    if run_dir is not None and (Path(run_dir) / BOUNDARY_FILE).is_file():
        return Path(run_dir) / BOUNDARY_FILE
    return None


# ------------------------------------------------------------------------------------ latents


@torch.no_grad()
def encode_dataset(model: DiffusionAutoencoder, dataset: MedicalImageDataset, batch_size: int = 64,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """z_sem of every image: {"z": (N, D) float32, "targets": (N,), "ids": [N]}."""
    zs, targets, ids = [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc=f"encoding {dataset.split}", unit="batch",
                      disable=not progress, leave=False):
        zs.append(model.encode(batch["image"].to(device)).cpu())
        targets.append(batch["target"])
        ids += list(batch["id"])
    return {"z": torch.cat(zs).numpy(), "targets": torch.cat(targets).numpy(), "ids": ids}


def latents_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / "latents" / f"{split}.safetensors"


def save_latents(run_dir: str | Path, split: str, latents: dict[str, Any], dataset: str) -> Path:
    """Write latents (`encode_dataset` output) as RUN/latents/<split>.safetensors (z, targets) + .json (ids)."""
    path = latents_path(run_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"z": torch.as_tensor(latents["z"]).contiguous(),
               "targets": torch.as_tensor(np.asarray(latents["targets"])).contiguous()}, str(tmp))
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), {"split": split, "dataset": dataset, "n": len(latents["ids"]),
                                           "ids": list(latents["ids"])})
    return path


def load_latents(run_dir: str | Path, split: str) -> dict[str, Any]:
    """The latents `save_latents` wrote: {"z": (N, D), "targets": (N,), "ids": [N]}."""
    path = latents_path(run_dir, split)
    if not path.is_file():
        raise RunFolderError(f"{path}: no latents for split {split!r}; run `dae-cf encode {run_dir}` first")
    tensors = read_tensors(path, "the encoded latents")
    meta = read_json_object(path.with_suffix(".json"), "the ids of the encoded latents")
    return {"z": tensors["z"].numpy(), "targets": tensors["targets"].numpy(), "ids": meta["ids"]}
