"""One training loop for every method: a small, explicit Trainer.

A method gives the Trainer its model, datasets and three functions::

    step_fn(model, batch) -> (loss, logs)            # one training step's loss (and scalars to log)
    predict_fn(model, batch) -> {name: (B, ...) tensor}   # per-sample outputs for evaluation
    metrics_fn(outputs: {name: np.ndarray (N, ...)}) -> {metric: float}

and the Trainer does the rest: parameter groups with their own learning rates, schedulers, gradient
clipping and accumulation, EMA of weights, mixed precision, early stopping, best and last checkpoints
on a chosen validation metric, hooks (weight clipping after each step, a prototype push every N
epochs...), resume after a crash, progress bars, and DistributedDataParallel under torchrun.

Longer than the 600 lines a module is otherwise held to: the Trainer is one state machine (phases, schedulers,
EMA, scaler, best / last checkpoints, resume, DDP) whose parts read and write the same state; split across
files, each part would need the others' private attributes.

Determinism: the order of the training data and the seeds of loader workers are a function of
(seed, epoch) only, and RNG states are saved with each checkpoint, so a run killed mid-epoch and
resumed ends where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from medimg_core.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_training_state,
    load_weights,
    save_checkpoint,
    write_json,
)
from medimg_core.config import ConfigError, FieldError, check_range
from medimg_core.distributed import DistInfo, all_gather_objects, barrier, broadcast_object, select_device

log = logging.getLogger("medimg")

StepFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]
PredictFn = Callable[[nn.Module, dict], dict[str, torch.Tensor]]
MetricsFn = Callable[[dict[str, np.ndarray]], dict[str, float]]


@dataclass
class OptimConfig:
    """Optimizer and schedule. Parameter groups may override lr and weight_decay per group."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    scheduler: Literal["cosine", "onecycle", "step", "none"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_range(self, "lr", above=0, why="a learning rate of 0 trains nothing and a negative one climbs the loss")
        check_range(self, "weight_decay", minimum=0)
        if len(self.betas) != 2:
            raise FieldError("betas", f"expected two numbers, got {list(self.betas)!r}")
        for b in self.betas:
            if not (isinstance(b, (int, float)) and 0 <= b < 1):
                raise FieldError("betas", f"expected two numbers >= 0 and < 1, got {list(self.betas)!r}")
        check_range(self, "momentum", minimum=0, below=1)
        check_range(self, "warmup_epochs", minimum=0)
        check_range(self, "min_lr_ratio", minimum=0, maximum=1)
        check_range(self, "step_epochs", minimum=1, integer=True)
        check_range(self, "gamma", above=0)
        check_range(self, "grad_clip", above=0, optional=True)


@dataclass
class TrainConfig:
    """The loop's settings (everything but the method's own hyperparameters)."""

    epochs: int = 10
    #: the budget in optimiser steps instead of epochs (None: `epochs`): the run trains
    #: ceil(steps / steps per epoch) epochs, so a preset means the same amount of training on 300 images as on
    #: 30,000 (small-data presets use it); the epochs it resolved to are logged and kept in the Trainer's cfg
    steps: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    grad_accum: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema_decay: float | None = None
    monitor: str = "val/accuracy"
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping_patience: int | None = None
    eval_every: int = 1
    num_workers: int | None = None
    drop_last: bool = True
    deterministic: bool = False
    progress: bool | None = None
    checkpoint_every: int = 1
    #: keep 4-D weights in channels-last memory format: 2-2.5x faster training of depthwise-convolution
    #: backbones (EfficientNet-Lite, MobileNet) on CPU, measured on 2 cores at 96-128 px; same results up to
    #: float rounding. Checkpoints are written contiguous as always.
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_range(self, "epochs", minimum=1, integer=True, why="a run trains at least one epoch")
        check_range(self, "steps", minimum=1, integer=True, optional=True, why="a run trains at least one step")
        check_range(self, "batch_size", minimum=1, integer=True)
        check_range(self, "eval_batch_size", minimum=1, integer=True, optional=True)
        check_range(self, "grad_accum", minimum=1, integer=True)
        check_range(self, "ema_decay", above=0, below=1, optional=True)
        check_range(self, "early_stopping_patience", minimum=1, integer=True, optional=True)
        check_range(self, "eval_every", minimum=1, integer=True)
        check_range(self, "num_workers", minimum=0, integer=True, optional=True)
        check_range(self, "checkpoint_every", minimum=1, integer=True)
        if not str(self.monitor).strip():
            raise FieldError("monitor", "expected a metric name such as val/accuracy, got an empty string")


