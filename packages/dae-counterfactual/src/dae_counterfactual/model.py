"""The diffusion autoencoder (Preechakul et al., CVPR 2022) built from diffusers parts.

    image x (B, C, H, W) in the data range [0, 1]
      -> to model range [-1, 1]
      -> SemanticEncoder -> z_sem (B, z_dim)                       (half-UNet, or a timm backbone)
      -> ConditionalUNet(x_t, t, z_sem) -> predicted noise (B, C, H, W)

Every residual block of the conditional UNet is diffusers' `ResnetBlock2D` with the timestep
applied by its "scale_shift" AdaGN and DiffAE's second, semantic condition written here:

    h <- GN(conv(SiLU(GN(x))));  h <- h * (1 + s_t) + b_t;  h <- h * (1 + Linear(SiLU(z_sem)))

(scale only for z_sem, as DiffAE does). Attention is diffusers' `Attention` (the same module
UNet2DModel's attention blocks use), the timestep embedding diffusers' `Timesteps` +
`TimestepEmbedding`. The layout is DiffAE's BeatGANs UNet: residual up/down-sampling blocks,
decoder levels with one more block than the encoder levels and concatenated skips, Res-Attn-Res in
the middle, zero-initialised output convolutions.

`DiffusionAutoencoder` ties the two together with the linear beta schedule and gives the three
operations of the method: `encode(x) -> z_sem`, `encode_stochastic(x, z_sem, steps) -> x_T` (DiffAE's
deterministic DDIM inversion, hand-written in `sampling.py`) and `render(x_T, z_sem, steps) -> x`
(diffusers' DDIMScheduler, eta 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from dae_counterfactual.sampling import (
    DiffusionConfig,
    ddim_invert,
    ddim_render,
    make_scheduler,
)
from medimg_core.models import create_backbone


@dataclass
class DAEModelConfig:
    """Architecture. Defaults are DiffAE's 64 px template (ffhq64_autoenc: 64 channels, (1, 2, 4, 8))."""

    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_head_channels: int | None = None  # None: one head (DiffAE)
    dropout: float = 0.1
    groups: int = 32
    time_embed_dim: int | None = 512  # None: 4 x base_channels
    z_dim: int = 512
    #: "half-unet" (DiffAE's BeatGANs encoder) or "timm:<name>" (any timm/medimg backbone + a linear head)
    encoder: str = "half-unet"
    encoder_channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    encoder_num_res_blocks: int = 2
    encoder_attention_resolutions: tuple[int, ...] = (16,)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _check_groups(channels: int, groups: int, where: str) -> None:
    if channels % groups:
        raise ValueError(f"{where}: {channels} channels are not divisible into {groups} GroupNorm groups; "
                         "change model.groups or model.base_channels")


