"""Text concepts, as in Label-free CBM (which IIS reuses): phrases scored against images by a teacher,
then a projection of the backbone's features trained to mimic those scores.

    T        = backend.scores(images, phrases)                  (N, M) teacher scores (NaN: unknown)
    filter 1 : keep a phrase when the mean of its top-5 training scores > activation_cutoff (0.25)
    dedupe   : (ours) drop a phrase whose training scores correlate with an earlier one's at |r| >= 0.98
               (text.dedupe_correlation; negation pairs scored from one annotation have r = -1)
    W_c      = argmax_W  cos^3(T, x W^T)                        Linear(D -> M', no bias), Adam 1e-3,
               up to 1000 steps on batches of up to 50,000 training samples, validation checked every
               50 steps, stop at the first check that does not improve, keep the best weights
    filter 2 : keep a phrase when its validation cos^3 similarity > interpretability_cutoff (0.45)
    c        = (x W_c^T - mean_train) / std_train               the concept activations of the head

Backends (`TextConceptBackend`): `OpenClipBackend` (a joint image-text model from open_clip, loaded from
a local weights file only) and `AnnotationBackend` (the dataset's ground-truth concept annotations as the
score matrix, so the path runs offline and is testable).

Concept lists are text files, one clinical phrase per line; `#` starts a comment. For the annotation
backend a phrase names the annotated concept it stands for after `=>`, negated with `~`::

    large cell => big cell size
    small cell => ~big cell size
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from iis.concepts import ConceptLibrary
from iis.config import TextConfig

__all__ = [
    "AnnotationBackend",
    "ConceptList",
    "OpenClipBackend",
    "TextConceptBackend",
    "TextConfig",
    "build_text_library",
    "cos_cubed_similarity",
    "find_concept_list",
    "load_concept_list",
    "make_backend",
    "score_duplicates",
    "top5_activation",
]

log = logging.getLogger("medimg")


# -- concept lists ----------------------------------------------------------------------------------
@dataclass
class ConceptList:
    """Phrases (M) and, per phrase, the annotated concept it stands for: (name, negated) or None."""

    phrases: list[str]
    targets: list[tuple[str, bool] | None]
    path: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.phrases)

    def subset(self, keep: Sequence[int]) -> ConceptList:
        return ConceptList([self.phrases[i] for i in keep], [self.targets[i] for i in keep], self.path,
                           list(self.notes))


def load_concept_list(path: str | Path) -> ConceptList:
    """Read a concept list: one phrase per line, `# comments`, optional `=> concept` / `=> ~concept`.

    Blank lines and comments are skipped (the official lists gain an empty concept from a final newline);
    repeated phrases (case-insensitive) are kept once, with a note.
    """
    from medimg_core.data.common import read_term_list

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: concept list not found")
    entries, notes = read_term_list(path, "phrase")
    phrases = [phrase for phrase, _ in entries]
    targets = [target for _, target in entries]
    if not phrases:
        raise ValueError(f"{path}: no concept phrase found (one phrase per line expected)")
    return ConceptList(phrases, targets, str(path), notes)


def find_concept_list(name_or_path: str) -> Path:
    """A concept list file: a path, or a dataset name looked up as <name>.txt in $IIS_CONCEPTS_DIR and in
    the project's shared-data/concepts/text (found from the working directory or the source tree)."""
    from medimg_core.data.common import find_shared_file

    path, dirs = find_shared_file(name_or_path, "concepts/text", "IIS_CONCEPTS_DIR", __file__)
    if path is not None:
        return path
    where = ", ".join(str(d) for d in dirs) or "no shared-data/concepts/text folder found"
    raise FileNotFoundError(f"concept list {name_or_path!r}: neither a file nor a shipped list (looked in {where}); "
                            "pass --text.concept_list PATH")


# -- backends ---------------------------------------------------------------------------------------
@runtime_checkable
class TextConceptBackend(Protocol):
    """Scores images against phrases: `scores(dataset, concepts)` -> (N, M) float, NaN where unknown."""

    name: str

    def prepare(self, concepts: ConceptList, dataset: Any) -> ConceptList:
        """The phrases this backend can score (drops or checks phrases); called once before `scores`."""
        ...

    def scores(self, dataset: Any, concepts: ConceptList) -> np.ndarray:
        ...


