"""How CIPL learns: the published losses and schedule, as a recipe of medimg-core's training lifecycle.

Epochs 1..warm_epochs (joint, single images):
    L = CE + 0.02 Clst + 0.02 relu(2 - Sep)
Later epochs (joint, label-sharing pairs, EMA teacher on second views):
    L = 1 CE + 0.02 Clst + 0.02 relu(2 - Sep) + 0.5 L_cross + 0.5 L_map + 10 L_pred
After each epoch in `push_epochs`: push (one prototype per training image), then `last_layer_epochs`
epochs of the last layer alone (the full pair loss; weights projected to the non-negative class blocks
after every step), then validation. Checkpoints are selected among these pushed states only, on a
validation split (never the test split); every checkpoint whose prototypes are a push's carries that push's
index (push_index.json: which training image and cell each prototype is).

Joint optimiser: Adam without weight decay, backbone 1e-4, add-on and prototypes 3e-3 (the last layer is
not in it), halved after epochs 10, 20, 25, 30 and 35. The EMA teacher (momentum 0.999) starts as a copy
of the student at the first pairing step and follows it after every optimiser step.

    run = train_cipl(cfg)        # = fit_run(CIPLRecipe(), cfg): the run folder (medimg_core.runs.Run)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

# The configs and the run loader live in cipl.config and cipl.run; importing them here keeps
# `from cipl.train import CIPLConfig, load_cipl, ...` working.
from cipl.config import (  # noqa: F401
    CIPLConfig,
    CIPLLossConfig,
    CIPLModelConfig,
    ScheduleConfig,
    default_monitor,
)
from cipl.data import PairDataset
from cipl.evaluate import box_localisation_metrics, localisation_metrics, prototype_placement
from cipl.explain import gallery_figures
from cipl.losses import (
    classification_loss,
    cluster_separation,
    map_alignment,
    prediction_alignment,
    shared_targets,
)
from cipl.model import CIPLWithTeacher, LabelSpace, class_probabilities
from cipl.push import PUSH_INDEX_FILE, PushIndex, find_push_dir, push_prototypes
from cipl.run import (  # noqa: F401
    KIND,
    build_model,
    display_fn,
    eval_transform_for,
    load_cipl,
    load_split,
    model_card,
    output_task,
    pretrained_source_of,
)
from medimg_core.checkpoint import find_checkpoint
from medimg_core.config import ConfigError
from medimg_core.data import MedicalImageDataset
from medimg_core.data.preprocess import Preprocess
from medimg_core.data.preprocess import load_split as load_data_split
from medimg_core.estimator import with_transform
from medimg_core.experiment import Built, FitContext, Splits, TaskFunctions, fit_run
from medimg_core.metrics import classification_metrics
from medimg_core.pretrained import checkpoint_config
from medimg_core.runs import Run
from medimg_core.training import Hook, Trainer

log = logging.getLogger("medimg")


def _unwrap(model: nn.Module) -> CIPLWithTeacher:
    return getattr(model, "module", model)


@dataclass
class PhaseState:
    """What the step function needs to know about the schedule (kept current by CIPLSchedule)."""

    epochs_done: int = 0
    warm_epochs: int = 0

    @property
    def warm(self) -> bool:
        return self.epochs_done < self.warm_epochs


def cipl_loss(out: dict[str, torch.Tensor], batch: dict, cfg: CIPLLossConfig, labels: LabelSpace,
              prototypes_per_class: int, pairs: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The published loss of one step (warm-up: CE + cluster + separation; pairs: all six terms)."""
    ml = labels.multilabel
    if pairs:
        y = torch.cat([batch["labels_a"], batch["labels_b"]])
        target = y[:, :-1] if ml else torch.cat([batch["target_a"], batch["target_b"]])
    else:
        y = batch["labels_a"]
        target = y[:, :-1] if ml else batch["target_a"]
    ce = classification_loss(out["logits"].float(), target, ml)
    clst, sep = cluster_separation(out["min_distances"].float(), y, prototypes_per_class)
    sep_hinge = torch.relu(cfg.separation_margin - sep)
    loss = cfg.ce * ce + cfg.cluster * clst + cfg.separation * sep_hinge
    logs = {"ce": float(ce.detach()), "cluster": float(clst.detach()), "separation": float(sep.detach())}
    if pairs:
        if ml:
            shared = shared_targets(batch["labels_a"][:, :-1], batch["labels_b"][:, :-1], True)
        else:
            shared = shared_targets(batch["target_a"], batch["target_b"], False)
        cross = classification_loss(out["co_logits"].float(), torch.cat([shared, shared]), ml)
        inte = map_alignment(out["maps"].float(), out["teacher_maps"].float())
        pred = prediction_alignment(out["logits"].float(), out["teacher_logits"].float(), ml, cfg.temperature)
        loss = loss + cfg.cross * cross + cfg.map_align * inte + cfg.pred_align * pred
        logs.update(cross=float(cross.detach()), map_align=float(inte.detach()), pred_align=float(pred.detach()))
    return loss, logs


