"""medimg-core: the shared data, training and figure layer of the medimg toolkit."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medimg-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
