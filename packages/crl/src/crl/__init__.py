"""Concept Rule Learner: images to binary concepts to Boolean rules (Gao et al., MICCAI 2025)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from crl.api import ConceptRuleLearner, evaluate_run, explain_image, load_crl, load_rules_of
from crl.config import CRLConfig
from crl.explain import Explanation, explain_concepts
from crl.layers import LogicalNodes, UnionLayer, binarize, logical_product
from crl.model import CRL
from crl.rules import Rule, RuleSet, extract_rules, load_rules
from crl.train import train_crl

__all__ = ["CRL", "CRLConfig", "ConceptRuleLearner", "Explanation", "LogicalNodes", "Rule", "RuleSet", "UnionLayer",
           "__version__", "binarize", "evaluate_run", "explain_concepts", "explain_image", "extract_rules",
           "load_crl", "load_rules", "load_rules_of", "logical_product", "train_crl"]
