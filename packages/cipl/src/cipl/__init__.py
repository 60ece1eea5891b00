"""Cross- and Intra-image Prototypical Learning for multi-label diagnosis (Wang et al., IEEE TMI 2025).

    from cipl import CIPL, LabelSpace, push_prototypes
    model = CIPL(backbone, LabelSpace.for_task("multilabel", findings))   # findings + a "No Finding" block
    maps = model.prototype_activations(images)                             # (B, K * M, h, w) similarity maps
    push_prototypes(model, train_loader)                                   # one prototype per training image
"""

from importlib.metadata import PackageNotFoundError, version

from cipl.model import CIPL, CIPLWithTeacher, LabelSpace, class_probabilities
from cipl.push import PushResult, push_prototypes

try:
    __version__ = version("cipl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["CIPL", "CIPLWithTeacher", "LabelSpace", "PushResult", "__version__", "class_probabilities",
           "push_prototypes"]
