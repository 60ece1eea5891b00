"""Small deterministic pieces shared by the tests."""

import torch

from dae_counterfactual.model import DAEModelConfig


def tiny_config(**overrides) -> DAEModelConfig:
    """A UNet with a handful of channels for 16 px images (tests only)."""
    base = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), groups=4,
                time_embed_dim=None, z_dim=16, encoder_channel_mult=(1, 2), encoder_num_res_blocks=1,
                encoder_attention_resolutions=(8,), dropout=0.0)
    return DAEModelConfig(**{**base, **overrides})


def randomise(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (the zero-initialised output layers would make the denoiser predict 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


#: CLI overrides of a tiny DAE for 16 px images
TINY_ARGS = ["--model.base_channels", "8", "--model.channel_mult", "[1, 2]", "--model.num_res_blocks", "1",
             "--model.attention_resolutions", "[8]", "--model.groups", "4", "--model.time_embed_dim", "null",
             "--model.z_dim", "16", "--model.encoder_channel_mult", "[1, 2]", "--model.encoder_num_res_blocks", "1",
             "--model.encoder_attention_resolutions", "[]", "--data.image_size", "16"]
