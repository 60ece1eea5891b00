"""Stage 1, the opaque model: medimg-core's black-box baseline (`BaselineRecipe` through `fit_run`), trained as a
run folder inside the pipeline folder, or any baseline run given; and what the later stages read of it.

    run = train_opaque(cfg, pipeline)                                  # from cfg.data (the command line's way)
    run = train_opaque(cfg, pipeline, {"train": train, "val": val})    # on datasets given in Python
    model, config, bcfg, card = opaque_data(run)                       # the classifier, its checkpoint config...
    datasets = eval_datasets(bcfg.data, card)                          # its splits with its eval transform
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from medimg_core.baseline import (
    BaselineConfig,
    BaselineRecipe,
    ImageClassifier,
    config_for_resume,
    load_baseline,
    train_baseline,
)
from medimg_core.config import ConfigError
from medimg_core.data import DatasetCard, DatasetError
from medimg_core.data.preprocess import DataConfig, Preprocess, build_transforms, load_split
from medimg_core.estimator import with_transform
from medimg_core.experiment import fit_run
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.folders import (
    PIPELINE_FILE,
    STAGE_FILE,
    find_opaque_run,
    new_pipeline,
    pipeline_of,
    record_stage,
)


def baseline_config(cfg: NeuronConceptsConfig, pipeline: Path) -> BaselineConfig:
    """The baseline config of the opaque model: cfg's data, model, train and optim; its run folder "opaque" in
    the pipeline folder."""
    train = copy.deepcopy(cfg.train)
    if train.progress is None and cfg.progress is not None:
        train.progress = cfg.progress
    return BaselineConfig(data=copy.deepcopy(cfg.data), model=copy.deepcopy(cfg.model), train=train,
                          optim=copy.deepcopy(cfg.optim), seed=cfg.seed, device=cfg.device, out=str(pipeline),
                          name="opaque", bootstrap=cfg.bootstrap)


def train_opaque(cfg: NeuronConceptsConfig, pipeline: Path | None = None,
                 datasets: Mapping[str, Dataset | None] | None = None,
                 command: Sequence[str] | None = None) -> Path:
    """Train the opaque model: medimg-core's black-box baseline (per-label BCE for multilabel data, CE
    otherwise), as a run folder inside the pipeline folder. Returns that run folder.

    `datasets` ({"train", "val"}: medimg datasets, used through copies with the baseline's transforms) replaces
    the datasets of cfg.data; `command` is what metrics.json records as the command (default: sys.argv)."""
    if datasets is None and not cfg.data.root:
        raise ConfigError("data.root is required: the dataset folder (--root)")
    cfg = copy.deepcopy(cfg)
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())  # later stages may run from elsewhere
    if pipeline is None:
        pipeline = new_pipeline(cfg, datasets["train"].card.name if datasets else None)
    bcfg = baseline_config(cfg, pipeline)
    if datasets is None:
        run = train_baseline(bcfg)
    else:
        recipe = BaselineRecipe()
        run = fit_run(recipe, bcfg, splits=recipe.splits_of(bcfg, datasets["train"], datasets.get("val")),
                      command=command)
    record_stage(pipeline, "opaque", run)
    return Path(run)


def resume_opaque(folder: str | Path, progress: bool | None = None) -> Path:
    """Finish the interrupted opaque training of `folder` (the opaque run folder, or the pipeline folder
    holding it) with its saved config, and record it in its pipeline; a finished one is kept as it is.
    `progress` (not None) overrides the progress bars. Returns the run folder."""
    folder = Path(folder).resolve()
    if (folder / PIPELINE_FILE).is_file():
        pipeline, run = folder, find_opaque_run(folder)
        if run is None:
            raise FileNotFoundError(f"{folder}: this pipeline folder holds no opaque run to resume; start one "
                                    "with `neuron-concepts train-opaque` or `run`")
    else:
        pipeline, run = pipeline_of(folder), folder
        if not (run / "config.yaml").is_file() or (run / STAGE_FILE).is_file():
            raise FileNotFoundError(f"{folder}: neither a pipeline folder ({PIPELINE_FILE}) nor an opaque run folder "
                                    "(config.yaml of a baseline run)")
    if not (run / "metrics.json").is_file():  # written when the training ends
        bcfg = config_for_resume(run)
        if progress is not None:
            bcfg.train.progress = progress
        train_baseline(bcfg, resume_dir=run)
    if pipeline is not None:
        record_stage(pipeline, "opaque", run)
    return run


def opaque_data(opaque_run: str | Path) -> tuple[ImageClassifier, dict[str, Any], BaselineConfig, DatasetCard]:
    """(model, checkpoint config, the run's resolved BaselineConfig, card) of a baseline run."""
    model, config = load_baseline(opaque_run)
    return model, config, config_for_resume(opaque_run), DatasetCard.from_dict(config["card"])


def opaque_preprocess(config: dict[str, Any], bcfg: BaselineConfig, card: DatasetCard) -> Preprocess:
    """How images reach the opaque model: its checkpoint's stored preprocessing, or (checkpoints written before
    it was stored) the one its data config gives."""
    if "preprocess" in config:
        return Preprocess.from_dict(config["preprocess"], where="the opaque model's config.json preprocess")
    return Preprocess.from_config(bcfg.data, card, config.get("in_chans"))


def eval_datasets(data: DataConfig, card: DatasetCard, transform: bool = True) -> dict[str, Dataset]:
    """Train, val and test of `data` with the eval transform of the opaque model (none when not `transform`)."""
    root = Path(data.root).expanduser()
    if not root.is_absolute() and not root.exists():
        raise DatasetError(f"{data.root}: the opaque run's dataset root is a relative path that does not exist from "
                           f"{Path.cwd()}; run from the folder it was trained in, or pass --data.root")
    eval_tf = build_transforms(data, card)[1] if transform else None
    return {k: load_split(data, k, transform=eval_tf) for k in ("train", "val", "test")}


def with_eval_transform(datasets: Mapping[str, Dataset | None], data: DataConfig,
                        card: DatasetCard) -> dict[str, Dataset]:
    """Copies of the given datasets (None ones left out) with the opaque model's eval transform."""
    eval_tf = build_transforms(data, card)[1]
    return {k: with_transform(ds, eval_tf) for k, ds in datasets.items() if ds is not None}
