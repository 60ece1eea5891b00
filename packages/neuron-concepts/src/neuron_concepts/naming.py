"""Naming the SAE latents, offline, each name recorded with its source.

Sources (tried in the configured order; the first that names a latent wins):

- ``annotations`` (source ``gt-attribute``): the annotated concept the latent's activation predicts best,
  by AUROC (network-dissection style); with ``negations`` a latent active where a concept is absent may be
  named ``no <concept>`` (score 1 - AUROC). Only a score of at least ``min_auroc`` (the naming floor) names
  the latent; below it the latent stays unnamed (its best candidate is recorded in ``details``) and the next
  source may name it.
- ``vocabulary`` (``vocab-enrichment``): the user's clinical terms ranked by how over-represented they are
  in the reports of the latent's top-activating images against the other images (one-sided hypergeometric test,
  as a z-score: `enrichment_scores`); the name is the most enriched term when its z-score passes `min_z`. A vocabulary file may
  say, for scoring only, which annotated concept a term stands for (``radial streaming => streaks``, or
  ``=> ~concept`` for its absence; `vocabulary_concepts`): the naming reads the terms alone, and
  `concept_naming` counts a term as naming its concept. `read_vocabulary` also takes the name of a vocabulary
  shipped in the project's ``shared-data/concepts/vocabulary`` (e.g. ``synth-derm``).
- ``file`` (``external``): a user-supplied names file, JSON ``{"<latent>": "name"}`` or CSV ``latent,name``.
- ``backend`` (``backend:<id>``): a `NamingBackend` (a local vision-language or language model, or the
  mock in tests) given the top-activating images, their reports and the vocabulary.

A latent no source names is unnamed: called ``latent <k>``, source ``none`` (with the best annotation candidate's
score when one was below the floor); unnamed latents get no concept activation vector (``cav.named_only``), so
they stay out of the named bottleneck.

`floor_sweep` and `concept_naming` measure naming on a split other than the one the names were chosen on (see
their docstrings): the first is what the default floor was chosen from, on validation; the second checks
train-chosen names against test annotations. `floors_from_validation` (``naming.floor_from: val``) chooses
``min_auroc`` and ``min_z`` for the data at hand: names chosen on train with no floor, each checked on the
validation annotations (`name_holds`), and the floor of a grid that maximises the F1 score of "named and holds"
(`choose_floor`); the validation annotations serve that choice only.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medimg_core.config import ConfigError
from neuron_concepts.config import DEFAULT_MIN_AUROC, NamingConfig

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


def best_annotation(aurocs: np.ndarray, negations: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best annotated concept of every latent: (concept index (m,), negated (m,) bool, score (m,)).

    aurocs (m, C) as from `auroc_matrix`; the score is the AUROC, or 1 - AUROC for a negated name ("no <concept>",
    only with `negations`, and only when strictly better). A row without any defined AUROC gets index -1 and a NaN
    score.
    """
    M = np.asarray(aurocs, dtype=np.float64)
    m = M.shape[0]
    if M.size == 0:
        return np.full(m, -1), np.zeros(m, dtype=bool), np.full(m, np.nan)
    defined = ~np.isnan(M).all(axis=1)
    pos = np.where(np.isnan(M), -np.inf, M)
    c = pos.argmax(axis=1)
    score = pos[np.arange(m), c]
    negated = np.zeros(m, dtype=bool)
    if negations:
        neg = np.where(np.isnan(M), -np.inf, 1 - M)
        cn = neg.argmax(axis=1)
        better = neg[np.arange(m), cn] > score
        c, score, negated = np.where(better, cn, c), np.where(better, neg[np.arange(m), cn], score), better
    return np.where(defined, c, -1), negated & defined, np.where(defined, score, np.nan)


