"""Compact rules: per class, the rule model's decision as a short Boolean formula over the concepts.

The weighted rule list of a `RuleSet` is faithful but long (25-150 rules, each listed under every class). This
module condenses it in one of two ways, chosen by the number of concepts K:

- **exact** (K <= `exact_max_concepts`): for each class c, the minimal sum of products (fewest terms, then
  fewest literals) that is true on every training concept pattern the network assigns to c and false on every
  training pattern it assigns to another class; patterns never seen in training are don't-cares. On synth-derm
  with its default rule this is `malignant <=> streaks | (irregular_border & blue_white_veil)`. By construction
  it agrees with the network on the training patterns; its fidelity on held-out images (whose patterns may be
  new) is measured, per class, as the agreement of `formula(concepts)` with `network predicts c`.
- **prefix** (more concepts): the smallest prefix of the rule list, by importance (largest |weight|), whose
  argmax agrees with the network on at least `prefix_fidelity` of the training images; its fidelity on
  held-out images is reported next to it. The target is chosen on training data only. Per class, it reports
  the kept rules that argue for the class (their largest weight is on it, and positive), their literals, and
  the one-vs-rest fidelity as in exact mode.

Why hand-written: sympy's `SOPform` / `simplify_logic` (Quine-McCluskey) take the don't-cares as a list of
minterms, i.e. every unseen pattern of 2^K; at K = 10 with 500 seen patterns that took 218 s here. The same
minimisation is done from the seen patterns alone: the prime implicants are the maximal cubes that contain a
pattern of the class and none of the other classes (found for all 3^K cubes at once with numpy array
operations), and the minimum cover of the class's patterns by primes is an integer program solved by scipy's
`milp` (HiGHS). The 3^K table bounds the size: 16 concepts take 43 M cubes (a few hundred MB).
"""

from __future__ import annotations

import numpy as np

from crl.rules import (  # the compact rules' data classes and parser live with the rules file they belong to
    EXACT_MAX_CONCEPTS,
    PREFIX_FIDELITY,
    CompactClass,
    CompactRules,
    Formula,
    PrefixClass,
    RuleSet,
    _count_literals,
    _render,
    by_importance,
    parse_compact,
)

__all__ = [
    "EXACT_MAX_CONCEPTS",
    "PREFIX_FIDELITY",
    "CompactClass",
    "CompactRules",
    "Formula",
    "PrefixClass",
    "RuleSet",
    "by_importance",
    "compact_fidelity",
    "compact_rules",
    "cubes_to_formula",
    "minimal_sop",
    "parse_compact",
    "pattern_codes",
]

def pattern_codes(concepts: np.ndarray) -> np.ndarray:
    """(N, K) binary concepts -> (N,) int64 codes, bit k = concept k."""
    concepts = np.asarray(concepts) > 0.5
    return (concepts.astype(np.int64) << np.arange(concepts.shape[1], dtype=np.int64)).sum(axis=1)


def _cube_table(codes: np.ndarray, k: int) -> np.ndarray:
    """For every cube over k variables, whether it contains one of `codes`: a bool array of shape (3,) * k,
    axis i = concept i with 0 (absent), 1 (present) or 2 (either)."""
    dense = np.zeros(1 << k, dtype=bool)
    dense[codes] = True
    table = dense.reshape((2,) * k).transpose(tuple(range(k - 1, -1, -1))) if k else dense.reshape(())
    for axis in range(k):
        either = np.expand_dims(table.take(0, axis=axis) | table.take(1, axis=axis), axis)
        table = np.concatenate([table, either], axis=axis)
    return table


