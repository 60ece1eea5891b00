"""Image backbones over timm: pooled features, spatial feature maps, and safe local weights.

`create_backbone(name, pretrained=..., in_chans=...)` builds a timm model without a classifier
(`num_classes=0`) and wraps it in a `Backbone` that gives every method package the same three views:

* ``backbone(x)``                  -> pooled features (B, D): what a linear head takes
  (timm's ``forward_head(forward_features(x), pre_logits=True)``);
* ``backbone.forward_features(x)`` -> a spatial feature map (B, C, h, w), for CNNs and for
  transformers alike (ViT tokens lose their class/register tokens and are laid back on the patch grid;
  Swin's NHWC maps are permuted);
* ``backbone.forward_both(x)``     -> (pooled, spatial) from one pass.

Names: timm names pass through (``"resnet18"``, ``"convnext_atto"``, ``"resnet50.tv_in1k"``); the
torchvision names in `ALIASES` (``"vit_b_16"``, ``"mobilenet_v3_small"``, ``"swin_t"``...) resolve to
timm's. ViT-like models (ViT, DeiT, EVA, Swin) are built with ``dynamic_img_size=True`` unless told
otherwise, so they accept any input size (a multiple of the patch size); pass ``img_size=`` to fix one.

Weights (`pretrained`):

* ``False``: random init (``pretrained_source == "none"``);
* ``True``: timm's hub weights, exactly as ``timm.create_model(..., pretrained=True)`` fetches them
  (``"timm-hub"``); offline (``HF_HUB_OFFLINE=1``) and not in the local cache this fails at once with
  a `BackboneError` that suggests a local file;
* a local file: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
  ``torch.load(weights_only=True)`` only. medimg never unpickles arbitrary objects: a checkpoint that
  needs it is refused (`UnsafeCheckpointError`); convert it to safetensors where you trust it;
* a local directory in timm's ``save_for_hf`` layout (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``), also written ``"local-dir:/path"``;
* a named offline source (``"imagenet-lite0"``, ``"imagenet-lite1"``, ``"imagenet-lite2"``): real
  ImageNet weights that a pip package ships, converted once under ``$MEDIMG_HOME/weights`` (see
  `medimg_core.models.weights`); ``pretrained_source`` is then ``"imagenet-lite0:<folder>"``.

Local checkpoints may be a plain state dict or one nested under ``"state_dict"``, ``"model"`` or
``"model_state_dict"``; ``module.``/``backbone.``/``model.`` prefixes are stripped where that makes
keys match, classifier weights are dropped, and a 3-channel first convolution is adapted to
``in_chans`` (timm's ``adapt_input_conv``). Loading is non-strict, but a checkpoint that leaves more
than `MAX_MISSING_FRACTION` of the backbone's parameters unset (a different architecture) raises.

Small CPU-friendly choices (`CPU_FRIENDLY`), measured as one forward + backward pass of a batch of 32
on 2 CPU cores:

=======================  ===========  ============
backbone                 64 px        224 px
=======================  ===========  ============
mobilenetv3_small_100    0.2 s        0.7 s
convnext_atto            0.2 s        1.3 s
resnet18                 0.3 s        2.7 s
densenet121              0.7 s        7.3 s
timm ``test_*`` models   0.04-0.14 s  (tests only)
=======================  ===========  ============
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from medimg_core.data.transforms import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD

# the errors and read_checkpoint live in weight_files; importing them here keeps
# `from medimg_core.models.backbones import BackboneError, read_checkpoint` working
from medimg_core.models.weight_files import BackboneError, UnsafeCheckpointError, read_checkpoint  # noqa: F401
from medimg_core.models.weights import SOURCES, is_weight_source, resolve_source

logger = logging.getLogger(__name__)

#: torchvision model names -> timm names (timm names, with or without a ".tag", pass through)
ALIASES: dict[str, str] = {
    "vit_b_16": "vit_base_patch16_224",
    "vit_b_32": "vit_base_patch32_224",
    "vit_l_16": "vit_large_patch16_224",
    "vit_l_32": "vit_large_patch32_224",
    "vit_h_14": "vit_huge_patch14_224",
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "efficientnet_v2_s": "tf_efficientnetv2_s",
    "efficientnet_v2_m": "tf_efficientnetv2_m",
    "efficientnet_v2_l": "tf_efficientnetv2_l",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_v2_t": "swinv2_tiny_window8_256",
    "maxvit_t": "maxvit_tiny_tf_224",
    "mnasnet1_0": "mnasnet_100",
    "regnet_x_400mf": "regnetx_004",
    "regnet_y_400mf": "regnety_004",
    "regnet_y_800mf": "regnety_008",
    "regnet_y_1_6gf": "regnety_016",
    "regnet_y_3_2gf": "regnety_032",
    # same name in both libraries (listed so `resolve_name` documents them)
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "resnext50_32x4d": "resnext50_32x4d",
    "wide_resnet50_2": "wide_resnet50_2",
    "densenet121": "densenet121",
    "densenet161": "densenet161",
    "densenet169": "densenet169",
    "densenet201": "densenet201",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b1": "efficientnet_b1",
    "efficientnet_b2": "efficientnet_b2",
    "efficientnet_b3": "efficientnet_b3",
    "efficientnet_b4": "efficientnet_b4",
    "convnext_tiny": "convnext_tiny",
    "convnext_small": "convnext_small",
    "convnext_base": "convnext_base",
    "convnext_large": "convnext_large",
    "inception_v3": "inception_v3",
    "vgg16": "vgg16",
    "vgg16_bn": "vgg16_bn",
}

#: small backbones that train on a CPU; seconds for one forward + backward of 32 images on 2 cores
CPU_FRIENDLY: dict[str, dict[str, float]] = {
    "mobilenetv3_small_100": {"64px_s": 0.2, "224px_s": 0.7},
    "convnext_atto": {"64px_s": 0.2, "224px_s": 1.3},
    "resnet18": {"64px_s": 0.3, "224px_s": 2.7},
    "densenet121": {"64px_s": 0.7, "224px_s": 7.3},
}
#: timm's tiny test models (random init only; 0.04-0.14 s per forward + backward of 32 at 64 px)
TEST_MODELS: tuple[str, ...] = ("test_resnet", "test_convnext", "test_efficientnet", "test_vit")

#: a checkpoint leaving more than this share of the backbone's parameters unset is refused
MAX_MISSING_FRACTION = 0.10

#: timm model modules whose models take `dynamic_img_size` (any input size); built with it on by default
_DYNAMIC_SIZE_MODULES = ("vision_transformer", "deit", "eva", "swin_transformer")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")


def resolve_name(name: str) -> str:
    """The timm name for `name`: a torchvision alias is translated, a timm name passes through.

    Raises BackboneError for an unknown name, listing close timm names.
    """
    timm_name = ALIASES.get(name, name)
    if timm_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(timm_name):
        return timm_name
    import difflib

    close = difflib.get_close_matches(timm_name, timm.list_models() + list(ALIASES), n=5, cutoff=0.6)
    hint = f"; did you mean one of {close}?" if close else "; see timm.list_models('*pattern*')"
    raise BackboneError(f"unknown backbone {name!r}: neither a timm model nor a torchvision alias{hint}")


def _model_module(timm_name: str) -> str:
    try:
        base, _tag = timm.models.split_model_name_tag(timm_name)
        return timm.models.model_entrypoint(base).__module__.rsplit(".", 1)[-1]
    except Exception:  # hf-hub names and the like: no entrypoint to inspect
        return ""


class Backbone(nn.Module):
    """A timm feature extractor (no classifier) with pooled and spatial outputs.

    Attributes:
        model: the timm model (built with ``num_classes=0``).
        name: the name asked for; timm_name: timm's name for it.
        in_chans: input channels.
        num_features: D, the size of the pooled features (the input of a linear head).
        feature_channels: C, the channels of the spatial map of `forward_features`.
        pretrained_source: ``"none"``, ``"timm-hub"`` or the path of the loaded local weights.
    """

    def __init__(self, model: nn.Module, name: str, timm_name: str, in_chans: int = 3,
                 pretrained_source: str = "none", img_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.model = model
        self.name = name
        self.timm_name = timm_name
        self.in_chans = in_chans
        self.pretrained_source = pretrained_source
        self._img_size = img_size
        self.feature_channels: int = int(model.num_features)
        self.num_features: int = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self._output_fmt = str(getattr(model, "output_fmt", "NCHW"))

    # -- forward passes -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of images x (B, in_chans, H, W)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature map (B, C, h, w) of images x (B, in_chans, H, W)."""
        return self._to_spatial(self.model.forward_features(x), x.shape[-2:])

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), spatial (B, C, h, w)) from a single pass through the network."""
        raw = self.model.forward_features(x)
        return self.model.forward_head(raw, pre_logits=True), self._to_spatial(raw, x.shape[-2:])

    def _to_spatial(self, raw: torch.Tensor, input_hw: torch.Size | tuple[int, int]) -> torch.Tensor:
        """timm's forward_features output -> (B, C, h, w)."""
        if raw.ndim == 4:
            return raw.permute(0, 3, 1, 2) if self._output_fmt == "NHWC" else raw
        if raw.ndim != 3:
            raise BackboneError(f"{self.timm_name}: forward_features gave shape {tuple(raw.shape)}; "
                                "expected (B, C, h, w) or tokens (B, N, C)")
        tokens = raw[:, int(getattr(self.model, "num_prefix_tokens", 0) or 0):]
        n = tokens.shape[1]
        grid = self._token_grid((int(input_hw[0]), int(input_hw[1])))
        if grid is None or grid[0] * grid[1] != n:
            side = math.isqrt(n)
            if side * side != n:
                raise BackboneError(f"{self.timm_name}: cannot lay {n} patch tokens on a grid for input {tuple(input_hw)}")
            grid = (side, side)
        return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2]).permute(0, 3, 1, 2)

    def _token_grid(self, input_hw: tuple[int, int]) -> tuple[int, int] | None:
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is None:
            return None
        if getattr(self.model, "dynamic_img_size", False) and hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(patch_embed.dynamic_feat_size(input_hw))  # type: ignore[return-value]
        grid = getattr(patch_embed, "grid_size", None)
        return None if grid is None else (int(grid[0]), int(grid[1]))

    # -- metadata -----------------------------------------------------------------------------------
    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing the weights expect: input_size (C, H, W), mean, std, interpolation, crop_pct.

        timm reports 3-channel statistics whatever `in_chans` is; for 1-channel input these are the
        luminance ones (ImageNet: (0.449,), (0.226,), as `data.transforms.IMAGENET_GRAY_*`).
        """
        cfg = dict(timm.data.resolve_data_config({}, model=self.model))
        mean, std = tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])
        if self.in_chans != len(mean):
            if mean == IMAGENET_MEAN and std == IMAGENET_STD and self.in_chans == 1:
                mean, std = IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
            else:
                mean = (round(sum(mean) / len(mean), 4),) * self.in_chans
                std = (round(sum(std) / len(std), 4),) * self.in_chans
        size = tuple(cfg["input_size"][-2:])
        if self._img_size is not None:
            size = (self._img_size, self._img_size) if isinstance(self._img_size, int) else tuple(self._img_size)
        cfg.update(input_size=(self.in_chans, *size), mean=mean, std=std)
        return cfg

    def load_weights(self, path: str | Path, max_missing: float = MAX_MISSING_FRACTION) -> None:
        """Load a local checkpoint (file or save_for_hf folder) into this backbone; see `load_local_weights`."""
        load_local_weights(self.model, path, self.in_chans, max_missing=max_missing, name=self.timm_name)
        self.pretrained_source = str(Path(str(path).removeprefix("local-dir:")).expanduser().resolve())

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, timm_name={self.timm_name!r}, in_chans={self.in_chans}, "
                f"num_features={self.num_features}, feature_channels={self.feature_channels}, "
                f"pretrained_source={self.pretrained_source!r}")


def parse_pretrained(value: str | bool) -> bool | str:
    """A config's `pretrained` value: 'false'/'true' (timm's hub) -> bool; anything else (a named offline source
    such as 'imagenet-lite0', a weights file or folder) is passed on as a string."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("false", "no", "0", "none", ""):
        return False
    if low in ("true", "yes", "1", "hub"):
        return True
    return str(value)