def task_functions(labels: LabelSpace, loss_cfg: CIPLLossConfig, state: PhaseState,
                   prototypes_per_class: int) -> TaskFunctions:
    """The Trainer's step (warm-up or pairs, per `state`), predict ("scores" (B, L_out), "target") and metrics."""

    def step_fn(model: nn.Module, batch: dict):
        module = _unwrap(model)
        if state.warm:
            out = model(batch["image_a"])
            return cipl_loss(out, batch, loss_cfg, labels, prototypes_per_class, pairs=False)
        if not bool(module.teacher_ready):
            module.init_teacher()
        images = torch.cat([batch["image_a"], batch["image_b"]])
        views = torch.cat([batch["view_a"], batch["view_b"]])
        out = model(images, views, pairs=True)
        return cipl_loss(out, batch, loss_cfg, labels, prototypes_per_class, pairs=True)

    def predict_fn(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        target = batch["target"]
        if labels.multilabel and labels.reference_index is not None:
            keep = [i for i in range(target.shape[1]) if i != labels.reference_index]
            target = target[:, keep]
        return {"scores": class_probabilities(out["logits"].float(), labels.multilabel), "target": target}

    def metrics_fn(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        task = output_task(labels)
        target = outputs["target"] if labels.multilabel else outputs["target"].astype(np.int64)
        return classification_metrics(task, target, outputs["scores"], list(labels.output_names))

    return TaskFunctions(step_fn, predict_fn, metrics_fn)



class CIPLSchedule(Hook):
    """The published schedule around the Trainer's epochs: warm-up/pairing switch, step-wise learning rates,
    EMA teacher updates, and after each push epoch the push, the last-layer phase (`Trainer.run_phase`) and a
    validation whose metrics ("val/pushed_*") are the only ones checkpoint selection looks at.

    It also keeps the latest push's index for the checkpoints (`extra_files`): a checkpoint gets push_index.json
    while the model's prototypes are still that push's (after the push and the last-layer phase, which leaves
    them alone; not once joint training has moved them).
    """

    def __init__(self, cfg: CIPLConfig, state: PhaseState, pairs: PairDataset, push_set: Dataset,
                 loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]], model: CIPLWithTeacher,
                 display: Callable[[torch.Tensor], np.ndarray]):
        self.cfg, self.state, self.pairs, self.push_set = cfg, state, pairs, push_set
        self.loss_fn = loss_fn
        self.model = model
        self.display = display
        sc = cfg.schedule
        self.base_lrs = [sc.lr_backbone, sc.lr_add_on, sc.lr_prototypes]
        #: (the prototype vectors the latest push left, its index); None before the first push
        self.pushed: tuple[torch.Tensor, PushIndex] | None = None

    def _sync(self, trainer: Trainer) -> None:
        done = trainer.epoch
        self.state.epochs_done = done
        self.pairs.mode = "single" if self.state.warm else "pair"
        factor = self.cfg.schedule.lr_gamma ** sum(1 for m in self.cfg.schedule.lr_milestones if m <= done)
        for group, base in zip(trainer.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.epoch > 0:
            self._restore_push(trainer)
        self._sync(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        _unwrap(trainer.model).update_teacher()

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        done = trainer.epoch
        if done in self.cfg.schedule.push_epochs:
            self.push_and_tune(trainer, metrics, done)
        self._sync(trainer)

    def push_and_tune(self, trainer: Trainer, metrics: dict[str, float], done: int) -> None:
        module = _unwrap(trainer.model)
        start = time.perf_counter()
        loader = DataLoader(self.push_set, batch_size=trainer.cfg.eval_batch_size or trainer.cfg.batch_size,
                            shuffle=False, num_workers=trainer.num_workers)
        directory = f"prototypes/epoch-{done:03d}"
        out_dir = trainer.run_dir / directory if trainer.dist.is_main else None
        result = push_prototypes(module.student, loader, out_dir=out_dir, device=trainer.device,
                                 display=self.display, progress=trainer.progress)
        self.pushed = (module.student.prototypes.detach().cpu().clone(),
                       PushIndex.of_result(result, directory, done))
        metrics["push/mean_distance_moved"] = result.stats["mean_distance_moved"]
        metrics["push/time_s"] = time.perf_counter() - start
        if self.cfg.schedule.last_layer_epochs > 0:
            before = trainer.evaluate(trainer.val_dataset, "val") if trainer.val_dataset is not None else {}
            metrics.update({f"push/before_last_layer_{k.removeprefix('val/')}": v for k, v in before.items()
                            if "/" not in k.removeprefix("val/")})
            history = self.train_last_layer(trainer, done)
            metrics.update(history[-1])
        if trainer.val_dataset is not None:
            after = trainer.evaluate(trainer.val_dataset, "val")
            metrics.update({k.replace("val/", "val/pushed_", 1): v for k, v in after.items()})
        log.info("push after epoch %d: prototypes moved by %.4f on average (%.1f s)", done,
                 result.stats["mean_distance_moved"], metrics["push/time_s"])

    def train_last_layer(self, trainer: Trainer, done: int) -> list[dict[str, float]]:
        """Last-layer epochs: Adam on the last layer only, the full pair loss, projection and teacher update after
        each step; the student in eval mode (frozen features, BatchNorm statistics included: pushed prototypes stay
        exact). Loader order seeded by 100_000 + 100 * done + e, never a main epoch's. Gradient clipping stays off
        here, as published (the gradient scaler acts only under fp16). Returns the mean logs of each epoch
        ("last_layer/loss", "last_layer/ce", ...)."""
        module = _unwrap(trainer.model)
        layer = module.student.last_layer
        layer.weight.requires_grad_(True)
        layer.weight.grad = None
        was_mode = self.pairs.mode
        self.pairs.mode = "pair"

        def frozen_features() -> None:
            module.train()
            module.student.eval()

        def step_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
            if not bool(model.teacher_ready):
                model.init_teacher()
            out = model(torch.cat([batch["image_a"], batch["image_b"]]),
                        torch.cat([batch["view_a"], batch["view_b"]]), pairs=True, frozen=True)
            return self.loss_fn(out, batch, pairs=True)

        def after_step() -> None:
            module.student.project_last_layer()
            module.update_teacher()

        try:
            return trainer.run_phase("last_layer", [layer.weight], step_fn,
                                     epochs=self.cfg.schedule.last_layer_epochs, lr=self.cfg.schedule.lr_last_layer,
                                     epoch_offset=100_000 + 100 * done, before_epoch=frozen_features,
                                     after_step=after_step, grad_clip=None)
        finally:
            layer.weight.requires_grad_(False)
            module.train()
            self.pairs.mode = was_mode

    def extra_files(self) -> dict[str, Any]:
        """The files of every checkpoint besides the weights: the latest push's index while the prototypes are
        still that push's."""
        if self.pushed is None:
            return {}
        vectors, index = self.pushed
        if not torch.equal(self.model.student.prototypes.detach().cpu(), vectors):
            return {}
        return {PUSH_INDEX_FILE: index.to_dict()}

    def _restore_push(self, trainer: Trainer) -> None:
        """After a resume: the push index of the checkpoint resumed from (or, for runs written before checkpoints
        carried one, the push folder whose prototypes equal the model's)."""
        student = self.model.student
        try:
            last = find_checkpoint(trainer.checkpoint_dir / "last")
        except Exception:
            return
        index = PushIndex.read(last)
        if index is None:
            folder = find_push_dir(trainer.run_dir, student)
            if folder is None:
                return
            index = PushIndex.from_folder(folder)
            index.directory = str(folder.relative_to(trainer.run_dir))
        self.pushed = (student.prototypes.detach().cpu().clone(), index)


def load_data(cfg: CIPLConfig) -> dict[str, MedicalImageDataset]:
    """train (raw, for the pairs), push (train with eval transforms), val and test (eval transforms)."""
    first = load_data_split(cfg.data, "train")
    channels = cfg.data.channels or first.card.channels
    tf = eval_transform_for(cfg, channels)
    out = {"train": first, "push": load_data_split(cfg.data, "train", transform=tf)}
    for key in ("val", "test"):
        out[key] = load_data_split(cfg.data, key, transform=tf)
    return out


def check_config(cfg: CIPLConfig, labels: LabelSpace, train: MedicalImageDataset) -> None:
    """Refuse schedules and prototype counts that cannot work, before any training."""
    sc = cfg.schedule
    epochs = cfg.train.epochs
    if not sc.push_epochs:
        raise ConfigError("schedule.push_epochs is empty: CIPL needs at least one push (checkpoints are chosen "
                          "among pushed models)")
    bad = [e for e in sc.push_epochs if not 1 <= e <= epochs]
    if bad:
        raise ConfigError(f"schedule.push_epochs {list(bad)} fall outside epochs 1..{epochs} (train.epochs)")
    if sc.warm_epochs >= max(sc.push_epochs):
        log.warning("schedule.warm_epochs=%d covers every push epoch: no pairing phase before the push",
                    sc.warm_epochs)
    counts = labels.class_labels(np.asarray(train.targets)).sum(0).numpy()
    m = cfg.model.prototypes_per_class
    short = {n: int(c) for n, c in zip(labels.class_names, counts, strict=True) if c < m}
    if short:
        raise ConfigError(f"model.prototypes_per_class={m}, but these classes have fewer training images: {short}; "
                          "each training image hosts at most one prototype after the push")
    if counts.sum() < labels.num_classes * m:
        raise ConfigError(f"{labels.num_classes * m} prototypes need as many distinct training images; the "
                          f"training split has {len(train)}")


class CIPLRecipe:
    """CIPL's side of `medimg_core.experiment.fit_run`: the data (pairs over the training split, the push set),
    the student-teacher model and its schedule, and the report (localisation, prototype placement, gallery)."""

    method = "cipl"

    def load_data(self, cfg: CIPLConfig) -> Splits:
        data = load_data(cfg)
        return Splits(data["train"], data["val"], data["test"], data["train"].card, extra={"push": data["push"]})

    def splits_of(self, cfg: CIPLConfig, train: MedicalImageDataset, val: MedicalImageDataset | None) -> Splits:
        """Datasets given to `fit`: the pairs read the training images themselves (its transform is not used), the
        push set and val are copies with the evaluation transform (the originals stay as they are)."""
        tf = eval_transform_for(cfg, cfg.data.channels or train.card.channels)
        return Splits(train, None if val is None else with_transform(val, tf), None, train.card,
                      extra={"push": with_transform(train, tf)})

    def build(self, cfg: CIPLConfig, splits: Splits, device: Any, dist_info: Any) -> Built:
        card = splits.card
        channels = cfg.data.channels or card.channels
        labels = LabelSpace.for_task(card.task, card.class_names, cfg.model.reference_class)
        if card.task == "ordinal":
            log.info("%s is ordinal: CIPL treats the grades as classes (softmax)", card.name)
        check_config(cfg, labels, splits.train)
        if cfg.train.monitor == "auto":
            cfg.train.monitor = default_monitor(labels)
        model = build_model(cfg, labels, channels)
        state = PhaseState(0, cfg.schedule.warm_epochs)
        pairs = PairDataset(splits.train, labels, cfg.data, cfg.views, channels)
        task = task_functions(labels, cfg.loss, state, cfg.model.prototypes_per_class)

        def loss_fn(out: dict[str, torch.Tensor], batch: dict, pairs: bool) -> tuple[torch.Tensor, dict[str, float]]:
            return cipl_loss(out, batch, cfg.loss, labels, cfg.model.prototypes_per_class, pairs)

        schedule = CIPLSchedule(cfg, state, pairs, splits.extra["push"], loss_fn, model, display_fn(cfg, channels))
        preprocess = Preprocess.from_config(cfg.data, card, channels)
        model_config = checkpoint_config(KIND, cfg, card, preprocess, package="cipl", labels=labels.to_dict(),
                                         in_chans=channels)
        sc = cfg.schedule
        return Built(model, task, model_config, model_card(cfg, card, labels), cfg.model.backbone, train_set=pairs,
                     param_groups=model.student.parameter_groups(sc.lr_backbone, sc.lr_add_on, sc.lr_prototypes),
                     hooks=[schedule], extra_files=schedule.extra_files, output_task=output_task(labels),
                     output_names=list(labels.output_names),
                     pretrained_source=pretrained_source_of(model.student.backbone), state={"labels": labels})

    def report(self, ctx: FitContext) -> dict[str, Any]:
        """task, classes and outputs; localisation on the test split where the data have masks, the box protocol where
        they have boxes (ChestX-ray14); the best checkpoint's
        push folder, where its prototypes sit (prototype_placement) and the gallery."""
        cfg: CIPLConfig = ctx.cfg
        labels: LabelSpace = ctx.built.state["labels"]
        card = ctx.splits.card
        student = ctx.trainer.eval_model.student.eval()
        out: dict[str, Any] = {"task": output_task(labels), "classes": list(labels.class_names),
                               "outputs": list(labels.output_names)}
        if card.has_masks and ctx.splits.test is not None:
            loc = localisation_metrics(student, ctx.splits.test, device=ctx.device, iou_threshold=cfg.iou_threshold,
                                       batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, seed=cfg.seed,
                                       kind=cfg.localisation_map)
            if loc is not None:
                out["test_localisation"] = loc
        if ctx.splits.test is not None:
            boxes = box_localisation_metrics(student, ctx.splits.test, device=ctx.device, map_threshold=cfg.iou_threshold,
                                             batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                                             n_boot=cfg.bootstrap, seed=cfg.seed, kind=cfg.localisation_map)
            if boxes is not None:
                out["test_box_localisation"] = boxes
        index = PushIndex.read(ctx.run.checkpoint("best"), ctx.run)
        if index is not None and index.folder is not None:
            out["prototypes"] = index.directory
            if card.has_masks:
                placement = prototype_placement(index.to_dict(), ctx.splits.extra["push"])
                if placement is not None:
                    out["prototype_placement"] = placement
            gallery_figures(student, index, ctx.run.figures_dir / "gallery")
        return out


def train_cipl(cfg: CIPLConfig, resume_dir: str | Path | None = None) -> Run:
    """Train CIPL with the published schedule, select on validation among pushed states, evaluate on test
    (with localisation metrics where the data have masks), draw the gallery; return the run folder."""
    return fit_run(CIPLRecipe(), cfg, resume_dir)
