"""Inherent Interpretability Score of a representation (Shen et al., ICLR 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iis")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from iis.concepts import ConceptLibrary, ElementConfig, LibraryConfig, extract_elements
from iis.model import ConceptHead, End2EndHead, LinearProbe, kept_count, ratio_mask
from iis.score import DEFAULT_RATIOS, accuracy_retention, bootstrap_iis, compute_iis
from iis.text import AnnotationBackend, OpenClipBackend, TextConceptBackend, cos_cubed_similarity
from iis.train import IISConfig, IISResult, SweepConfig, score_representation

__all__ = [
    "DEFAULT_RATIOS",
    "AnnotationBackend",
    "ConceptHead",
    "ConceptLibrary",
    "ElementConfig",
    "End2EndHead",
    "IISConfig",
    "IISResult",
    "LibraryConfig",
    "LinearProbe",
    "OpenClipBackend",
    "SweepConfig",
    "TextConceptBackend",
    "__version__",
    "accuracy_retention",
    "bootstrap_iis",
    "compute_iis",
    "cos_cubed_similarity",
    "extract_elements",
    "kept_count",
    "ratio_mask",
    "score_representation",
]
