"""Concept Rule Learner: images to binary concepts to Boolean rules (Gao et al., MICCAI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from crl.layers import LogicalNodes, UnionLayer, binarize, logical_product
from crl.model import CRL
from crl.rules import Rule, RuleSet, extract_rules, load_rules

__all__ = ["CRL", "LogicalNodes", "Rule", "RuleSet", "UnionLayer", "__version__", "binarize", "extract_rules",
           "load_rules", "logical_product"]
