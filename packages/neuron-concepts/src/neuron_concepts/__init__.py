"""Concepts from Neurons: sparse-autoencoder concepts of an opaque model, selected into a concept bottleneck (Gong et al., IPMI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuron-concepts")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from neuron_concepts.model import (
    ConceptBottleneck,
    Contributions,
    SparseAutoencoder,
    facility_location,
    sparse_decompose,
)
from neuron_concepts.naming import (
    LatentName,
    LocalCLIPBackend,
    LocalTextGenerationBackend,
    MockBackend,
    NamingBackend,
    auroc_matrix,
    name_latents,
)

__all__ = [
    "ConceptBottleneck",
    "Contributions",
    "LatentName",
    "LocalCLIPBackend",
    "LocalTextGenerationBackend",
    "MockBackend",
    "NamingBackend",
    "SparseAutoencoder",
    "__version__",
    "auroc_matrix",
    "facility_location",
    "name_latents",
    "sparse_decompose",
]
