"""Diffusion-autoencoder counterfactuals for classification and ordinal grading (Atad et al., MELBA 2024)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dae-counterfactual")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
