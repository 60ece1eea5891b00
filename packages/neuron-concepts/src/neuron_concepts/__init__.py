"""Concepts from Neurons: sparse-autoencoder concepts of an opaque model, selected into a concept bottleneck (Gong et al., IPMI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuron-concepts")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