class CondResBlock(ResnetBlock2D):
    """diffusers' ResnetBlock2D (timestep by scale-shift AdaGN) plus DiffAE's semantic scale.

    forward(x (B, Cin, H, W), temb (B, T), z (B, Z)) -> (B, Cout, H', W') with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, z_dim: int, groups: int,
                 dropout: float, up: bool = False, down: bool = False):
        _check_groups(in_channels, groups, "CondResBlock input")
        _check_groups(out_channels, groups, "CondResBlock output")
        super().__init__(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                         groups=groups, dropout=dropout, time_embedding_norm="scale_shift", up=up, down=down)
        self.cond_proj = nn.Linear(z_dim, out_channels)
        _zero(self.conv2)  # DiffAE: every residual branch starts as the identity

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = input_tensor
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        time_scale, time_shift = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + time_scale) + time_shift
        h = h * (1 + self.cond_proj(self.nonlinearity(z))[:, :, None, None])
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


def _attention(channels: int, groups: int, head_channels: int | None) -> Attention:
    """diffusers' spatial self-attention block (GroupNorm, residual), as in UNet2DModel's attention blocks."""
    heads = 1 if head_channels is None else max(1, channels // head_channels)
    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, norm_num_groups=groups, eps=1e-6,
                     residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
    _zero(attn.to_out[0])  # DiffAE zero-initialises the attention output projection
    return attn


class Stage(nn.ModuleList):
    """Layers applied in turn; residual blocks get (temb, z), attention only the features."""

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, CondResBlock):
                h = layer(h, temb, z)
            elif isinstance(layer, ResnetBlock2D):
                h = layer(h, None)
            else:
                h = layer(h)
        return h


class ConditionalUNet(nn.Module):
    """DiffAE's denoiser: forward(x_t (B, C, H, W), t (B,) int, z (B, Z)) -> predicted noise (B, C, H, W)."""

    def __init__(self, cfg: DAEModelConfig, in_channels: int, image_size: int):
        super().__init__()
        base, groups = cfg.base_channels, cfg.groups
        temb_dim = cfg.time_embed_dim or 4 * base
        levels = len(cfg.channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1} "
                             f"(model.channel_mult has {levels} levels)")
        self.time_proj = Timesteps(base, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base, temb_dim)

        def res(cin: int, cout: int, **kw: bool) -> CondResBlock:
            return CondResBlock(cin, cout, temb_dim, cfg.z_dim, groups, cfg.dropout, **kw)

        def attn(ch: int) -> Attention:
            return _attention(ch, groups, cfg.num_head_channels)

        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        ch, resolution = base, image_size
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * base)]
                ch = mult * base
                if resolution in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.down.append(Stage(layers))
                skips.append(ch)
            if level != levels - 1:
                self.down.append(Stage([res(ch, ch, down=True)]))
                resolution //= 2
                skips.append(ch)
        self.mid = Stage([res(ch, ch), attn(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * base)]
                ch = mult * base
                if resolution in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    resolution *= 2
                self.up.append(Stage(layers))
        self.norm_out = nn.GroupNorm(groups, ch, eps=1e-6)
        self.conv_out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, temb, z)
            hs.append(h)
        h = self.mid(h, temb, z)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), temb, z)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class SemanticEncoder(nn.Module):
    """DiffAE's half-UNet encoder without time input: forward(x (B, C, H, W) in [-1, 1]) -> z_sem (B, z_dim).

    conv -> levels of plain residual blocks (with attention at the listed resolutions), residual
    downsampling between levels -> Res-Attn-Res -> GN -> SiLU -> global average pool -> 1x1 conv.
    """

    def __init__(self, cfg: DAEModelConfig, in_channels: int, image_size: int):
        super().__init__()
        base, groups = cfg.base_channels, cfg.groups
        levels = len(cfg.encoder_channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1} "
                             f"(model.encoder_channel_mult has {levels} levels)")

        def res(cin: int, cout: int, down: bool = False) -> ResnetBlock2D:
            _check_groups(cout, groups, "SemanticEncoder block")
            block = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, groups=groups,
                                  dropout=cfg.dropout, down=down)
            _zero(block.conv2)
            return block

        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 3, padding=1)]
        ch, resolution = base, image_size
        for level, mult in enumerate(cfg.encoder_channel_mult):
            for _ in range(cfg.encoder_num_res_blocks):
                layers.append(res(ch, mult * base))
                ch = mult * base
                if resolution in cfg.encoder_attention_resolutions:
                    layers.append(_attention(ch, groups, cfg.num_head_channels))
            if level != levels - 1:
                layers.append(res(ch, ch, down=True))
                resolution //= 2
        layers += [res(ch, ch), _attention(ch, groups, cfg.num_head_channels), res(ch, ch)]
        self.body = Stage(layers)
        self.head = nn.Sequential(nn.GroupNorm(groups, ch, eps=1e-6), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Conv2d(ch, cfg.z_dim, 1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TimmEncoder(nn.Module):
    """A timm backbone (medimg-core's create_backbone, no pretrained weights) + linear head -> (B, z_dim)."""

    def __init__(self, name: str, in_channels: int, image_size: int, z_dim: int):
        super().__init__()
        self.backbone = create_backbone(name, pretrained=False, in_chans=in_channels, img_size=image_size)
        self.head = nn.Linear(self.backbone.num_features, z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_encoder(cfg: DAEModelConfig, in_channels: int, image_size: int) -> nn.Module:
    if cfg.encoder == "half-unet":
        return SemanticEncoder(cfg, in_channels, image_size)
    if cfg.encoder.startswith("timm:") and len(cfg.encoder) > 5:
        return TimmEncoder(cfg.encoder[5:], in_channels, image_size, cfg.z_dim)
    raise ValueError(f"model.encoder must be 'half-unet' or 'timm:<backbone name>', got {cfg.encoder!r}")


class DiffusionAutoencoder(nn.Module):
    """Semantic encoder + conditional DDIM decoder (Preechakul et al., CVPR 2022).

    Public images are in the data range `data_range` (default [0, 1], what medimg datasets give
    without normalisation); inside, the model works on [-1, 1].

    - `forward(x0, t, noise)`: the training pass (x0 in [-1, 1]) -> the denoiser's output; the loss is
      MSE(forward(x0, t, noise), training_target(x0, t, noise)) with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
      (the target is the noise, as in DiffAE, or v with diffusion.prediction "v").
    - `encode(x) -> z_sem (B, z_dim)`
    - `encode_stochastic(x, z_sem, steps) -> x_T (B, C, H, W)` (DiffAE's DDIM inversion)
    - `render(x_T, z_sem, steps) -> x (B, C, H, W)` in the data range (diffusers' DDIMScheduler, eta 0)
    """

    def __init__(self, cfg: DAEModelConfig, in_channels: int, image_size: int,
                 diffusion: DiffusionConfig | None = None, data_range: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
        lo, hi = float(data_range[0]), float(data_range[1])
        if not hi > lo:
            raise ValueError(f"data_range must be (low, high) with high > low, got {tuple(data_range)}")
        self.cfg, self.in_channels, self.image_size = cfg, in_channels, image_size
        self.diffusion = diffusion or DiffusionConfig()
        self.data_range = (lo, hi)
        self.encoder = build_encoder(cfg, in_channels, image_size)
        self.unet = ConditionalUNet(cfg, in_channels, image_size)
        scheduler = make_scheduler(self.diffusion)
        # a plain attribute, not a buffer: it is fixed by the schedule and never saved or averaged by EMA
        self.alphas_cumprod = scheduler.alphas_cumprod.clone()

    # ---------------------------------------------------------------- ranges
    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return (x - lo) / (hi - lo) * 2.0 - 1.0

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return (x + 1.0) / 2.0 * (hi - lo) + lo

    # ---------------------------------------------------------------- training
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for x0 (B, C, H, W) in [-1, 1] and t (B,)."""
        a, s = self._alphas(t, x0)
        return a * x0 + s * noise

    def _alphas(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)), each (B, 1, 1, 1) in `like`'s dtype, for t (B,)."""
        abar = self.alphas_cumprod.to(like.device)[t].to(like.dtype).view(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (B, C, H, W) for x0 (B, C, H, W) in [-1, 1] noised to t (B,) with `noise`: the
        predicted noise, or v for diffusion.prediction "v". The encoder sees x0."""
        z = self.encoder(x0)
        return self.unet(self.q_sample(x0, t, noise), t, z)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What `forward` is trained to output: the noise, or v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
        if self.diffusion.prediction == "epsilon":
            return noise
        a, s = self._alphas(t, x0)
        return a * noise - s * x0

    def output_to_noise(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted noise (B, C, H, W) from the denoiser's output at x_t (B, C, H, W), t (B,):
        for "v", noise = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        if self.diffusion.prediction == "epsilon":
            return output
        a, s = self._alphas(t, x_t)
        return a * output + s * x_t

    def denoiser(self, z: torch.Tensor):
        """eps(x_t, t) for a fixed z_sem (B, z_dim): the function the samplers call (always the noise)."""
        return lambda x, t: self.output_to_noise(self.unet(x, t, z), x, t)

    # ---------------------------------------------------------------- the method's operations
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_sem (B, z_dim) of images x (B, C, H, W) in the data range."""
        self._check_images(x)
        return self.encoder(self.to_model(x)).float()

    @torch.no_grad()
    def encode_stochastic(self, x: torch.Tensor, z_sem: torch.Tensor, steps: int = 250,
                          progress: bool = False) -> torch.Tensor:
        """x_T (B, C, H, W) by DiffAE's deterministic DDIM inversion of x (data range) given z_sem, `steps` steps."""
        self._check_images(x)
        return ddim_invert(self.denoiser(z_sem), self.to_model(x), steps, self.alphas_cumprod,
                           self.diffusion.num_train_timesteps, progress=progress)

    @torch.no_grad()
    def render(self, x_T: torch.Tensor, z_sem: torch.Tensor, steps: int = 100, progress: bool = False) -> torch.Tensor:
        """Decode x_T (B, C, H, W) with z_sem (B, z_dim) by DDIM (eta 0, diffusers' DDIMScheduler) -> data range."""
        out = ddim_render(self.denoiser(z_sem), x_T, steps, make_scheduler(self.diffusion), progress=progress)
        return self.from_model(out)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, encode_steps: int = 250, render_steps: int = 100) -> torch.Tensor:
        """render(encode_stochastic(x, encode(x)), encode(x)): the autoencoding of x (data range)."""
        z = self.encode(x)
        return self.render(self.encode_stochastic(x, z, encode_steps), z, render_steps)

    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected images (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")

    def describe(self) -> dict[str, Any]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"parameters": count(self), "encoder_parameters": count(self.encoder),
                "unet_parameters": count(self.unet)}
