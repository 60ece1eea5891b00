"""The Concepts-from-Neurons pipeline, one function per stage; each stage reads the previous stage's folder.

    opaque  medimg-core's black-box baseline (train_baseline): the model to dissect
    encode  pooled penultimate features (the linear head's input) of train/val/test, via FeatureCache
    sae     a sparse autoencoder on the train features (plain torch on a tensor)
    name    a name for every alive latent, with its source; top-activating image figures
    cav     one concept activation vector per named latent (unit normal of a linear probe)
    select  greedy facility location over the CAVs (squared cosine similarity)
    cbm     OMP decomposition over the selected CAVs + logistic regression (C tuned on validation)

A pipeline folder `<out>/<date>-neuron-concepts-<dataset>-<backbone>-seed<S>/` holds config.yaml,
pipeline.json, metrics.json (summary) and one sub-folder per stage (`encode/`, `sae/`, ...; a rerun of a
stage writes `sae-2/` and so on, never over an earlier one). The opaque stage is a medimg baseline run
folder inside it (or any baseline run given with --opaque-run). Every stage folder holds stage.json
(its parent), config.yaml, metrics.json, log.txt and figures/.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medimg_core.baseline import BaselineConfig, DataConfig, ModelConfig, peak_memory_mb
from medimg_core.checkpoint import write_json
from medimg_core.config import config_to_dict, load_config, save_config
from medimg_core.training import OptimConfig, TrainConfig
from neuron_concepts.model import (
    ConceptBottleneck,
    SparseAutoencoder,
    encode_all,
    facility_location,
    facility_value,
    resample_dead_latents,
    sae_metrics,
)
from neuron_concepts.naming import LatentName

log = logging.getLogger("medimg")

STAGES = ("opaque", "encode", "sae", "name", "cav", "select", "cbm")
SPLITS = ("train", "val", "test")
STAGE_FILE = "stage.json"
PIPELINE_FILE = "pipeline.json"


# --------------------------------------------------------------------------- configuration


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
    pre_bias_init: Literal["zero", "mean"] = "zero"  # published: zero (no geometric median is passed)
    resample_every: int = 0  # steps between dead-latent resamplings; 0 = never (as published, in effect)
    resample_stop: float = 0.5  # no resampling after this fraction of the steps
    resample_max_fraction: float = 1.0  # at most this fraction of the latents per resampling
    eval_every: int = 10  # epochs between validation R^2 / L0 in the history


@dataclass
class NamingConfig:
    """Where latent names come from (tried in order; see neuron_concepts.naming)."""

    sources: tuple[str, ...] = ("annotations",)
    negations: bool = True  # annotations: allow "no <concept>"
    top_n: int = 16  # top-activating images per latent (figures, reports, backend)
    vocabulary: str | None = None  # a file of clinical terms, one per line
    reports: str | None = None  # a CSV with an id column and a report column
    report_id_column: str = "id"
    report_column: str = "report"
    min_z: float = 1.96  # vocabulary: the smallest enrichment z-score that names a latent
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
class NeuronConceptsConfig:
    """Defaults are the paper's (DenseNet-121 from ImageNet weights, 224 px, AdamW 1e-4, batch 16, 200 epochs;
    SAE 8x, L1 3e-5, lr 5e-4, batch 4096, 200 epochs; 800 concepts; 160 non-zeros). See configs/."""

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
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    bootstrap: int = 1000
    progress: bool | None = None


# --------------------------------------------------------------------------- run folders


def new_pipeline(cfg: NeuronConceptsConfig, dataset: str | None = None, backbone: str | None = None) -> Path:
    """A new pipeline folder under cfg.out with the resolved config."""
    from medimg_core.runs import create_run_dir

    dataset = dataset or (Path(cfg.data.root).name if cfg.data.dataset == "csv" and cfg.data.root else cfg.data.dataset)
    name = cfg.name or f"neuron-concepts-{dataset}-{backbone or cfg.model.backbone}"
    path = create_run_dir(cfg.out, f"{name}-seed{cfg.seed}")
    save_config(cfg, path / "config.yaml")
    write_json(path / PIPELINE_FILE, {"method": "neuron-concepts", "stages": {}, "created": _now()})
    return path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pipeline_of(folder: Path) -> Path | None:
    """The pipeline folder a stage or opaque run folder sits in (None when it sits in none)."""
    folder = Path(folder).resolve()
    stage = folder / STAGE_FILE
    if stage.is_file():
        return folder.parent
    return folder.parent if (folder.parent / PIPELINE_FILE).is_file() else None


def new_stage_dir(pipeline: Path, stage: str) -> Path:
    """pipeline/<stage>, or <stage>-2, -3 ... when it exists: a rerun never overwrites an earlier stage."""
    for i in range(1, 1000):
        path = pipeline / (stage if i == 1 else f"{stage}-{i}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        (path / "figures").mkdir()
        return path
    raise RuntimeError(f"{pipeline}: cannot create a new {stage} folder")


def _start_stage(stage: str, parent: Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    from medimg_core.runs import setup_logging

    pipeline = pipeline or pipeline_of(parent)
    if pipeline is None:
        pipeline = new_pipeline(cfg)
    folder = new_stage_dir(pipeline, stage)
    save_config(cfg, folder / "config.yaml")
    write_json(folder / STAGE_FILE, {"stage": stage, "parent": os.path.relpath(Path(parent).resolve(), folder),
                                     "created": _now()})
    setup_logging(folder)
    _record(pipeline, stage, folder)
    return folder


def _record(pipeline: Path, stage: str, folder: Path) -> None:
    path = pipeline / PIPELINE_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"method": "neuron-concepts", "stages": {}}
    data.setdefault("stages", {})[stage] = os.path.relpath(folder.resolve(), pipeline.resolve())
    write_json(path, data)


def stage_chain(folder: str | Path) -> dict[str, Path]:
    """{stage: folder} of `folder` and its ancestors, following stage.json parents down to the opaque run."""
    folder = Path(folder).resolve()
    chain: dict[str, Path] = {}
    seen = 0
    while True:
        meta_path = folder / STAGE_FILE
        if not meta_path.is_file():
            if not (folder / "checkpoints").is_dir():
                raise FileNotFoundError(f"{folder}: neither a neuron-concepts stage folder ({STAGE_FILE}) nor a "
                                        "baseline run folder (checkpoints/)")
            chain["opaque"] = folder
            return chain
        meta = json.loads(meta_path.read_text())
        chain.setdefault(meta["stage"], folder)
        folder = (folder / meta["parent"]).resolve()
        seen += 1
        if seen > 50:
            raise RuntimeError(f"{meta_path}: the stage parents form a loop")


def require_stage(folder: str | Path, stage: str) -> Path:
    """Check `folder` is a `stage` folder; return it resolved."""
    folder = Path(folder)
    meta_path = folder / STAGE_FILE
    if stage == "opaque":
        if not (folder / "checkpoints").is_dir():
            raise FileNotFoundError(f"{folder}: not a trained baseline run folder (no checkpoints/); train one with "
                                    "`neuron-concepts train-opaque` or `medimg train-baseline`")
        return folder.resolve()
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a neuron-concepts stage folder (no {STAGE_FILE}); expected the "
                                f"output of the `{stage}` stage")
    found = json.loads(meta_path.read_text())["stage"]
    if found != stage:
        raise ValueError(f"{folder}: this is a '{found}' stage folder; this command reads a '{stage}' folder")
    return folder.resolve()


def config_for_stage(prev: str | Path, config_path: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> NeuronConceptsConfig:
    """The config of a stage run on `prev`: a given file, else prev's config (stage folder), else its
    pipeline's, else the defaults; then the overrides."""
    prev = Path(prev)
    base: Path | None = None
    if config_path is not None:
        base = Path(config_path)
    elif (prev / STAGE_FILE).is_file():
        base = prev / "config.yaml"
    else:
        pipeline = pipeline_of(prev)
        if pipeline is not None and (pipeline / "config.yaml").is_file():
            base = pipeline / "config.yaml"
    return load_config(NeuronConceptsConfig, base, overrides or {})


