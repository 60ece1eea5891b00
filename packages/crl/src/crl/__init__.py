"""Concept Rule Learner: images to binary concepts to Boolean rules (Gao et al., MICCAI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