class AnnotationBackend:
    """The dataset's ground-truth concept annotations as the teacher: phrase `p => c` scores 1 where
    concept c is annotated present, 0 where absent (`=> ~c`: the reverse), NaN where unannotated.
    Phrases without `=>` cannot be scored from annotations and are dropped (with a note)."""

    name = "annotations"

    def prepare(self, concepts: ConceptList, dataset: Any) -> ConceptList:
        names = list(dataset.card.concept_names)
        if not names:
            raise ValueError(f"{dataset.card.name}: the annotation backend needs concept annotations and this "
                             "dataset has none; use --text.backend open_clip with local weights")
        lookup = {n.lower(): n for n in names}
        keep, dropped = [], []
        for i, target in enumerate(concepts.targets):
            if target is None:
                dropped.append(concepts.phrases[i])
                continue
            if target[0].lower() not in lookup:
                raise ValueError(f"{concepts.path}: phrase {concepts.phrases[i]!r} names concept {target[0]!r}, "
                                 f"which {dataset.card.name} does not annotate; its concepts are {names}")
            keep.append(i)
        if not keep:
            raise ValueError(f"{concepts.path}: no phrase names an annotated concept ('phrase => concept'); the "
                             f"annotation backend cannot score it. {dataset.card.name} annotates {names}")
        out = concepts.subset(keep)
        out.targets = [(lookup[t[0].lower()], t[1]) for t in out.targets]  # type: ignore[index]
        if dropped:
            out.notes.append(f"annotation backend: {len(dropped)} phrase(s) without '=> concept' dropped, "
                             f"e.g. {dropped[:3]}")
        return out

    def scores(self, dataset: Any, concepts: ConceptList) -> np.ndarray:
        names = list(dataset.card.concept_names)
        ann = np.asarray(dataset.concepts, dtype=np.float64)
        cols = []
        for phrase, target in zip(concepts.phrases, concepts.targets, strict=True):
            if target is None or target[0] not in names:
                raise ValueError(f"phrase {phrase!r}: no annotated concept to score it (call prepare first)")
            col = ann[:, names.index(target[0])]
            cols.append(1.0 - col if target[1] else col)
        return np.stack(cols, axis=1).astype(np.float32)


class OpenClipBackend:
    """A joint image-text model from open_clip (`pip install open_clip_torch`) with a local weights file.

    T = normalise(image embeddings) @ normalise(text embeddings).T, phrases tokenised as they are (no
    prompt template), images through the model's own preprocessing. Nothing is downloaded.
    """

    name = "open_clip"

    def __init__(self, model_name: str = "ViT-B-16", weights: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64):
        if not weights:
            raise ValueError("the open_clip backend needs a local weights file (--text.clip_weights PATH, e.g. "
                             "open_clip_pytorch_model.bin of ViT-B-16); IIS never downloads weights. "
                             "Without one, use --text.backend annotations on a dataset with concept annotations")
        self.weights = Path(weights).expanduser()
        if not self.weights.is_file():
            raise FileNotFoundError(f"{self.weights}: open_clip weights file not found")
        self.model_name, self.device, self.batch_size = model_name, device, batch_size
        self._model: Any = None

    def _load(self) -> tuple[Any, Any, Any]:
        if self._model is None:
            try:
                import open_clip
            except ImportError as exc:
                raise ImportError("the open_clip backend needs open_clip: pip install open_clip_torch") from exc
            model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=str(self.weights))
            self._model = (model.to(self.device).eval(), preprocess, open_clip.get_tokenizer(self.model_name))
        return self._model

    def prepare(self, concepts: ConceptList, dataset: Any) -> ConceptList:
        return concepts

    @torch.no_grad()
    def scores(self, dataset: Any, concepts: ConceptList) -> np.ndarray:
        from PIL import Image
        from tqdm.auto import tqdm

        model, preprocess, tokenizer = self._load()
        text = model.encode_text(tokenizer(list(concepts.phrases)).to(self.device)).float()
        text = text / text.norm(dim=1, keepdim=True)
        out = []
        for start in tqdm(range(0, len(dataset), self.batch_size), desc="open_clip image scores", unit="batch"):
            batch = [preprocess(Image.fromarray(dataset.load_image(i)).convert("RGB"))
                     for i in range(start, min(start + self.batch_size, len(dataset)))]
            image = model.encode_image(torch.stack(batch).to(self.device)).float()
            out.append((image / image.norm(dim=1, keepdim=True) @ text.T).cpu())
        return torch.cat(out).numpy().astype(np.float32)


