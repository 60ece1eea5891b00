"""CIPL's configuration: the model, the loss weights, the schedule, the pair views and the run
(`cipl train --config`). The bottom of the package: it imports nothing of CIPL's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from medimg_core.data.preprocess import DataConfig
from medimg_core.experiment import RunConfig
from medimg_core.training import OptimConfig, TrainConfig

if TYPE_CHECKING:
    from cipl.model import LabelSpace


@dataclass
class CIPLModelConfig:
    backbone: str = "densenet121"
    pretrained: str = "true"
    #: output stride of CNN backbones (16 or 8 dilate the last stages: a finer prototype grid; 4, timm ResNets
    #: only, dilates layer2 on as well: see medimg_core.models.dilate_resnet_to_stride4)
    output_stride: int | None = None
    #: prototypes on the output of this backbone stage (an index into timm's feature_info, e.g. 3 for
    #: resnet18's layer3); null: the last stage (forward_features), as published
    feature_stage: int | None = None
    prototypes_per_class: int = 50
    prototype_dim: int = 256
    #: the 1x1 reduction after the backbone (the paper's "top layer"); null: none
    reduce_dim: int | None = 256
    add_on_layers: int = 2
    #: similarity exp(-d / scale); null: the prototype dimension (the paper: 256)
    similarity_scale: float | None = None
    #: multi-label data: a dataset class used as the reference (e.g. "Normal" on ODIR); null: an added
    #: "No Finding" class, positive for images without any finding
    reference_class: str | None = None

    def __post_init__(self) -> None:
        if self.output_stride not in (None, 4, 8, 16, 32):
            raise ValueError(f"model.output_stride must be 4 (timm ResNets), 8, 16, 32 or null, got "
                             f"{self.output_stride!r}")


@dataclass
class CIPLLossConfig:
    ce: float = 1.0
    cross: float = 0.5
    map_align: float = 0.5
    pred_align: float = 10.0
    cluster: float = 0.02
    separation: float = 0.02
    separation_margin: float = 2.0
    temperature: float = 1.0


@dataclass
class ScheduleConfig:
    """Phases (epoch numbers count from 1: `push_epochs: [36, 41]` pushes after the 36th and 41st epoch)."""

    warm_epochs: int = 15
    push_epochs: tuple[int, ...] = (36, 41)
    last_layer_epochs: int = 6
    lr_backbone: float = 1e-4
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_last_layer: float = 1e-4
    lr_milestones: tuple[int, ...] = (10, 20, 25, 30, 35)
    lr_gamma: float = 0.5
    ema_momentum: float = 0.999


@dataclass
class ViewConfig:
    """Augmentation of the pairing phase (the paper's values at 512 px as defaults; see cipl.data).

    Common (once per image): RandomResizedCrop(data.image_size, scale (data.scale_min, 1), crop_ratio),
    flips (data.hflip, data.vflip), RandomAffine(data.rotation degrees, translate, scale affine_scale, shear).
    Specific (twice, student and teacher views): ColorJitter(jitter, hue), GaussianBlur(blur_sigma) with
    probability blur_p, RandomResizedCrop(scale crop_scale, ratio crop_ratio_specific).
    """

    crop_ratio: tuple[float, float] = (0.5, 2.0)
    translate: float = 0.3
    affine_scale: tuple[float, float] = (0.7, 1.3)
    shear: float = 40.0
    jitter: float = 0.2
    hue: float = 0.01
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    crop_scale: tuple[float, float] = (0.95, 1.0)
    crop_ratio_specific: tuple[float, float] = (0.95, 1.05)


@dataclass
class CIPLConfig(RunConfig):
    """Defaults are the paper's NIH ChestX-ray14 settings (DenseNet-121, 512 px, seed 42); see configs/ for
    presets. The run keys (seed, device, out, name, bootstrap) come from medimg-core's RunConfig."""

    seed: int = 42
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="chestxray14", image_size=512, vflip=True,
                                                                rotation=45.0, scale_min=0.5))
    model: CIPLModelConfig = field(default_factory=CIPLModelConfig)
    loss: CIPLLossConfig = field(default_factory=CIPLLossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=41, batch_size=24, eval_batch_size=64,
                                                                   monitor="auto"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                                   scheduler="none"))
    #: localisation metrics (datasets with masks): a map counts its pixels at or above this fraction of
    #: its min-max range as the predicted region
    iou_threshold: float = 0.5
    #: the headline class map of the localisation metrics (all three are reported): weighted (the class's
    #: prototype maps summed with their last-layer weights; chosen on validation, see the README), top (the
    #: most activated prototype's map) or max (over the class's prototypes)
    localisation_map: Literal["top", "max", "weighted"] = "weighted"


def default_monitor(labels: LabelSpace) -> str:
    """The validation metric checkpoints are selected on: only pushed states report it (see cipl.train)."""
    return "val/pushed_auroc_mean" if labels.multilabel else "val/pushed_auroc"
