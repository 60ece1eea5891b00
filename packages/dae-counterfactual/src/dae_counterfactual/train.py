"""Training the diffusion autoencoder on medimg-core's training loop, and what a run folder holds (the configs
are in `dae_counterfactual.config`, rebuilding and loading a trained model in `dae_counterfactual.run`).

Loss (DiffAE, no other term): with t ~ U{0 .. T-1}, noise ~ N(0, I) and x0 in [-1, 1],

    L = || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t, Enc(x0)) - noise ||^2

or, with diffusion.prediction "v", the same network trained to output v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0
(per timestep this is the noise loss weighted by 1 / abar_t = 1 + 1 / SNR_t: the high-noise steps, where only
z_sem can tell the denoiser what the image holds, are no longer weighted down by SNR_t).

Adam, lr 1e-4, no weight decay, gradient-norm clip 1, EMA of the weights (the EMA copy is what
checkpoints/*/model.safetensors holds and what inference uses; the raw weights are kept for
resuming), mixed precision on CUDA only. The Trainer validates the noise-prediction MSE on the
validation split with a fixed noise and timestep per image (seeded by the image id).

A run folder after `dae-cf train`, `encode`, `fit-boundary`:

    config.yaml, metrics.json (train / reconstruction / boundary sections), metrics.jsonl, log.txt
    checkpoints/{best,last}/   EMA weights, raw weights, optimizer state (resume)
    latents/<split>.safetensors + <split>.json   z_sem of every image, targets, ids
    boundary.json              the fitted LatentBoundary
    figures/                   training curves, reconstructions, calibration
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dae_counterfactual.boundary import LatentBoundary

# The configs and the run loader live in dae_counterfactual.config and dae_counterfactual.run; importing
# them here keeps `from dae_counterfactual.train import DAEConfig, load_dae, ...` working.
from dae_counterfactual.config import BoundaryConfig, DAEConfig
from dae_counterfactual.evaluate import boundary_metrics, image_distances
from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.run import (  # noqa: F401
    KIND,
    LoadedRun,
    build_dae,
    checkpoint_config,
    eval_datasets,
    load_dae,
    model_card,
    require_run_dir,
    save_dae,
)
from medimg_core.baseline import build_transforms, peak_memory_mb
from medimg_core.checkpoint import load_weights, write_json
from medimg_core.config import ConfigError, config_to_dict
from medimg_core.data import MedicalImageDataset, load_dataset
from medimg_core.distributed import cleanup_distributed, init_distributed, seed_everything, select_device
from medimg_core.training import Trainer

log = logging.getLogger("medimg")


def _core(model: nn.Module) -> DiffusionAutoencoder:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _fixed_noise(ids: list[str], shape: tuple[int, ...], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A timestep and noise per image seeded by its id: the same validation draw every epoch."""
    ts, noises = [], []
    for i in ids:
        g = torch.Generator().manual_seed(zlib.crc32(str(i).encode()))
        ts.append(int(torch.randint(0, T, (1,), generator=g)))
        noises.append(torch.randn(shape, generator=g))
    return torch.tensor(ts, dtype=torch.int64), torch.stack(noises)


