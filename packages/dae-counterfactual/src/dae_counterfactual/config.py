"""The diffusion autoencoder's configuration (data, architecture, diffusion, training, latent boundary) and the
checks every entry point runs on it before any work."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from dae_counterfactual.model import DAEModelConfig
from dae_counterfactual.sampling import DiffusionConfig
from medimg_core.config import ConfigError
from medimg_core.data.preprocess import DataConfig
from medimg_core.experiment import RunConfig
from medimg_core.training import OptimConfig, TrainConfig

log = logging.getLogger("medimg")

#: the checkpoint kind of a trained DAE (config.json "kind"), and the name of the method in metrics.json
KIND = "dae-counterfactual"


@dataclass
class BoundaryConfig:
    """The latent classifier and its calibration (see LatentBoundary)."""

    classifier: Literal["svm", "logistic"] = "svm"
    C: float = 1.0
    standardize: bool = True
    positive_min_grade: int = 1  # binary pathology = grade >= 1, i.e. grade > 0 (the paper's DR > 0)
    class_weight: str | None = None


@dataclass
class CounterfactualConfig:
    """Which edit of z_sem makes the counterfactuals (`explain`, `dae-cf evaluate`; see LatentBoundary).

    "grade": `edit_to_grade`, the smallest move along the hyperplane normal whose calibrated grade is the
    target (ours). "step": `edit_fixed_step`, the official notebooks' fixed steps u + step * w / (||w|| sqrt(D))
    (`steps`, the notebooks' RetinaMNIST sizes by default); `evaluate` renders them signed, -steps and +steps.
    The default is "step" along "mean-difference" (ours): on the validation splits of both benchmarks it flips
    the image classifier most often (synth-grade 0.993, against 0.654 for the notebooks' steps along the normal
    and 0.266 for "grade"; RetinaMNIST 0.634 against 0.000 and 0.000; tools/bench/dae_synth_grade.py and
    dae_retinamnist.py, the package README). `along: normal` is the notebooks' edit.
    """

    edit: Literal["grade", "step"] = "step"
    steps: list[float] = field(default_factory=lambda: [100.0, 300.0, 500.0, 700.0, 900.0])
    #: "step" only: along the hyperplane normal (the notebooks') or the class-mean difference of the training
    #: latents (ours; see LatentBoundary.edit_direction)
    along: Literal["normal", "mean-difference"] = "mean-difference"


@dataclass
class DAEConfig(RunConfig):
    """Defaults are DiffAE's 64 px template (ffhq64_autoenc, as the paper's 64 px runs use it); see configs/.

    The run keys (seed, device, out, name, bootstrap) come from medimg-core's RunConfig.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=64, normalize=None, hflip=True,
                                                                scale_min=1.0))
    model: DAEModelConfig = field(default_factory=DAEModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=32, precision="fp16", ema_decay=0.9999, monitor="epoch", monitor_mode="max",
        eval_every=5, checkpoint_every=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adam", lr=1e-4, weight_decay=0.0,
                                                                   scheduler="none", grad_clip=1.0))
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    #: images shown in figures/reconstructions.png after training (0: none)
    recon_images: int = 8


def check_config(cfg: DAEConfig) -> None:
    """Refuse settings the method cannot use, before any work."""
    if cfg.data.normalize not in (None, "none"):
        raise ConfigError(f"data.normalize is {cfg.data.normalize!r}; the diffusion autoencoder maps the images' "
                          "[0, 1] range to [-1, 1] itself: set data.normalize to null")
    edit = cfg.counterfactual
    if edit.edit not in ("grade", "step"):
        raise ConfigError(f"counterfactual.edit is {edit.edit!r}; expected 'grade' or 'step'")
    if edit.along not in ("normal", "mean-difference"):
        raise ConfigError(f"counterfactual.along is {edit.along!r}; expected 'normal' or 'mean-difference'")
    if edit.along != "normal" and edit.edit != "step":
        raise ConfigError("counterfactual.along: mean-difference needs counterfactual.edit: step (the calibrated "
                          "grade of edit 'grade' is defined along the normal)")
    if not edit.steps or any(not float(v) > 0 for v in edit.steps):
        raise ConfigError(f"counterfactual.steps is {edit.steps!r}; expected one or more positive step sizes "
                          "(evaluate renders each with both signs)")
    if cfg.data.rotation or cfg.data.scale_min < 1.0:
        log.warning("data.rotation / data.scale_min < 1 augment the autoencoder's training images; DiffAE uses "
                    "horizontal flips only")


def resolve_precision(cfg: DAEConfig, device: torch.device) -> None:
    """Mixed precision on CUDA only: fp16/bf16 configs fall back to fp32 elsewhere (with a log line)."""
    if cfg.train.precision != "fp32" and device.type != "cuda":
        log.info("precision %s requested on %s: mixed precision runs on CUDA only, using fp32",
                 cfg.train.precision, device)
        cfg.train.precision = "fp32"
