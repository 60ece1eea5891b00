"""medimg_core.models: timm backbones with pooled and spatial features, and safe weight loading."""

from medimg_core.models.backbones import (
    ALIASES,
    CPU_FRIENDLY,
    MAX_MISSING_FRACTION,
    TEST_MODELS,
    Backbone,
    BackboneError,
    UnsafeCheckpointError,
    create_backbone,
    dilate_resnet_to_stride4,
    load_local_weights,
    read_checkpoint,
    resolve_name,
    weights_fingerprint,
)

__all__ = [
    "ALIASES",
    "CPU_FRIENDLY",
    "MAX_MISSING_FRACTION",
    "TEST_MODELS",
    "Backbone",
    "BackboneError",
    "UnsafeCheckpointError",
    "create_backbone",
    "dilate_resnet_to_stride4",
    "load_local_weights",
    "read_checkpoint",
    "resolve_name",
    "weights_fingerprint",
]
