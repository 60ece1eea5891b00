"""The diffusion autoencoder's parts: diffusers blocks with DiffAE's semantic modulation."""

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from dae_counterfactual.model import CondResBlock, DiffusionAutoencoder


@pytest.mark.parametrize("kw", [{}, {"down": True}, {"up": True}])
def test_cond_block_is_diffusers_block_times_semantic_scale(kw, randomise):
    torch.manual_seed(0)
    ours = randomise(CondResBlock(8, 12, temb_channels=16, z_dim=5, groups=4, dropout=0.0, **kw)).eval()
    ref = ResnetBlock2D(in_channels=8, out_channels=12, temb_channels=16, groups=4, dropout=0.0,
                        time_embedding_norm="scale_shift", **kw).eval()
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("cond_proj")})
    x, temb, z = torch.randn(2, 8, 8, 8), torch.randn(2, 16), torch.randn(2, 5)
    with torch.no_grad():
        ours.cond_proj.weight.zero_()
        ours.cond_proj.bias.zero_()
        torch.testing.assert_close(ours(x, temb, z), ref(x, temb))  # z-scale 1: diffusers' block exactly


def test_semantic_scale_sits_after_the_time_adagn(randomise):
    """h <- (GN(conv(SiLU(GN(x)))) (1 + s_t) + b_t) (1 + Linear(SiLU(z))), then SiLU, conv, + skip (DiffAE)."""
    torch.manual_seed(0)
    block = randomise(CondResBlock(8, 12, temb_channels=16, z_dim=5, groups=4, dropout=0.0)).eval()
    x, temb, z = torch.randn(2, 8, 8, 8), torch.randn(2, 16), torch.randn(2, 5)
    silu = torch.nn.functional.silu
    with torch.no_grad():
        h = block.conv1(silu(block.norm1(x)))
        scale, shift = block.time_emb_proj(silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = block.norm2(h) * (1 + scale) + shift
        h = h * (1 + block.cond_proj(silu(z))[:, :, None, None])
        expected = block.conv_shortcut(x) + block.conv2(silu(h))
        torch.testing.assert_close(block(x, temb, z), expected)


def test_shapes_and_semantic_conditioning(tiny, randomise):
    model = randomise(DiffusionAutoencoder(tiny, 3, 16)).eval()
    x = torch.rand(3, 3, 16, 16)
    z = model.encode(x)
    assert z.shape == (3, tiny.z_dim)
    t = torch.full((3,), 400)
    with torch.no_grad():
        eps = model.unet(model.to_model(x), t, z)
        other = model.unet(model.to_model(x), t, z.flip(0))
        assert eps.shape == x.shape
        assert (eps - other).abs().max() > 1e-4  # z_sem changes the prediction
        assert (eps - model.unet(model.to_model(x), t + 300, z)).abs().max() > 1e-4  # so does t
    x_T = model.encode_stochastic(x, z, 5)
    assert x_T.shape == x.shape and torch.isfinite(x_T).all()


def test_data_range_maps_to_minus_one_one(tiny):
    model = DiffusionAutoencoder(tiny, 1, 16, data_range=(0, 255))
    x = torch.tensor([0.0, 127.5, 255.0])
    torch.testing.assert_close(model.to_model(x), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(model.from_model(model.to_model(x)), x)
    with pytest.raises(ValueError, match="expected images"):
        model.encode(torch.rand(1, 3, 16, 16))


def test_training_pass_predicts_noise_shape_and_backpropagates(tiny):
    model = DiffusionAutoencoder(tiny, 1, 16)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    noise = torch.randn_like(x0)
    loss = torch.nn.functional.mse_loss(model(x0, torch.randint(0, 1000, (4,)), noise), noise)
    loss.backward()
    # zero-initialised output convolutions: at init only they get gradients, as in DiffAE
    assert model.unet.conv_out.weight.grad.abs().sum() > 0


def test_timm_encoder_and_bad_architectures(tiny_config):
    model = DiffusionAutoencoder(tiny_config(encoder="timm:test_resnet"), 3, 16)
    assert model.encode(torch.rand(2, 3, 16, 16)).shape == (2, 16)
    with pytest.raises(ValueError, match="half-unet"):
        DiffusionAutoencoder(tiny_config(encoder="resnet18"), 3, 16)
    with pytest.raises(ValueError, match="not divisible by 2"):
        DiffusionAutoencoder(tiny_config(channel_mult=(1, 2, 2, 2, 2)), 3, 16 + 8)
    with pytest.raises(ValueError, match="GroupNorm groups"):
        DiffusionAutoencoder(tiny_config(groups=3), 3, 16)
    with pytest.raises(ValueError, match="1 .grayscale. or 3"):
        DiffusionAutoencoder(tiny_config(), 2, 16)


def test_save_load_round_trip(tmp_path, tiny, randomise):
    """A model written by save_dae comes back from load_dae with the same weights and the same outputs."""
    from dae_counterfactual.train import DAEConfig, load_dae, save_dae
    from medimg_core.data import DatasetCard

    cfg = DAEConfig(model=tiny)
    cfg.data.image_size = 16
    card = DatasetCard(name="toy", title="toy", task="ordinal", class_names=("0", "1", "2"), channels=1)
    model = randomise(DiffusionAutoencoder(tiny, 1, 16, cfg.diffusion)).eval()
    folder = save_dae(model, cfg, card, tmp_path / "ckpt")
    run = load_dae(folder)
    assert run.card == card and run.in_channels == 1 and run.image_size == 16 and run.run_dir is None
    state, again = model.state_dict(), run.model.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        torch.testing.assert_close(again[key], state[key], rtol=0, atol=0, msg=key)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    z = model.encode(x)
    torch.testing.assert_close(run.model.encode(x), z, rtol=0, atol=0)
    x_T = model.encode_stochastic(x, z, 4)
    torch.testing.assert_close(run.model.encode_stochastic(x, z, 4), x_T, rtol=0, atol=0)
    torch.testing.assert_close(run.model.render(x_T, z, 4), model.render(x_T, z, 4), rtol=0, atol=0)
    with pytest.raises(ValueError, match="px"):
        save_dae(DiffusionAutoencoder(tiny, 1, 32), cfg, card, tmp_path / "other")


def test_v_prediction_target_and_its_noise(tiny_config):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0; a denoiser that outputs the true v gives back exactly eps."""
    from dae_counterfactual.sampling import DiffusionConfig

    model = DiffusionAutoencoder(tiny_config(), 1, 16, DiffusionConfig(prediction="v"))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, torch.randn(4, 1, 16, 16, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    abar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = model.training_target(x0, t, noise)
    torch.testing.assert_close(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(model.output_to_noise(v, model.q_sample(x0, t, noise), t), noise)
    # per timestep the v loss is the noise loss over abar: |v_hat - v|^2 = |eps_hat - eps|^2 / abar
    v_hat = v + 0.01 * torch.randn(v.shape, generator=g)
    eps_hat = model.output_to_noise(v_hat, model.q_sample(x0, t, noise), t)
    torch.testing.assert_close(((v_hat - v) ** 2).mean(dim=(1, 2, 3)),
                               ((eps_hat - noise) ** 2).mean(dim=(1, 2, 3)) / abar.flatten())
    eps_model = DiffusionAutoencoder(tiny_config(), 1, 16)
    assert eps_model.training_target(x0, t, noise) is noise
    with pytest.raises(ValueError, match="prediction"):
        DiffusionConfig(prediction="x0")