def name_from_annotations(aurocs: np.ndarray, concept_names: Sequence[str], latents: Sequence[int],
                          negations: bool = True, min_auroc: float = DEFAULT_MIN_AUROC) -> dict[int, LatentName]:
    """Each latent named by its best-matching annotated concept (highest AUROC, or 1 - AUROC as 'no ...') when
    that score is at least `min_auroc`; a latent below the floor gets an unnamed entry (source "none", name
    "latent <k>", its best candidate's score, the candidate in details)."""
    names: dict[int, LatentName] = {}
    if aurocs.size == 0 or np.isnan(aurocs).all():
        return names
    index, negated, scores = best_annotation(aurocs, negations)
    for k in latents:
        c = int(index[k])
        if c < 0:
            continue
        score = float(scores[k])
        name = f"no {concept_names[c]}" if negated[k] else str(concept_names[c])
        details = {"concept": str(concept_names[c]), "negated": bool(negated[k]), "auroc": float(aurocs[k, c])}
        if score >= min_auroc:
            names[int(k)] = LatentName(int(k), name, "gt-attribute", score, details)
        else:
            names[int(k)] = LatentName(int(k), f"latent {int(k)}", "none", score,
                                       {**details, "candidate": name, "min_auroc": float(min_auroc)})
    return names


