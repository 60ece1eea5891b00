"""Inherent Interpretability Score of a representation (Shen et al., ICLR 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iis")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