class Hook:
    """Override what a method needs; every call gets the Trainer."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


def build_optimizer(param_groups: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [dict(g) for g in param_groups]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g.setdefault("lr", cfg.lr)
        g.setdefault("weight_decay", cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=cfg.betas)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, betas=cfg.betas)
    return torch.optim.SGD(groups, momentum=cfg.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
    """A per-step scheduler (None for 'none')."""
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "onecycle":
        total = max(total_steps, 1)
        pct = min(0.9, max(0.05, cfg.warmup_epochs * steps_per_epoch / total)) if cfg.warmup_epochs else 0.25
        if abs(pct * total - 1) < 1e-9:  # OneCycleLR's warm-up would end at step 0: 0 / 0 at the first step
            pct = 2 / total if total > 2 else 0.5 / total
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=pct)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.scheduler == "step":
        step = max(1, cfg.step_epochs * steps_per_epoch)

        def factor(i: int) -> float:
            return (i + 1) / warmup if i < warmup else cfg.gamma ** (i // step)
    else:
        floor = cfg.min_lr_ratio

        def factor(i: int) -> float:
            if i < warmup:
                return (i + 1) / warmup
            progress = (i - warmup) / max(1, total_steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingDiverged(FloatingPointError):
    """The training loss, or the model's outputs, became NaN or infinite; the message says where and what to
    change. The commands print it without a traceback."""


def check_batch_size(n_train: int, train: TrainConfig, world_size: int = 1) -> int:
    """The number of training batches per epoch; a ConfigError naming train.batch_size when it is 0 (a training
    set smaller than one batch, with drop_last)."""
    per_process = n_train // world_size
    batches = per_process // train.batch_size if train.drop_last else math.ceil(per_process / train.batch_size)
    if batches == 0:
        raise ConfigError(
            f"train.batch_size: the training set ({n_train} samples over {world_size} process(es)) is smaller than "
            f"one batch of {train.batch_size}; lower the batch size to at most {max(1, per_process)} "
            "(or set train.drop_last false)")
    return batches


def check_precision(train: TrainConfig, device: torch.device) -> None:
    """A ConfigError naming train.precision when the device cannot train in it (fp16 needs CUDA's scaler)."""
    if train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device, and this run trains on {device}; use bf16 "
                          "or fp32 (--train.precision fp32)")


def how_to_go_on(checkpoint_dir: Path, last: Path) -> str:
    """What a user can do when the last checkpoint of `checkpoint_dir` is damaged: continue from a copy of best
    when best is intact, else start a new run."""
    best = Path(checkpoint_dir) / "best"
    try:
        scalars = json.loads((find_checkpoint(best) / "state.json").read_text())
        epoch = int(scalars["epoch"])
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return "The run cannot go on from it: start a new run."
    return (f"To go on from the best checkpoint (epoch {epoch}) instead, replace it by a copy of best "
            f"(rm -r '{last}' && cp -r '{best}' '{last}') and resume again (epochs after {epoch} run again); "
            "or start a new run")


