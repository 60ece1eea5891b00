"""Fixtures of the package's tests: a tiny DAE (a handful of channels, 16 px images) for models built in Python,
for the command line and for the estimator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from dae_counterfactual.model import DAEModelConfig

#: the architecture of a tiny DAE for 16 px images (tests only)
TINY_MODEL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), groups=4,
                  time_embed_dim=None, z_dim=16, encoder_channel_mult=(1, 2), encoder_num_res_blocks=1,
                  encoder_attention_resolutions=(8,), dropout=0.0)

#: CLI overrides of a tiny DAE for 16 px images
TINY_ARGS = ["--model.base_channels", "8", "--model.channel_mult", "[1, 2]", "--model.num_res_blocks", "1",
             "--model.attention_resolutions", "[8]", "--model.groups", "4", "--model.time_embed_dim", "null",
             "--model.z_dim", "16", "--model.encoder_channel_mult", "[1, 2]", "--model.encoder_num_res_blocks", "1",
             "--model.encoder_attention_resolutions", "[]", "--data.image_size", "16"]


def _tiny_config(**overrides) -> DAEModelConfig:
    return DAEModelConfig(**{**TINY_MODEL, **overrides})


def _randomise(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (the zero-initialised output layers would make the denoiser predict 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


@pytest.fixture
def tiny_config() -> Callable[..., DAEModelConfig]:
    """tiny_config(**overrides) -> the tiny architecture, with some fields changed."""
    return _tiny_config


@pytest.fixture
def tiny() -> DAEModelConfig:
    return _tiny_config()


@pytest.fixture
def randomise() -> Callable[..., torch.nn.Module]:
    """randomise(model, scale=0.05, seed=0) -> the model with every weight perturbed (in place)."""
    return _randomise


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """`dae-cf train` overrides of the tiny DAE (16 px)."""
    return list(TINY_ARGS)


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    """CounterfactualExplainer keyword arguments of the tiny DAE (16 px) with short training and sampling."""
    model = {f"model__{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY_MODEL.items()}
    model["model__encoder_attention_resolutions"] = []
    return {**model, "data__image_size": 16, "train__epochs": 1, "train__batch_size": 8,
            "diffusion__encode_steps": 3, "diffusion__render_steps": 3, "recon_images": 2, "bootstrap": 20,
            "device": "cpu", "train__progress": False}
