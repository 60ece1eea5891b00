"""Diffusion-autoencoder counterfactuals for classification and ordinal grading (Atad et al., MELBA 2024).

    from dae_counterfactual import DiffusionAutoencoder, LatentBoundary, load_dae

`DiffusionAutoencoder.encode / encode_stochastic / render`, `LatentBoundary.fit / distance / grade /
edit_to_grade`; heavy modules (diffusers, torch) load on first use.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("dae-counterfactual")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_LAZY = {
    "DiffusionAutoencoder": "dae_counterfactual.model",
    "DAEModelConfig": "dae_counterfactual.model",
    "LatentBoundary": "dae_counterfactual.boundary",
    "DiffusionConfig": "dae_counterfactual.sampling",
    "DAEConfig": "dae_counterfactual.config",
    "load_dae": "dae_counterfactual.run",
    "save_dae": "dae_counterfactual.run",
    "train_dae": "dae_counterfactual.train",
    "generate_counterfactuals": "dae_counterfactual.explain",
    "CounterfactualSeries": "dae_counterfactual.explain",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dae_counterfactual' has no attribute {name!r}")
