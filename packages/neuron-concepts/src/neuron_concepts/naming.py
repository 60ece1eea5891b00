"""Naming the SAE latents, offline, each name recorded with its source.

Sources (tried in the configured order; the first that names a latent wins):

- ``annotations`` (source ``gt-attribute``): the annotated concept the latent's activation predicts best,
  by AUROC (network-dissection style); with ``negations`` a latent active where a concept is absent may be
  named ``no <concept>`` (score 1 - AUROC).
- ``vocabulary`` (``vocab-enrichment``): the user's clinical terms ranked by how over-represented they are
  in the reports of the latent's top-activating images against the other images (smoothed log-odds
  ratio z-score); the name is the most enriched term when its z-score passes `min_z`.
- ``file`` (``external``): a user-supplied names file, JSON ``{"<latent>": "name"}`` or CSV ``latent,name``.
- ``backend`` (``backend:<id>``): a `NamingBackend` (a local vision-language or language model, or the
  mock in tests) given the top-activating images, their reports and the vocabulary.

A latent no source names is called ``latent <k>`` (source ``none``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("medimg")

SOURCES = ("annotations", "vocabulary", "file", "backend")


@dataclass
class LatentName:
    """The name of one latent: `name`, where it came from (`source`), how well it fits (`score`: AUROC for
    gt-attribute, z-score for vocab-enrichment, the backend's own score) and source details."""

    latent: int
    name: str
    source: str
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- AUROC of every latent


def auroc_matrix(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every latent's activation for every binary label, with ties counted half (Mann-Whitney U),
    equal to `sklearn.metrics.roc_auc_score(labels[:, c], activations[:, k])` for each pair.

    activations (N, m); labels (N, C) in {0, 1} with NaN = unannotated (those rows are left out per label).
    Returns (m, C), NaN where a label has a single class among its annotated rows.
    """
    from scipy.stats import rankdata

    A = np.asarray(activations, dtype=np.float64)
    Y = np.asarray(labels, dtype=np.float64)
    if A.ndim != 2 or Y.ndim != 2 or len(A) != len(Y):
        raise ValueError(f"auroc_matrix: activations (N, m) and labels (N, C) must share N; got {A.shape}, {Y.shape}")
    out = np.full((A.shape[1], Y.shape[1]), np.nan)
    known = ~np.isnan(Y)
    # labels sharing the same annotated rows share one ranking
    patterns: dict[bytes, list[int]] = {}
    for c in range(Y.shape[1]):
        patterns.setdefault(np.packbits(known[:, c]).tobytes(), []).append(c)
    for cols in patterns.values():
        rows = known[:, cols[0]]
        if not rows.any():
            continue
        ranks = rankdata(A[rows], axis=0)  # average ranks for ties
        for c in cols:
            y = Y[rows, c]
            if not np.isin(y, (0.0, 1.0)).all():
                raise ValueError(f"auroc_matrix: label column {c} has values other than 0, 1 and NaN")
            n_pos = y.sum()
            n_neg = len(y) - n_pos
            if n_pos == 0 or n_neg == 0:
                continue
            rank_sum = ranks[y == 1].sum(axis=0)
            out[:, c] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def name_from_annotations(aurocs: np.ndarray, concept_names: Sequence[str], latents: Sequence[int],
                          negations: bool = True) -> dict[int, LatentName]:
    """Each latent named by its best-matching annotated concept (highest AUROC, or 1 - AUROC as 'no ...')."""
    names: dict[int, LatentName] = {}
    if aurocs.size == 0 or np.isnan(aurocs).all():
        return names
    for k in latents:
        row = aurocs[k]
        if np.isnan(row).all():
            continue
        pos = np.where(np.isnan(row), -np.inf, row)
        c = int(np.argmax(pos))
        score, negated = float(pos[c]), False
        if negations:
            neg = np.where(np.isnan(row), -np.inf, 1 - row)
            cn = int(np.argmax(neg))
            if neg[cn] > score:
                c, score, negated = cn, float(neg[cn]), True
        name = f"no {concept_names[c]}" if negated else str(concept_names[c])
        names[int(k)] = LatentName(int(k), name, "gt-attribute", score,
                                   {"concept": str(concept_names[c]), "negated": negated,
                                    "auroc": float(row[c])})
    return names


# --------------------------------------------------------------------------- vocabulary enrichment


def read_vocabulary(path: str | Path) -> list[str]:
    """Terms, one per line (blank lines and lines starting with # are skipped; duplicates removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vocabulary file not found (expected one clinical term per line)")
    terms: list[str] = []
    for line in path.read_text().splitlines():
        term = line.strip()
        if term and not term.startswith("#") and term.lower() not in (t.lower() for t in terms):
            terms.append(term)
    if not terms:
        raise ValueError(f"{path}: the vocabulary file holds no terms")
    return terms


def read_reports(path: str | Path, id_column: str = "id", text_column: str = "report") -> dict[str, str]:
    """{sample id: report text} from a CSV with an id column and a text column (one row per image)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reports file not found (expected a CSV with columns "
                                f"'{id_column}' and '{text_column}')")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (id_column, text_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(frame.columns)} "
                         "(set naming.report_id_column / naming.report_column)")
    return dict(zip(frame[id_column].astype(str), frame[text_column].astype(str), strict=True))


def term_presence(texts: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """(N, T) bool: does text i mention term t (case-insensitive, whole words)."""
    patterns = [re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, t.lower().split())) + r"(?!\w)")
                for t in vocabulary]
    lowered = [str(t).lower() for t in texts]
    return np.array([[bool(p.search(text)) for p in patterns] for text in lowered], dtype=bool).reshape(
        len(texts), len(vocabulary))


def enrichment_scores(presence: np.ndarray, top: np.ndarray, prior: float = 0.5) -> np.ndarray:
    """z-scores of the smoothed log-odds ratio of each term among the top documents against the rest.

    presence (N, T) bool; top (m, n) row indices of each latent's top-activating documents.
    Returns (m, T): log[(a+p)/(n-a+p)] - log[(b+p)/(N-n-b+p)] over its approximate standard error, with
    a, b the numbers of top and other documents mentioning the term.
    """
    P = presence.astype(np.float64)
    N = len(P)
    n = top.shape[1]
    a = P[top].sum(axis=1)  # (m, T)
    b = P.sum(axis=0)[None, :] - a
    rest = N - n
    delta = np.log((a + prior) / (n - a + prior)) - np.log((b + prior) / (rest - b + prior))
    var = 1 / (a + prior) + 1 / (n - a + prior) + 1 / (b + prior) + 1 / (rest - b + prior)
    return delta / np.sqrt(var)


def name_from_vocabulary(reports: Sequence[str], vocabulary: Sequence[str], top: np.ndarray,
                         latents: Sequence[int], min_z: float = 1.96, n_terms: int = 5) -> dict[int, LatentName]:
    """Each latent named by its most enriched vocabulary term (z-score >= min_z); reports are aligned with
    the rows `top` indexes (one per image)."""
    presence = term_presence(reports, vocabulary)
    z = enrichment_scores(presence, top[np.asarray(latents, dtype=np.int64)])
    names: dict[int, LatentName] = {}
    for row, k in enumerate(latents):
        order = np.argsort(-z[row], kind="stable")
        best = int(order[0])
        if not np.isfinite(z[row, best]) or z[row, best] < min_z:
            continue
        names[int(k)] = LatentName(int(k), vocabulary[best], "vocab-enrichment", float(z[row, best]),
                                   {"top_terms": [[vocabulary[t], float(z[row, t])] for t in order[:n_terms]]})
    return names


# --------------------------------------------------------------------------- names file


def read_names_file(path: str | Path) -> dict[int, str]:
    """{latent: name} from JSON ({"12": "streaks", ...}) or CSV (columns latent,name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: names file not found (JSON {{latent: name}} or CSV latent,name)")
    out: dict[int, str] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{latent index: name}}")
        items = data.items()
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"latent", "name"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected CSV columns 'latent' and 'name', got {reader.fieldnames}")
            items = [(r["latent"], r["name"]) for r in reader]
    for key, name in items:
        try:
            out[int(key)] = str(name).strip()
        except ValueError:
            raise ValueError(f"{path}: latent {key!r} is not an integer index") from None
    return {k: v for k, v in out.items() if v}


# --------------------------------------------------------------------------- backends


@runtime_checkable
class NamingBackend(Protocol):
    """Names a latent from its top-activating images (and their reports, when there are any).

    `describe` gets the top images (uint8 (H, W, 3) arrays), their reports (or None), the vocabulary (or
    None) and some reference images from the rest of the data; it returns (name, score or None).
    """

    id: str

    def describe(self, images: Sequence[np.ndarray], reports: Sequence[str] | None,
                 vocabulary: Sequence[str] | None,
                 reference_images: Sequence[np.ndarray] | None = None) -> tuple[str, float | None]: ...


class MockBackend:
    """A deterministic backend for tests: the vocabulary term most frequent in the reports if both exist,
    else "mock concept <n>" numbered in call order. Records every call in `calls`."""

    id = "mock"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def describe(self, images, reports, vocabulary, reference_images=None) -> tuple[str, float | None]:
        self.calls.append({"n_images": len(images), "n_reports": None if reports is None else len(reports),
                           "shape": tuple(np.asarray(images[0]).shape) if len(images) else None})
        if reports and vocabulary:
            counts = term_presence(reports, vocabulary).sum(axis=0)
            if counts.max() > 0:
                return vocabulary[int(np.argmax(counts))], float(counts.max() / len(reports))
        return f"mock concept {len(self.calls)}", None


def _require_transformers(model_path: str | Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("this naming backend needs the `transformers` library (pip install transformers); "
                          "it loads a model from a local folder only and downloads nothing") from None
    if not Path(model_path).exists():
        raise FileNotFoundError(f"{model_path}: local model folder not found (a save_pretrained folder of the "
                                "model; nothing is downloaded at run time)")
    return transformers


class LocalCLIPBackend:
    """A local CLIP-style vision-language model (a transformers `save_pretrained` folder): scores every
    vocabulary term by its mean image-text similarity over the top images minus that over the reference
    images, and names the latent with the best term. Needs a vocabulary."""

    def __init__(self, model_path: str | Path, prompt: str = "a medical image showing {}", device: str = "cpu"):
        transformers = _require_transformers(model_path)
        self.model = transformers.CLIPModel.from_pretrained(str(model_path), local_files_only=True).to(device).eval()
        self.processor = transformers.CLIPProcessor.from_pretrained(str(model_path), local_files_only=True)
        self.prompt, self.device = prompt, device
        self.id = f"clip:{Path(model_path).name}"
        self._text_cache: dict[tuple[str, ...], Any] = {}

    def _embed_images(self, images: Sequence[np.ndarray]):
        import torch

        inputs = self.processor(images=[np.asarray(i) for i in images], return_tensors="pt").to(self.device)
        with torch.no_grad():
            e = self.model.get_image_features(**inputs)
        return e / e.norm(dim=-1, keepdim=True)

    def describe(self, images, reports, vocabulary, reference_images=None) -> tuple[str, float | None]:
        import torch

        if not vocabulary:
            raise ValueError("LocalCLIPBackend needs a vocabulary (naming.vocabulary): it ranks terms, it does "
                             "not write free text")
        key = tuple(vocabulary)
        if key not in self._text_cache:
            inputs = self.processor(text=[self.prompt.format(t) for t in vocabulary], return_tensors="pt",
                                    padding=True).to(self.device)
            with torch.no_grad():
                t = self.model.get_text_features(**inputs)
            self._text_cache[key] = t / t.norm(dim=-1, keepdim=True)
        text = self._text_cache[key]
        score = (self._embed_images(images) @ text.T).mean(0)
        if reference_images:
            score = score - (self._embed_images(reference_images) @ text.T).mean(0)
        best = int(score.argmax())
        return vocabulary[best], float(score[best])


class LocalTextGenerationBackend:
    """A local causal language model (a transformers `save_pretrained` folder) that reads the reports of
    the top-activating images and completes "This feature represents". Needs reports."""

    def __init__(self, model_path: str | Path, max_new_tokens: int = 24, device: str = "cpu"):
        transformers = _require_transformers(model_path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(model_path),
                                                                        local_files_only=True).to(device).eval()
        self.max_new_tokens, self.device = max_new_tokens, device
        self.id = f"text:{Path(model_path).name}"

    def describe(self, images, reports, vocabulary, reference_images=None) -> tuple[str, float | None]:
        import torch

        if not reports:
            raise ValueError("LocalTextGenerationBackend needs reports (naming.reports) of the top images")
        terms = f" Use one of these terms if they fit: {', '.join(vocabulary)}." if vocabulary else ""
        prompt = ("One feature of a diagnostic image model is active in images with these reports:\n"
                  + "\n".join(f"- {r.strip()[:300]}" for r in reports[:10])
                  + f"\nName the common finding in a few words.{terms}\nThis feature represents")
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.strip().split("\n")[0].split(".")[0].strip() or "unnamed", None


def make_backend(spec: str, device: str = "cpu") -> NamingBackend:
    """A backend from its spec: "mock", "clip:/path/to/model" or "text:/path/to/model"."""
    kind, _, path = spec.partition(":")
    if kind == "mock":
        return MockBackend()
    if kind == "clip" and path:
        return LocalCLIPBackend(path, device=device)
    if kind == "text" and path:
        return LocalTextGenerationBackend(path, device=device)
    raise ValueError(f"naming backend {spec!r}: expected 'mock', 'clip:/path/to/local/model' or "
                     "'text:/path/to/local/model'")


# --------------------------------------------------------------------------- all sources


def top_activating(activations: np.ndarray, n: int) -> np.ndarray:
    """(m, n) row indices of each latent's n largest activations, largest first (ties: lower row first)."""
    A = np.asarray(activations)
    n = min(n, len(A))
    order = np.argsort(-A, axis=0, kind="stable")[:n]
    return order.T.copy()


def name_latents(
    activations: np.ndarray,
    sources: Sequence[str] = ("annotations",),
    *,
    alive: np.ndarray | None = None,
    concepts: np.ndarray | None = None,
    concept_names: Sequence[str] | None = None,
    negations: bool = True,
    vocabulary: Sequence[str] | None = None,
    reports: Sequence[str | None] | None = None,
    min_z: float = 1.96,
    names: dict[int, str] | None = None,
    backend: NamingBackend | None = None,
    images: Callable[[int], np.ndarray] | None = None,
    n_reference: int = 16,
    top_n: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, LatentName]:
    """Name every alive latent.

    activations (N, m): latent activations of N images; alive (m,) bool (default: active at least once).
    concepts (N, K) 0/1 with NaN = unannotated, and concept_names, for "annotations"; vocabulary and
    reports (N,) aligned with the rows (None where an image has no report) for "vocabulary"; names
    {latent: name} for "file"; backend and images(row) -> uint8 image for "backend".
    Returns {latent: LatentName} for every alive latent (source "none" where nothing named it).
    """
    from tqdm.auto import tqdm

    A = np.asarray(activations)
    if A.ndim != 2:
        raise ValueError(f"name_latents: activations must be (N, m), got shape {A.shape}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"name_latents: unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    alive = (A > 0).any(axis=0) if alive is None else np.asarray(alive, dtype=bool)
    latents = [int(k) for k in np.flatnonzero(alive)]
    top = top_activating(A, top_n)
    result: dict[int, LatentName] = {}

    def add(found: dict[int, LatentName]) -> None:
        for k, v in found.items():
            result.setdefault(k, v)

    for source in sources:
        todo = [k for k in latents if k not in result]
        if not todo:
            break
        if source == "annotations":
            if concepts is None or concept_names is None or np.asarray(concepts).shape[1] == 0:
                raise ValueError("naming source 'annotations' needs concept annotations; this dataset has none "
                                 "(use vocabulary, file or backend)")
            found = name_from_annotations(auroc_matrix(A[:, todo], np.asarray(concepts)), concept_names,
                                          range(len(todo)), negations)
            add({todo[i]: LatentName(todo[i], v.name, v.source, v.score, v.details) for i, v in found.items()})
        elif source == "vocabulary":
            if not vocabulary:
                raise ValueError("naming source 'vocabulary' needs a vocabulary file (naming.vocabulary)")
            if reports is None:
                raise ValueError("naming source 'vocabulary' ranks terms in the reports of the top images; give a "
                                 "reports CSV (naming.reports), or use the backend source to rank terms by image")
            has = np.array([r is not None and str(r) != "" for r in reports])
            if not has.any():
                raise ValueError("naming source 'vocabulary': no image of this split has a report")
            rows = np.flatnonzero(has)  # rank among the images that have reports
            sub_top = top_activating(A[rows], top_n)
            add(name_from_vocabulary([str(reports[i]) for i in rows], vocabulary, sub_top, todo, min_z))
        elif source == "file":
            if names is None:
                raise ValueError("naming source 'file' needs a names file (naming.names_file)")
            add({k: LatentName(k, names[k], "external") for k in todo if k in names})
        elif source == "backend":
            if backend is None or images is None:
                raise ValueError("naming source 'backend' needs a backend (naming.backend) and the images")
            rng = np.random.default_rng(seed)
            named: dict[int, LatentName] = {}
            for k in tqdm(todo, desc=f"naming with {backend.id}", unit="latent", disable=None if progress else True):
                rows = top[k]
                imgs = [images(int(i)) for i in rows]
                reps = [str(reports[i]) for i in rows if reports[i]] if reports is not None else None
                quiet = np.flatnonzero(A[:, k] <= 0)
                ref = [images(int(i)) for i in rng.choice(quiet, min(n_reference, len(quiet)), replace=False)] \
                    if len(quiet) else None
                name, score = backend.describe(imgs, reps or None, vocabulary, ref)
                named[k] = LatentName(k, str(name), f"backend:{backend.id}", score)
            add(named)
    for k in latents:
        result.setdefault(k, LatentName(k, f"latent {k}", "none"))
    return dict(sorted(result.items()))
