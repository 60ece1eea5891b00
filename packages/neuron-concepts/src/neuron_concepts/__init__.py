"""Concepts from Neurons: sparse-autoencoder concepts of an opaque model, selected into a concept bottleneck (Gong et al., IPMI 2025).

    from neuron_concepts import ConceptsFromNeurons
    model = ConceptsFromNeurons("synth-derm-cpu").fit(train, val)
    model.predict_proba(test); model.explain("image.png").to_text()

The names below are imported on first use, so that `neuron-concepts --help` does not load torch, scikit-learn
and matplotlib; the TYPE_CHECKING block shows them to type checkers and IDEs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("neuron-concepts")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from neuron_concepts.api import ConceptsFromNeurons, explain_image
    from neuron_concepts.bottleneck import ConceptBottleneck, Contributions, sparse_decompose
    from neuron_concepts.config import NeuronConceptsConfig
    from neuron_concepts.explain import Explanation
    from neuron_concepts.naming import (
        LatentName,
        LocalCLIPBackend,
        LocalTextGenerationBackend,
        MockBackend,
        NamingBackend,
        auroc_matrix,
        name_latents,
    )
    from neuron_concepts.pipeline import run_pipeline
    from neuron_concepts.sae import SparseAutoencoder, fit_sae
    from neuron_concepts.selection import facility_location

#: public name -> the module that defines it
_EXPORTS = {
    "ConceptsFromNeurons": "api", "explain_image": "api",
    "ConceptBottleneck": "bottleneck", "Contributions": "bottleneck", "sparse_decompose": "bottleneck",
    "NeuronConceptsConfig": "config", "Explanation": "explain",
    "LatentName": "naming", "LocalCLIPBackend": "naming", "LocalTextGenerationBackend": "naming",
    "MockBackend": "naming", "NamingBackend": "naming", "auroc_matrix": "naming", "name_latents": "naming",
    "run_pipeline": "pipeline", "SparseAutoencoder": "sae", "fit_sae": "sae", "facility_location": "selection",
}

__all__ = [
    "ConceptBottleneck",
    "ConceptsFromNeurons",
    "Contributions",
    "Explanation",
    "LatentName",
    "LocalCLIPBackend",
    "LocalTextGenerationBackend",
    "MockBackend",
    "NamingBackend",
    "NeuronConceptsConfig",
    "SparseAutoencoder",
    "__version__",
    "auroc_matrix",
    "explain_image",
    "facility_location",
    "fit_sae",
    "name_latents",
    "run_pipeline",
    "sparse_decompose",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neuron_concepts' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"neuron_concepts.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