def _device(cfg: NeuronConceptsConfig) -> torch.device:
    from medimg_core.distributed import select_device

    return select_device(cfg.device)


def _progress(cfg: NeuronConceptsConfig) -> bool:
    from medimg_core.training import show_progress

    return show_progress(cfg.progress)


def _finish(folder: Path, metrics: dict[str, Any], start: float) -> dict[str, Any]:
    metrics = {**metrics, "wall_time_s": time.perf_counter() - start, "peak_memory_mb": peak_memory_mb()}
    write_json(folder / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- 1. opaque model


def baseline_config(cfg: NeuronConceptsConfig, pipeline: Path) -> BaselineConfig:
    train = copy.deepcopy(cfg.train)
    if train.progress is None and cfg.progress is not None:
        train.progress = cfg.progress
    return BaselineConfig(data=copy.deepcopy(cfg.data), model=copy.deepcopy(cfg.model), train=train,
                          optim=copy.deepcopy(cfg.optim), seed=cfg.seed, device=cfg.device, out=str(pipeline),
                          name="opaque", bootstrap=cfg.bootstrap)


def train_opaque(cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Train the opaque model: medimg-core's black-box baseline (per-label BCE for multilabel data, CE
    otherwise), as a run folder inside the pipeline folder. Returns that run folder."""
    from medimg_core.baseline import train_baseline

    if not cfg.data.root:
        from medimg_core.config import ConfigError

        raise ConfigError("data.root is required: the dataset folder (--root)")
    cfg = copy.deepcopy(cfg)
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())  # later stages may run from elsewhere
    pipeline = pipeline or new_pipeline(cfg)
    run = train_baseline(baseline_config(cfg, pipeline))
    _record(pipeline, "opaque", run)
    return run


def find_opaque_run(pipeline: Path) -> Path | None:
    """The opaque run of a pipeline folder: the one pipeline.json records, else the newest baseline run
    folder inside it (a training is recorded only when it ends). None when there is none."""
    path = pipeline / PIPELINE_FILE
    recorded = json.loads(path.read_text()).get("stages", {}).get("opaque") if path.is_file() else None
    if recorded:
        return (pipeline / recorded).resolve()
    runs = sorted(p for p in pipeline.iterdir() if p.is_dir() and "-opaque-" in p.name
                  and (p / "config.yaml").is_file() and not (p / STAGE_FILE).is_file())
    return runs[-1].resolve() if runs else None


def resume_opaque(folder: str | Path, progress: bool | None = None) -> Path:
    """Finish the interrupted opaque training of `folder` (the opaque run folder, or the pipeline folder
    holding it) with its saved config, and record it in its pipeline; a finished one is kept as it is.
    `progress` (not None) overrides the progress bars. Returns the run folder."""
    from medimg_core.baseline import config_for_resume, train_baseline

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
        _record(pipeline, "opaque", run)
    return run


def _finished_child(pipeline: Path, stage: str, parent: Path) -> Path | None:
    """The finished folder (metrics.json written) that pipeline.json records for `stage`, if its parent is `parent`."""
    stages = json.loads((pipeline / PIPELINE_FILE).read_text()).get("stages", {})
    if not stages.get(stage):
        return None
    folder = (pipeline / stages[stage]).resolve()
    meta = folder / STAGE_FILE
    if not (folder / "metrics.json").is_file() or not meta.is_file():
        return None
    return folder if (folder / json.loads(meta.read_text())["parent"]).resolve() == Path(parent).resolve() else None


# --------------------------------------------------------------------------- 2. encode


def _opaque_data(opaque_run: Path) -> tuple[Any, dict[str, Any], BaselineConfig, Any]:
    """(model, checkpoint config, the run's resolved BaselineConfig, card) of a baseline run."""
    from medimg_core.baseline import config_for_resume, load_baseline
    from medimg_core.data import DatasetCard

    model, config = load_baseline(opaque_run)
    return model, config, config_for_resume(opaque_run), DatasetCard.from_dict(config["card"])


def _eval_datasets(data: DataConfig, card: Any, transform: bool = True) -> dict[str, Any]:
    from medimg_core.baseline import build_transforms
    from medimg_core.data import load_dataset

    root = Path(data.root).expanduser()
    if not root.is_absolute() and not root.exists():
        from medimg_core.data import DatasetError

        raise DatasetError(f"{data.root}: the opaque run's dataset root is a relative path that does not exist from "
                           f"{Path.cwd()}; run from the folder it was trained in, or pass --data.root")
    eval_tf = build_transforms(data, card)[1] if transform else None
    names = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    return {k: load_dataset(data.dataset, data.root, s, transform=eval_tf, **data.options) for k, s in names.items()}


def _scores(task: str, logits: np.ndarray) -> np.ndarray:
    if task == "multilabel":
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _targets(task: str, targets: Any) -> np.ndarray:
    t = np.asarray(targets)
    return t.astype(np.float32) if task == "multilabel" else t.astype(np.int64)


def encode(opaque_run: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Pooled penultimate features (exactly the opaque model's head input) of train/val/test through the
    medimg-core feature cache; checks head(features) == the model's logits; the opaque model's metrics."""
    from safetensors.torch import save_file

    from medimg_core.distributed import seed_everything
    from medimg_core.features import FeatureCache
    from medimg_core.metrics import metrics_with_ci

    start = time.perf_counter()
    opaque_run = require_stage(opaque_run, "opaque")
    seed_everything(cfg.seed)
    device = _device(cfg)
    model, mconfig, bcfg, card = _opaque_data(opaque_run)
    data = bcfg.data
    if not Path(data.root).expanduser().exists() and cfg.data.root and Path(cfg.data.root).expanduser().exists():
        data.root = str(Path(cfg.data.root).expanduser().resolve())  # the data moved: --data.root says where
    cfg = copy.deepcopy(cfg)  # later stages read the data and model of the opaque run, whatever cfg said
    cfg.data, cfg.model = data, bcfg.model
    datasets = _eval_datasets(data, card)  # before any folder is made: a missing dataset fails cleanly
    if pipeline is None and pipeline_of(opaque_run) is None:
        pipeline = new_pipeline(cfg, card.name, mconfig["backbone"])
    folder = _start_stage("encode", opaque_run, cfg, pipeline)
    cache = FeatureCache()
    splits: dict[str, Any] = {}
    feats: dict[str, Any] = {}
    for split, ds in datasets.items():
        out = cache.get_or_extract(model.backbone, ds, split=split, device=device, batch_size=cfg.encode.batch_size,
                                   progress=_progress(cfg))
        tensors_path, _ = cache.paths(card.name, out["key"])
        feats[split] = out
        splits[split] = {"key": out["key"], "path": str(tensors_path), "n": len(out["ids"]), "cached": out["cached"],
                         "dataset_split": getattr(ds, "split", split)}
    head = model.head
    # the features are exactly the head's input: the model's logits on a few test images equal head(features)
    model = model.to(device).eval()
    n_check = min(16, len(datasets["test"]))
    with torch.no_grad():
        images = torch.stack([datasets["test"][i]["image"] for i in range(n_check)]).to(device)
        direct = model(images).float().cpu()
        via = head(feats["test"]["features"][:n_check].to(device)).float().cpu()
    head_diff = float((direct - via).abs().max()) if n_check else 0.0
    if head_diff > 1e-3 * max(1.0, float(direct.abs().max())):
        raise RuntimeError(f"encode: head(features) differs from the model's logits by {head_diff:.3g}; the cached "
                           "features are not the head's input")
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
              str(folder / "head.safetensors"))
    write_json(folder / "features.json", {
        "opaque_run": os.path.relpath(opaque_run, folder), "data": config_to_dict(data), "card": card.to_dict(),
        "num_features": int(head.in_features), "in_chans": mconfig["in_chans"], "backbone": mconfig["backbone"],
        "splits": splits,
    })
    opaque: dict[str, Any] = {}
    for split in ("val", "test"):
        with torch.no_grad():
            logits = head(feats[split]["features"].to(device)).float().cpu().numpy()
        opaque[split] = metrics_with_ci(card.task, _targets(card.task, feats[split]["targets"]),
                                        _scores(card.task, logits), list(card.class_names), n_boot=cfg.bootstrap,
                                        seed=cfg.seed)
    baseline_metrics = opaque_run / "metrics.json"
    metrics = {"stage": "encode", "dataset": card.name, "task": card.task, "backbone": mconfig["backbone"],
               "feature_dim": int(head.in_features), "sizes": {k: v["n"] for k, v in splits.items()},
               "cached": {k: v["cached"] for k, v in splits.items()}, "head_check_max_abs_diff": head_diff,
               "opaque": opaque}
    if baseline_metrics.is_file():
        metrics["opaque_run_test_accuracy"] = json.loads(baseline_metrics.read_text())["test"].get("accuracy")
    _finish(folder, metrics, start)
    log.info("encode: %s features of width %d; opaque test accuracy %.4f", metrics["sizes"],
             metrics["feature_dim"], opaque["test"]["accuracy"])
    return folder


def load_features(encode_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """{"train"/"val"/"test": {features (N, D), targets, concepts (N, K), ids}, "card", "data", "head"} of an
    encode folder; cache entries that vanished are extracted again with the opaque model."""
    from safetensors.torch import load_file

    from medimg_core.data import DatasetCard

    encode_dir = Path(encode_dir)
    meta = json.loads((encode_dir / "features.json").read_text())
    card = DatasetCard.from_dict(meta["card"])
    out: dict[str, Any] = {"card": card, "meta": meta}
    missing = []
    for split, info in meta["splits"].items():
        path = Path(info["path"])
        sidecar = path.with_suffix(".json")
        try:
            tensors = load_file(str(path))
            side = json.loads(sidecar.read_text())
            if side.get("key") != info["key"] or tensors["features"].shape[0] != info["n"]:
                raise ValueError("stale entry")
            out[split] = {"features": tensors["features"].float(), "targets": tensors["targets"],
                          "concepts": tensors["concepts"].float(), "ids": [str(i) for i in side["ids"]]}
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            missing.append(split)
    if missing:
        from medimg_core.features import FeatureCache

        log.info("feature cache entries for %s are gone; extracting them again", missing)
        opaque_run = (encode_dir / meta["opaque_run"]).resolve()
        model, _, bcfg, card = _opaque_data(opaque_run)
        data = bcfg.data
        datasets = _eval_datasets(data, card)
        for split in missing:
            got = FeatureCache().get_or_extract(model.backbone, datasets[split], split=split, device=device)
            if got["key"] != meta["splits"][split]["key"]:
                raise RuntimeError(f"{encode_dir}: the {split} features of {opaque_run} no longer match this encode "
                                   "stage (the model or data changed); run `neuron-concepts encode` again")
            out[split] = {"features": got["features"].float(), "targets": got["targets"],
                          "concepts": got["concepts"].float(), "ids": got["ids"]}
    out["head"] = load_file(str(encode_dir / "head.safetensors"))
    return out


# --------------------------------------------------------------------------- 3. sparse autoencoder


def fit_sae(x: torch.Tensor, cfg: SAEConfig, seed: int = 0, device: str | torch.device = "cpu",
            x_val: torch.Tensor | None = None, progress: bool = True) -> tuple[SparseAutoencoder, list[dict], dict]:
    """Train a sparse autoencoder on features x (N, d) with Adam, unit-norm decoder columns (gradient
    projected, columns renormalised after each step) and optional dead-latent resampling.

    Returns (sae in eval mode on the CPU, per-epoch history, info with the resampling events).
    """
    from tqdm.auto import tqdm

    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_sae: features must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("fit_sae: the features contain NaN or inf")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    n, d = x.shape
    sae = SparseAutoencoder(d, cfg.expansion * d, cfg.kind, cfg.l1, cfg.k, cfg.auxk_alpha)
    if cfg.standardize:
        sae.set_standardization(x.mean(0), x.std(0))
    if cfg.pre_bias_init == "mean":
        with torch.no_grad():
            sae.b_pre.copy_(sae.standardize(x).mean(0))
    sae.to(device).train()
    x_dev = x.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    fired_window = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    history: list[dict] = []
    events: list[dict] = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc=f"SAE {cfg.kind} {sae.n_latents} latents", unit="epoch",
               disable=None if progress else True)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "mse": 0.0, "l1": 0.0, "auxk": 0.0, "l0": 0.0}
        for i in range(steps_per_epoch):
            xb = x_dev[perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
            dead = since_fired >= cfg.dead_steps
            out = sae.loss(xb, dead=dead)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            sae.project_decoder_grad()
            opt.step()
            sae.constrain_decoder()
            step += 1
            active = (out["latents"] > 0).any(0)
            since_fired = torch.where(active, torch.zeros_like(since_fired), since_fired + 1)
            fired_window |= active
            for key in ("loss", "mse", "l1", "auxk"):
                sums[key] += float(out[key].detach()) * len(xb)
            sums["l0"] += float((out["latents"] > 0).sum())
            if cfg.resample_every > 0 and step % cfg.resample_every == 0 and step <= cfg.resample_stop * total:
                dead_now = ~fired_window
                limit = None if cfg.resample_max_fraction >= 1 else int(cfg.resample_max_fraction * sae.n_latents)
                count = resample_dead_latents(sae, x_dev, dead_now, opt, gen, max_count=limit)
                events.append({"step": step, "epoch": epoch + 1, "dead": int(dead_now.sum()), "resampled": count})
                log.info("SAE step %d: resampled %d dead latents", step, count)
                fired_window.zero_()
                since_fired.zero_()
        row = {"epoch": epoch + 1, **{f"train/{k}": v / n for k, v in sums.items()}}
        if x_val is not None and len(x_val) and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            m = sae_metrics(sae, x_val.to(device))
            row.update({"val/r2": m["r2"], "val/l0": m["l0"], "val/mse": m["mse"]})
        history.append(row)
        bar.set_postfix(loss=f"{row['train/loss']:.4g}", l0=f"{row['train/l0']:.1f}")
    sae.eval().cpu()
    return sae, history, {"steps": step, "steps_per_epoch": steps_per_epoch, "resampling": events}


def save_sae(sae: SparseAutoencoder, folder: Path) -> None:
    from safetensors.torch import save_file

    from medimg_core.checkpoint import state_dict_to_cpu

    save_file(state_dict_to_cpu(sae), str(folder / "sae.safetensors"))
    write_json(folder / "sae.json", sae.config())


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """The sparse autoencoder of an sae stage folder (safetensors + JSON)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    conf = json.loads((folder / "sae.json").read_text())
    sae = SparseAutoencoder(**conf)
    sae.load_state_dict(load_file(str(folder / "sae.safetensors")))
    return sae.eval()


def train_sae(encode_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Train the sparse autoencoder on the cached train features; report R^2, L0 and dead latents."""
    from medimg_core.figures import training_curves

    start = time.perf_counter()
    encode_dir = require_stage(encode_dir, "encode")
    feats = load_features(encode_dir)
    folder = _start_stage("sae", encode_dir, cfg, pipeline)
    t0 = time.perf_counter()
    sae, history, info = fit_sae(feats["train"]["features"], cfg.sae, cfg.seed, _device(cfg),
                                 feats["val"]["features"], _progress(cfg))
    fit_s = time.perf_counter() - t0
    save_sae(sae, folder)
    write_json(folder / "history.json", history)
    per_split = {s: sae_metrics(sae, feats[s]["features"]) for s in SPLITS}
    training_curves(history, folder / "figures" / "sae_training.png")
    _activation_figure(sae, feats["train"]["features"], folder / "figures" / "latent_frequency.png")
    metrics = _finish(folder, {"stage": "sae", "kind": cfg.sae.kind, "n_latents": sae.n_latents, "d_in": sae.d_in,
                               **{s: per_split[s] for s in SPLITS}, "fit_time_s": fit_s, **info}, start)
    log.info("SAE: train R^2 %.3f, L0 %.1f, dead %.1f%%; fitted in %.1f s", metrics["train"]["r2"],
             metrics["train"]["l0"], 100 * metrics["train"]["dead_fraction"], fit_s)
    return folder


def _activation_figure(sae: SparseAutoencoder, x: torch.Tensor, path: Path) -> None:
    import matplotlib.pyplot as plt

    from medimg_core.figures import save_figure

    freq = (encode_all(sae, x) > 0).float().mean(0).numpy()
    fig, ax = plt.subplots(figsize=(5, 3))
    alive = freq[freq > 0]
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="#0072b2")
    ax.set_xlabel("log10 activation frequency (train images), alive latents")
    ax.set_ylabel("latents")
    ax.set_title(f"{(freq == 0).sum()} of {freq.size} latents dead", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- 4. naming


class _Images:
    """Raw uint8 images of a dataset split by row, cached."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, row: int) -> np.ndarray:
        if row not in self.cache:
            img = self.dataset.load_image(int(row))
            self.cache[row] = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
        return self.cache[row]


def _split_dataset(feats: dict[str, Any], split: str) -> Any:
    from medimg_core.data import load_dataset

    data = DataConfig(**{k: v for k, v in feats["meta"]["data"].items()})
    ds = load_dataset(data.dataset, data.root, {"train": data.train_split, "val": data.val_split,
                                                 "test": data.test_split}[split], **data.options)
    if [str(i) for i in ds.ids] != feats[split]["ids"]:
        raise RuntimeError(f"the {split} split of {data.root} no longer matches the encoded features (ids differ)")
    return ds


def name(sae_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Name every alive latent from the configured sources; per-latent top-image figures; with concept
    annotations, how well the latents match each annotated concept (AUROC; best latent chosen on train,
    scored on test)."""
    from neuron_concepts.naming import (
        make_backend,
        name_latents,
        read_names_file,
        read_reports,
        read_vocabulary,
    )

    start = time.perf_counter()
    sae_dir = require_stage(sae_dir, "sae")
    chain = stage_chain(sae_dir)
    feats = load_features(chain["encode"])
    card = feats["card"]
    sae = load_sae(sae_dir)
    nc = cfg.naming
    usable = {"annotations": card.num_concepts > 0, "vocabulary": bool(nc.vocabulary and nc.reports),
              "file": bool(nc.names_file), "backend": bool(nc.backend)}
    sources = [s for s in nc.sources if usable.get(s, True)]  # unknown names fail in name_latents
    if not sources:
        from medimg_core.config import ConfigError

        raise ConfigError(f"naming.sources {list(nc.sources)}: none is usable here; annotations need a dataset with "
                          "concept annotations, vocabulary needs naming.vocabulary and naming.reports, file needs "
                          "naming.names_file, backend needs naming.backend (mock, clip:/path or text:/path)")
    skipped = [s for s in nc.sources if s not in sources]
    if skipped:
        log.info("naming: skipping sources %s (not configured or no annotations)", skipped)
    folder = _start_stage("name", sae_dir, cfg, pipeline)
    A = encode_all(sae, feats["train"]["features"]).numpy()
    alive = (A > 0).any(axis=0)
    dataset = _split_dataset(feats, "train")
    images = _Images(dataset)
    reports = None
    if nc.reports:
        by_id = read_reports(nc.reports, nc.report_id_column, nc.report_column)
        reports = [by_id.get(i) for i in feats["train"]["ids"]]
        log.info("naming: reports for %d of %d train images", sum(r is not None for r in reports), len(reports))
    concepts = feats["train"]["concepts"].numpy()
    names = name_latents(
        A, sources, alive=alive,
        concepts=concepts if card.num_concepts else None, concept_names=list(card.concept_names),
        negations=nc.negations, vocabulary=read_vocabulary(nc.vocabulary) if nc.vocabulary else None,
        reports=reports, min_z=nc.min_z, names=read_names_file(nc.names_file) if nc.names_file else None,
        backend=make_backend(nc.backend, str(_device(cfg))) if nc.backend else None, images=images,
        top_n=nc.top_n, seed=cfg.seed, progress=_progress(cfg))
    top = _top_rows(A, nc.top_n)
    records = []
    for k, v in names.items():
        rec = v.to_dict()
        rec["frequency"] = float((A[:, k] > 0).mean())
        rec["top_ids"] = [feats["train"]["ids"][i] for i in top[k] if A[i, k] > 0]
        records.append(rec)
    write_json(folder / "names.json", records)
    _write_names_csv(folder / "names.csv", records)
    counts: dict[str, int] = {}
    for v in names.values():
        counts[v.source] = counts.get(v.source, 0) + 1
    metrics: dict[str, Any] = {"stage": "name", "n_latents": int(A.shape[1]), "alive": int(alive.sum()),
                               "sources_used": sources, "sources": counts,
                               "distinct_names": len({v.name for v in names.values()})}
    if card.num_concepts:
        A_test = encode_all(sae, feats["test"]["features"]).numpy()
        metrics["concept_matching"] = concept_matching(A, concepts, A_test, feats["test"]["concepts"].numpy(),
                                                       list(card.concept_names), names)
        matching = metrics["concept_matching"]
        metrics["matched_test_auroc_0.8"] = sum(1 for r in matching if (r["test_auroc"] or 0) >= 0.8)
        metrics["matched_test_auroc_0.9"] = sum(1 for r in matching if (r["test_auroc"] or 0) >= 0.9)
        metrics["naming_accuracy"] = float(np.mean([r["named_correctly"] for r in matching])) if matching else None
    order = sorted(names, key=lambda k: -(names[k].score or 0.0))
    limit = len(order) if nc.figures is None else max(0, nc.figures)
    _latent_mosaics(order[:limit], names, A, top, images, folder / "latents", nc.thumb_size)
    highlight = [r["best_latent"] for r in metrics.get("concept_matching", [])] or order[:6]
    _top_images_figure(highlight[:8], names, A, top, images, folder / "figures" / "top_latents.png")
    _finish(folder, metrics, start)
    log.info("naming: %d alive latents named (%s)", metrics["alive"], counts)
    return folder


def _top_rows(A: np.ndarray, n: int) -> np.ndarray:
    from neuron_concepts.naming import top_activating

    return top_activating(A, n)


def _write_names_csv(path: Path, records: list[dict]) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["latent", "name", "source", "score", "frequency"])
        for r in records:
            w.writerow([r["latent"], r["name"], r["source"], "" if r["score"] is None else f"{r['score']:.4f}",
                        f"{r['frequency']:.4f}"])


def concept_matching(A_train: np.ndarray, c_train: np.ndarray, A_test: np.ndarray, c_test: np.ndarray,
                     concept_names: list[str], names: dict[int, LatentName]) -> list[dict[str, Any]]:
    """Per annotated concept: the latent whose activation predicts it best on train (AUROC), that latent's
    test AUROC, its name and whether the name is the concept; also the best test AUROC of any latent."""
    from neuron_concepts.naming import auroc_matrix

    train = auroc_matrix(A_train, c_train)
    test = auroc_matrix(A_test, c_test)
    rows = []
    for c, concept in enumerate(concept_names):
        col = np.where(np.isnan(train[:, c]), -np.inf, train[:, c])
        if not np.isfinite(col).any():
            rows.append({"concept": concept, "best_latent": None, "train_auroc": None, "test_auroc": None,
                         "name": None, "named_correctly": False, "best_test_auroc_any": None})
            continue
        k = int(np.argmax(col))
        latent_name = names.get(k)
        test_col = test[:, c]
        rows.append({"concept": concept, "best_latent": k, "train_auroc": float(train[k, c]),
                     "test_auroc": None if np.isnan(test[k, c]) else float(test[k, c]),
                     "name": latent_name.name if latent_name else None,
                     "named_correctly": bool(latent_name is not None and latent_name.name == concept),
                     "best_test_auroc_any": None if np.isnan(test_col).all() else float(np.nanmax(test_col))})
    return rows


def _thumb(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR))


def _latent_mosaics(latents: list[int], names: dict[int, LatentName], A: np.ndarray, top: np.ndarray,
                    images: _Images, folder: Path, size: int, ncols: int = 8) -> None:
    """One PNG per latent: its top-activating images (activation under each) below a caption line."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    header, footer = 14, 11
    for k in latents:
        rows = [int(i) for i in top[k] if A[i, k] > 0][:ncols * 2]
        if not rows:
            continue
        nrows = math.ceil(len(rows) / ncols)
        cols = min(ncols, len(rows))
        canvas = Image.new("RGB", (max(cols * size, 360), header + nrows * (size + footer)), "white")
        draw = ImageDraw.Draw(canvas)
        v = names[k]
        score = "" if v.score is None else f" {v.score:.3f}"
        draw.text((2, 1), f"latent {k}: {v.name} [{v.source}{score}]"[:120], fill="black")
        for j, i in enumerate(rows):
            x0, y0 = (j % ncols) * size, header + (j // ncols) * (size + footer)
            canvas.paste(Image.fromarray(_thumb(images(i), size)), (x0, y0))
            draw.text((x0 + 2, y0 + size), f"{A[i, k]:.2f}", fill="black")
        tmp = folder / f".latent_{k:05d}.tmp.png"
        canvas.save(tmp, compress_level=1)  # fast: thousands of latents
        os.replace(tmp, folder / f"latent_{k:05d}.png")


def _top_images_figure(latents: list[int], names: dict[int, LatentName], A: np.ndarray, top: np.ndarray,
                       images: _Images, path: Path, per_row: int = 6) -> None:
    """A grid: one row per latent, its top-activating images, the name on the first."""
    from medimg_core.figures import image_grid

    imgs, captions = [], []
    for k in latents:
        if k is None or k not in names:
            continue
        rows = [int(i) for i in top[k][:per_row]]
        for j, i in enumerate(rows):
            imgs.append(images(i))
            captions.append((f"#{k} {names[k].name}"[:28] + "\n" if j == 0 else "\n") + f"a={A[i, k]:.2f}")
        for _ in range(per_row - len(rows)):
            imgs.append(np.ones((8, 8, 3)))
            captions.append("")
    if imgs:
        image_grid(imgs, captions, path, ncols=per_row, cell_inches=1.6,
                   title="top-activating train images of SAE latents")


def load_names(name_dir: str | Path) -> dict[int, LatentName]:
    records = json.loads((Path(name_dir) / "names.json").read_text())
    return {int(r["latent"]): LatentName(int(r["latent"]), r["name"], r["source"], r["score"], r.get("details", {}))
            for r in records}


# --------------------------------------------------------------------------- 5. CAVs


def concept_vectors(H: np.ndarray, A: np.ndarray, latents: list[int], cav: CAVConfig, seed: int = 0,
                    progress: bool = True) -> tuple[np.ndarray, list[int], list[dict[str, Any]]]:
    """One CAV per latent: the unit normal of a logistic regression separating the latent's top-activating
    images (positives) from images where it is silent (negatives) in feature space H (N, d).

    Returns (cavs (n, d), the latents that got one, per-latent records (positives, negatives, probe accuracy)).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    vectors, kept, records = [], [], []
    for k in tqdm(latents, desc="CAVs", unit="latent", disable=None if progress else True):
        a = A[:, k]
        active = np.flatnonzero(a > 0)
        if len(active) < cav.min_positives:
            continue
        pos = active[np.argsort(-a[active], kind="stable")[:cav.top_n]]
        silent = np.flatnonzero(a <= 0)
        n_neg = min(cav.n_negative, len(A) - len(pos))
        if len(silent) >= n_neg:
            neg = rng.choice(silent, n_neg, replace=False)
        else:  # too few silent images: add the least active ones
            rest = np.setdiff1d(np.argsort(a, kind="stable"), np.concatenate([silent, pos]), assume_unique=False)
            neg = np.concatenate([silent, rest[: n_neg - len(silent)]])
        if len(neg) == 0:
            continue
        X = np.concatenate([H[pos], H[neg]])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        with warnings.catch_warnings(), threadpool_limits(1):  # thousands of tiny fits: threads only contend
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            clf = LogisticRegression(C=cav.C, max_iter=1000).fit(X, y)
        w = clf.coef_[0]
        norm = np.linalg.norm(w)
        if not np.isfinite(norm) or norm == 0:
            continue
        vectors.append(w / norm)
        kept.append(int(k))
        records.append({"latent": int(k), "positives": int(len(pos)), "negatives": int(len(neg)),
                        "probe_accuracy": float(clf.score(X, y))})
    d = H.shape[1]
    return (np.stack(vectors) if vectors else np.zeros((0, d))), kept, records


def cav(name_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """A concept activation vector for every named latent."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    name_dir = require_stage(name_dir, "name")
    chain = stage_chain(name_dir)
    feats = load_features(chain["encode"])
    sae = load_sae(chain["sae"])
    names = load_names(name_dir)
    folder = _start_stage("cav", name_dir, cfg, pipeline)
    H = feats["train"]["features"]
    A = encode_all(sae, H).numpy()
    latents = [k for k, v in names.items() if v.source != "none" or not cfg.cav.named_only]
    vectors, kept, records = concept_vectors(H.numpy().astype(np.float64), A, latents, cfg.cav, cfg.seed,
                                             _progress(cfg))
    if not kept:
        raise RuntimeError(f"cav: no latent has {cfg.cav.min_positives} active train images and a name; nothing "
                           "to build concepts from (lower cav.min_positives or check the SAE)")
    save_file({"cavs": vectors.astype(np.float32), "latents": np.asarray(kept, dtype=np.int64)},
              str(folder / "cavs.safetensors"))
    for r in records:
        r.update(name=names[r["latent"]].name, source=names[r["latent"]].source, score=names[r["latent"]].score)
    write_json(folder / "cavs.json", records)
    acc = [r["probe_accuracy"] for r in records]
    _finish(folder, {"stage": "cav", "candidates": len(latents), "cavs": len(kept),
                     "skipped": len(latents) - len(kept), "mean_probe_accuracy": float(np.mean(acc))}, start)
    log.info("cav: %d concept activation vectors (%d latents skipped)", len(kept), len(latents) - len(kept))
    return folder


def load_cavs(cav_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    from safetensors.numpy import load_file

    t = load_file(str(Path(cav_dir) / "cavs.safetensors"))
    return t["cavs"].astype(np.float64), t["latents"], json.loads((Path(cav_dir) / "cavs.json").read_text())


# --------------------------------------------------------------------------- 6. selection


def discriminative_scores(H: np.ndarray, y: np.ndarray, cavs: np.ndarray, task: str) -> np.ndarray:
    """Class-discriminative score of each CAV in [0, 1]: the ANOVA F statistic of the projections H @ c
    across classes (mean over labels for multilabel), divided by its maximum."""
    from sklearn.feature_selection import f_classif

    P = H @ cavs.T
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if task == "multilabel":
            F = np.nanmean([f_classif(P, y[:, j])[0] for j in range(y.shape[1])], axis=0)
        else:
            F = f_classif(P, y)[0]
    F = np.nan_to_num(F, nan=0.0, posinf=0.0)
    return F / F.max() if F.max() > 0 else F


def select(cav_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """Greedy facility-location selection of K concepts over the CAVs (squared cosine similarity),
    optionally mixed with a class-discriminative term; the ranking and the marginal gains."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import save_figure

    start = time.perf_counter()
    cav_dir = require_stage(cav_dir, "cav")
    cavs, latents, records = load_cavs(cav_dir)
    folder = _start_stage("select", cav_dir, cfg, pipeline)
    k = min(cfg.select.k, len(cavs))
    if k < cfg.select.k:
        log.warning("select: %d concepts requested, only %d CAVs exist; selecting all", cfg.select.k, len(cavs))
    modular = None
    if cfg.select.discriminative_weight > 0:
        feats = load_features(stage_chain(cav_dir)["encode"])
        task = feats["card"].task
        d = discriminative_scores(feats["train"]["features"].numpy().astype(np.float64),
                                  _targets(task, feats["train"]["targets"]), cavs, task)
        modular = cfg.select.discriminative_weight * len(cavs) * d  # on the scale of a facility-location gain
    t0 = time.perf_counter()
    ranking, gains = facility_location(cavs, k, modular=modular)
    select_s = time.perf_counter() - t0
    from neuron_concepts.model import squared_cosine_similarity

    value = facility_value(squared_cosine_similarity(cavs), ranking, modular)
    selection = [{"rank": i, "cav_index": int(j), "latent": int(latents[j]), "name": records[j]["name"],
                  "source": records[j]["source"], "gain": float(g)} for i, (j, g) in enumerate(zip(ranking, gains,
                                                                                                   strict=True))]
    write_json(folder / "selection.json", selection)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, k + 1), gains, color="#0072b2")
    ax.set_xlabel("concepts selected")
    ax.set_ylabel("marginal gain")
    ax.set_yscale("log" if gains.min() > 0 else "linear")
    fig.tight_layout()
    save_figure(fig, folder / "figures" / "marginal_gains.png")
    _finish(folder, {"stage": "select", "candidates": len(cavs), "k": k, "objective": value,
                     "distinct_names": len({s["name"] for s in selection}), "select_time_s": select_s,
                     "discriminative_weight": cfg.select.discriminative_weight}, start)
    log.info("select: %d of %d concepts, F(S) = %.2f, %d distinct names", k, len(cavs), value,
             len({s["name"] for s in selection}))
    return folder


# --------------------------------------------------------------------------- 7. concept bottleneck


def train_cbm(select_dir: str | Path, cfg: NeuronConceptsConfig, pipeline: Path | None = None) -> Path:
    """OMP decomposition of every embedding over the selected CAVs, then logistic regression with C tuned on
    validation; test metrics of the CBM and of the opaque model with 95% bootstrap intervals."""
    from safetensors.numpy import save_file

    from medimg_core.figures import concept_bar_chart, confusion_matrix_figure
    from medimg_core.metrics import metrics_with_ci

    start = time.perf_counter()
    select_dir = require_stage(select_dir, "select")
    chain = stage_chain(select_dir)
    feats = load_features(chain["encode"])
    card = feats["card"]
    cavs, _latents, _ = load_cavs(chain["cav"])
    selection = json.loads((select_dir / "selection.json").read_text())
    folder = _start_stage("cbm", select_dir, cfg, pipeline)
    index = [s["cav_index"] for s in selection]
    D = cavs[index]
    concept_names = [s["name"] for s in selection]
    cc = cfg.cbm
    H = {s: feats[s]["features"].numpy().astype(np.float64) for s in SPLITS}
    y = {s: _targets(card.task, feats[s]["targets"]) for s in SPLITS}
    t0 = time.perf_counter()
    cbm = ConceptBottleneck(D, n_nonzero=cc.n_nonzero, fit_intercept=cc.fit_intercept, features=cc.features, C=cc.C,
                            task=card.task, c_search_steps=cc.c_search_steps, max_iter=cc.max_iter,
                            concept_names=concept_names, class_names=list(card.class_names))
    cbm.fit(H["train"], y["train"], H["val"], y["val"])
    fit_s = time.perf_counter() - t0
    save_file({k: np.ascontiguousarray(v) for k, v in cbm.state().items()}, str(folder / "cbm.safetensors"))
    write_json(folder / "cbm.json", {"task": card.task, "class_names": list(card.class_names),
                                     "concept_names": concept_names, "latents": [s["latent"] for s in selection],
                                     "sources": [s["source"] for s in selection], "C": cbm.C_,
                                     "n_nonzero": cbm.n_nonzero, "fit_intercept": cc.fit_intercept,
                                     "features": cc.features, "c_search": cbm.search_})
    W, b = feats["head"]["weight"].double().numpy(), feats["head"]["bias"].double().numpy()
    results: dict[str, Any] = {}
    for split in ("val", "test"):
        proba = cbm.predict_proba(H[split])
        opaque_scores = _scores(card.task, H[split] @ W.T + b)
        results[split] = {
            "cbm": metrics_with_ci(card.task, y[split], proba, list(card.class_names), n_boot=cfg.bootstrap,
                                   seed=cfg.seed),
            "opaque": metrics_with_ci(card.task, y[split], opaque_scores, list(card.class_names),
                                      n_boot=cfg.bootstrap, seed=cfg.seed),
        }
        coef, intercept = cbm.decompose(H[split])
        recon = coef @ D + intercept[:, None]
        sst = ((H[split] - H[split].mean(0)) ** 2).sum()
        results[split]["decomposition_r2"] = float(1 - ((H[split] - recon) ** 2).sum() / sst)
        results[split]["mean_nonzero"] = float((coef != 0).sum(1).mean())
        head_recon = _scores(card.task, recon @ W.T + b)
        if card.task == "multilabel":
            agree = float(((proba > 0.5) == (opaque_scores > 0.5)).mean())
            head_acc = float(((head_recon > 0.5) == y[split]).mean())
        else:
            agree = float((proba.argmax(1) == opaque_scores.argmax(1)).mean())
            head_acc = float((head_recon.argmax(1) == y[split]).mean())
        results[split]["fidelity_to_opaque"] = agree
        results[split]["opaque_head_on_reconstruction_accuracy"] = head_acc
    test = results["test"]
    contrib = cbm.contributions(H["test"])
    importance = np.abs(contrib.values).mean(0)
    top = np.argsort(-importance)[:20]
    concept_bar_chart([f"{concept_names[i]} (#{selection[i]['latent']})" for i in top], importance[top],
                      folder / "figures" / "concept_importance.png",
                      title="mean |contribution| to the predicted class logit (test)", xlabel="mean |contribution|")
    if card.task != "multilabel":
        confusion_matrix_figure(y["test"], cbm.predict(H["test"]), list(card.class_names),
                                folder / "figures" / "confusion_test.png")
    metrics = _finish(folder, {
        "stage": "cbm", "dataset": card.name, "task": card.task, "k": len(selection), "C": cbm.C_,
        "n_nonzero": cbm.n_nonzero, "features": cc.features, "fit_time_s": fit_s,
        "test": test["cbm"], "opaque_test": test["opaque"], "val": results["val"]["cbm"],
        "opaque_val": results["val"]["opaque"],
        "accuracy_gap": test["opaque"]["accuracy"] - test["cbm"]["accuracy"],
        **{f"{k}_test": test[k] for k in ("decomposition_r2", "mean_nonzero", "fidelity_to_opaque",
                                          "opaque_head_on_reconstruction_accuracy")},
        "top_concepts": [{"name": concept_names[i], "latent": selection[i]["latent"],
                          "mean_abs_contribution": float(importance[i])} for i in top],
    }, start)
    log.info("CBM: test accuracy %.4f (opaque %.4f); C %.3g", metrics["test"]["accuracy"],
             metrics["opaque_test"]["accuracy"], cbm.C_)
    return folder


def load_cbm(cbm_dir: str | Path) -> ConceptBottleneck:
    """The fitted concept bottleneck of a cbm stage folder."""
    from safetensors.numpy import load_file

    cbm_dir = Path(cbm_dir)
    t = load_file(str(cbm_dir / "cbm.safetensors"))
    meta = json.loads((cbm_dir / "cbm.json").read_text())
    cbm = ConceptBottleneck(t["concepts"], n_nonzero=meta["n_nonzero"], fit_intercept=meta["fit_intercept"],
                            features=meta["features"], C=meta["C"], task=meta["task"],
                            concept_names=meta["concept_names"], class_names=meta["class_names"])
    cbm.latents = meta["latents"]
    return cbm.load_state(t["W"], t["b"], t["classes"], meta["C"])


# --------------------------------------------------------------------------- the whole pipeline


def run_pipeline(cfg: NeuronConceptsConfig, opaque_run: str | Path | None = None,
                 resume: str | Path | None = None) -> Path:
    """All stages in order (the opaque stage is skipped when `opaque_run` is given); returns the pipeline
    folder, whose metrics.json summarises the stages and their wall times.

    `resume`: an interrupted pipeline folder (`cfg` is then its saved config). Its opaque training is
    finished, every stage that finished is kept, and the stages from the first unfinished one on run again
    in new folders (`cav-2`, ...)."""
    start = time.perf_counter()
    times: dict[str, float] = {}
    if resume is not None:
        pipeline = Path(resume).resolve()
        if not (pipeline / PIPELINE_FILE).is_file():
            raise FileNotFoundError(f"{pipeline}: not a neuron-concepts pipeline folder (no {PIPELINE_FILE})")
        t = time.perf_counter()
        opaque = resume_opaque(pipeline, cfg.progress)
        times["opaque"] = time.perf_counter() - t
        opaque_run = None if opaque.parent == pipeline else opaque
    elif opaque_run is None:
        pipeline = new_pipeline(cfg)
        t = time.perf_counter()
        opaque = train_opaque(cfg, pipeline)
        times["opaque"] = time.perf_counter() - t
    else:
        opaque = require_stage(opaque_run, "opaque")
        from medimg_core.checkpoint import best_checkpoint, load_config_json

        conf = load_config_json(best_checkpoint(opaque))
        pipeline = new_pipeline(cfg, conf["card"]["name"], conf["backbone"])
        _record(pipeline, "opaque", opaque)
    folders: dict[str, Path] = {"opaque": opaque}
    prev: Path = opaque
    for stage, fn in (("encode", encode), ("sae", train_sae), ("name", name), ("cav", cav), ("select", select),
                      ("cbm", train_cbm)):
        done = _finished_child(pipeline, stage, prev) if resume is not None else None
        if done is not None:
            log.info("resume: keeping the finished %s stage %s", stage, done)
            prev = folders[stage] = done
            continue
        resume = None  # every later stage reads this new folder: run them all
        t = time.perf_counter()
        prev = fn(prev, cfg, pipeline)
        times[stage] = time.perf_counter() - t
        folders[stage] = prev
    summary = pipeline_summary(folders)
    summary["wall_time_s"] = {**times, "total": time.perf_counter() - start}
    summary["opaque_trained_here"] = opaque_run is None
    write_json(pipeline / "metrics.json", summary)
    return pipeline


def pipeline_summary(folders: dict[str, Path]) -> dict[str, Any]:
    """The headline numbers of every stage, from their metrics.json."""
    def read(stage: str) -> dict[str, Any]:
        path = folders[stage] / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    enc, sae, nm, cv, sel, cbm = (read(s) for s in ("encode", "sae", "name", "cav", "select", "cbm"))
    out: dict[str, Any] = {
        "method": "neuron-concepts", "dataset": enc.get("dataset"), "backbone": enc.get("backbone"),
        "stages": {k: str(v) for k, v in folders.items()},
        "opaque_test": cbm.get("opaque_test"), "cbm_test": cbm.get("test"), "accuracy_gap": cbm.get("accuracy_gap"),
        "sae": {k: sae.get("train", {}).get(k) for k in ("r2", "l0", "dead_fraction", "alive")}
        | {"test_r2": sae.get("test", {}).get("r2"), "n_latents": sae.get("n_latents"),
           "fit_time_s": sae.get("fit_time_s"), "resampling": sae.get("resampling")},
        "naming": {k: nm.get(k) for k in ("alive", "sources", "distinct_names", "naming_accuracy",
                                          "matched_test_auroc_0.8", "matched_test_auroc_0.9")},
        "concept_matching": nm.get("concept_matching"),
        "cavs": cv.get("cavs"), "selected": sel.get("k"), "select_time_s": sel.get("select_time_s"),
        "cbm": {k: cbm.get(k) for k in ("C", "n_nonzero", "features", "decomposition_r2_test",
                                        "fidelity_to_opaque_test", "opaque_head_on_reconstruction_accuracy_test")},
        "stage_wall_time_s": {s: read(s).get("wall_time_s") for s in folders if s != "opaque"},
        "peak_memory_mb": peak_memory_mb(),
    }
    opaque_metrics = folders["opaque"] / "metrics.json"
    if opaque_metrics.is_file():
        out["stage_wall_time_s"]["opaque"] = json.loads(opaque_metrics.read_text()).get("wall_time_s")
    return out
