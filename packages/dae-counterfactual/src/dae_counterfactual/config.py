"""The diffusion autoencoder's configuration: data, architecture, diffusion, training, latent boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dae_counterfactual.model import DAEModelConfig
from dae_counterfactual.sampling import DiffusionConfig
from medimg_core.baseline import DataConfig
from medimg_core.training import OptimConfig, TrainConfig


@dataclass
class BoundaryConfig:
    """The latent classifier and its calibration (see LatentBoundary)."""

    classifier: Literal["svm", "logistic"] = "svm"
    C: float = 1.0
    standardize: bool = True
    positive_min_grade: int = 1  # binary pathology = grade >= 1, i.e. grade > 0 (the paper's DR > 0)
    class_weight: str | None = None


@dataclass
class DAEConfig:
    """Defaults are DiffAE's 64 px template (ffhq64_autoenc, as the paper's 64 px runs use it); see configs/."""

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
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    bootstrap: int = 1000
    #: images shown in figures/reconstructions.png after training (0: none)
    recon_images: int = 8
