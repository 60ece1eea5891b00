"""Cross- and Intra-image Prototypical Learning for multi-label diagnosis (Wang et al., IEEE TMI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cipl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
