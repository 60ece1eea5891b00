"""Moved to medimg-core (`medimg_core.models.specs`), which neuron-concepts shares; the old import path stays."""

from medimg_core.models.specs import BackboneSpec, LoadedBackbone, load_backbone, parse_backbone_spec

__all__ = ["BackboneSpec", "LoadedBackbone", "load_backbone", "parse_backbone_spec"]
