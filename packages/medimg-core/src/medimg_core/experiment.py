"""One training lifecycle for every method: the core runs it, the method plugs in through a recipe.

    run = fit_run(CRLRecipe(), cfg)                 # the CLI's `crl train`
    run = fit_run(CRLRecipe(), cfg, splits=splits)  # an estimator's fit(train, val) on datasets it was given

`fit_run` owns what every training shares, in this order: distributed set-up, device, seeding, the data
(`recipe.load_data`), the model and everything the Trainer needs (`recipe.build`, which refuses unusable data
and configs before anything is written), the run folder (locked while it trains), the Trainer and its
resume, reloading the best checkpoint, test predictions and their metrics with bootstrap intervals (resampling
patients where the test set has groups: `sample_groups`), the common keys of metrics.json, the method's own report (`recipe.report`), the training curves, and the distributed
clean-up (in a `finally`). Everything that can be refused is refused before the run folder exists (the config's
numbers when it loads, the device, the data, the model and its weights, a training set smaller than one batch,
a resume of another method's run); a training that fails later is settled by `settle_failed_run`: no folder left
when it had no checkpoint yet, the folder kept for `--resume` (with the error in log.txt) when it had one.

A method's config inherits `RunConfig`, the run section every config shares; its keys stay at the top level
of the YAML and the command line (`seed: 3`, `--seed 3`), as in every config and run folder written so far.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from medimg_core.checkpoint import CheckpointError, find_checkpoint, load_config_json, load_weights
from medimg_core.config import FieldError, check_range
from medimg_core.data.card import DatasetCard
from medimg_core.data.preprocess import build_transforms
from medimg_core.distributed import (
    DEVICE_NAMES,
    DeviceError,
    DistInfo,
    check_device_name,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    select_device,
)
from medimg_core.estimator import with_transform
from medimg_core.runs import Run, RunFolderError, peak_memory_mb, prepare_run, setup_logging
from medimg_core.training import (
    FitResult,
    Hook,
    MetricsFn,
    PredictFn,
    StepFn,
    Trainer,
    check_batch_size,
    check_precision,
    how_to_go_on,
)

log = logging.getLogger("medimg")


@dataclass
class RunConfig:
    """The run section every training config shares: seed, device (auto, cpu, cuda, cuda:N, mps), the folder
    under which run folders are made (out), the run's name (default: method-dataset-backbone-seedS) and the
    number of bootstrap resamples behind every interval (bootstrap). Method configs inherit it."""

    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        try:
            check_device_name(self.device)
        except DeviceError:
            raise FieldError("device", f"expected {DEVICE_NAMES}, got {self.device!r}") from None
        check_range(self, "bootstrap", minimum=0, integer=True)
        if not str(self.out).strip():
            raise FieldError("out", "expected the folder that receives run folders, got an empty string")


@dataclass
class Splits:
    """The datasets of one training: train, val and test (val/test may be None), their card, and any further
    datasets the method needs (`extra`, e.g. CIPL's push set: the training split with evaluation transforms)."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    card: DatasetCard
    extra: dict[str, Dataset] = field(default_factory=dict)

    @classmethod
    def with_transforms(cls, data_cfg: Any, train: Dataset, val: Dataset | None) -> Splits:
        """The datasets given to `fit`, as copies with the training and evaluation transforms of `data_cfg`
        (a `DataConfig`); the caller's datasets stay as they are."""
        train_tf, eval_tf = build_transforms(data_cfg, train.card)
        return cls(with_transform(train, train_tf), None if val is None else with_transform(val, eval_tf), None,
                   train.card)

    def sizes(self) -> dict[str, int]:
        out = {k: len(v) for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}
        out.update({k: len(v) for k, v in self.extra.items()})
        return out


@dataclass
class TaskFunctions:
    """The Trainer's three functions (see medimg_core.training)."""

    step: StepFn
    predict: PredictFn
    metrics: MetricsFn


@dataclass
class Built:
    """What a recipe builds for one training.

    `model_config` is the config.json of every checkpoint (`medimg_core.pretrained.checkpoint_config`);
    `train_set` / `val_set` / `test_set` default to the splits' (a method training on cached features or on
    image pairs gives its own); `output_task` and `output_names` ("multiclass", class names) make `fit_run`
    score the test predictions ("scores", "target") with bootstrap intervals (None: the method has no test
    classification, e.g. the diffusion autoencoder); `extra_files` is called at every checkpoint (see Trainer);
    `state` carries whatever the method's report needs.
    """

    model: nn.Module
    task: TaskFunctions
    model_config: dict[str, Any]
    model_card: str
    backbone: str
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None
    param_groups: Sequence[dict] | None = None
    hooks: Sequence[Hook] = ()
    collate_fn: Callable | None = None
    extra_files: Callable[[], dict[str, Any]] | None = None
    output_task: str | None = None
    output_names: Sequence[str] | None = None
    pretrained_source: str = ""
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitContext:
    """Everything `recipe.report` may use once training is over (on the main process only)."""

    cfg: Any
    run: Run
    splits: Splits
    built: Built
    trainer: Trainer
    result: FitResult
    test_outputs: dict[str, np.ndarray] | None
    test_metrics: dict[str, Any] | None
    device: Any
    dist_info: DistInfo
    start: float


class Recipe(Protocol):
    """A method's side of the lifecycle (see the module docstring)."""

    #: the method's name in run folder names and metrics.json ("crl", "cipl", "baseline", ...)
    method: str

    def load_data(self, cfg: Any) -> Splits:
        """The datasets of `cfg.data`, with the method's transforms."""

    def build(self, cfg: Any, splits: Splits, device: Any, dist_info: DistInfo) -> Built:
        """The model, task functions, checkpoint config and everything else the Trainer needs; refuses
        unusable data and configs (before any run folder exists)."""

    def report(self, ctx: FitContext) -> dict[str, Any]:
        """The method's own entries of metrics.json (rules, localisation, reconstructions...), written after
        the common ones; may write figures and artefacts into `ctx.run`."""


def fit_run(recipe: Recipe, cfg: Any, resume_dir: str | Path | None = None, splits: Splits | None = None,
            command: Sequence[str] | None = None) -> Run:
    """Train `recipe` with `cfg` (a config inheriting RunConfig, with `train` and `optim` sections) and
    return its run folder. `splits` replaces `recipe.load_data(cfg)` (an estimator fitted on given datasets);
    `resume_dir` continues a run from its last checkpoint (a folder without one is refused)."""
    from medimg_core.metrics import best_f1_thresholds, metrics_with_ci

    start = time.perf_counter()
    if resume_dir is not None:
        _check_resumable(Path(resume_dir))
    dist_info = init_distributed(select_device(cfg.device))
    run: Run | None = None
    try:
        device = select_device(cfg.device, dist_info.local_rank)
        seed_everything(cfg.seed, cfg.train.deterministic)
        splits = splits if splits is not None else recipe.load_data(cfg)
        built = recipe.build(cfg, splits, device, dist_info)
        train_set = built.train_set if built.train_set is not None else splits.train
        val_set = built.val_set if built.val_set is not None else splits.val
        test_set = built.test_set if built.test_set is not None else splits.test
        check_batch_size(len(train_set), cfg.train, dist_info.world_size)  # before any folder exists
        check_precision(cfg.train, device)
        if resume_dir is not None:
            _check_same_kind(Path(resume_dir), built.model_config)
        run = prepare_run(cfg, recipe.method, splits.card.name, built.backbone, dist_info, resume_dir)
        lock = run.lock() if dist_info.is_main else _no_lock(run)
        with lock:
            trainer = Trainer(
                built.model, train_set, val_set, built.task.step, built.task.predict, built.task.metrics,
                train=cfg.train, optim=cfg.optim, run_dir=run.path, model_config=built.model_config,
                param_groups=built.param_groups, hooks=built.hooks, device=device, seed=cfg.seed,
                dist_info=dist_info, collate_fn=built.collate_fn, model_card=built.model_card,
                extra_files=built.extra_files)
            result = trainer.fit(resume=resume_dir is not None)
            load_weights(trainer.eval_model, trainer.checkpoint_dir / "best")
            test_outputs = trainer.predict(test_set) if test_set is not None and built.output_task else None
            multilabel = built.output_task == "multilabel"
            # multi-label F1 at per-label thresholds chosen on validation (best_f1_thresholds), never on test
            val_outputs = trainer.predict(val_set) if multilabel and test_outputs is not None and val_set is not None \
                else None
            if dist_info.is_main:
                test_metrics = None
                if test_outputs is not None:
                    target = test_outputs["target"] if multilabel else test_outputs["target"].astype(np.int64)
                    thresholds = None if val_outputs is None else best_f1_thresholds(val_outputs["target"],
                                                                                     val_outputs["scores"])
                    test_metrics = metrics_with_ci(built.output_task, target, test_outputs["scores"],
                                                   list(built.output_names or []), n_boot=cfg.bootstrap, seed=cfg.seed,
                                                   groups=sample_groups(test_set), val_thresholds=thresholds)
                ctx = FitContext(cfg, run, splits, built, trainer, result, test_outputs, test_metrics, device,
                                 dist_info, start)
                final: dict[str, Any] = {
                    "method": recipe.method, "dataset": splits.card.name, "backbone": built.backbone,
                    "pretrained_source": built.pretrained_source,
                }
                if test_metrics is not None:
                    final["test"] = test_metrics
                final.update({
                    "best_epoch": result.best_epoch, "monitor": cfg.train.monitor, "best_val": result.best_metric,
                    "epochs_run": len(result.history), "stopped_early": result.stopped_early,
                    "sizes": splits.sizes(),
                })
                final.update(recipe.report(ctx))
                final.update(wall_time_s=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(),
                             device=str(device), world_size=dist_info.world_size,
                             command=" ".join(command if command is not None else sys.argv))
                run.write_metrics(final)
                from medimg_core.figures import training_curves

                training_curves(result.history, run.figures_dir / "training_curves.png")
    except BaseException as exc:
        if run is not None and dist_info.is_main:
            settle_failed_run(run, exc, resumed=resume_dir is not None)
        raise
    finally:
        cleanup_distributed()
    return run


def sample_groups(dataset: Any) -> list[str] | None:
    """The dataset's groups (patient ids, e.g. NIH's `Patient ID`; one per sample, in order) when it has them, for
    bootstrap intervals that resample patients rather than images; None otherwise."""
    groups = getattr(dataset, "groups", None)
    return list(groups) if groups is not None and len(groups) == len(dataset) else None


def settle_failed_run(run: Run, exc: BaseException, resumed: bool = False) -> str:
    """What a training that failed leaves behind (the lifecycle's rule, documented in the README):

    - a new run that failed before its first checkpoint holds nothing worth keeping (its config, a log, perhaps
      an epoch line): the folder is removed, so that no half folder looks like a run (returns "removed");
    - a run with a checkpoint (or a resumed one) is kept for `--resume`; the error is appended to its log.txt
      (returns "kept").
    The error itself is raised on by the caller, so the command still says what went wrong.
    """
    has_checkpoint = any(_has_checkpoint(run.checkpoints_dir / name) for name in ("last", "best"))
    first_line = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__).splitlines()[0]
    if not resumed and not has_checkpoint:
        setup_logging(None)  # close log.txt before the folder goes
        shutil.rmtree(run.path, ignore_errors=True)
        log.error("the run failed before its first checkpoint; its folder %s was removed (%s)", run.path, first_line)
        return "removed"
    log.error("the run failed (%s); its folder %s is kept%s", first_line, run.path,
              " and can be continued with --resume" if _has_checkpoint(run.checkpoints_dir / "last") else "")
    return "kept"


