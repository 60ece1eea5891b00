"""How IIS is measured: linear heads trained on cached features, one per sparsity ratio and learning rate.

For every ratio s and every learning rate, a fresh head (concept scores -> ratio mask -> Linear) is
trained on the training split's features under the mask; the epoch and learning rate with the best
validation accuracy are kept and that head is scored on the held-out test split. The linear probe on
the raw representation (the ARR denominator) gets the same optimiser, grid and selection.

Optimiser (the official code's): Adam, weight decay 0, ExponentialLR(gamma 0.99) stepped per epoch,
30 epochs, shuffled minibatches of 1024, cross-entropy (binary cross-entropy per label for multi-label
tasks); learning rates (1e-3, 1e-2, 1e-1); heads start from truncated-normal weights (std 0.02) and a
zero bias. Each (ratio, lr) run is seeded, so the sweep is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from iis.concepts import ConceptLibrary
from iis.config import SweepConfig
from iis.model import LinearProbe, kept_count
from iis.score import bootstrap_iis, compute_iis
from medimg_core.metrics import bootstrap_ci

__all__ = [
    "HeadFit",
    "IISResult",
    "correctness",
    "fit_head",
    "score_representation",
]

# -- heads on tensors -------------------------------------------------------------------------------
def correctness(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per sample (N,): 1/0 for a right/wrong top-1 class; for multi-label, the fraction of labels right."""
    if multilabel:
        return ((logits > 0) == (target > 0.5)).float().mean(dim=1)
    return (logits.argmax(dim=1) == target).float()


def _loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)


@dataclass
class HeadFit:
    """One trained head: its learning rate, best epoch, validation accuracy there and its weights then."""

    lr: float
    best_epoch: int
    val_accuracy: float
    state: dict[str, torch.Tensor]
    val_curve: list[float]


def fit_head(make_head: Callable[[], nn.Module], train_x: torch.Tensor, train_y: torch.Tensor,
             val_x: torch.Tensor, val_y: torch.Tensor, lr: float, sweep: SweepConfig, multilabel: bool = False,
             seed: int = 0) -> HeadFit:
    """Train a head (seeded) with the official optimiser; keep the epoch with the best validation accuracy.

    train_x (N, D), train_y (N,) int64 or (N, L) multi-hot; val likewise; all on the head's device.
    """
    torch.manual_seed(seed)
    head = make_head().to(train_x.device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=sweep.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=sweep.lr_gamma)
    gen = torch.Generator().manual_seed(seed)
    n = train_x.shape[0]
    best_acc, best_epoch, best_state, curve = -1.0, 0, None, []
    for epoch in range(1, sweep.epochs + 1):
        head.train()
        perm = torch.randperm(n, generator=gen).to(train_x.device)
        for start in range(0, n, sweep.batch_size):
            idx = perm[start:start + sweep.batch_size]
            loss = _loss(head(train_x[idx]), train_y[idx], multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        head.eval()
        with torch.no_grad():
            acc = float(correctness(head(val_x), val_y, multilabel).mean())
        curve.append(acc)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    assert best_state is not None
    return HeadFit(lr, best_epoch, best_acc, best_state, curve)


#: an IIS at or above this is marked saturated: every sparsity keeps nearly all of the probe's accuracy, so the
#: score no longer separates representations (the issue's "about 0.97"; ARR is bounded by about 1 from above)
SATURATION_IIS = 0.97


def bias_only_baseline(train_targets: torch.Tensor, test_targets: torch.Tensor, multilabel: bool, k: int
                       ) -> tuple[list[int], np.ndarray]:
    """The bias-only (majority) head: the training split's most common class (multi-label: each label's majority
    value) predicted for every test sample, whatever its features. Returns (the prediction, per test sample
    correctness (N,)); it is the floor that any concept head should clear."""
    n = test_targets.shape[0]
    if multilabel:
        majority = (train_targets.float().mean(0) > 0.5).long()
        logits = (majority.float() * 2 - 1).expand(n, -1)
        prediction = [int(v) for v in majority]
    else:
        majority = int(torch.bincount(train_targets.long().cpu(), minlength=k).argmax())
        logits = torch.nn.functional.one_hot(torch.full((n,), majority), k).float()
        prediction = [majority]
    return prediction, correctness(logits.to(test_targets.device), test_targets, multilabel).cpu().numpy()


@dataclass
class IISResult:
    """The sweep of one representation: per ratio the selected head's validation and test accuracy, ARR
    (test accuracy / probe test accuracy), the probe, IIS with its bootstrap interval."""

    ratios: list[float]
    lrs: list[float]
    num_concepts: int
    kept: list[int]
    val_accuracy: list[float]
    test_accuracy: list[float]
    selected_lr: list[float]
    best_epoch: list[int]
    grid_val: dict[str, dict[str, float]]
    probe: dict[str, Any]
    arr: list[float]
    arr_ci: list[tuple[float, float]]
    iis: float
    iis_ci: tuple[float, float]
    iis_val: float
    correct: np.ndarray
    head_states: dict[str, dict[str, torch.Tensor]]
    n_test: int
    wall_time_s: float
    #: the majority head's prediction, test accuracy and ARR (its accuracy over the probe's): the floor
    bias_only: dict[str, Any] = field(default_factory=dict)

    @property
    def saturated(self) -> bool:
        """IIS >= SATURATION_IIS: the score cannot rank this representation against a better one."""
        return self.iis >= SATURATION_IIS

    def to_dict(self) -> dict[str, Any]:
        return {
            "iis": self.iis, "iis_ci": list(self.iis_ci), "iis_val": self.iis_val,
            "saturated": self.saturated, "saturation_threshold": SATURATION_IIS, "bias_only": self.bias_only,
            "probe": self.probe, "num_concepts": self.num_concepts, "n_test": self.n_test,
            "per_ratio": [
                {"ratio": s, "kept_concepts": k, "val_accuracy": v, "test_accuracy": t, "arr": a,
                 "arr_ci": list(ci), "lr": lr, "best_epoch": e}
                for s, k, v, t, a, ci, lr, e in zip(self.ratios, self.kept, self.val_accuracy, self.test_accuracy,
                                                     self.arr, self.arr_ci, self.selected_lr, self.best_epoch,
                                                     strict=True)],
            "grid_val": self.grid_val, "lrs": self.lrs, "sweep_wall_time_s": self.wall_time_s,
        }


def _split(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, Mapping):
        x, y = data["features"], data["targets"]
    elif isinstance(data, Sequence) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(f"{name}: expected a mapping with 'features' and 'targets' or a (features, targets) pair")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y))
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: features {tuple(x.shape)} and targets {tuple(y.shape)} do not match "
                         "(expected (N, D) and (N,) or (N, L))")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return x, y


