"""Training the diffusion autoencoder: the method's recipe for medimg-core's training lifecycle
(`medimg_core.experiment.fit_run`). The configs are in `dae_counterfactual.config`, rebuilding and loading a
trained model in `dae_counterfactual.run`, the later stages in `dae_counterfactual.stages` (encode, fit-boundary)
and `dae_counterfactual.api` (the estimator, counterfactual, evaluate).

Loss (DiffAE, no other term): with t ~ U{0 .. T-1}, noise ~ N(0, I) and x0 in [-1, 1],

    L = || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t, Enc(x0)) - noise ||^2

or, with diffusion.prediction "v", the same network trained to output v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0
(per timestep this is the noise loss weighted by 1 / abar_t = 1 + 1 / SNR_t: the high-noise steps, where only
z_sem can tell the denoiser what the image holds, are no longer weighted down by SNR_t).

Adam, lr 1e-4, no weight decay, gradient-norm clip 1, EMA of the weights (the EMA copy is what
checkpoints/*/model.safetensors holds and what inference uses; the raw weights are kept for
resuming), mixed precision on CUDA only. The Trainer validates the noise-prediction MSE on the
validation split with a fixed noise and timestep per image (seeded by the image id). There is no test
classification: after training, `report` autoencodes a few validation images (metrics.json "reconstruction").

A run folder after `dae-cf train`, `encode`, `fit-boundary`:

    config.yaml, metrics.json (train / reconstruction / boundary sections), metrics.jsonl, log.txt
    checkpoints/{best,last}/   EMA weights, raw weights, optimizer state (resume); best/boundary.json once fitted
    latents/<split>.safetensors + <split>.json   z_sem of every image, targets, ids
    figures/                   training curves, reconstructions, calibration
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The configs and the run loader live in dae_counterfactual.config and dae_counterfactual.run; importing
# them here keeps `from dae_counterfactual.train import DAEConfig, load_dae, ...` working.
from dae_counterfactual.config import KIND, BoundaryConfig, DAEConfig, check_config, resolve_precision  # noqa: F401
from dae_counterfactual.metrics import image_distances
from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.run import (  # noqa: F401
    LoadedRun,
    build_dae,
    checkpoint_config,
    encode_dataset,
    eval_datasets,
    latents_path,
    load_dae,
    load_latents,
    model_card,
    require_run_dir,
    save_dae,
    save_latents,
)
from medimg_core.data import MedicalImageDataset
from medimg_core.data.preprocess import build_transforms, load_split
from medimg_core.experiment import Built, FitContext, Splits, TaskFunctions, fit_run
from medimg_core.figures import image_grid
from medimg_core.runs import Run


def _core(model: nn.Module) -> DiffusionAutoencoder:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _fixed_noise(ids: list[str], shape: tuple[int, ...], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A timestep (N,) and noise (N, *shape) per image seeded by its id: the same validation draw every epoch."""
    ts, noises = [], []
    for i in ids:
        g = torch.Generator().manual_seed(zlib.crc32(str(i).encode()))
        ts.append(int(torch.randint(0, T, (1,), generator=g)))
        noises.append(torch.randn(shape, generator=g))
    return torch.tensor(ts, dtype=torch.int64), torch.stack(noises)


def task_functions(T: int) -> TaskFunctions:
    """(step, predict, metrics) of the DiffAE objective for medimg-core's Trainer; T = the training timesteps."""

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

    return TaskFunctions(step_fn, predict_fn, metrics_fn)


class DAERecipe:
    """The DAE's side of `medimg_core.experiment.fit_run`: no labels, no test classification (output_task None);
    the report is the training summary and the reconstruction of a few validation images."""

    #: run folders are named <date>-dae-<dataset>-<encoder>-seed<S>, as before; metrics.json says KIND
    method = "dae"

    def load_data(self, cfg: DAEConfig) -> Splits:
        """The training split (train transform) and the validation split (eval transform) of cfg.data."""
        train_set = load_split(cfg.data, "train")
        card = train_set.card
        train_tf, eval_tf = build_transforms(cfg.data, card)
        train_set.transform = train_tf
        val_set = load_split(cfg.data, "val", transform=eval_tf)
        return Splits(train_set, val_set, None, card)

    def splits_of(self, cfg: DAEConfig, train: MedicalImageDataset, val: MedicalImageDataset | None) -> Splits:
        """Datasets given to `fit`, with this config's transforms (copies: the originals stay as they are)."""
        return Splits.with_transforms(cfg.data, train, val)

    def build(self, cfg: DAEConfig, splits: Splits, device: Any, dist_info: Any) -> Built:
        resolve_precision(cfg, device)
        card = splits.card
        in_chans = cfg.data.channels or card.channels
        model = build_dae(cfg, in_chans)  # refuses impossible architectures before a run folder exists
        return Built(model, task_functions(cfg.diffusion.num_train_timesteps), checkpoint_config(cfg, card, in_chans),
                     model_card(cfg, card, in_chans), cfg.model.encoder)

    def report(self, ctx: FitContext) -> dict[str, Any]:
        cfg, history = ctx.cfg, ctx.result.history
        dae = ctx.trainer.eval_model.eval()  # the best checkpoint's EMA weights (reloaded by fit_run)
        out: dict[str, Any] = {
            "method": KIND,
            "train": {"final_loss": history[-1].get("train/loss") if history else None,
                      "val_mse": _last(history, "val/mse"), "epochs_run": len(history),
                      "steps": ctx.trainer.global_step, "best_epoch": ctx.result.best_epoch,
                      "wall_time_s": time.perf_counter() - ctx.start, "device": str(ctx.device),
                      "precision": cfg.train.precision, **_core(dae).describe()},
        }
        if cfg.recon_images > 0 and ctx.splits.val is not None:
            t0 = time.perf_counter()
            out["reconstruction"] = reconstruction_report(dae, ctx.splits.val, cfg.recon_images, ctx.device,
                                                          cfg.diffusion.encode_steps, cfg.diffusion.render_steps,
                                                          ctx.run.figures_dir / "reconstructions.png")
            out["reconstruction"]["wall_time_s"] = time.perf_counter() - t0
        return out


def train_dae(cfg: DAEConfig, resume_dir: str | Path | None = None) -> Run:
    """Train the DAE (EMA, resume), reconstruct a few validation images; return the run folder."""
    check_config(cfg)
    return fit_run(DAERecipe(), cfg, resume_dir)


def _last(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


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
        images = [*x.cpu(), *recon.clamp(0, 1).cpu(), *random_xT.clamp(0, 1).cpu()]
        captions = ([f"input {dataset[i]['id']}" for i in range(n)] + ["encode -> render"] * n
                    + ["same z_sem, random x_T"] * n)
        image_grid(images, captions, figure, ncols=n,
                   title=f"Reconstruction (encode {encode_steps}, render {render_steps} DDIM steps)")
    return out
