"""How CIPL learns: the published losses and schedule on medimg-core's training loop.

Epochs 1..warm_epochs (joint, single images):
    L = CE + 0.02 Clst + 0.02 relu(2 - Sep)
Later epochs (joint, label-sharing pairs, EMA teacher on second views):
    L = 1 CE + 0.02 Clst + 0.02 relu(2 - Sep) + 0.5 L_cross + 0.5 L_map + 10 L_pred
After each epoch in `push_epochs`: push (one prototype per training image), then `last_layer_epochs`
epochs of the last layer alone (the full pair loss; weights projected to the non-negative class blocks
after every step), then validation. Checkpoints are selected among these pushed states only, on a
validation split (never the test split).

Joint optimiser: Adam without weight decay, backbone 1e-4, add-on and prototypes 3e-3 (the last layer is
not in it), halved after epochs 10, 20, 25, 30 and 35. The EMA teacher (momentum 0.999) starts as a copy
of the student at the first pairing step and follows it after every optimiser step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

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
from cipl.evaluate import localisation_metrics, prototype_placement
from cipl.explain import gallery_figures
from cipl.losses import (
    classification_loss,
    cluster_separation,
    map_alignment,
    prediction_alignment,
    shared_targets,
)
from cipl.model import CIPL, CIPLWithTeacher, LabelSpace, class_probabilities
from cipl.push import find_push_dir, load_push, push_prototypes
from cipl.run import (  # noqa: F401
    build_model,
    display_fn,
    eval_transform_for,
    load_cipl,
    load_split,
    output_task,
)
from medimg_core.baseline import peak_memory_mb
from medimg_core.checkpoint import load_weights
from medimg_core.config import ConfigError, config_to_dict
from medimg_core.data import DatasetCard, MedicalImageDataset, load_dataset
from medimg_core.distributed import cleanup_distributed, init_distributed, seed_everything, select_device
from medimg_core.training import Hook, Trainer, move_to

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


def task_functions(labels: LabelSpace, loss_cfg: CIPLLossConfig, state: PhaseState, prototypes_per_class: int):
    """(step_fn, predict_fn, metrics_fn) for the Trainer."""
    from medimg_core.metrics import classification_metrics

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
        task = "multilabel" if labels.multilabel else ("binary" if labels.num_classes == 2 else "multiclass")
        target = outputs["target"] if labels.multilabel else outputs["target"].astype(np.int64)
        return classification_metrics(task, target, outputs["scores"], list(labels.output_names))

    return step_fn, predict_fn, metrics_fn


class CIPLSchedule(Hook):
    """The published schedule around the Trainer's epochs: warm-up/pairing switch, step-wise learning rates,
    EMA teacher updates, and after each push epoch the push, the last-layer phase and a validation whose
    metrics ("val/pushed_*") are the only ones checkpoint selection looks at."""

    def __init__(self, cfg: CIPLConfig, state: PhaseState, pairs: PairDataset, push_set: MedicalImageDataset,
                 loss_fn, run_dir: Path, display):
        self.cfg, self.state, self.pairs, self.push_set = cfg, state, pairs, push_set
        self.loss_fn = loss_fn
        self.run_dir = run_dir
        self.display = display
        sc = cfg.schedule
        self.base_lrs = [sc.lr_backbone, sc.lr_add_on, sc.lr_prototypes]

    def _sync(self, trainer: Trainer) -> None:
        done = trainer.epoch
        self.state.epochs_done = done
        self.pairs.mode = "single" if self.state.warm else "pair"
        factor = self.cfg.schedule.lr_gamma ** sum(1 for m in self.cfg.schedule.lr_milestones if m <= done)
        for group, base in zip(trainer.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def on_train_start(self, trainer: Trainer) -> None:
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
        out_dir = self.run_dir / "prototypes" / f"epoch-{done:03d}" if trainer.dist.is_main else None
        result = push_prototypes(module.student, loader, out_dir=out_dir, device=trainer.device,
                                 display=self.display, progress=trainer.progress)
        metrics["push/mean_distance_moved"] = result.stats["mean_distance_moved"]
        metrics["push/time_s"] = time.perf_counter() - start
        if self.cfg.schedule.last_layer_epochs > 0:
            before = trainer.evaluate(trainer.val_dataset, "val") if trainer.val_dataset is not None else {}
            metrics.update({f"push/before_last_layer_{k.removeprefix('val/')}": v for k, v in before.items()
                            if "/" not in k.removeprefix("val/")})
            self.train_last_layer(trainer, done)
        if trainer.val_dataset is not None:
            after = trainer.evaluate(trainer.val_dataset, "val")
            metrics.update({k.replace("val/", "val/pushed_", 1): v for k, v in after.items()})
        log.info("push after epoch %d: prototypes moved by %.4f on average (%.1f s)", done,
                 result.stats["mean_distance_moved"], metrics["push/time_s"])

    def train_last_layer(self, trainer: Trainer, done: int) -> None:
        """Last-layer epochs: Adam on the last layer only, the full pair loss, projection after each step."""
        from tqdm.auto import tqdm

        module = _unwrap(trainer.model)
        layer = module.student.last_layer
        layer.weight.requires_grad_(True)
        layer.weight.grad = None
        optimizer = torch.optim.Adam([layer.weight], lr=self.cfg.schedule.lr_last_layer)
        was_mode = self.pairs.mode
        self.pairs.mode = "pair"
        module.train()
        module.student.eval()  # frozen features, BatchNorm statistics included: pushed prototypes stay exact
        for e in range(self.cfg.schedule.last_layer_epochs):
            loader = trainer.train_loader(100_000 + 100 * done + e)
            bar = tqdm(loader, desc=f"last layer {e + 1}/{self.cfg.schedule.last_layer_epochs}", leave=False,
                       disable=not trainer.progress)
            for batch in bar:
                batch = move_to(batch, trainer.device)
                if not bool(module.teacher_ready):
                    module.init_teacher()
                with trainer.autocast():
                    out = module(torch.cat([batch["image_a"], batch["image_b"]]),
                                 torch.cat([batch["view_a"], batch["view_b"]]), pairs=True, frozen=True)
                    loss, _ = self.loss_fn(out, batch, pairs=True)
                loss.backward()
                if trainer.dist.enabled:
                    torch.distributed.all_reduce(layer.weight.grad)
                    layer.weight.grad /= trainer.dist.world_size
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                module.student.project_last_layer()
                module.update_teacher()
        layer.weight.requires_grad_(False)
        module.train()
        self.pairs.mode = was_mode


def pretrained_source_of(backbone: Any) -> str:
    """Where the backbone's weights came from ("none", "imagenet-lite0:<folder>", ...), through a StageBackbone."""
    return str(getattr(backbone, "pretrained_source", None) or getattr(getattr(backbone, "backbone", None),
                                                                        "pretrained_source", ""))