def create_backbone(
    name: str,
    pretrained: bool | str | Path = False,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    img_size: int | tuple[int, int] | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """Build a `Backbone` (no classifier) from a timm or torchvision name.

    Args:
        name: a timm name (optionally with a pretrained tag, ``"resnet50.tv_in1k"``) or an alias in `ALIASES`.
        pretrained: False, True (timm's hub weights), a named offline source (``"imagenet-lite0"``, see
            `medimg_core.models.weights.SOURCES`) or a local weights file / save_for_hf folder.
        in_chans: input channels (1 for grayscale); pretrained first convolutions are adapted.
        drop_rate: dropout on the pooled features (active in training mode only).
        img_size: a fixed input size for models that take one (ViTs); other models ignore it.
        **timm_kwargs: passed to `timm.create_model` (``drop_path_rate``, ``global_pool``,
            ``dynamic_img_size`` to override the ViT default...). ``output_stride=4`` (timm stops at 8) is
            supported for timm ResNets through `dilate_resnet_to_stride4`.
    """
    timm_name = resolve_name(name)
    stride4 = timm_kwargs.get("output_stride") == 4
    if stride4:  # timm's ResNet stops at 8; built at 8, then layer2 is dilated the way timm dilates later stages
        timm_kwargs = {**timm_kwargs, "output_stride": 8}
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate, **timm_kwargs}
    if _model_module(timm_name) in _DYNAMIC_SIZE_MODULES:
        kwargs.setdefault("dynamic_img_size", True)
    if img_size is not None:
        kwargs["img_size"] = img_size
    hub = pretrained is True
    if not isinstance(pretrained, bool) and not isinstance(pretrained, str | Path):
        raise TypeError(f"pretrained must be a bool, a weight source name or a path, got {type(pretrained).__name__}")
    source_name = None
    if isinstance(pretrained, str) and is_weight_source(pretrained):
        source_name, pretrained = pretrained, resolve_source(pretrained, timm_name)
    local = None if isinstance(pretrained, bool) else pretrained
    if local is not None and not Path(str(local).removeprefix("local-dir:")).expanduser().exists():
        raise BackboneError(f"pretrained weights {str(local)!r} not found (expected a .safetensors, "
                            f".pth/.pt/.bin file, a save_for_hf folder or a weight source: {', '.join(SOURCES)})")
    try:
        model = _create(timm_name, hub, kwargs)
    except (OSError, RuntimeError) as exc:
        if not hub or isinstance(exc, BackboneError):
            raise
        raise BackboneError(
            f"could not get timm's pretrained weights for {timm_name!r} ({type(exc).__name__}: {exc}). "
            "They come from the Hugging Face hub, which is unreachable or disabled here (HF_HUB_OFFLINE=1) "
            "and they are not in the local cache. Download them where there is a network, or pass a local "
            "file: create_backbone(name, pretrained='/path/to/weights.safetensors')."
        ) from exc
    if stride4:
        dilate_resnet_to_stride4(model)
    backbone = Backbone(model, name, timm_name, in_chans, "timm-hub" if hub else "none", img_size)
    if local is not None:
        backbone.load_weights(local, max_missing=0.0 if source_name else MAX_MISSING_FRACTION)
        if source_name:
            backbone.pretrained_source = f"{source_name}:{backbone.pretrained_source}"
    return backbone


