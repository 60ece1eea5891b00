"""The CIPL network: backbone -> add-on -> prototypes -> distance maps -> min-pool -> exp similarity ->
non-negative block-diagonal last layer.

Shapes (B images, D prototype channels, h x w feature grid, K prototype classes, M prototypes per class,
P = K * M prototypes):

    x (B, C, H, W) -> backbone.forward_features (B, C_b, h, w) -> 1x1 reduction (B, D_r, h, w)
      -> add-on: 1x1 conv, ReLU, ..., 1x1 conv, Sigmoid -> z (B, D, h, w) in (0, 1)
      -> squared L2 distance to each prototype p_j (D,): d (B, P, h, w)
      -> min over (h, w): d_min (B, P) -> similarity s = exp(-d_min / D) (B, P)
      -> last layer (no bias, weights >= 0 on the own-class block only) -> logits (B, K)

Multi-label data: the K prototype classes are the L findings followed by a "No Finding" reference class
(or a class of the dataset chosen as reference), and finding c's probability is the two-way softmax
softmax([z_NF, z_c])[1] = sigmoid(z_c - z_NF). Single-label data: K = the classes, softmax over them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

NO_FINDING = "No Finding"
#: the dataset-card tasks CIPL trains on (ordinal grades are read as classes)
TASKS = ("binary", "multiclass", "ordinal", "multilabel")


@dataclass(frozen=True)
class LabelSpace:
    """How a dataset's targets map onto CIPL's prototype classes and outputs.

    Attributes:
        class_names: the K prototype classes, in block order (the reference class last when multi-label).
        output_names: what the model scores: the findings (multi-label) or the classes (single-label).
        multilabel: True for NF-referenced multi-label outputs, False for a softmax over classes.
        reference_index: for multi-label data, the card column used as reference (None: an added
            "No Finding" class, positive when no finding is).
    """

    class_names: tuple[str, ...]
    output_names: tuple[str, ...]
    multilabel: bool
    reference_index: int | None = None

    @classmethod
    def for_task(cls, task: str, card_classes: Sequence[str], reference: str | None = None) -> LabelSpace:
        """The label space of a dataset card's task; `reference` names a card class used as reference."""
        names = tuple(card_classes)
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one CIPL handles; expected one of {list(TASKS)}")
        if len(names) < (1 if task == "multilabel" else 2) or len(set(names)) != len(names):
            raise ValueError(f"a {task} task needs {'at least one class' if task == 'multilabel' else 'two or more classes'}"
                             f" with distinct names; got {list(names)}")
        if task != "multilabel":
            if reference:
                raise ValueError(f"reference class {reference!r} given, but the task is {task}: only multi-label "
                                 "data use a reference class")
            return cls(names, names, False)
        if not reference:
            if NO_FINDING in names:
                raise ValueError(f"the dataset already has a class {NO_FINDING!r}; pass it as the reference class")
            return cls((*names, NO_FINDING), names, True)
        if reference not in names:
            raise ValueError(f"reference class {reference!r} is not one of the dataset's classes {list(names)}")
        r = names.index(reference)
        findings = tuple(n for i, n in enumerate(names) if i != r)
        return cls((*findings, reference), findings, True, r)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "output_names": list(self.output_names),
                "multilabel": self.multilabel, "reference_index": self.reference_index}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpace:
        return cls(tuple(data["class_names"]), tuple(data["output_names"]), bool(data["multilabel"]),
                   data.get("reference_index"))

    def class_labels(self, target: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Multi-hot (B, K) over the prototype classes of dataset targets: (B, L) multi-hot or (B,) indices."""
        t = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target)
        if not self.multilabel:
            return nn.functional.one_hot(t.long(), self.num_classes).float()
        t = t.float()
        if self.reference_index is None:
            return torch.cat([t, (t.sum(1, keepdim=True) == 0).float()], dim=1)
        keep = [i for i in range(t.shape[1]) if i != self.reference_index]
        return torch.cat([t[:, keep], t[:, self.reference_index:self.reference_index + 1]], dim=1)

    def output_targets(self, target: torch.Tensor | np.ndarray) -> np.ndarray:
        """Dataset targets restricted to what the model scores: (N, L_out) multi-hot or (N,) indices."""
        t = np.asarray(target)
        if not self.multilabel or self.reference_index is None:
            return t
        return np.delete(t, self.reference_index, axis=1)


def class_probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """(B, K) logits -> (B, K - 1) sigmoid(z_c - z_ref) per finding (multi-label), or (B, K) softmax."""
    if multilabel:
        return torch.sigmoid(logits[:, :-1] - logits[:, -1:])
    return torch.softmax(logits, dim=1)


def squared_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """||z[b, :, h, w] - p_j||^2 for features z (B, D, h, w) and prototypes (P, D) -> (B, P, h, w).

    Uses ||z||^2 - 2 z.p + ||p||^2 (an einsum), never the (B, P, D, h, w) difference; clamped at 0
    against rounding.
    """
    z2 = (z * z).sum(dim=1, keepdim=True)
    p2 = (prototypes * prototypes).sum(dim=1).view(1, -1, 1, 1)
    zp = torch.einsum("bdhw,pd->bphw", z, prototypes)
    return (z2 - 2 * zp + p2).clamp_min(0.0)


def co_attention(f_a: torch.Tensor, f_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free co-attention between two images' features, rebuilding each from the other's.

    A[i, j] = -||f_a[:, i] - f_b[:, j]||^2 over the N_a x N_b cell pairs (computed as
    2 u.v - ||u||^2 - ||v||^2 with one batched matrix product: (B, N_a, N_b), never (B, D, N_a, N_b)).
    Returns (a_from_b, b_from_a): a_from_b[:, :, i] = sum_j softmax_j(A[i, :]) f_b[:, j] on a's grid and
    b_from_a[:, :, j] = sum_i softmax_i(A[:, j]) f_a[:, i] on b's grid: what the two images share.

    f_a (B, D, h_a, w_a), f_b (B, D, h_b, w_b) -> ((B, D, h_a, w_a), (B, D, h_b, w_b)).
    """
    u, v = f_a.flatten(2), f_b.flatten(2)  # (B, D, N_a), (B, D, N_b)
    uv = torch.bmm(u.transpose(1, 2), v)  # (B, N_a, N_b)
    affinity = 2 * uv - (u * u).sum(1).unsqueeze(2) - (v * v).sum(1).unsqueeze(1)
    a_from_b = torch.bmm(v, affinity.softmax(dim=2).transpose(1, 2))  # (B, D, N_a)
    b_from_a = torch.bmm(u, affinity.softmax(dim=1))  # (B, D, N_b)
    return a_from_b.view_as(f_a), b_from_a.view_as(f_b)


class StageBackbone(nn.Module):
    """A medimg-core Backbone cut after one of its stages: `forward_features` is the feature map of stage
    `index` of the timm model's `feature_info` (via timm's forward_intermediates); later stages are pruned.

    For a finer and more local prototype grid than the last stage gives (e.g. resnet18's layer3 at stride 16,
    or stride 8 with output_stride=8).
    """

    def __init__(self, backbone: nn.Module, index: int):
        super().__init__()
        model = backbone.model
        info = getattr(model, "feature_info", None)
        if info is None or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"backbone {getattr(backbone, 'name', backbone)!r} has no timm feature stages; "
                             "use feature_stage: null")
        n = len(info)
        if not -n <= index < n:
            raise ValueError(f"feature_stage {index} is out of range: {getattr(backbone, 'name', 'the backbone')} has "
                             f"{n} stages (" + ", ".join(f"{i}: {f['module']} stride {f['reduction']}"
                                                          for i, f in enumerate(info)) + ")")
        self.index = index % n
        model.prune_intermediate_layers([self.index], prune_norm=True, prune_head=True)
        self.backbone = backbone
        self.in_chans = getattr(backbone, "in_chans", None)
        self.feature_channels = int(info[self.index]["num_chs"])
        self.stride = int(info[self.index]["reduction"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_stage, H / stride, W / stride)."""
        return self.backbone.model.forward_intermediates(x, indices=[self.index], stop_early=True,
                                                          intermediates_only=True)[0]


class CIPL(nn.Module):
    """Cross- and Intra-image Prototypical Learning network (see the module docstring for shapes).

    Args:
        backbone: a module with `forward_features(x) -> (B, C_b, h, w)` and `feature_channels`
            (a medimg-core `Backbone`).
        labels: the LabelSpace (prototype classes and outputs).
        prototypes_per_class: M (the paper: 50).
        prototype_dim: D (the paper: 256); the similarity is exp(-d / similarity_scale), default D.
        reduce_dim: channels of the 1x1 reduction after the backbone (the paper's "top layer", 256); None
            feeds the backbone channels straight into the add-on.
        add_on_layers: 1x1 convolutions in the add-on (ReLU between, Sigmoid after the last; the paper: 2).
    """

    def __init__(self, backbone: nn.Module, labels: LabelSpace, prototypes_per_class: int = 50,
                 prototype_dim: int = 256, reduce_dim: int | None = 256, add_on_layers: int = 2,
                 similarity_scale: float | None = None, feature_channels: int | None = None):
        super().__init__()
        if prototypes_per_class < 1 or prototype_dim < 1 or add_on_layers < 1:
            raise ValueError("prototypes_per_class, prototype_dim and add_on_layers must be at least 1, got "
                             f"{prototypes_per_class}, {prototype_dim}, {add_on_layers}")
        self.backbone = backbone
        self.labels = labels
        self.num_classes = labels.num_classes
        self.prototypes_per_class = prototypes_per_class
        self.prototype_dim = prototype_dim
        self.similarity_scale = float(similarity_scale or prototype_dim)
        in_ch = int(feature_channels or backbone.feature_channels)
        self.reduce = nn.Conv2d(in_ch, reduce_dim, 1) if reduce_dim else nn.Identity()
        ch = reduce_dim or in_ch
        layers: list[nn.Module] = []
        for i in range(add_on_layers):
            layers.append(nn.Conv2d(ch if i == 0 else prototype_dim, prototype_dim, 1))
            layers.append(nn.ReLU() if i + 1 < add_on_layers else nn.Sigmoid())
        self.add_on = nn.Sequential(*layers)
        for m in [*self.add_on.modules(), *([self.reduce] if reduce_dim else [])]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        n_proto = self.num_classes * prototypes_per_class
        self.prototypes = nn.Parameter(torch.rand(n_proto, prototype_dim))
        self.register_buffer("prototype_class", torch.arange(self.num_classes).repeat_interleave(prototypes_per_class),
                             persistent=False)
        mask = nn.functional.one_hot(self.prototype_class, self.num_classes).T.float()  # (K, P)
        self.register_buffer("class_mask", mask, persistent=False)
        self.last_layer = nn.Linear(n_proto, self.num_classes, bias=False)
        with torch.no_grad():
            self.last_layer.weight.copy_(mask)  # class identity: 1 on the own-class block, 0 elsewhere

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def multilabel(self) -> bool:
        return self.labels.multilabel

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) in (0, 1) of images x (B, C, H, W)."""
        channels = getattr(self.backbone, "in_chans", None)
        if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
            raise ValueError(f"CIPL expects images (B, C, H, W) with C = {channels} channel(s), got shape "
                             f"{tuple(x.shape)}")
        return self.add_on(self.reduce(self.backbone.forward_features(x)))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance maps (B, P, h, w) of features z (B, D, h, w) to every prototype."""
        return squared_distances(z, self.prototypes)

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        """exp(-d / scale), elementwise (distance maps or minimum distances)."""
        return torch.exp(-d / self.similarity_scale)

    def classify(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prototype classifier on features z (B, D, h, w) (also used on co-attended features).

        Returns distance_maps (B, P, h, w), min_distances (B, P), similarities (B, P), logits (B, K).
        """
        d = self.distances(z)
        d_min = d.flatten(2).min(dim=2).values
        s = self.similarity(d_min)
        return {"distance_maps": d, "min_distances": d_min, "similarities": s, "logits": self.last_layer(s)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`classify(features(x))` plus the features z under "features" and "probabilities" (B, L_out)."""
        z = self.features(x)
        out = self.classify(z)
        out["features"] = z
        out["probabilities"] = class_probabilities(out["logits"], self.multilabel)
        return out

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L_out) finding probabilities (multi-label) or class probabilities (single-label)."""
        return self(x)["probabilities"]

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Similarity maps exp(-d / scale) (B, P, h, w) of images x to every prototype (P = K * M, in
        class blocks of M)."""
        return self.similarity(self.distances(self.features(x)))

    @torch.no_grad()
    def project_last_layer(self) -> None:
        """Keep the last layer block-diagonal and non-negative: zero off-class weights, clamp own-class >= 0."""
        self.last_layer.weight.mul_(self.class_mask).clamp_(min=0.0)

    def parameter_groups(self, lr_backbone: float, lr_add_on: float, lr_prototypes: float) -> list[dict]:
        """The joint optimiser's groups (the last layer is not among them: it keeps its identity pattern
        until the last-layer phase)."""
        return [{"params": list(self.backbone.parameters()), "lr": lr_backbone, "weight_decay": 0.0},
                {"params": [*self.reduce.parameters(), *self.add_on.parameters()], "lr": lr_add_on,
                 "weight_decay": 0.0},
                {"params": [self.prototypes], "lr": lr_prototypes, "weight_decay": 0.0}]

    def class_slice(self, k: int) -> slice:
        """The prototype indices of class k."""
        m = self.prototypes_per_class
        return slice(k * m, (k + 1) * m)


class CIPLWithTeacher(nn.Module):
    """The trained student and its exponential-moving-average teacher (no gradients), saved together.

    The teacher is a copy of the student made at the first step of the pairing phase
    (`teacher_ready` records it, so a resumed run does not copy again), then updated after every
    optimiser step: theta_T <- m theta_T + (1 - m) theta_S (buffers such as BatchNorm statistics too).
    """

    def __init__(self, student: CIPL, teacher: CIPL, momentum: float = 0.999):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.momentum = momentum
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, images: torch.Tensor, teacher_images: torch.Tensor | None = None, pairs: bool = False,
                frozen: bool = False) -> dict[str, torch.Tensor]:
        """Everything one training step needs, in one pass (one forward, so DistributedDataParallel sees it).

        forward(images (B, C, H, W)) -> the student's min_distances (B, P), similarities (B, P), logits (B, K).
        pairs=True: images = [x_a; x_b] (2B), adds "co_logits" (2B, K) of the co-attended features (rows:
        a rebuilt from b, then b rebuilt from a). teacher_images = [x'_a; x'_b]: adds the student's similarity
        maps "maps" (2B, P, h, w) and the teacher's "teacher_maps" and "teacher_logits" (no gradients).
        frozen=True: only the last layer gets gradients (the last-layer phase).
        """
        s = self.student
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad() if frozen else contextlib.nullcontext():
            z = s.features(images)
            d = s.distances(z)
            d_min = d.flatten(2).min(dim=2).values
            sims = s.similarity(d_min)
            if pairs:
                half = z.shape[0] // 2
                a_from_b, b_from_a = co_attention(z[:half], z[half:])
                co_sims = s.similarity(s.distances(torch.cat([a_from_b, b_from_a])).flatten(2).min(dim=2).values)
            if teacher_images is not None:
                out["maps"] = s.similarity(d)
        out.update(min_distances=d_min, similarities=sims, logits=s.last_layer(sims))
        if pairs:
            out["co_logits"] = s.last_layer(co_sims)
        if teacher_images is not None:
            t = self.teacher
            with torch.no_grad():
                dt = t.distances(t.features(teacher_images))
                out["teacher_maps"] = t.similarity(dt)
                out["teacher_logits"] = t.last_layer(t.similarity(dt.flatten(2).min(dim=2).values))
        return out

    @torch.no_grad()
    def init_teacher(self) -> None:
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher_ready.fill_(True)

    @torch.no_grad()
    def update_teacher(self) -> None:
        if not bool(self.teacher_ready):
            return
        m = self.momentum
        t_state = self.teacher.state_dict()
        for name, s in self.student.state_dict().items():
            t = t_state[name]
            if t.dtype.is_floating_point:
                t.mul_(m).add_(s.detach(), alpha=1 - m)
            else:
                t.copy_(s)