def _primes(on: np.ndarray, off: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Prime implicants (mask, values) over k variables: maximal cubes containing a code of `on` and none of
    `off` (codes of distinct patterns). A cube is (mask, values): the codes x with x & mask == values."""
    has_off = _cube_table(off, k)
    prime = _cube_table(on, k) & ~has_off
    for axis in range(k):  # freeing any fixed literal must take in a code of `off`
        freed = np.expand_dims(has_off.take(2, axis=axis), axis)
        fixed = np.concatenate([freed, freed, np.ones_like(freed)], axis=axis)
        prime &= fixed
    coords = np.argwhere(prime)  # (P, k) in {0, 1, 2}
    weights = np.int64(1) << np.arange(k, dtype=np.int64)
    masks = ((coords != 2).astype(np.int64) * weights).sum(axis=1)
    values = ((coords == 1).astype(np.int64) * weights).sum(axis=1)
    return list(zip(masks.tolist(), values.tolist(), strict=True))


def minimal_sop(on: np.ndarray, off: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The minimal sum of products (fewest terms, then fewest literals) true on the codes `on`, false on the codes
    `off`, free elsewhere, as cubes (mask, values); [] is FALSE and [(0, 0)] is TRUE."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    on, off = np.unique(on), np.unique(off)
    if not len(on):
        return []
    if not len(off):
        return [(0, 0)]
    primes = _primes(on, off, k)
    masks = np.array([m for m, _ in primes], dtype=np.int64)
    values = np.array([v for _, v in primes], dtype=np.int64)
    rows, cols = np.nonzero((on[:, None] & masks[None, :]) == values[None, :])
    cover = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(on), len(primes)))  # (n_on, n_primes)
    literals = np.array([bin(m).count("1") for m in masks], dtype=np.float64)
    cost = literals + (k * len(on) + 1)  # one term more always costs more than any literals saved
    result = milp(cost, constraints=LinearConstraint(cover, lb=1, ub=np.inf), integrality=np.ones(len(primes)),
                  bounds=Bounds(0, 1))
    if not result.success:  # cannot happen: every code of `on` is covered by a prime; kept as a loud failure
        raise RuntimeError(f"minimum cover failed: {result.message}")
    chosen = [primes[j] for j in np.flatnonzero(result.x > 0.5)]
    return sorted(chosen, key=lambda c: (bin(c[0]).count("1"), [b for b in range(k) if c[0] >> b & 1]))


def cubes_to_formula(cubes: list[tuple[int, int]], k: int) -> Formula:
    """Cubes (mask, values) -> a formula: OR of ANDs of literals, in concept order within a term."""
    if not cubes:
        return ("const", False)
    terms: list[Formula] = []
    for mask, value in cubes:
        lits: list[Formula] = [("var", b) if value >> b & 1 else ("not", ("var", b)) for b in range(k) if mask >> b & 1]
        if not lits:
            return ("const", True)
        terms.append(lits[0] if len(lits) == 1 else ("and", tuple(lits)))
    return terms[0] if len(terms) == 1 else ("or", tuple(terms))


def compact_rules(rules: RuleSet, train_concepts: np.ndarray, train_predicted: np.ndarray | None = None,
                  test_concepts: np.ndarray | None = None, test_predicted: np.ndarray | None = None,
                  exact_max_concepts: int = EXACT_MAX_CONCEPTS, prefix_fidelity: float = PREFIX_FIDELITY
                  ) -> CompactRules:
    """The compact view of `rules` (see the module docstring).

    train_concepts (N, K) binary: the patterns the rules were read on; train_predicted (N,): the network's class
    for each (default: the rule set's, equal to the network's there under either pruning); test_concepts (M, K)
    and test_predicted (M,): the network's binary concepts and class on held-out images, for the test fidelity.
    """
    if not 0.0 < prefix_fidelity <= 1.0:
        raise ValueError(f"prefix_fidelity must be in (0, 1], got {prefix_fidelity}")
    if not 0 <= exact_max_concepts <= 18:
        raise ValueError(f"exact_max_concepts must be in [0, 18] (a table of 3^K cubes is built), got "
                         f"{exact_max_concepts}")
    train_concepts = np.asarray(train_concepts, dtype=np.float32)
    k = len(rules.concept_names)
    if train_concepts.ndim != 2 or train_concepts.shape[1] != k or not len(train_concepts):
        raise ValueError(f"train_concepts must be (N, {k}) with N > 0, got {train_concepts.shape}")
    train_predicted = (rules.predict(train_concepts) if train_predicted is None
                       else np.asarray(train_predicted, dtype=np.int64))
    has_test = test_concepts is not None and test_predicted is not None and len(test_concepts) > 0
    if has_test:
        test_concepts = np.asarray(test_concepts, dtype=np.float32)
        test_predicted = np.asarray(test_predicted, dtype=np.int64)
    if k <= exact_max_concepts:
        codes = pattern_codes(train_concepts)
        classes = []
        for c, name in enumerate(rules.class_names):
            cubes = minimal_sop(codes[train_predicted == c], codes[train_predicted != c], k)
            formula = cubes_to_formula(cubes, k)
            classes.append(CompactClass(name, formula, _render(formula, rules.concept_names),
                                        _count_literals(formula), len(cubes), fidelity_train=0.0))
        compact = CompactRules("exact", classes=classes, exact_max_concepts=exact_max_concepts)
        entries: list[CompactClass] | list[PrefixClass] = classes
    else:
        ranked = by_importance(rules)
        ordered = RuleSet(rules.concept_names, rules.class_names, rules.bias, ranked, rules.pruning)
        fired = ordered.fired(train_concepts).astype(np.float64)  # (N, R)
        weights = np.array([r.weights for r in ranked]).reshape(len(ranked), len(rules.class_names))
        scores = np.tile(rules.bias, (len(train_concepts), 1))
        n = 0
        fidelity = float((scores.argmax(1) == train_predicted).mean())
        while fidelity < prefix_fidelity and n < len(rules.rules):
            scores = scores + fired[:, [n]] * weights[n]
            n += 1
            fidelity = float((scores.argmax(1) == train_predicted).mean())
        entries = []
        for c, name in enumerate(rules.class_names):
            arguing = [r for r in ranked[:n] if r.weights[c] > 0 and r.weights[c] == max(r.weights)]
            entries.append(PrefixClass(name, len(arguing), sum(r.length for r in arguing), fidelity_train=0.0))
        compact = CompactRules("prefix", prefix_rules=n, target_fidelity=prefix_fidelity, fidelity_train=fidelity,
                               exact_max_concepts=exact_max_concepts, per_class=entries)
    # per-class fidelities (and the prefix's overall test fidelity) measured as on any other split
    train = compact_fidelity(rules, compact, train_concepts, train_predicted)["per_class"]
    test = compact_fidelity(rules, compact, test_concepts, test_predicted) if has_test else None
    for entry in entries:
        entry.fidelity_train = train[entry.class_name]
        entry.fidelity_test = None if test is None else test["per_class"][entry.class_name]
    if test is not None and compact.method == "prefix":
        compact.fidelity_test = test["overall"]
    return compact


def compact_fidelity(rules: RuleSet, compact: CompactRules, concepts: np.ndarray, predicted: np.ndarray
                     ) -> dict[str, float | dict[str, float]]:
    """The agreement of `compact` (a compact view of `rules`) with the network on other images: concepts (N, K)
    binary, predicted (N,) the network's class. Returns {"per_class": {class: one-vs-rest agreement}} and, in
    prefix mode, "overall" (agreement of the prefix's argmax)."""
    concepts = np.asarray(concepts, dtype=np.float32)
    predicted = np.asarray(predicted, dtype=np.int64)
    if compact.method == "exact":
        return {"per_class": {c.class_name: float((c.evaluate(concepts) == (predicted == i)).mean())
                              for i, c in enumerate(compact.classes)}}
    prefix = RuleSet(rules.concept_names, rules.class_names, rules.bias, by_importance(rules)[:compact.prefix_rules],
                     rules.pruning).predict(concepts)
    return {"overall": float((prefix == predicted).mean()),
            "per_class": {name: float(((prefix == i) == (predicted == i)).mean())
                          for i, name in enumerate(rules.class_names)}}
