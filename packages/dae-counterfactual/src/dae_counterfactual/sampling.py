"""Deterministic DDIM: rendering with diffusers' DDIMScheduler and DiffAE's inversion, written by hand.

Schedule: linear betas from 1e-4 to 0.02 over T = 1000 steps (DiffAE). N-step grids keep
t_k = k * (T // N), k = 0 .. N-1 (diffusers' "leading" spacing, which is DiffAE's "ddimN" when N
divides T).

One deterministic (eta = 0) DDIM move of x at cumulative alpha a to cumulative alpha a', given the
predicted noise e (what both directions share, `ddim_step`):

    x0 = clip((x - sqrt(1 - a) e) / sqrt(a), -1, 1)
    e' = (x - sqrt(a) x0) / sqrt(1 - a)            # the noise re-derived from the clipped x0
    x' = sqrt(a') x0 + sqrt(1 - a') e'

- rendering (`ddim_render`, diffusers' DDIMScheduler; the tests check it against the same loop written by
  hand): t runs down the grid, a' is the cumulative alpha one grid step lower, 1 after t = 0; the
  result is the final x0.
- stochastic encoding (`ddim_invert`, DiffAE's `ddim_reverse_sample_loop`): t runs *up* the grid,
  the model is evaluated at the current (lower) t, a' is the next grid step's cumulative alpha and 0
  after the last, so x_T is the last re-derived noise. diffusers' DDIMInverseScheduler follows
  another convention (it evaluates the model at the target step, starts from a = 1 and stops below
  a = 0), which gives a different x_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("epsilon", "v")


@dataclass
class DiffusionConfig:
    """The noise schedule, and the default step counts of inference (DiffAE: encode 250, render 100)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    encode_steps: int = 250
    render_steps: int = 100
    #: what the denoiser outputs: "epsilon" (the noise, DiffAE) or "v" (v = sqrt(abar) noise - sqrt(1 - abar) x0,
    #: Salimans & Ho 2022). The samplers always receive the noise: a "v" model's output is converted first.
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"diffusion.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")


def make_scheduler(cfg: DiffusionConfig):
    """diffusers' DDIMScheduler set up to reproduce DiffAE's DDIM sampler exactly."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule="linear", clip_sample=True, clip_sample_range=1.0,
                         set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                         prediction_type="epsilon")


def timestep_grid(steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The ascending grid t_k = k * (T // N), k = 0 .. N-1 (int64, (N,))."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"the number of DDIM steps must be in 1..{num_train_timesteps}, got {steps}")
    return torch.arange(steps, dtype=torch.int64) * (num_train_timesteps // steps)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_next: torch.Tensor,
              clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM move from cumulative alpha `alpha` to `alpha_next` (either direction).

    x, eps: (B, C, H, W); alphas: scalars (0-dim tensors). Returns (x', x0_hat).
    """
    x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - alpha**0.5 * x0) / (1 - alpha) ** 0.5
    return alpha_next**0.5 * x0 + (1 - alpha_next) ** 0.5 * eps, x0


def _t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.device).expand(x.shape[0])


def _bar(iterable, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="step")


def ddim_invert(model: Denoiser, x0: torch.Tensor, steps: int, alphas_cumprod: torch.Tensor,
                num_train_timesteps: int = 1000, progress: bool = False) -> torch.Tensor:
    """DiffAE's stochastic encoding: x0 (B, C, H, W) in [-1, 1] -> x_T (B, C, H, W).

    `model(x_t, t (B,)) -> eps`; `alphas_cumprod` (T,) of the schedule.
    """
    grid = timestep_grid(steps, num_train_timesteps)
    x = x0
    for k in _bar(range(steps), progress, "DDIM inversion"):
        t = grid[k]
        alpha = alphas_cumprod[t]
        alpha_next = alphas_cumprod[grid[k + 1]] if k + 1 < steps else torch.zeros_like(alpha)
        x, _ = ddim_step(x, model(x, _t(t, x)), alpha, alpha_next)
    return x


def ddim_render(model: Denoiser, x_T: torch.Tensor, steps: int, scheduler, progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM sampling with diffusers' DDIMScheduler (eta 0, x0 clipped, eps re-derived)."""
    timestep_grid(steps, scheduler.config.num_train_timesteps)  # validates `steps`
    scheduler.set_timesteps(steps)
    x = x_T
    for t in _bar(scheduler.timesteps, progress, "DDIM rendering"):
        eps = model(x, _t(t, x))
        x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x
