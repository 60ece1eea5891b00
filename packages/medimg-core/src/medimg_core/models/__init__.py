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
    parse_pretrained,
    read_checkpoint,
    resolve_name,
    weights_fingerprint,
)
from medimg_core.models.weights import SOURCES, WeightSource, WeightSourceError, import_source, verify_source

__all__ = [
    "ALIASES",
    "CPU_FRIENDLY",
    "MAX_MISSING_FRACTION",
    "SOURCES",
    "TEST_MODELS",
    "Backbone",
    "BackboneError",
    "UnsafeCheckpointError",
    "WeightSource",
    "WeightSourceError",
    "create_backbone",
    "dilate_resnet_to_stride4",
    "import_source",
    "load_local_weights",
    "parse_pretrained",
    "read_checkpoint",
    "resolve_name",
    "verify_source",
    "weights_fingerprint",
]