def load_data(cfg: CIPLConfig) -> dict[str, MedicalImageDataset]:
    """train (raw, for the pairs), push (train with eval transforms), val and test (eval transforms)."""
    first = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **cfg.data.options)
    channels = cfg.data.channels or first.card.channels
    tf = eval_transform_for(cfg, channels)
    out = {"train": first,
           "push": load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, transform=tf,
                                **cfg.data.options)}
    for key, split in (("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        out[key] = load_dataset(cfg.data.dataset, cfg.data.root, split, transform=tf, **cfg.data.options)
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


def train_cipl(cfg: CIPLConfig, resume_dir: str | Path | None = None) -> Path:
    """Train CIPL with the published schedule, select on validation among pushed states, evaluate on test
    (with localisation metrics where the data have masks), draw the gallery; return the run folder."""
    from medimg_core.figures import training_curves
    from medimg_core.metrics import metrics_with_ci
    from medimg_core.runs import prepare_run

    start = time.perf_counter()
    dist_info = init_distributed(select_device(cfg.device))
    device = select_device(cfg.device, dist_info.local_rank)
    seed_everything(cfg.seed, cfg.train.deterministic)
    data = load_data(cfg)
    card = data["train"].card
    channels = cfg.data.channels or card.channels
    labels = LabelSpace.for_task(card.task, card.class_names, cfg.model.reference_class)
    if card.task == "ordinal":
        log.info("%s is ordinal: CIPL treats the grades as classes (softmax)", card.name)
    check_config(cfg, labels, data["train"])
    if cfg.train.monitor == "auto":
        cfg.train.monitor = default_monitor(labels)
    run_dir = prepare_run(cfg, "cipl", card.name, cfg.model.backbone, dist_info, resume_dir)
    model = build_model(cfg, labels, channels)
    state = PhaseState(0, cfg.schedule.warm_epochs)
    pairs = PairDataset(data["train"], labels, cfg.data, cfg.views, channels)
    step_fn, predict_fn, metrics_fn = task_functions(labels, cfg.loss, state, cfg.model.prototypes_per_class)
    display = display_fn(cfg, channels)

    def loss_fn(out, batch, pairs):
        return cipl_loss(out, batch, cfg.loss, labels, cfg.model.prototypes_per_class, pairs)

    schedule = CIPLSchedule(cfg, state, pairs, data["push"], loss_fn, run_dir, display)
    model_config = {"kind": "cipl", "config": config_to_dict(cfg), "card": card.to_dict(),
                    "labels": labels.to_dict(), "in_chans": channels}
    sc = cfg.schedule
    trainer = Trainer(
        model, pairs, data["val"], step_fn, predict_fn, metrics_fn, train=cfg.train, optim=cfg.optim,
        run_dir=run_dir, model_config=model_config, device=device, seed=cfg.seed, dist_info=dist_info,
        param_groups=model.student.parameter_groups(sc.lr_backbone, sc.lr_add_on, sc.lr_prototypes),
        hooks=[schedule], model_card=_model_card(cfg, card, labels),
    )
    result = trainer.fit(resume=resume_dir is not None)
    load_weights(trainer.eval_model, trainer.checkpoint_dir / "best")
    test_out = trainer.predict(data["test"])
    if dist_info.is_main:
        student = trainer.eval_model.student.eval()
        task = output_task(labels)
        target = test_out["target"] if labels.multilabel else test_out["target"].astype(np.int64)
        test = metrics_with_ci(task, target, test_out["scores"], list(labels.output_names), n_boot=cfg.bootstrap,
                               seed=cfg.seed)
        final: dict[str, Any] = {
            "method": "cipl", "dataset": card.name, "backbone": cfg.model.backbone, "task": task,
            "pretrained_source": pretrained_source_of(model.student.backbone),
            "classes": list(labels.class_names), "outputs": list(labels.output_names), "test": test,
            "best_epoch": result.best_epoch, "monitor": cfg.train.monitor, "best_val": result.best_metric,
            "epochs_run": len(result.history), "sizes": {k: len(v) for k, v in data.items()},
        }
        if card.has_masks:
            loc = localisation_metrics(student, data["test"], device=device, iou_threshold=cfg.iou_threshold,
                                       batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, seed=cfg.seed,
                                       kind=cfg.localisation_map)
            if loc is not None:
                final["test_localisation"] = loc
        push_dir = _push_dir_for(run_dir, student)
        if push_dir is not None:
            final["prototypes"] = str(push_dir.relative_to(run_dir))
            if card.has_masks:
                placement = prototype_placement(load_push(push_dir), data["push"])
                if placement is not None:
                    final["prototype_placement"] = placement
            gallery_figures(student, push_dir, run_dir / "figures" / "gallery")
        final.update(wall_time_s=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(), device=str(device),
                     world_size=dist_info.world_size)
        trainer.write_final_metrics(final)
        training_curves(result.history, run_dir / "figures" / "training_curves.png")
    cleanup_distributed()
    return run_dir


def _push_dir_for(run_dir: Path, student: CIPL) -> Path | None:
    return find_push_dir(run_dir, student.cpu())


def _model_card(cfg: CIPLConfig, card: DatasetCard, labels: LabelSpace) -> str:
    ref = f"; reference class {labels.class_names[-1]!r}" if labels.multilabel else ""
    return (f"# CIPL (Cross- and Intra-image Prototypical Learning) on {card.title}\n\n"
            f"- backbone {cfg.model.backbone}, {cfg.model.prototypes_per_class} prototypes x "
            f"{cfg.model.prototype_dim} channels per class, {labels.num_classes} prototype classes{ref}\n"
            f"- outputs: {', '.join(labels.output_names)} "
            f"({'two-way softmax against the reference' if labels.multilabel else 'softmax'})\n"
            f"- input {cfg.data.image_size} px, {cfg.data.channels or card.channels} channels\n"
            f"- dataset licence: {card.license or 'see the dataset card'}\n")


def push_run(run_dir: str | Path, checkpoint: str = "best", split: str | None = None, device: str = "cpu",
             progress: bool = False) -> dict[str, Any]:
    """`cipl push`: project the prototypes of a run's checkpoint onto its training split (or `split`), save
    the pushed model as checkpoints/pushed and the artefacts under prototypes/push-<checkpoint>/."""
    from medimg_core.checkpoint import save_checkpoint

    student, info = load_cipl(run_dir, checkpoint)
    cfg: CIPLConfig = info["cfg"]
    run_dir = Path(info["run_dir"])
    tf = eval_transform_for(cfg, info["in_chans"])
    ds = load_dataset(cfg.data.dataset, cfg.data.root, split or cfg.data.train_split, transform=tf,
                      **cfg.data.options)
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, shuffle=False)
    out_dir = run_dir / "prototypes" / f"push-{checkpoint}-{split or cfg.data.train_split}"
    student = student.to(device)
    result = push_prototypes(student, loader, out_dir=out_dir, device=device,
                             display=display_fn(cfg, info["in_chans"]), progress=progress)
    module = build_model(cfg, info["labels_obj"], info["in_chans"], pretrained=False)
    load_weights(module, info["checkpoint"])
    module.student.load_state_dict(student.cpu().state_dict())
    config = {k: v for k, v in info.items() if k not in ("cfg", "card_obj", "labels_obj", "run_dir", "checkpoint",
                                                         "medimg_core_version", "torch_version")}
    folder = save_checkpoint(run_dir / "checkpoints" / "pushed", module, config)
    return {"checkpoint": str(folder), "prototypes": str(out_dir), "n_images": len(ds), **result.stats}