def _plain(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def concept_of(name: str, concept_names: Sequence[str],
               term_concepts: Mapping[str, str] | None = None) -> tuple[int, bool] | None:
    """(concept index, negated) when a latent's name is an annotated concept or "no <concept>" (case, spaces and
    underscores aside), else None: how a name from any source is checked against the annotations.

    term_concepts: {vocabulary term: concept or "no <concept>"} (`vocabulary_concepts`); a name that is such a
    term counts as the concept it stands for."""
    plain = _plain(name)
    if term_concepts:
        mapped = {_plain(t): c for t, c in term_concepts.items()}.get(plain)
        if mapped is not None:
            plain = _plain(mapped)
    for j, concept in enumerate(concept_names):
        if plain == _plain(concept):
            return j, False
        if plain == "no " + _plain(concept):
            return j, True
    return None


#: the floors `floor_sweep` reports by default
FLOORS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def floor_sweep(aurocs_fit: np.ndarray, aurocs_check: np.ndarray, negations: bool = True,
                floors: Sequence[float] = FLOORS) -> list[dict[str, Any]]:
    """What each naming floor does, names chosen on one split (`aurocs_fit`) and checked on another
    (`aurocs_check`, same latents and concepts; e.g. train and validation).

    Per floor t: `named` (latents whose best annotation score on the fit split is >= t), `same_best` (of these,
    those whose best annotation on the check split is the same name), `holding` (those whose name scores >= t
    on the check split too) and the two fractions of `named`. Latents without a defined AUROC are left out.
    """
    c_fit, neg_fit, s_fit = best_annotation(aurocs_fit, negations)
    c_chk, neg_chk, _ = best_annotation(aurocs_check, negations)
    ok = c_fit >= 0
    A = np.asarray(aurocs_check, dtype=np.float64)
    raw = np.full(len(c_fit), np.nan)
    raw[ok] = A[np.flatnonzero(ok), c_fit[ok]]
    s_chk = np.where(neg_fit, 1 - raw, raw)
    same = (c_fit == c_chk) & (neg_fit == neg_chk) & ok
    rows = []
    for t in floors:
        named = ok & (s_fit >= t)
        n = int(named.sum())
        same_n, hold_n = int((named & same).sum()), int((named & (np.nan_to_num(s_chk, nan=-1) >= t)).sum())
        rows.append({"floor": float(t), "named": n, "same_best": same_n, "holding": hold_n,
                     "same_best_fraction": same_n / n if n else None, "holding_fraction": hold_n / n if n else None})
    return rows


def concept_naming(names: dict[int, LatentName], concept_names: Sequence[str], aurocs_fit: np.ndarray,
                   aurocs_check: np.ndarray, floor: float,
                   term_concepts: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per annotated concept, how its name fares: names chosen on one split, checked on another.

    names: {latent: LatentName} (any source); aurocs_fit / aurocs_check (m, C): every latent's AUROC for every
    concept on the split the names were chosen on (train) and on a held-out split (test). For concept c:
    `latents_named` (named latents whose name is c), `latents_named_negated` ("no c"); among the first, the one
    with the highest fit-split AUROC for c (`latent`, `fit_auroc`), its held-out AUROC (`check_auroc`) and
    `confirmed`: a latent carries the name c and its held-out AUROC for c is >= `floor`. Unlike asking whether the
    best latent's name is c, nothing here is chosen on the split it is scored on. With `term_concepts` (a
    vocabulary's {term: concept}), a latent named by a term counts as named by the term's concept (`concept_of`).
    """
    rows = []
    for j, concept in enumerate(concept_names):
        pos, neg = [], []
        for k, v in names.items():
            if v.source == "none":
                continue
            match = concept_of(v.name, concept_names, term_concepts)
            if match is not None and match[0] == j:
                (neg if match[1] else pos).append(k)
        row: dict[str, Any] = {"concept": str(concept), "latents_named": len(pos), "latents_named_negated": len(neg),
                               "latent": None, "name_source": None, "fit_auroc": None, "check_auroc": None,
                               "confirmed": False}
        fit = [(aurocs_fit[k, j], k) for k in pos if not np.isnan(aurocs_fit[k, j])]
        if fit:
            _, k = max(fit, key=lambda t: (t[0], -t[1]))
            check = aurocs_check[k, j]
            row.update(latent=int(k), name_source=names[k].source, fit_auroc=float(aurocs_fit[k, j]),
                       check_auroc=None if np.isnan(check) else float(check),
                       confirmed=bool(not np.isnan(check) and check >= floor))
        rows.append(row)
    return rows


#: the enrichment z-score floors `floors_from_validation` tries by default for the vocabulary route (naming.min_z_grid)
Z_FLOORS = (1.96, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0)
#: the criterion `choose_floor` maximises
FLOOR_CRITERION = "holds_f1"


def holds_threshold(nc: NamingConfig) -> float:
    """The AUROC at which a name holds on a held-out split (validation when choosing floors, test in the naming
    check): `naming.holds_auroc`, else `naming.min_auroc` when the floors are given, else the default floor."""
    if nc.holds_auroc is not None:
        return float(nc.holds_auroc)
    return float(nc.min_auroc) if nc.floor_from == "given" else DEFAULT_MIN_AUROC


def name_holds(names: Mapping[int, LatentName], concept_names: Sequence[str], aurocs_check: np.ndarray,
               threshold: float, term_concepts: Mapping[str, str] | None = None) -> dict[int, bool]:
    """{latent: does its name hold on the check split}, for every named latent of `names` (source not "none").

    A name holds when it stands for an annotated concept (`concept_of`: the concept itself, "no <concept>", or a
    vocabulary term mapped to either by `term_concepts`) and the latent's AUROC for that concept on the check
    split (aurocs_check (m, C); 1 - AUROC for "no <concept>") is at least `threshold`, the rule `concept_naming`
    applies on test. A name that stands for no annotated concept (a distractor term) cannot hold."""
    A = np.asarray(aurocs_check, dtype=np.float64)
    out: dict[int, bool] = {}
    for k, v in names.items():
        if v.source == "none":
            continue
        match = concept_of(v.name, concept_names, term_concepts)
        if match is None:
            out[int(k)] = False
            continue
        auroc = A[k, match[0]]
        score = 1 - auroc if match[1] else auroc
        out[int(k)] = bool(not np.isnan(score) and score >= threshold)
    return out


def choose_floor(scores: Sequence[float], holds: Sequence[bool], floors: Sequence[float]) -> dict[str, Any]:
    """The naming floor that maximises the F1 score of "named and holds" over the candidate latents.

    scores (n,): each candidate latent's naming score on the split its name was chosen on (train AUROC, or
    enrichment z-score); holds (n,) bool: whether that name holds on a held-out split (`name_holds`, validation).
    A floor t names the candidates with score >= t; over them, precision = named and holding / named, recall =
    named and holding / all holding candidates (those a floor of -inf would name), F1 = 2 TP / (named + holding).
    The chosen floor has the highest F1, ties going to the highest floor (fewer names for the same F1); when no
    candidate holds, every F1 is 0 and the highest floor is chosen.

    Why F1: precision alone is maximised by naming almost nothing (one lucky latent), recall alone by having no
    floor (which is what over-names); F1 weighs a name that does not hold against a holding name left out.

    Returns {"criterion": "holds_f1", "candidates", "holding", "grid": [{"floor", "named", "named_holding",
    "precision", "recall", "f1"} per floor, ascending], "chosen"}.
    """
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(holds, dtype=bool)
    if s.shape != h.shape:
        raise ValueError(f"choose_floor: scores {s.shape} and holds {h.shape} differ in shape")
    grid = sorted({float(t) for t in floors})
    if not grid:
        raise ValueError("choose_floor: no candidate floor given")
    total = int(h.sum())
    rows = []
    for t in grid:
        named = s >= t
        n, tp = int(named.sum()), int((named & h).sum())
        rows.append({"floor": t, "named": n, "named_holding": tp, "precision": tp / n if n else None,
                     "recall": tp / total if total else None, "f1": 2 * tp / (n + total) if n + total else 0.0})
    # exact comparison of 2 TP / (named + holding) by cross-multiplication; ties to the higher floor
    best = rows[0]
    for r in rows[1:]:
        lhs = 2 * r["named_holding"] * (best["named"] + total)
        rhs = 2 * best["named_holding"] * (r["named"] + total)
        if lhs >= rhs:
            best = r
    return {"criterion": FLOOR_CRITERION, "candidates": int(len(s)), "holding": total, "grid": rows,
            "chosen": best["floor"]}


def floors_from_validation(
    activations: np.ndarray,
    activations_val: np.ndarray,
    concepts_val: np.ndarray,
    concept_names: Sequence[str],
    sources: Sequence[str],
    *,
    alive: np.ndarray | None = None,
    concepts: np.ndarray | None = None,
    negations: bool = True,
    vocabulary: Sequence[str] | None = None,
    reports: Sequence[str | None] | None = None,
    term_concepts: Mapping[str, str] | None = None,
    top_n: int = 16,
    holds: float = DEFAULT_MIN_AUROC,
    auroc_floors: Sequence[float] = FLOORS,
    z_floors: Sequence[float] = Z_FLOORS,
) -> dict[str, dict[str, Any]]:
    """The naming floors chosen on the validation split (`naming.floor_from: val`), one per source that has one:
    `annotations` (naming.min_auroc, from `auroc_floors`) and `vocabulary` (naming.min_z, from `z_floors`).

    Names are chosen on train as `name_latents` would with no floor (activations (N, m) of the train images,
    `concepts`, `vocabulary`, `reports` and `top_n` as there); each candidate name is checked on validation
    (activations_val (N_val, m), concepts_val (N_val, C) 0/1/NaN) with `name_holds` at the AUROC `holds`; and
    `choose_floor` picks the floor (the F1 of "named and holds"). The validation annotations serve this choice
    only; the names themselves still come from train (and, for the vocabulary route, from the reports alone).
    The vocabulary route needs `term_concepts` (a vocabulary's `term => concept` lines) to check its names.

    Returns {source: `choose_floor`'s record + "key" (the config key) and "holds_auroc"}.
    """
    aurocs_val = auroc_matrix(activations_val, concepts_val)
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        if source == "annotations":
            candidates = name_latents(activations, ["annotations"], alive=alive, concepts=concepts,
                                      concept_names=concept_names, negations=negations, min_auroc=-np.inf,
                                      top_n=top_n, progress=False)
            key, floors = "naming.min_auroc", auroc_floors
        elif source == "vocabulary":
            if not term_concepts:
                raise ValueError("choosing naming.min_z on validation needs a vocabulary whose terms say which "
                                 "annotated concept they stand for (`term => concept` lines), to check its names")
            candidates = name_latents(activations, ["vocabulary"], alive=alive, vocabulary=vocabulary,
                                      reports=reports, min_z=-np.inf, top_n=top_n, progress=False)
            key, floors = "naming.min_z", z_floors
        else:
            continue
        named = {k: v for k, v in candidates.items() if v.source != "none"}
        check = name_holds(named, concept_names, aurocs_val, holds, term_concepts)
        latents = sorted(named)
        result = choose_floor([float(named[k].score) for k in latents], [check[k] for k in latents], floors)
        out[source] = {"key": key, "holds_auroc": float(holds), **result}
    return out


# --------------------------------------------------------------------------- vocabulary enrichment


def find_vocabulary(name_or_path: str | Path) -> Path:
    """A vocabulary file: a path, or a name looked up as <name>.txt in $NEURON_CONCEPTS_VOCABULARY_DIR and in the
    project's shared-data/concepts/vocabulary (found from the working directory or the source tree)."""
    from medimg_core.data.common import find_shared_file

    path, dirs = find_shared_file(name_or_path, "concepts/vocabulary", "NEURON_CONCEPTS_VOCABULARY_DIR", __file__)
    if path is not None:
        return path
    where = ", ".join(str(d) for d in dirs) or "no shared-data/concepts/vocabulary folder found"
    raise FileNotFoundError(f"{name_or_path}: vocabulary file not found, neither a file nor a shipped vocabulary "
                            f"(looked in {where}; expected one clinical term per line)")


def _vocabulary_lines(path: str | Path) -> tuple[Path, list[tuple[str, str | None]]]:
    """(file, [(term, concept it stands for or None)]): one term per line, optional `=> concept` / `=> ~concept`
    (then "no <concept>"); blank lines and # comments skipped, repeated terms (case aside) kept once."""
    from medimg_core.data.common import read_term_list

    path = find_vocabulary(path)
    entries, _ = read_term_list(path, "term")
    out = [(term, None if target is None else f"no {target[0]}" if target[1] else target[0])
           for term, target in entries]
    if not out:
        raise ValueError(f"{path}: the vocabulary file holds no terms")
    return path, out


def read_vocabulary(path: str | Path) -> list[str]:
    """Terms, one per line (blank lines and lines starting with # are skipped; duplicates removed); a file path
    or the name of a shipped vocabulary (`find_vocabulary`). What a line says after `=>` is not part of the term:
    it is for scoring only (`vocabulary_concepts`)."""
    return [term for term, _ in _vocabulary_lines(path)[1]]


def vocabulary_concepts(path: str | Path) -> dict[str, str]:
    """{term: the annotated concept it stands for} from the `term => concept` lines of a vocabulary file
    (`=> ~concept` gives "no <concept>"); terms without `=>` (distractors) are left out. For scoring names only
    (`concept_naming`); the naming itself never reads it."""
    return {term: concept for term, concept in _vocabulary_lines(path)[1] if concept is not None}


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


def enrichment_scores(presence: np.ndarray, top: np.ndarray) -> np.ndarray:
    """How over-represented each term is among each latent's top documents: the one-sided hypergeometric
    (Fisher's exact) test of enrichment, as a z-score.

    presence (N, T) bool; top (m, n) row indices of each latent's top-activating documents. With a the top
    documents mentioning term t and K all documents mentioning it, p = P(X >= a) for X ~ Hypergeometric(N, K, n)
    (`scipy.stats.hypergeom.logsf`) and z = Phi^-1(1 - p) (`scipy.special.ndtri_exp`, exact for tiny p).
    Returns (m, T); -inf where a = 0 (a term in none of the top reports can name nothing).

    Why not a smoothed log-odds ratio (this module's earlier score): with equal pseudo-counts in a group of n top
    documents and one of N - n others, a term in NO report scored log((N-n+p)/(n+p)) > 0, about z = 1.5 for 40
    top documents of 840 and 1.94 for 16, so rare and absent terms looked enriched; the exact test has no prior.
    """
    from scipy.special import ndtri_exp
    from scipy.stats import hypergeom, norm

    P = np.asarray(presence, dtype=bool)
    top = np.asarray(top, dtype=np.int64)
    N, n = len(P), top.shape[1]
    a = P[top].sum(axis=1)  # (m, T)
    K = np.broadcast_to(P.sum(axis=0)[None, :], a.shape)
    p = hypergeom.sf(a - 1, N, K, n)  # vectorised; logsf only where p underflows (it loops in Python)
    z = norm.isf(p)
    tiny = p < 1e-250
    if tiny.any():
        z[tiny] = -ndtri_exp(hypergeom.logsf(a[tiny] - 1, N, K[tiny], n))
    return z


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
                                   {"top_terms": [[vocabulary[t], float(z[row, t])] for t in order[:n_terms]
                                                  if np.isfinite(z[row, t])]})
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


def check_sources(nc: NamingConfig, num_concepts: int) -> list[str]:
    """The naming sources of `nc` that can name latents here (in order), checked without naming anything: the
    files they name are read and the backend spec parsed, so `neuron-concepts run` fails on them before it trains
    anything, with the error the name stage gives (it calls this too): a ConfigError naming the config key when no
    source is usable, a vocabulary, reports or names file is missing or malformed, or the backend spec is bad.

    num_concepts: the dataset's annotated concepts (0: the annotations source is skipped)."""
    unknown = [s for s in nc.sources if s not in SOURCES]
    if unknown:
        raise ConfigError(f"naming.sources: unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    if not 0.0 <= float(nc.min_auroc) <= 1.0:
        raise ConfigError(f"naming.min_auroc {nc.min_auroc}: expected an AUROC in [0, 1]")
    if nc.holds_auroc is not None and not 0.0 <= float(nc.holds_auroc) <= 1.0:
        raise ConfigError(f"naming.holds_auroc {nc.holds_auroc}: expected an AUROC in [0, 1]")
    usable = {"annotations": num_concepts > 0, "vocabulary": bool(nc.vocabulary and nc.reports),
              "file": bool(nc.names_file), "backend": bool(nc.backend)}
    sources = [s for s in nc.sources if usable[s]]
    if not sources:
        raise ConfigError(f"naming.sources {list(nc.sources)}: none is usable here; annotations need a dataset with "
                          "concept annotations, vocabulary needs naming.vocabulary and naming.reports, file needs "
                          "naming.names_file, backend needs naming.backend (mock, clip:/path or text:/path)")
    checks: list[tuple[str, Callable[[], Any]]] = []
    if "vocabulary" in sources:
        checks += [("naming.vocabulary", lambda: read_vocabulary(nc.vocabulary)),
                   ("naming.reports", lambda: read_reports(nc.reports, nc.report_id_column, nc.report_column))]
    if "file" in sources:
        checks.append(("naming.names_file", lambda: read_names_file(nc.names_file)))
    if "backend" in sources:
        kind, _, path = nc.backend.partition(":")
        if not (kind == "mock" or (kind in ("clip", "text") and path)):
            checks.append(("naming.backend", lambda: make_backend(nc.backend)))  # names the expected specs
        else:  # the library and the local folder; the model itself is loaded when naming
            checks.append(("naming.backend", lambda: kind == "mock" or _require_transformers(path)))
    for key, check in checks:
        try:
            check()
        except (OSError, ImportError, ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if nc.floor_from == "val":
        _check_floor_from_val(nc, sources, num_concepts)
    return sources


def _check_floor_from_val(nc: NamingConfig, sources: Sequence[str], num_concepts: int) -> None:
    """What `naming.floor_from: val` needs: concept annotations (read on val, for choosing only), a grid for
    each floored source, and a vocabulary whose terms map to concepts."""
    if num_concepts == 0:
        raise ConfigError("naming.floor_from val: choosing the naming floors on validation needs concept "
                          "annotations (on the val split, for the choice only); this dataset has none, so set "
                          "naming.floor_from given (and naming.min_z / naming.min_auroc by hand)")
    if "annotations" in sources and not nc.min_auroc_grid:
        raise ConfigError("naming.min_auroc_grid is empty: naming.floor_from val has no floor to choose from")
    if "vocabulary" in sources:
        if not nc.min_z_grid:
            raise ConfigError("naming.min_z_grid is empty: naming.floor_from val has no floor to choose from")
        if not vocabulary_concepts(nc.vocabulary):
            raise ConfigError(f"naming.floor_from val: the vocabulary {nc.vocabulary} says for no term which "
                              "annotated concept it stands for (`term => concept` lines), so its names cannot be "
                              "checked on validation; add those lines or set naming.floor_from given")


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
    min_auroc: float = DEFAULT_MIN_AUROC,
    backend: NamingBackend | None = None,
    images: Callable[[int], np.ndarray] | None = None,
    n_reference: int = 16,
    top_n: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, LatentName]:
    """Name every alive latent.

    activations (N, m): latent activations of N images; alive (m,) bool (default: active at least once).
    concepts (N, K) 0/1 with NaN = unannotated, and concept_names, for "annotations" (a latent whose best
    AUROC is below `min_auroc` is not named by it: see `name_from_annotations`); vocabulary and
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
        for k, v in found.items():  # a name replaces an unnamed entry (below a floor), never another name
            if k not in result or (result[k].source == "none" and v.source != "none"):
                result[k] = v

    for source in sources:
        todo = [k for k in latents if k not in result or result[k].source == "none"]
        if not todo:
            break
        if source == "annotations":
            if concepts is None or concept_names is None or np.asarray(concepts).shape[1] == 0:
                raise ValueError("naming source 'annotations' needs concept annotations; this dataset has none "
                                 "(use vocabulary, file or backend)")
            found = name_from_annotations(auroc_matrix(A[:, todo], np.asarray(concepts)), concept_names,
                                          range(len(todo)), negations, min_auroc)
            add({todo[i]: LatentName(todo[i], v.name if v.source != "none" else f"latent {todo[i]}", v.source,
                                     v.score, v.details) for i, v in found.items()})
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