def dilate_resnet_to_stride4(model: nn.Module) -> None:
    """Turn a timm ResNet built with ``output_stride=8`` into output stride 4, in place and with the same weights.

    layer2's stride-2 convolutions become stride 1 and its other 3x3 convolutions dilation 2; the dilations of
    layer3 and layer4 double (what timm's own rule would give for 4: layer2 2, layer3 4, layer4 8, each
    stage's first 3x3 convolution at the previous stage's dilation). The result is the a trous form of the
    stride-8 network: every stage from layer2 on computes at H/4 x W/4, and its values on the even cells
    are exactly the stride-8 network's (for even input sizes). Raises `BackboneError` for other models.
    """
    from timm.models.resnet import ResNet

    if not isinstance(model, ResNet) or not hasattr(model, "layer2"):
        raise BackboneError(f"output_stride 4 is available for timm ResNets only, not {type(model).__name__}; "
                            "use 8, 16 or 32")
    stages = (("layer2", None), ("layer3", 2), ("layer4", 2))
    for stage_name, _ in stages:  # check everything before changing anything
        for module in getattr(model, stage_name).modules():
            if isinstance(module, nn.AvgPool2d) or type(module).__name__ in {"BlurPool2d", "AntiAliasDownsampleLayer"}:
                raise BackboneError("output_stride 4 does not support ResNets with average-pool or anti-aliased "
                                    f"downsampling ({type(module).__name__} in {stage_name})")
    for stage_name, factor in stages:
        for module in getattr(model, stage_name).modules():
            if not isinstance(module, nn.Conv2d):
                continue
            if factor is None:  # layer2: drop the stride; 3x3 convolutions after the strided one get dilation 2
                if module.stride != (1, 1):
                    module.stride = (1, 1)
                elif module.kernel_size != (1, 1):
                    module.dilation, module.padding = (2, 2), (2, 2)
            elif module.kernel_size != (1, 1):
                d = module.dilation[0] * factor
                module.dilation, module.padding = (d, d), (d * (module.kernel_size[0] // 2),) * 2
    for info in getattr(model, "feature_info", []):
        if info.get("reduction", 0) > 4:
            info["reduction"] = 4


def _create(timm_name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, retrying without `dynamic_img_size` / `img_size` for models that refuse them."""
    kwargs = dict(kwargs)
    while True:
        try:
            return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            dropped = next((k for k in ("dynamic_img_size", "img_size") if k in kwargs and k in str(exc)), None)
            if dropped is None:
                raise
            logger.debug("%s does not take %s; building it without", timm_name, dropped)
            kwargs.pop(dropped)


# -- local weights ------------------------------------------------------------------------------------
# (reading a file: medimg_core.models.weight_files.read_checkpoint)
def load_local_weights(
    model: nn.Module,
    path: str | Path,
    in_chans: int = 3,
    max_missing: float = MAX_MISSING_FRACTION,
    name: str = "",
) -> tuple[list[str], list[str]]:
    """Load a local checkpoint into a timm `model` (non-strict); returns (missing, unexpected) keys.

    Prefixes are stripped where that makes keys match, classifier keys dropped, the first convolution
    adapted to `in_chans`, and tensors of the wrong shape skipped (counted as missing). Raises
    BackboneError when more than `max_missing` of the model's parameters (by count or by size) stay
    unset: the checkpoint is for another architecture.
    """
    label = name or type(model).__name__
    state = read_checkpoint(path)
    own = model.state_dict()
    state = _match_prefixes(state, set(own))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifiers = cfg.get("classifier") or ()
    for clf in (classifiers,) if isinstance(classifiers, str) else classifiers:
        for suffix in (".weight", ".bias"):
            if clf + suffix not in own:
                state.pop(clf + suffix, None)
    _adapt_first_conv(model, state, own, in_chans)
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    for key in mismatched:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    params = dict(model.named_parameters())
    missing_params = [k for k in missing if k in params]
    share_count = len(missing_params) / max(len(params), 1)
    total = sum(p.numel() for p in params.values())
    share_size = sum(params[k].numel() for k in missing_params) / max(total, 1)
    where = f"{label} from {path}"
    if max(share_count, share_size) > max_missing:
        shapes = f"; wrong shapes: {mismatched[:5]}" if mismatched else ""
        raise BackboneError(
            f"{where}: the checkpoint leaves {len(missing_params)} of {len(params)} parameter tensors "
            f"({share_size:.0%} of the weights) unset, more than {max_missing:.0%}: it is probably for another "
            f"architecture. Missing e.g. {missing_params[:5]}; checkpoint keys e.g. {list(state)[:5]}{shapes}"
        )
    if missing:
        logger.warning("%s: %d keys not in the checkpoint (left as initialised), e.g. %s", where, len(missing), missing[:5])
    if mismatched:
        logger.warning("%s: %d tensors of the wrong shape skipped, e.g. %s", where, len(mismatched), mismatched[:5])
    if unexpected:
        logger.warning("%s: %d checkpoint keys unused, e.g. %s", where, len(unexpected), unexpected[:5])
    return missing, unexpected


def _match_prefixes(state: dict[str, torch.Tensor], own_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (module., backbone., model., _orig_mod.) from keys that then match.

    Keys that match nothing lose the prefix most matching keys lost (so "module.fc.weight" reads as
    the classifier key "fc.weight" next to "module.conv1.weight" -> "conv1.weight").
    """
    stripped: dict[str, str] = {}
    for key in state:
        k = key
        while k not in own_keys:
            prefix = next((p for p in _STRIP_PREFIXES if k.startswith(p)), None)
            if prefix is None:
                break
            k = k[len(prefix):]
        if k in own_keys:
            stripped[key] = k
    lost = Counter(key[: len(key) - len(k)] for key, k in stripped.items())
    dominant = lost.most_common(1)[0][0] if lost else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in stripped:
            out[stripped[key]] = value
        elif dominant and key.startswith(dominant):
            out[key[len(dominant):]] = value
        else:
            out[key] = value
    return out


def _adapt_first_conv(model: nn.Module, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                      in_chans: int) -> None:
    from timm.models import adapt_input_conv

    traits = getattr(model, "_traits", None) or {}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    convs = traits.get("first_conv", cfg.get("first_conv"))
    if not convs:
        return
    for conv in (convs,) if isinstance(convs, str) else convs:
        key = conv + ".weight"
        if key not in state or key not in own or state[key].shape == own[key].shape:
            continue
        weight = state[key]
        if weight.ndim != 4 or own[key].ndim != 4 or weight.shape[0] != own[key].shape[0]:
            continue
        try:
            state[key] = adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])
            logger.info("adapted %s from %d to %d input channels", key, weight.shape[1], in_chans)
        except (NotImplementedError, ValueError, AssertionError):
            logger.warning("cannot adapt %s to %d input channels; it keeps its random init", key, in_chans)


# -- fingerprints -------------------------------------------------------------------------------------
def weights_fingerprint(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A stable 16-hex-digit hash of a state dict: sha256 over key, dtype, shape and bytes of each tensor.

    Keys are taken in sorted order, so the hash depends on the weights, not on module registration
    order; about 1 GB/s on a CPU (a 100 MB model in ~0.1 s).
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if not torch.is_tensor(value):
            digest.update(json.dumps(repr(value)).encode())
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()[:16]
