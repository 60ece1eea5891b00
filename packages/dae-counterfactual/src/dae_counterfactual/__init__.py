"""Diffusion-autoencoder counterfactuals for classification and ordinal grading (Atad et al., MELBA 2024).

    from dae_counterfactual import CounterfactualExplainer
    model = CounterfactualExplainer("synth-grade-cpu").fit(train, val)   # the DAE, its latents, the boundary
    model.explain(image).to_text()                                       # the image moved to the other class

The building blocks: `DiffusionAutoencoder.encode / encode_stochastic / render`, `LatentBoundary.fit / distance /
grade / edit_to_grade`, `generate_counterfactuals`. Heavy modules (diffusers, torch) load on first use of a name.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("dae-counterfactual")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:  # what the lazy table below gives, for type checkers and IDEs
    from dae_counterfactual.api import CounterfactualExplainer, counterfactual_run, evaluate_run
    from dae_counterfactual.boundary import LatentBoundary
    from dae_counterfactual.config import BoundaryConfig, DAEConfig
    from dae_counterfactual.explain import CounterfactualSeries, generate_counterfactuals
    from dae_counterfactual.model import DAEModelConfig, DiffusionAutoencoder
    from dae_counterfactual.run import load_dae, save_dae
    from dae_counterfactual.sampling import DiffusionConfig
    from dae_counterfactual.stages import encode_run, fit_boundary_run
    from dae_counterfactual.train import DAERecipe, train_dae

_LAZY = {
    "CounterfactualExplainer": "dae_counterfactual.api",
    "counterfactual_run": "dae_counterfactual.api",
    "evaluate_run": "dae_counterfactual.api",
    "DiffusionAutoencoder": "dae_counterfactual.model",
    "DAEModelConfig": "dae_counterfactual.model",
    "LatentBoundary": "dae_counterfactual.boundary",
    "DiffusionConfig": "dae_counterfactual.sampling",
    "DAEConfig": "dae_counterfactual.config",
    "BoundaryConfig": "dae_counterfactual.config",
    "load_dae": "dae_counterfactual.run",
    "save_dae": "dae_counterfactual.run",
    "encode_run": "dae_counterfactual.stages",
    "fit_boundary_run": "dae_counterfactual.stages",
    "train_dae": "dae_counterfactual.train",
    "DAERecipe": "dae_counterfactual.train",
    "generate_counterfactuals": "dae_counterfactual.explain",
    "CounterfactualSeries": "dae_counterfactual.explain",
}

# written out (not built from _LAZY) so that linters and type checkers read it
__all__ = [
    "BoundaryConfig",
    "CounterfactualExplainer",
    "CounterfactualSeries",
    "DAEConfig",
    "DAEModelConfig",
    "DAERecipe",
    "DiffusionAutoencoder",
    "DiffusionConfig",
    "LatentBoundary",
    "__version__",
    "counterfactual_run",
    "encode_run",
    "evaluate_run",
    "fit_boundary_run",
    "generate_counterfactuals",
    "load_dae",
    "save_dae",
    "train_dae",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dae_counterfactual' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