def make_backend(cfg: TextConfig, device: str = "cpu") -> TextConceptBackend:
    if cfg.backend == "annotations":
        return AnnotationBackend()
    if cfg.backend == "open_clip":
        return OpenClipBackend(cfg.clip_model, cfg.clip_weights, device)
    raise ValueError(f"text.backend {cfg.backend!r}: expected 'annotations' or 'open_clip'")


# -- Label-free CBM ---------------------------------------------------------------------------------
def cos_cubed_similarity(teacher: torch.Tensor, student: torch.Tensor,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per concept (column) cos^3 similarity in [-1, 1] of (N, M) teacher scores and student activations.

    Each column is centred over the samples, cubed and L2-normalised, then the two are dotted (Label-free
    CBM). `valid` (N, M) bool (default: the finite teacher entries) restricts every step to annotated
    samples; with all entries valid this is exactly LF-CBM's formula.
    """
    teacher = torch.as_tensor(teacher, dtype=torch.float32)
    if valid is None:
        valid = torch.isfinite(teacher)
    valid = valid.to(student.device)
    teacher = torch.where(valid, teacher.to(student.device), torch.zeros((), device=student.device))
    count = valid.sum(0).clamp_min(1)
    t = torch.where(valid, teacher - teacher.sum(0) / count, 0.0) ** 3
    s = torch.where(valid, student - (student * valid).sum(0) / count, 0.0) ** 3
    t = t / t.norm(dim=0).clamp_min(1e-12)
    s = s / s.norm(dim=0).clamp_min(1e-12)
    return (t * s).sum(0)


def top5_activation(scores: np.ndarray) -> np.ndarray:
    """Per concept, the mean of its 5 highest scores over the samples (unknown entries ignored)."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    top = -np.sort(-s, axis=0)[:5]
    top = np.where(np.isfinite(top), top, np.nan)
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmean(top, axis=0), nan=-np.inf)


def score_duplicates(scores: np.ndarray, min_abs_correlation: float) -> tuple[list[int], dict[int, tuple[int, float]]]:
    """Phrases whose teacher scores duplicate an earlier phrase's, up to sign.

    scores: (N, M) training teacher scores (NaN: unknown; a pair is compared on the samples where both are known).
    Returns (the columns kept, in order; {dropped column: (the kept column it duplicates, Pearson r)}): a column
    is dropped when |r| with an earlier kept column is >= `min_abs_correlation`. Constant columns have no r and
    are kept (the activation filter deals with them).
    """
    scores = np.asarray(scores, dtype=np.float64)
    known = np.isfinite(scores)
    kept: list[int] = []
    dropped: dict[int, tuple[int, float]] = {}
    for j in range(scores.shape[1]):
        for i in kept:
            both = known[:, i] & known[:, j]
            a, b = scores[both, i], scores[both, j]
            if both.sum() < 3 or a.std() == 0 or b.std() == 0:
                continue
            r = float(np.corrcoef(a, b)[0, 1])
            if abs(r) >= min_abs_correlation:
                dropped[j] = (i, r)
                break
        else:
            kept.append(j)
    return kept, dropped