def default_num_workers(device: torch.device) -> int:
    """Loader workers: none on CPU (they would compete with the model for the cores), a few on GPU."""
    import os

    if device.type == "cpu":
        return 0
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def move_to(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def show_progress(progress: bool | None) -> bool:
    """A progress setting (train.progress, --progress/--no-progress): None means when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


@dataclass
class FitResult:
    best_metric: float | None
    best_epoch: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """See the module docstring. `run_dir` receives checkpoints/, metrics.jsonl and log.txt."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        val_dataset: Dataset | None,
        step_fn: StepFn,
        predict_fn: PredictFn,
        metrics_fn: MetricsFn,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        run_dir: str | Path,
        model_config: dict[str, Any],
        param_groups: Sequence[dict] | None = None,
        hooks: Sequence[Hook] = (),
        device: str | torch.device = "auto",
        seed: int = 0,
        dist_info: DistInfo | None = None,
        collate_fn: Callable | None = None,
        model_card: str | None = None,
        extra_files: Callable[[], dict[str, Any]] | None = None,
    ):
        self.dist = dist_info or DistInfo()
        self.device = device if isinstance(device, torch.device) else select_device(device, self.dist.local_rank)
        self.cfg, self.optim_cfg = train, optim
        self.run_dir = Path(run_dir)
        self.model_config = model_config
        self.model_card = model_card
        #: called at every checkpoint: {file name: payload} written into the checkpoint folder as well
        #: (see checkpoint.save_checkpoint), so that a checkpoint rebuilds the whole method on its own
        self.extra_files = extra_files
        self.seed = seed
        self.step_fn, self.predict_fn, self.metrics_fn = step_fn, predict_fn, metrics_fn
        self.hooks = list(hooks)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.collate_fn = collate_fn
        check_precision(train, self.device)
        self.model = model.to(self.device)
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = param_groups if param_groups is not None else [{"params": list(self.model.parameters())}]
        self.optimizer = build_optimizer(groups, optim)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if train.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay),
                use_buffers=True,
            )
        self.scaler = torch.amp.GradScaler("cuda", enabled=train.precision == "fp16")
        batches = check_batch_size(len(train_dataset), train, self.dist.world_size)
        self.steps_per_epoch = math.ceil(batches / train.grad_accum)
        if train.steps is not None:
            train = replace(train, epochs=math.ceil(train.steps / self.steps_per_epoch))
            self.cfg = train
            log.info("train.steps %d: %d epochs of %d steps", train.steps, train.epochs, self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, optim, self.steps_per_epoch * train.epochs,
                                         self.steps_per_epoch)
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        self.last_logs: dict[str, float] = {}
        self.progress = show_progress(train.progress) and self.dist.is_main

    # ------------------------------------------------------------------ data
    @property
    def num_workers(self) -> int:
        """Loader workers of every loader the Trainer makes (train.num_workers, else a default per device)."""
        return self.cfg.num_workers if self.cfg.num_workers is not None else default_num_workers(self.device)

    def train_loader(self, epoch: int) -> DataLoader:
        """The epoch's loader; its order and worker seeds depend on (seed, epoch) only."""
        sampler = DistributedSampler(self.train_dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        workers = self.num_workers
        return DataLoader(self.train_dataset, batch_size=self.cfg.batch_size, sampler=sampler,
                          num_workers=workers, pin_memory=self.device.type == "cuda", drop_last=self.cfg.drop_last,
                          generator=generator, collate_fn=self.collate_fn, persistent_workers=False)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """This rank's shard (rank, rank + world, ...) of `dataset`, in order, without padding."""
        shard = dataset if not self.dist.enabled else Subset(
            dataset, list(range(self.dist.rank, len(dataset), self.dist.world_size)))
        return DataLoader(shard, batch_size=self.cfg.eval_batch_size or self.cfg.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                          collate_fn=self.collate_fn)

    # ------------------------------------------------------------------ steps
    def autocast(self):
        if self.cfg.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _optimizer_step(self) -> None:
        if self.optim_cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        for hook in self.hooks:
            hook.on_step_end(self)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.ddp_model.train()
        loader = self.train_loader(epoch)
        sums: dict[str, float] = {}
        count = 0
        accum = self.cfg.grad_accum
        n_batches = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, unit="batch",
                   disable=not self.progress)
        for i, batch in enumerate(bar):
            batch = move_to(batch, self.device)
            last_of_group = (i + 1) % accum == 0 or i + 1 == n_batches
            sync = self.dist.enabled and not last_of_group
            context = self.ddp_model.no_sync() if sync else contextlib.nullcontext()
            with context:
                with self.autocast():
                    loss, logs = self.step_fn(self.ddp_model, batch)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch + 1}, batch {i}; "
                                             "lower the learning rate or check the inputs for NaN")
                self.scaler.scale(loss / accum).backward()
            if last_of_group:
                self._optimizer_step()
            logs = {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            self.last_logs = logs
            if self.progress:
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
        means = {f"train/{k}": v / max(count, 1) for k, v in sums.items()}
        if self.dist.enabled:  # average the logged means over ranks
            gathered = all_gather_objects(means, self.dist)
            means = {k: float(np.mean([g[k] for g in gathered])) for k in means}
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        return means

    @torch.no_grad()
    def predict(self, dataset: Dataset, model: nn.Module | None = None) -> dict[str, np.ndarray]:
        """Per-sample outputs of `predict_fn` over `dataset`, gathered from every rank, in dataset order."""
        model = model or self.eval_model
        was_training = model.training
        model.eval()
        outputs: dict[str, list[np.ndarray]] = {}
        for batch in self.eval_loader(dataset):
            batch = move_to(batch, self.device)
            with self.autocast():
                out = self.predict_fn(model, batch)
            for k, v in out.items():
                outputs.setdefault(k, []).append(v.detach().float().cpu().numpy() if torch.is_tensor(v) else
                                                 np.asarray(v))
        model.train(was_training)
        local = {k: np.concatenate(v) for k, v in outputs.items()}
        if not self.dist.enabled:
            return local
        parts = all_gather_objects(local, self.dist)
        n = len(dataset)
        merged = {}
        for k in local:
            first = parts[0][k]
            arr = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for rank, part in enumerate(parts):
                arr[rank::self.dist.world_size] = part[k]
            merged[k] = arr
        return merged

    def evaluate(self, dataset: Dataset, prefix: str = "val", model: nn.Module | None = None) -> dict[str, float]:
        outputs = self.predict(dataset, model)
        try:
            metrics = self.metrics_fn(outputs)
        except ValueError as exc:  # a model whose outputs turned NaN fails inside the metrics (the probe's C9)
            bad = [k for k, v in outputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
                   and not np.isfinite(v).all()]
            if not bad:
                raise
            raise TrainingDiverged(
                f"the {prefix} metrics failed in epoch {self.epoch + 1} ({exc}); the outputs {bad} hold NaN or infinite "
                "values: a model whose outputs turn NaN has diverged; lower the learning rate (optim.lr) or check the "
                "inputs for NaN") from None
        return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated and saved as 'model': the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def run_phase(
        self,
        name: str,
        parameters: Sequence[nn.Parameter],
        step_fn: StepFn,
        *,
        epochs: int,
        lr: float,
        epoch_offset: int,
        before_epoch: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
        grad_clip: float | None = None,
    ) -> list[dict[str, float]]:
        """Extra epochs that train only `parameters` with an Adam optimiser of their own (a method's phase, such
        as CIPL's last-layer epochs after each push), with the main loop's rules: the training set's loader
        (order seeded by `epoch_offset + e`, a number of the phase's own so it never repeats a main epoch's),
        autocast, the gradient scaler, gradients averaged over processes, optional clipping, a finite-loss
        check and progress bars. `step_fn(model, batch)` gets the unwrapped model (gradients are averaged here,
        not by DDP); `before_epoch` sets train/eval modes; `after_step` runs after every optimiser step (a
        projection, an EMA update). Returns the mean logs of each phase epoch.
        """
        from tqdm.auto import tqdm

        params = [p for p in parameters]
        optimizer = torch.optim.Adam(params, lr=lr)
        history = []
        for e in range(epochs):
            if before_epoch is not None:
                before_epoch()
            loader = self.train_loader(epoch_offset + e)
            bar = tqdm(loader, desc=f"{name} {e + 1}/{epochs}", leave=False, unit="batch", disable=not self.progress)
            sums: dict[str, float] = {}
            count = 0
            for i, batch in enumerate(bar):
                batch = move_to(batch, self.device)
                with self.autocast():
                    loss, logs = step_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"{name}: loss is {loss.item()} at phase epoch {e + 1}, batch {i}; "
                                             "lower the learning rate or check the inputs for NaN")
                self.scaler.scale(loss).backward()
                if self.dist.enabled:
                    for p in params:
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= self.dist.world_size
                if grad_clip:
                    self.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
            history.append({f"{name}/{k}": v / max(count, 1) for k, v in sums.items()})
        return history

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _training_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history}

    def save(self, name: str) -> Path | None:
        if not self.dist.is_main:
            return None
        return save_checkpoint(
            self.checkpoint_dir / name, self.eval_model, self.model_config,
            raw_model=self.model if self.ema is not None else None,
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            training_state=self._training_state(), with_rng=True, card=self.model_card,
            extra_files=self.extra_files() if self.extra_files is not None else None,
        )

    def resume(self) -> bool:
        """Continue from checkpoints/last. True once it is loaded.

        A missing or unreadable last checkpoint is a CheckpointError naming the file and saying how to go on
        (never a silent restart that would log epoch 1 again: the probe's F3/F4)."""
        try:
            folder = find_checkpoint(self.checkpoint_dir / "last")
        except CheckpointError:
            raise CheckpointError(f"{self.checkpoint_dir / 'last'}: no last checkpoint to resume from (the run "
                                  "stopped before its first checkpoint, or it was deleted); start a new run "
                                  "instead") from None
        try:
            load_weights(self.model, folder,
                         "raw_model.safetensors" if self.ema is not None else "model.safetensors")
            if self.ema is not None:
                load_weights(self.ema.module, folder)
            state = load_training_state(folder, self.optimizer, self.scheduler, self.scaler)
            self.epoch = int(state["epoch"])
            self.global_step = int(state["global_step"])
            self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
            self.bad_epochs = int(state["bad_epochs"])
            self.history = list(state["history"])
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, CheckpointError) else (
                f"{folder / 'state.json'}: {type(exc).__name__}: {exc}")
            raise CheckpointError(f"cannot resume from the last checkpoint: {detail}. {self._how_to_go_on(folder)}"
                                  ) from None
        if self.ema is not None:
            self.ema.n_averaged.fill_(max(1, self.global_step))
        if self.dist.is_main:  # drop lines of epochs logged after this checkpoint was written
            (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.history))
        log.info("resumed from %s after epoch %d", folder, self.epoch)
        return True

    def _how_to_go_on(self, last: Path) -> str:
        return how_to_go_on(self.checkpoint_dir, last)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> FitResult:
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        for hook in self.hooks:
            hook.on_train_start(self)
        epochs = tqdm(range(self.epoch, self.cfg.epochs), desc="training", unit="epoch", initial=self.epoch,
                      total=self.cfg.epochs, disable=not self.progress)
        stopped_early = False
        for epoch in epochs:
            start = time.perf_counter()
            metrics = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if self.val_dataset is not None and ((epoch + 1) % self.cfg.eval_every == 0
                                                 or epoch + 1 == self.cfg.epochs):
                metrics.update(self.evaluate(self.val_dataset, "val"))
            metrics["time/epoch_s"] = time.perf_counter() - start
            self.epoch = epoch + 1
            for hook in self.hooks:
                hook.on_epoch_end(self, metrics)
            value = metrics.get(self.cfg.monitor)
            improved = _improved(value, self.best_metric, self.cfg.monitor_mode)
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = float(value), self.epoch, 0
            elif value is not None:
                self.bad_epochs += 1
            self.history.append(metrics)
            if self.dist.is_main:
                self._log_epoch(metrics)
            if improved:
                self.save("best")
            patience = self.cfg.early_stopping_patience
            stop = self.stop_requested or (patience is not None and self.bad_epochs >= patience)
            stop = bool(broadcast_object(stop, self.dist))
            if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs or stop:
                self.save("last")
            barrier(self.dist)
            if self.progress:
                epochs.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()
                                    if k in ("train/loss", self.cfg.monitor)})
            if stop:
                stopped_early = True
                log.info("stopping early after epoch %d (%s did not improve for %d epochs)",
                         self.epoch, self.cfg.monitor, self.bad_epochs)
                break
        self._check_monitor_seen()
        if self.best_epoch is None and self.dist.is_main:  # no validation: the last epoch is the best
            self.save("best")
        barrier(self.dist)
        for hook in self.hooks:
            hook.on_train_end(self)
        return FitResult(self.best_metric, self.best_epoch, self.history, stopped_early)

    def _check_monitor_seen(self) -> None:
        """Warn when train.monitor names a metric that no validated epoch logged (a misspelt key): no epoch
        then counted as an improvement, early stopping never fired and `best` is the last epoch."""
        if self.val_dataset is None or not self.history or not self.dist.is_main:
            return
        if any(self.cfg.monitor in m for m in self.history):
            return
        seen = sorted({k for m in self.history for k in m if k.startswith("val/")})
        near = [k for k in seen if k.startswith(self.cfg.monitor)] or difflib.get_close_matches(
            self.cfg.monitor, seen, n=1)
        log.warning("train.monitor %r was never among the metrics of this run (%s%s): no epoch counted as an "
                    "improvement, so checkpoints/best holds the last epoch and early stopping could not fire",
                    self.cfg.monitor, ", ".join(seen) or "no val/ metrics",
                    f"; did you mean {near[0]!r}?" if near else "")

    def _log_epoch(self, metrics: dict[str, float]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch" and not k.startswith("time"))
        log.info("epoch %d/%d: %s (%.1f s)", metrics["epoch"], self.cfg.epochs, shown, metrics["time/epoch_s"])

    def write_final_metrics(self, metrics: dict[str, Any]) -> Path | None:
        if not self.dist.is_main:
            return None
        path = self.run_dir / "metrics.json"
        write_json(path, metrics)
        return path


