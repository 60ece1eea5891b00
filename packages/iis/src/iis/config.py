"""The settings of IIS, in one place: visual elements, concept libraries, text concepts, the head sweep and the
run (`IISConfig`, what `iis score` and `InterpretabilityScore` read; shipped presets in configs/).

Defaults are the paper's (Shen et al., ICLR 2025) and the official code's where it has one; each section says
which. The run section (seed, device, out, name, bootstrap) is medimg-core's `RunConfig`, kept flat in YAML and
on the command line (`seed: 3`, `--seed 3`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from medimg_core.data.preprocess import DataConfig
from medimg_core.experiment import RunConfig

__all__ = ["DEFAULT_RATIOS", "ElementConfig", "IISConfig", "LibraryConfig", "LibraryKind", "SweepConfig",
           "TextConfig"]

LibraryKind = Literal["prototype", "cluster", "end2end", "text"]

#: the paper's sparsity grid
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)


@dataclass
class ElementConfig:
    """How visual elements are cut from training images (defaults: the paper's extractors)."""

    images_per_class: int = 10
    patch_grid: int = 4
    slic_segments: tuple[int, ...] = (10, 20, 30)
    slic_compactness: float = 10.0
    slic_sigma: float = 1.0
    segments_per_setting: int = 5
    min_area: float = 0.001
    max_overlap: float = 0.5
    fill_value: int = 117

    def __post_init__(self) -> None:
        if self.images_per_class < 1:
            raise ValueError(f"elements.images_per_class must be >= 1, got {self.images_per_class}")
        if self.patch_grid < 0:
            raise ValueError(f"elements.patch_grid must be >= 0 (0: no patches), got {self.patch_grid}")
        if self.patch_grid == 0 and not self.slic_segments:
            raise ValueError("elements: neither patches (patch_grid 0) nor segments (slic_segments empty)")
        if any(n < 2 for n in self.slic_segments):
            raise ValueError(f"elements.slic_segments must be >= 2 each, got {list(self.slic_segments)}")
        if not 0 <= self.fill_value <= 255:
            raise ValueError(f"elements.fill_value must be a grey level in [0, 255], got {self.fill_value}")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class LibraryConfig:
    """Which concept library and how many concepts (the paper: M = 200)."""

    kind: LibraryKind = "prototype"
    num_concepts: int = 200
    max_cluster_elements: int = 20000
    gumbel_tau: float = 0.1
    members_per_concept: int = 3

    def __post_init__(self) -> None:
        if self.num_concepts < 1:
            raise ValueError(f"library.num_concepts must be >= 1, got {self.num_concepts}")


@dataclass
class TextConfig:
    """The text library: the phrase list, the teacher and the Label-free CBM settings (its defaults)."""

    concept_list: str | None = None
    backend: str = "annotations"
    clip_model: str = "ViT-B-16"
    clip_weights: str | None = None
    activation_cutoff: float = 0.25
    interpretability_cutoff: float = 0.45
    proj_lr: float = 1e-3
    proj_steps: int = 1000
    proj_batch_size: int = 50000
    proj_check_every: int = 50
    #: ours, not Label-free CBM's: a phrase whose training teacher scores correlate with an earlier phrase's at
    #: |Pearson r| >= this is dropped as a duplicate (a negation pair such as "large cell" / "small cell" scored
    #: from one annotation has r = -1, and its two projection rows would be w and -w); null: keep every phrase
    dedupe_correlation: float | None = 0.98
    #: with several backbones, score every text library on the phrases that all of them kept (same concepts,
    #: same size), so that their IIS compare like for like; false: each its own library
    common_phrases: bool = True

    def __post_init__(self) -> None:
        if self.dedupe_correlation is not None and not 0.0 < self.dedupe_correlation <= 1.0:
            raise ValueError(f"text.dedupe_correlation must be in (0, 1] or null, got {self.dedupe_correlation}")


@dataclass
class SweepConfig:
    """The grid and the optimiser of the heads (defaults: the paper's grid and the official optimiser)."""

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    epochs: int = 30
    batch_size: int = 1024
    lr_gamma: float = 0.99
    weight_decay: float = 0.0
    #: the probe sees features standardised with training statistics (same function class as on raw
    #: features, better conditioned); false: raw features, as the official code
    probe_standardize: bool = True
    #: torch threads while the heads train on the CPU (restored after): the heads are small matrix products,
    #: and one thread was 12x faster than two on a shared 2-core machine; null keeps torch's setting
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if not self.ratios:
            raise ValueError("sweep.ratios is empty")
        for s in self.ratios:
            if not 0.0 <= float(s) < 1.0:
                raise ValueError(f"sweep.ratios: {s} is outside [0, 1)")
        if len(set(self.ratios)) != len(self.ratios):
            raise ValueError(f"sweep.ratios lists a ratio twice: {list(self.ratios)}")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"sweep.lrs must be positive learning rates, got {list(self.lrs)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("sweep.epochs and sweep.batch_size must be >= 1")


@dataclass
class IISConfig(RunConfig):
    """An `iis score` run (and an `InterpretabilityScore`). Defaults are the paper's settings at 224 px; see
    configs/ for CPU presets. `backbones` lists `NAME[:weights]` specs (`medimg_core.models.specs`)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=224))
    backbones: tuple[str, ...] = ()
    elements: ElementConfig = field(default_factory=ElementConfig)
    library: LibraryConfig = field(default_factory=LibraryConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    feature_batch_size: int = 64
    progress: bool | None = None