def build_text_library(train_features: torch.Tensor, val_features: torch.Tensor, train_scores: np.ndarray,
                       val_scores: np.ndarray, concepts: ConceptList, cfg: TextConfig, seed: int = 0,
                       device: str | torch.device = "cpu") -> tuple[ConceptLibrary, dict[str, Any]]:
    """Filter the phrases, learn W_c and standardise: the Label-free CBM concept layer as a library.

    train/val_features: (N, D) pooled features; train/val_scores: (N, M) teacher scores (NaN: unknown).
    Returns the library (W_c rows as vectors, training mean/std) and a report of every filter.
    """
    train_scores = np.asarray(train_scores, dtype=np.float32)
    val_scores = np.asarray(val_scores, dtype=np.float32)
    m = len(concepts)
    if train_scores.shape != (train_features.shape[0], m) or val_scores.shape != (val_features.shape[0], m):
        raise ValueError(f"teacher scores {train_scores.shape} / {val_scores.shape} do not match "
                         f"{train_features.shape[0]} / {val_features.shape[0]} samples x {m} phrases")
    report: dict[str, Any] = {"phrases": m, "notes": list(concepts.notes)}
    top5 = top5_activation(train_scores)
    keep = [i for i in range(m) if top5[i] > cfg.activation_cutoff]
    report["activation_filter"] = {"cutoff": cfg.activation_cutoff, "kept": len(keep),
                                   "dropped": [concepts.phrases[i] for i in range(m) if i not in keep]}
    if not keep:
        raise ValueError(f"every phrase has a mean top-5 teacher score <= {cfg.activation_cutoff} "
                         "(text.activation_cutoff): no text concept left")
    if cfg.dedupe_correlation is not None:
        unique, duplicates = score_duplicates(train_scores[:, keep], cfg.dedupe_correlation)
        report["duplicate_filter"] = {
            "min_abs_correlation": cfg.dedupe_correlation,
            "dropped": {concepts.phrases[keep[j]]: {"duplicate_of": concepts.phrases[keep[i]], "correlation": r}
                        for j, (i, r) in duplicates.items()}}
        keep = [keep[j] for j in unique]
    concepts = concepts.subset(keep)
    t_train = torch.from_numpy(train_scores[:, keep])
    t_val = torch.from_numpy(val_scores[:, keep])
    x_train = torch.as_tensor(train_features, dtype=torch.float32).to(device)
    x_val = torch.as_tensor(val_features, dtype=torch.float32).to(device)
    torch.manual_seed(seed)
    proj = nn.Linear(x_train.shape[1], len(keep), bias=False).to(device)
    opt = torch.optim.Adam(proj.parameters(), lr=cfg.proj_lr)
    gen = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    best_loss, best_step, best_state = float("inf"), 0, None
    for step in range(cfg.proj_steps):
        batch = torch.randperm(n, generator=gen)[: min(cfg.proj_batch_size, n)]
        loss = -cos_cubed_similarity(t_train[batch], proj(x_train[batch])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.proj_check_every == 0 or step == cfg.proj_steps - 1:
            with torch.no_grad():
                val_loss = float(-cos_cubed_similarity(t_val, proj(x_val)).mean())
            if best_state is None or val_loss < best_loss:
                best_loss, best_step = val_loss, step
                best_state = proj.weight.detach().clone()
            else:
                break
    assert best_state is not None
    proj.weight.data.copy_(best_state)
    with torch.no_grad():
        val_sim = cos_cubed_similarity(t_val, proj(x_val)).cpu().numpy()
    report["projection"] = {"best_step": best_step, "steps_run": step + 1, "val_similarity_mean": -best_loss}
    keep2 = [i for i in range(len(concepts)) if val_sim[i] > cfg.interpretability_cutoff]
    report["interpretability_filter"] = {
        "cutoff": cfg.interpretability_cutoff, "kept": len(keep2),
        "dropped": {concepts.phrases[i]: float(val_sim[i]) for i in range(len(concepts)) if i not in keep2}}
    if not keep2:
        raise ValueError(f"no phrase reaches a validation cos^3 similarity above {cfg.interpretability_cutoff} "
                         f"(text.interpretability_cutoff; best {val_sim.max():.3f}): no text concept left")
    concepts = concepts.subset(keep2)
    weight = best_state[keep2].cpu()
    with torch.no_grad():
        acts = x_train.cpu() @ weight.T
    mean, std = acts.mean(0), acts.std(0)
    report["similarity"] = {concepts.phrases[j]: float(val_sim[i]) for j, i in enumerate(keep2)}
    report["final"] = len(keep2)
    library = ConceptLibrary("text", weight, len(keep2), list(concepts.phrases), [], mean=mean, std=std,
                             extra={"targets": [list(t) if t else None for t in concepts.targets],
                                    "concept_list": concepts.path})
    return library, report
