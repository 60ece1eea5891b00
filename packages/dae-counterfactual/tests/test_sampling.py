"""The hand-written DDIM pieces: step/inverse identity, parity with diffusers, DiffAE's inversion loop."""

import pytest
import torch

from dae_counterfactual.model import DiffusionAutoencoder
from dae_counterfactual.sampling import (
    DiffusionConfig,
    _t,
    ddim_invert,
    ddim_render,
    ddim_step,
    make_scheduler,
    timestep_grid,
)

ALPHAS = make_scheduler(DiffusionConfig()).alphas_cumprod


def ddim_sample(model, x_T: torch.Tensor, steps: int, alphas_cumprod: torch.Tensor,
                num_train_timesteps: int = 1000) -> torch.Tensor:
    """Deterministic DDIM sampling by hand (what `ddim_render` does with diffusers): x_T -> x0 in [-1, 1].

    The test oracle of `ddim_render`: t runs down the grid, the target cumulative alpha is the next lower grid
    step's, 1 after t = 0."""
    grid = timestep_grid(steps, num_train_timesteps)
    x = x_T
    for k in range(steps - 1, -1, -1):
        t = grid[k]
        alpha = alphas_cumprod[t]
        alpha_next = alphas_cumprod[grid[k - 1]] if k > 0 else torch.ones_like(alpha)
        x, _ = ddim_step(x, model(x, _t(t, x)), alpha, alpha_next)
    return x


def test_schedule_is_diffae_linear():
    scheduler = make_scheduler(DiffusionConfig())
    torch.testing.assert_close(scheduler.betas, torch.linspace(1e-4, 0.02, 1000))
    torch.testing.assert_close(ALPHAS, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0))
    assert timestep_grid(20).tolist() == list(range(0, 1000, 50))
    with pytest.raises(ValueError, match="1..1000"):
        timestep_grid(0)


@pytest.mark.parametrize("clip", [False, True])
def test_one_step_then_its_inverse_with_the_same_noise_is_the_identity(clip):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8  # |x0| < 1: nothing is clipped
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    a_hi, a_lo = ALPHAS[700].double(), ALPHAS[650].double()
    x_t = a_hi**0.5 * x0 + (1 - a_hi) ** 0.5 * eps
    x_prev, x0_hat = ddim_step(x_t, eps, a_hi, a_lo, clip=clip)  # denoise t=700 -> 650
    torch.testing.assert_close(x0_hat, x0)
    back, _ = ddim_step(x_prev, eps, a_lo, a_hi, clip=clip)  # invert 650 -> 700 with the same eps
    torch.testing.assert_close(back, x_t, rtol=0, atol=1e-12)


def test_step_clips_x0_and_rederives_the_noise():
    x = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    eps = torch.zeros_like(x)
    a = torch.tensor(0.25, dtype=torch.float64)
    out, x0 = ddim_step(x, eps, a, torch.tensor(1.0, dtype=torch.float64))
    # x0 = 3 / 0.5 = 6 -> clipped to 1; eps re-derived (3 - 0.5) / sqrt(0.75); at alpha' = 1 the output is x0
    assert float(x0) == 1.0 and float(out) == 1.0
    out, _ = ddim_step(x, eps, a, torch.tensor(0.0, dtype=torch.float64))
    assert float(out) == pytest.approx(2.5 / 0.75**0.5)


@pytest.mark.parametrize("steps", [1, 10, 20, 30])
def test_hand_written_sampler_equals_diffusers_ddim_scheduler(tiny, randomise, steps):
    model = randomise(DiffusionAutoencoder(tiny, 3, 16)).double().eval()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, tiny.z_dim, generator=g, dtype=torch.float64)
    x_T = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = ddim_sample(model.denoiser(z), x_T, steps, model.alphas_cumprod)
        theirs = ddim_render(model.denoiser(z), x_T, steps, make_scheduler(DiffusionConfig()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours.std() > 0.01  # the model is not trivial


def test_render_uses_diffusers_and_returns_the_data_range(tiny, randomise):
    model = randomise(DiffusionAutoencoder(tiny, 3, 16)).eval()
    z = torch.randn(2, tiny.z_dim)
    x_T = torch.randn(2, 3, 16, 16)
    out = model.render(x_T, z, 5)
    with torch.no_grad():
        ref = ddim_sample(model.denoiser(z), x_T, 5, model.alphas_cumprod)
    torch.testing.assert_close(out, (ref + 1) / 2)
    assert out.min() >= 0 and out.max() <= 1


def test_inversion_is_diffae_loop():
    """Model evaluated at the current (lower) t of the ascending grid; the last target alpha is 0."""
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return 0.1 * x + 0.05

    x0 = torch.linspace(-0.9, 0.9, 8, dtype=torch.float64).view(2, 1, 2, 2)
    x_T = ddim_invert(model, x0, 4, ALPHAS.double())
    assert calls == [0, 250, 500, 750]
    x = x0
    for k, t in enumerate([0, 250, 500, 750]):
        a = ALPHAS.double()[t]
        a_next = ALPHAS.double()[t + 250] if k < 3 else torch.tensor(0.0, dtype=torch.float64)
        x0_hat = ((x - (1 - a) ** 0.5 * (0.1 * x + 0.05)) / a**0.5).clamp(-1, 1)
        eps = (x - a**0.5 * x0_hat) / (1 - a) ** 0.5
        x = a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * eps
    torch.testing.assert_close(x_T, x, rtol=0, atol=1e-12)


def test_inversion_differs_from_diffusers_inverse_scheduler(tiny, randomise):
    """Why the loop is hand-written: diffusers' DDIMInverseScheduler follows another convention."""
    from diffusers import DDIMInverseScheduler

    model = randomise(DiffusionAutoencoder(tiny, 3, 16)).double().eval()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, tiny.z_dim, generator=g, dtype=torch.float64)
    inverse = DDIMInverseScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    inverse.set_timesteps(10)
    x = x0
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(model.unet(x, t.expand(1), z), t, x).prev_sample
        ours = ddim_invert(model.denoiser(z), x0, 10, model.alphas_cumprod)
    assert (ours - x).abs().max() > 0.1
