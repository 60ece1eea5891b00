"""The settings of Concepts from Neurons: one section per stage, on top of the run section every config shares.

    cfg = load_config(NeuronConceptsConfig, "configs/synth-derm-cpu.yaml", {"sae.kind": "topk"})

`NeuronConceptsConfig` inherits `medimg_core.experiment.RunConfig` (seed, device, out, name, bootstrap: flat keys
in YAML and on the command line); `data`, `model`, `train` and `optim` configure the opaque model (medimg-core's
baseline), the other sections one stage each. The defaults are the paper's; `configs/` holds its settings per
dataset and the CPU presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medimg_core.baseline import ModelConfig
from medimg_core.config import FieldError, check_range
from medimg_core.data.preprocess import DataConfig
from medimg_core.experiment import RunConfig
from medimg_core.training import OptimConfig, TrainConfig

#: the stages of a pipeline, in order; each reads the folder of the one before
STAGES = ("opaque", "encode", "sae", "name", "cav", "select", "cbm")
#: the dataset splits a pipeline encodes (a fit on given datasets may have no test split)
SPLITS = ("train", "val", "test")


@dataclass
class EncodeConfig:
    batch_size: int = 64


@dataclass
class SAEConfig:
    """The sparse autoencoder; defaults are the published ones (CFN / DN-CBM)."""

    kind: Literal["relu", "topk", "batchtopk"] = "relu"
    expansion: int = 8  # latents = expansion x feature width
    l1: float = 3e-5  # L1 weight (relu)
    k: int = 32  # active latents per input (topk, batchtopk)
    auxk_alpha: float = 1 / 32  # auxiliary dead-latent loss (topk, batchtopk)
    dead_steps: int = 200  # a latent silent this many steps counts as dead for the auxiliary loss
    lr: float = 5e-4
    batch_size: int = 4096
    epochs: int = 200
    standardize: bool = False  # standardise each feature with the train mean/std
    # PCA-whiten the input with the train covariance (ours, not published; exclusive with standardize): every
    # principal direction at unit variance; eps is added to each eigenvalue and directions at or below floor, both
    # relative to the largest eigenvalue, are dropped (see neuron_concepts.sae.whitening)
    whiten: bool = False
    whiten_eps: float = 1e-6
    whiten_floor: float = 1e-10
    pre_bias_init: Literal["zero", "mean"] = "zero"  # published: zero (no geometric median is passed)
    resample_every: int = 0  # steps between dead-latent resamplings; 0 = never (as published, in effect)
    resample_stop: float = 0.5  # no resampling after this fraction of the steps
    resample_max_fraction: float = 1.0  # at most this fraction of the latents per resampling
    eval_every: int = 10  # epochs between validation R^2 / L0 in the history

    def __post_init__(self) -> None:
        if self.whiten and self.standardize:
            raise FieldError("whiten", "exclusive with sae.standardize (whitening already puts every principal "
                             "direction at unit variance); set one of them to false")
        check_range(self, "whiten_eps", minimum=0)
        check_range(self, "whiten_floor", minimum=0)


#: the naming floor of annotation names (naming.min_auroc): chosen on validation, see the package README
DEFAULT_MIN_AUROC = 0.8


@dataclass
class NamingConfig:
    """Where latent names come from (tried in order; see neuron_concepts.naming)."""

    sources: tuple[str, ...] = ("annotations",)
    negations: bool = True  # annotations: allow "no <concept>"
    min_auroc: float = DEFAULT_MIN_AUROC  # annotations: the smallest train AUROC that names a latent
    top_n: int = 16  # top-activating images per latent (figures, reports, backend)
    vocabulary: str | None = None  # a file of clinical terms, one per line
    reports: str | None = None  # a CSV with an id column and a report column
    report_id_column: str = "id"
    report_column: str = "report"
    min_z: float = 1.96  # vocabulary: the smallest enrichment z-score that names a latent
    # "given": min_auroc and min_z as set; "val": each chosen on the validation split from its grid (needs
    # concept annotations on val, for choosing only; see neuron_concepts.naming.floors_from_validation)
    floor_from: Literal["given", "val"] = "given"
    min_auroc_grid: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    min_z_grid: tuple[float, ...] = (1.96, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0)
    # the AUROC at which a name holds on a held-out split (val when choosing floors, test in the naming check);
    # None: min_auroc when floor_from is "given", else the default floor (0.8)
    holds_auroc: float | None = None
    names_file: str | None = None  # JSON {latent: name} or CSV latent,name
    backend: str | None = None  # "mock", "clip:/local/model", "text:/local/model"
    figures: int | None = None  # per-latent top-image figures to write (None: every alive latent)
    thumb_size: int = 64


@dataclass
class CAVConfig:
    top_n: int = 50  # positives: the latent's top-activating train images
    n_negative: int = 200  # negatives: sampled among the images where the latent is silent
    min_positives: int = 5  # fewer active images: no CAV
    C: float = 1.0  # logistic regression's inverse regularisation
    named_only: bool = True  # only latents some source named


@dataclass
class SelectConfig:
    k: int = 800
    discriminative_weight: float = 0.0  # weight of the class-discriminative (ANOVA F) term; 0 as published


@dataclass
class CBMConfig:
    n_nonzero: int = 160
    fit_intercept: bool = True
    features: Literal["reconstruction", "coefficients"] = "reconstruction"
    C: float | None = None  # None: tuned on validation accuracy
    c_search_steps: int = 8
    max_iter: int = 1000


@dataclass
class NeuronConceptsConfig(RunConfig):
    """Defaults are the paper's (DenseNet-121 from ImageNet weights, 224 px, AdamW 1e-4, batch 16, 200 epochs;
    SAE 8x, L1 3e-5, lr 5e-4, batch 4096, 200 epochs; 800 concepts; 160 non-zeros). See configs/.

    `progress` (None: on a terminal) shows the progress bars of every stage; `train.progress`, when set, takes
    precedence for the opaque model's training."""

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=224, rotation=30.0, scale_min=1.0))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="densenet121", pretrained="true"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200, batch_size=16))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=1e-4, weight_decay=0.01,
                                                                   scheduler="none"))
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    naming: NamingConfig = field(default_factory=NamingConfig)
    cav: CAVConfig = field(default_factory=CAVConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    cbm: CBMConfig = field(default_factory=CBMConfig)
    progress: bool | None = None