def _arr_interval(correct: np.ndarray, r: int, n_boot: int, seed: int) -> tuple[float, float]:
    _, low, high = bootstrap_ci(lambda c: c[:, r].mean() / c[:, -1].mean(), correct, n_boot=n_boot, seed=seed)
    return float(low), float(high)


def score_representation(train: Any, val: Any, test: Any, library: ConceptLibrary | None = None, *,
                         concepts: torch.Tensor | None = None, sweep: SweepConfig | None = None,
                         multilabel: bool = False, num_outputs: int | None = None, seed: int = 0,
                         device: str | torch.device = "cpu", n_boot: int = 1000, tau: float = 0.1,
                         progress: bool = True) -> IISResult:
    """IIS of a representation given its features on train / val / test and a concept library.

    train, val, test: {"features": (N, D), "targets": (N,) or (N, L)} (what medimg-core's FeatureCache
    returns) or (features, targets) pairs. library: a `ConceptLibrary`, or pass `concepts` (M, D) for a
    prototype-style library of those vectors. Heads are trained on train, selected on val (best epoch
    and lr per ratio) and scored on test; the IIS interval resamples the test samples (`n_boot` times).
    """
    start = time.perf_counter()
    sweep = sweep or SweepConfig()
    if library is None:
        if concepts is None:
            raise ValueError("pass a concept library or the concept vectors (M, D)")
        concepts = torch.as_tensor(concepts, dtype=torch.float32)
        library = ConceptLibrary("prototype", concepts, concepts.shape[0], [f"concept {i}" for i in
                                                                             range(concepts.shape[0])])
    (tx, ty), (vx, vy), (sx, sy) = _split(train, "train"), _split(val, "val"), _split(test, "test")
    if not (tx.shape[1] == vx.shape[1] == sx.shape[1]):
        raise ValueError(f"feature sizes differ between splits: {tx.shape[1]}, {vx.shape[1]}, {sx.shape[1]}")
    dim = library.vectors.shape[1]
    if dim != tx.shape[1]:
        raise ValueError(f"the concept vectors are {dim}-d but the features are {tx.shape[1]}-d: "
                         "the library was built in another representation")
    if multilabel:
        ty, vy, sy = ty.float(), vy.float(), sy.float()
        k = int(ty.shape[1])
    else:
        ty, vy, sy = ty.long(), vy.long(), sy.long()
        k = int(max(int(ty.max()), int(vy.max()), int(sy.max())) + 1)
        if len(torch.unique(ty)) < 2:
            raise ValueError(f"train: every target is class {int(ty[0])}; the heads need two classes or more")
    k = num_outputs or k
    device = torch.device(device)
    tx, ty, vx, vy, sx, sy = (t.to(device) for t in (tx, ty, vx, vy, sx, sy))
    ratios = [float(s) for s in sweep.ratios]
    lrs = [float(lr) for lr in sweep.lrs]
    jobs = [(s, lr) for s in [*ratios, None] for lr in lrs]  # None: the linear probe
    stats = (tx.mean(0), tx.std(0)) if sweep.probe_standardize else None

    def make_probe() -> LinearProbe:
        return LinearProbe(tx.shape[1], k, standardize=stats)

    fits: dict[Any, list[HeadFit]] = {}
    threads = torch.get_num_threads()
    if sweep.cpu_threads and device.type == "cpu":
        torch.set_num_threads(sweep.cpu_threads)
    try:
        for i, (s, lr) in enumerate(tqdm(jobs, desc="IIS sweep (ratio x lr)", unit="head",
                                         disable=None if progress else True)):
            def make(s=s):
                return library.make_head(k, s, tau)
            fits.setdefault(s, []).append(fit_head(make if s is not None else make_probe, tx, ty, vx, vy, lr, sweep,
                                                   multilabel, seed + i))
    finally:
        torch.set_num_threads(threads)

    def select(key: Any) -> tuple[HeadFit, np.ndarray]:
        best = max(fits[key], key=lambda f: f.val_accuracy)  # first maximum: the smaller lr on ties
        head = (make_probe() if key is None else library.make_head(k, key, tau)).to(device)
        head.load_state_dict(best.state)
        head.eval()
        with torch.no_grad():
            return best, correctness(head(sx), sy, multilabel).cpu().numpy()

    chosen = [select(s) for s in ratios]
    probe_fit, probe_correct = select(None)
    correct = np.stack([c for _, c in chosen] + [probe_correct], axis=1)
    test_acc = correct.mean(axis=0)
    probe = {"val_accuracy": probe_fit.val_accuracy, "test_accuracy": float(test_acc[-1]), "lr": probe_fit.lr,
             "best_epoch": probe_fit.best_epoch, "grid_val": {f"{f.lr:g}": f.val_accuracy for f in fits[None]}}
    if test_acc[-1] <= 0:
        raise ValueError("the linear probe gets no test sample right: ARR is undefined")
    iis, low, high = bootstrap_iis(correct, ratios, n_boot=n_boot, seed=seed)
    val_acc = [f.val_accuracy for f, _ in chosen]
    bias_prediction, bias_correct = bias_only_baseline(ty, sy, multilabel, k)
    bias_acc = float(bias_correct.mean())
    return IISResult(
        ratios=ratios, lrs=lrs, num_concepts=library.num_concepts,
        kept=[kept_count(library.num_concepts, s) for s in ratios],
        val_accuracy=val_acc, test_accuracy=[float(a) for a in test_acc[:-1]],
        selected_lr=[f.lr for f, _ in chosen], best_epoch=[f.best_epoch for f, _ in chosen],
        grid_val={f"{s:g}": {f"{f.lr:g}": f.val_accuracy for f in fits[s]} for s in ratios},
        probe=probe, arr=[float(a / test_acc[-1]) for a in test_acc[:-1]],
        arr_ci=[_arr_interval(correct, r, n_boot, seed) for r in range(len(ratios))],
        iis=float(iis), iis_ci=(float(low), float(high)),
        iis_val=compute_iis(ratios, val_acc, probe_fit.val_accuracy),
        correct=correct, head_states={**{f"s{s:g}": f.state for s, (f, _) in zip(ratios, chosen, strict=True)},
                                      "probe": probe_fit.state},
        n_test=int(sx.shape[0]), wall_time_s=time.perf_counter() - start,
        bias_only={"prediction": bias_prediction, "test_accuracy": bias_acc,
                   "arr": bias_acc / float(test_acc[-1]),
                   "iis": compute_iis(ratios, [bias_acc] * len(ratios), float(test_acc[-1]))},
    )