def task_functions(T: int):
    """(step_fn, predict_fn, metrics_fn) of the DiffAE objective for medimg-core's Trainer."""

    def step_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = _core(model).to_model(batch["image"])
        t = torch.randint(0, T, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        target = _core(model).training_target(x0, t, noise)
        loss = nn.functional.mse_loss(model(x0, t, noise).float(), target.float())
        return loss, {}

    def predict_fn(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        x0 = _core(model).to_model(batch["image"])
        t, noise = _fixed_noise(list(batch["id"]), tuple(x0.shape[1:]), T)
        t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        core = _core(model)
        predicted = core.output_to_noise(model(x0, t, noise), core.q_sample(x0, t, noise), t)
        return {"mse": ((predicted.float() - noise.float()) ** 2).mean(dim=(1, 2, 3))}

    def metrics_fn(outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {"mse": float(outputs["mse"].mean())}

    return step_fn, predict_fn, metrics_fn


def check_config(cfg: DAEConfig) -> None:
    """Refuse settings the method cannot use, before any work."""
    if cfg.data.normalize not in (None, "none"):
        raise ConfigError(f"data.normalize is {cfg.data.normalize!r}; the diffusion autoencoder maps the images' "
                          "[0, 1] range to [-1, 1] itself: set data.normalize to null")
    if cfg.data.rotation or cfg.data.scale_min < 1.0:
        log.warning("data.rotation / data.scale_min < 1 augment the autoencoder's training images; DiffAE uses "
                    "horizontal flips only")


def resolve_precision(cfg: DAEConfig, device: torch.device) -> None:
    """Mixed precision on CUDA only: fp16/bf16 configs fall back to fp32 elsewhere (with a log line)."""
    if cfg.train.precision != "fp32" and device.type != "cuda":
        log.info("precision %s requested on %s: mixed precision runs on CUDA only, using fp32",
                 cfg.train.precision, device)
        cfg.train.precision = "fp32"


def train_dae(cfg: DAEConfig, resume_dir: str | Path | None = None) -> Path:
    """Train the DAE (EMA, resume), reconstruct a few validation images; return the run folder."""
    from medimg_core.figures import training_curves
    from medimg_core.runs import prepare_run

    start = time.perf_counter()
    check_config(cfg)
    dist_info = init_distributed(select_device(cfg.device))
    device = select_device(cfg.device, dist_info.local_rank)
    resolve_precision(cfg, device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    train_set = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **cfg.data.options)
    card = train_set.card
    train_tf, eval_tf = build_transforms(cfg.data, card)
    train_set.transform = train_tf
    val_set = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split, transform=eval_tf, **cfg.data.options)
    in_channels = cfg.data.channels or card.channels
    model = build_dae(cfg, in_channels)  # refuses impossible architectures before a run folder exists
    run_dir = prepare_run(cfg, "dae", card.name, cfg.model.encoder.replace(":", "-"), dist_info, resume_dir)
    step_fn, predict_fn, metrics_fn = task_functions(cfg.diffusion.num_train_timesteps)
    model_config = checkpoint_config(cfg, card, in_channels)
    trainer = Trainer(model, train_set, val_set, step_fn, predict_fn, metrics_fn, train=cfg.train, optim=cfg.optim,
                      run_dir=run_dir, model_config=model_config, device=device, seed=cfg.seed, dist_info=dist_info,
                      model_card=model_card(cfg, card, in_channels))
    result = trainer.fit(resume=resume_dir is not None)
    train_time = time.perf_counter() - start
    if dist_info.is_main:
        dae = trainer.eval_model.eval()
        load_weights(dae, trainer.checkpoint_dir / "best")
        final: dict[str, Any] = {
            "method": KIND, "dataset": card.name, "backbone": cfg.model.encoder,
            "train": {"final_loss": result.history[-1].get("train/loss") if result.history else None,
                      "val_mse": _last(result.history, "val/mse"), "epochs_run": len(result.history),
                      "steps": trainer.global_step, "best_epoch": result.best_epoch, "wall_time_s": train_time,
                      "device": str(device), "precision": cfg.train.precision, **_core(dae).describe()},
            "peak_memory_mb": peak_memory_mb(), "sizes": {"train": len(train_set), "val": len(val_set)},
        }
        if cfg.recon_images > 0:
            t0 = time.perf_counter()
            final["reconstruction"] = reconstruction_report(dae, val_set, cfg.recon_images, device,
                                                           cfg.diffusion.encode_steps, cfg.diffusion.render_steps,
                                                           run_dir / "figures" / "reconstructions.png")
            final["reconstruction"]["wall_time_s"] = time.perf_counter() - t0
        final["wall_time_s"] = time.perf_counter() - start
        trainer.write_final_metrics(final)
        training_curves(result.history, run_dir / "figures" / "training_curves.png")
    cleanup_distributed()
    return run_dir


def _last(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


# ------------------------------------------------------------------------------------ latents


@torch.no_grad()
def encode_dataset(model: DiffusionAutoencoder, dataset: MedicalImageDataset, batch_size: int = 64,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """z_sem of every image: {"z": (N, D) float32, "targets": (N,), "ids": [N]}."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    zs, targets, ids = [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc=f"encoding {dataset.split}", unit="batch",
                      disable=not progress, leave=False):
        zs.append(model.encode(batch["image"].to(device)).cpu())
        targets.append(batch["target"])
        ids += list(batch["id"])
    return {"z": torch.cat(zs).numpy(), "targets": torch.cat(targets).numpy(), "ids": ids}


def latents_path(run_dir: Path, split: str) -> Path:
    return run_dir / "latents" / f"{split}.safetensors"


def save_latents(run_dir: Path, split: str, latents: dict[str, Any], dataset: str) -> Path:
    from safetensors.torch import save_file

    path = latents_path(run_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"z": torch.as_tensor(latents["z"]).contiguous(),
               "targets": torch.as_tensor(np.asarray(latents["targets"])).contiguous()}, str(tmp))
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), {"split": split, "dataset": dataset, "n": len(latents["ids"]),
                                           "ids": list(latents["ids"])})
    return path


def load_latents(run_dir: Path, split: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = latents_path(run_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no latents for split {split!r}; run `dae-cf encode {run_dir}` first")
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    return {"z": tensors["z"].numpy(), "targets": tensors["targets"].numpy(), "ids": meta["ids"]}


def encode_run(run_dir: str | Path, splits: tuple[str, ...] = ("train", "val", "test"), device: str = "cpu",
               batch_size: int = 64, root: str | None = None, progress: bool = True) -> dict[str, Path]:
    """Encode the run's dataset splits into run_dir/latents/ (the EMA encoder, eval transforms)."""
    run = load_dae(run_dir, device)
    run_dir = require_run_dir(run, "encode")
    datasets = eval_datasets(run.cfg, splits, root)
    return {split: save_latents(run_dir, split, encode_dataset(run.model, ds, batch_size, device, progress),
                                run.card.name)
            for split, ds in datasets.items()}


def update_metrics(run_dir: Path, section: str, values: dict[str, Any]) -> Path:
    """Set metrics.json[section] = values (atomic rewrite; other sections are kept)."""
    path = run_dir / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = values
    write_json(path, data)
    return path


# ------------------------------------------------------------------------------------ reconstruction


@torch.no_grad()
def reconstruction_report(model: DiffusionAutoencoder, dataset: MedicalImageDataset, n: int,
                          device: str | torch.device, encode_steps: int, render_steps: int,
                          figure: Path | None = None) -> dict[str, Any]:
    """Autoencode the first n images of `dataset`; MSE / L1 / SSIM against the inputs (data range)."""
    n = min(n, len(dataset))
    x = torch.stack([dataset[i]["image"] for i in range(n)]).to(device)
    recon = model.reconstruct(x, encode_steps, render_steps)
    z = model.encode(x)
    random_xT = model.render(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device), z,
                             render_steps)
    out = {"n": n, "encode_steps": encode_steps, "render_steps": render_steps,
           **image_distances(x.cpu(), recon.cpu()),
           "random_xT": {k: v for k, v in image_distances(x.cpu(), random_xT.cpu()).items()}}
    if figure is not None:
        from medimg_core.figures import image_grid

        images = [*x.cpu(), *recon.clamp(0, 1).cpu(), *random_xT.clamp(0, 1).cpu()]
        captions = ([f"input {dataset[i]['id']}" for i in range(n)] + ["encode -> render"] * n
                    + ["same z_sem, random x_T"] * n)
        image_grid(images, captions, figure, ncols=n,
                   title=f"Reconstruction (encode {encode_steps}, render {render_steps} DDIM steps)")
    return out


# ------------------------------------------------------------------------------------ the boundary


def fit_boundary_run(run_dir: str | Path, boundary_cfg: BoundaryConfig | None = None, device: str = "cpu",
                     n_boot: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit the LatentBoundary on the training latents, evaluate on val and test, write boundary.json.

    Latents missing from run_dir/latents/ are encoded first. Adds metrics.json["boundary"] and
    figures/calibration.png.
    """
    run_dir = Path(run_dir)
    run = load_dae(run_dir, device)
    cfg = boundary_cfg or run.cfg.boundary
    missing = tuple(s for s in ("train", "val", "test") if not latents_path(run_dir, s).is_file())
    if missing:
        encode_run(run_dir, missing, device, progress=progress)
    latents = {s: load_latents(run_dir, s) for s in ("train", "val", "test")}
    if run.card.task not in ("binary", "ordinal"):
        raise ValueError(f"{run.card.name}: the latent boundary needs a binary or ordinal target, "
                         f"this dataset is {run.card.task}")
    start = time.perf_counter()
    boundary = LatentBoundary(classifier=cfg.classifier, C=cfg.C, standardize=cfg.standardize,
                              positive_min_grade=cfg.positive_min_grade, class_weight=cfg.class_weight)
    boundary.fit(latents["train"]["z"], latents["train"]["targets"])
    fit_time = time.perf_counter() - start
    boundary.save(run_dir / "boundary.json")
    num_grades = run.card.num_classes
    n_boot = run.cfg.bootstrap if n_boot is None else n_boot
    metrics: dict[str, Any] = {"config": config_to_dict(cfg), "fit_time_s": fit_time,
                               "calibration": {"slope": boundary.slope_, "offset": boundary.offset_,
                                               "r2_train": boundary.calibration_,
                                               "w_norm": float(np.linalg.norm(boundary.coef_))}}
    for split in ("train", "val", "test"):
        metrics[split] = boundary_metrics(boundary, latents[split]["z"], latents[split]["targets"], num_grades,
                                          n_boot, seed)
    update_metrics(run_dir, "boundary", metrics)
    calibration_figure(boundary, latents["test"]["z"], latents["test"]["targets"],
                       run_dir / "figures" / "calibration.png")
    return metrics


def calibration_figure(boundary, z: np.ndarray, grades: np.ndarray, path: Path) -> Path:
    """Signed distance to the hyperplane against the true grade, with the calibration line."""
    import matplotlib.pyplot as plt

    from medimg_core.figures import PAPER_RC, save_figure

    d = boundary.distance(z)
    rng = np.random.default_rng(0)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.scatter(d, np.asarray(grades) + rng.uniform(-0.15, 0.15, len(d)), s=8, alpha=0.5,
                   c=np.asarray(grades) >= boundary.positive_min_grade, cmap="coolwarm")
        xs = np.linspace(d.min(), d.max(), 50)
        ax.plot(xs, boundary.slope_ * xs + boundary.offset_, color="black", lw=1,
                label=f"grade = {boundary.slope_:.2f} d + {boundary.offset_:.2f}")
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("signed distance to the hyperplane d(z)")
        ax.set_ylabel("true grade (jittered)")
        ax.legend(loc="upper left")
        fig.tight_layout()
        return save_figure(fig, path)