def _has_checkpoint(folder: Path) -> bool:
    try:
        find_checkpoint(folder)
    except CheckpointError:
        return False
    return True


def _check_same_kind(run_dir: Path, model_config: dict[str, Any]) -> None:
    """A resumed run must be of the method that resumes it: compare the kinds of the checkpoints."""
    last = run_dir / "checkpoints" / "last"
    try:
        find_checkpoint(last)
    except CheckpointError:
        return  # missing: the Trainer's resume says there is no last checkpoint
    try:
        loaded = load_config_json(last)
        if not isinstance(loaded, dict):
            raise TypeError(f"expected a JSON object, found {type(loaded).__name__}")
    except (CheckpointError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot resume from the last checkpoint: {last / 'config.json'}: unreadable "
                              f"({type(exc).__name__}: {exc}). {how_to_go_on(run_dir / 'checkpoints', last)}"
                              ) from None
    written = loaded.get("kind")
    expected = model_config.get("kind")
    if written and expected and written != expected:
        raise RunFolderError(f"{run_dir}: a run of {written!r} (checkpoints/last/config.json), not of {expected!r}; "
                             "resume it with the command of the method that trained it")


def _check_resumable(run_dir: Path) -> None:
    """A run folder can be resumed only from its last checkpoint; say so before anything starts."""
    Run.open(run_dir)
    try:
        find_checkpoint(run_dir / "checkpoints" / "last")
    except Exception:
        raise RunFolderError(f"{run_dir}: no last checkpoint to resume from (checkpoints/last is missing or "
                             "incomplete); start a new run instead") from None


class _no_lock:
    """Other ranks share the main process's lock."""

    def __init__(self, run: Run):
        self.run = run

    def __enter__(self) -> Run:
        return self.run

    def __exit__(self, *exc: object) -> None:
        return None
