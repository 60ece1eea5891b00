"""Inherent Interpretability Score of a representation (Shen et al., ICLR 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iis")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from iis.api import InterpretabilityScore, explain_image
from iis.concepts import ConceptLibrary, extract_elements
from iis.config import DEFAULT_RATIOS, ElementConfig, IISConfig, LibraryConfig, SweepConfig, TextConfig
from iis.explain import Explanation
from iis.model import ConceptHead, End2EndHead, LinearProbe, kept_count, ratio_mask
from iis.score import accuracy_retention, bootstrap_iis, compute_iis
from iis.sweep import IISResult, score_representation
from iis.text import AnnotationBackend, OpenClipBackend, TextConceptBackend, cos_cubed_similarity

__all__ = [
    "DEFAULT_RATIOS",
    "AnnotationBackend",
    "ConceptHead",
    "ConceptLibrary",
    "ElementConfig",
    "End2EndHead",
    "Explanation",
    "IISConfig",
    "IISResult",
    "InterpretabilityScore",
    "LibraryConfig",
    "LinearProbe",
    "OpenClipBackend",
    "SweepConfig",
    "TextConceptBackend",
    "TextConfig",
    "__version__",
    "accuracy_retention",
    "bootstrap_iis",
    "compute_iis",
    "cos_cubed_similarity",
    "explain_image",
    "extract_elements",
    "kept_count",
    "ratio_mask",
    "score_representation",
]
