"""The benchmark's rule protocols: CRL's learned rules (crl.rules) against the rule that generated the labels, with
a decision tree and a logistic regression on the same predicted concepts as plain baselines.

Ground truth: synth-derm draws the label from a Boolean rule over its concepts (`card.extra["rule"]`, parsed by
`medimg_core.synthetic.parse_rule`; default `(irregular_border & blue_white_veil) | streaks`). Per model:

- **truth-table agreement** (ours; the official CRL code computes no rule-quality measure and we found none named
  in the paper): every assignment of the rule's R variables (2^R rows, `medimg_core.synthetic.truth_table`'s
  order), every other concept fixed at `others` (default 0, absent); the fraction of rows where "the model
  predicts the positive class" equals the generator's rule. It compares decisions, not formulas: a weighted rule
  list whose argmax equals the rule on every row scores 1.0 however it is written.
- **test accuracy** against the test labels, and **fidelity**: agreement with CRL's network (its class on each
  test image), the fidelity of an extracted model to the model it explains (Craven & Shavlik, "Extracting
  Tree-Structured Representations of Trained Networks", NeurIPS 1996); for CRL's rule set it is
  `metrics.json -> rules.fidelity_test`. Both with a 95 % percentile bootstrap interval over test images.
- **complexity**: a size and a literal count, per model (ours, plain counts): CRL's rule set, rules and their
  literals (`Rule.length`); CRL's compact rule for the positive class (`crl.compact`, exact mode), terms and
  literals; the decision tree, leaves and the literals of the rule list read off it (one rule per leaf, one
  literal per split on its path); the logistic regression, non-zero coefficients (both counts).

The two baselines read CRL's predicted binary concepts (concept probability > 0.5, what the rules read): fitted on
the training split's, evaluated on the test split's. Decision tree: scikit-learn's `DecisionTreeClassifier`,
`max_depth` 3 by default (deep enough to write the default rule: streaks, then irregular_border, then
blue_white_veil), `random_state` the seed. Logistic regression: scikit-learn's defaults (L2, C = 1), positive class
where its probability is above 0.5 (on the truth-table rows too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medimg_core.metrics import bootstrap_ci
from medimg_core.synthetic import Rule, truth_table

#: the models of the rules table, in its order
MODELS = {"crl_rules": "CRL rule set", "crl_compact": "CRL compact rule", "decision_tree": "decision tree",
          "logistic_regression": "logistic regression"}
TREE_MAX_DEPTH = 3
#: the value of the concepts outside the rule on the truth-table rows
OTHERS_FIXED_AT = 0


def truth_table_rows(rule: Rule, others: int = OTHERS_FIXED_AT) -> tuple[np.ndarray, np.ndarray]:
    """(rows (2^R, K) float32 over the rule's `concept_names`, outputs (2^R,) bool): every assignment of the rule's
    R variables, in `medimg_core.synthetic.truth_table`'s order (row r holds the binary digits of r, the first
    variable most significant), every other concept at `others` (0 or 1); outputs are the rule's value."""
    if others not in (0, 1):
        raise ValueError(f"others: the value of the concepts outside the rule is 0 or 1, got {others!r}")
    combos, outputs = truth_table(rule)
    names = list(rule.concept_names)
    rows = np.full((len(combos), len(names)), float(others), dtype=np.float32)
    for j, name in enumerate(rule.variables):
        rows[:, names.index(name)] = combos[:, j]
    return rows, outputs


def truth_table_agreement(predicts_positive: Callable[[np.ndarray], np.ndarray], rule: Rule,
                          others: int = OTHERS_FIXED_AT) -> dict[str, Any]:
    """Truth-table agreement of a model with the generating `rule` (see the module docstring).
    `predicts_positive` maps concepts (N, K) 0/1 in the rule's concept order to (N,) bool, "the model predicts the
    class the rule makes true". Returns {"value": fraction of agreeing rows, "rows": 2^R, "agrees": [bool per row],
    "variables": the rule's, "others_fixed_at": others}."""
    rows, expected = truth_table_rows(rule, others)
    predicted = np.asarray(predicts_positive(rows)).astype(bool).reshape(-1)
    if predicted.shape != expected.shape:
        raise ValueError(f"truth_table_agreement: the model gave {predicted.shape[0]} predictions for "
                         f"{len(expected)} truth-table rows")
    agrees = predicted == expected
    return {"value": float(agrees.mean()), "rows": int(len(agrees)), "agrees": agrees.tolist(),
            "variables": list(rule.variables), "others_fixed_at": int(others)}


def _mean_ci(hits: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    value, low, high = bootstrap_ci(np.mean, np.asarray(hits, dtype=np.float64), n_boot=n_boot, seed=seed)
    return {"value": value, "low": low, "high": high}


def tree_complexity(tree: Any) -> tuple[int, int]:
    """(leaves, literals) of a fitted scikit-learn decision tree: literals sums, over its leaves, the depth of each
    (the splits on the path of the leaf's rule)."""
    t = tree.tree_
    leaves, literals, stack = 0, 0, [(0, 0)]
    while stack:
        node, depth = stack.pop()
        if t.children_left[node] == t.children_right[node]:  # a leaf (both -1)
            leaves, literals = leaves + 1, literals + depth
        else:
            stack += [(t.children_left[node], depth + 1), (t.children_right[node], depth + 1)]
    return leaves, literals


def score_rules(rules: Any, train_concepts: np.ndarray, train_targets: np.ndarray, test_concepts: np.ndarray,
                test_targets: np.ndarray, network_test: np.ndarray, rule: Rule, positive: int,
                max_depth: int = TREE_MAX_DEPTH, others: int = OTHERS_FIXED_AT, n_boot: int = 1000,
                seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every model of the rules table (see the module docstring), binary tasks. `rules`: CRL's `crl.rules.RuleSet`
    (its concept names must be the rule's); concepts (N, K) CRL's predicted binary concepts, targets (N,) class
    indices, `network_test` (M,) CRL's network's class per test image, `positive` the index of the class the rule
    makes true. Returns {model: {"truth_table", "test_accuracy", "fidelity" ({"value", "low", "high"}), "size",
    "size_unit", "literals"}} for the models of `MODELS` (without "crl_compact" when the rule set has no exact
    compact form)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    if list(rules.concept_names) != list(rule.concept_names):
        raise ValueError(f"score_rules: the rule set's concepts {list(rules.concept_names)} are not the generating "
                         f"rule's {list(rule.concept_names)}")
    train_c, test_c = (np.asarray(c, dtype=np.float32) for c in (train_concepts, test_concepts))
    train_y, test_y = np.asarray(train_targets).astype(np.int64), np.asarray(test_targets).astype(np.int64)
    network_test = np.asarray(network_test).astype(np.int64)
    if len(test_c) != len(test_y) or len(test_c) != len(network_test) or len(train_c) != len(train_y):
        raise ValueError(f"score_rules: {len(train_c)} training concept rows for {len(train_y)} targets, "
                         f"{len(test_c)} test rows for {len(test_y)} targets and {len(network_test)} network classes")
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"score_rules: the training targets hold one class only ({np.unique(train_y).tolist()}); "
                         "the baselines need both")
    network_positive = network_test == positive
    predictors: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int, str, int]] = {
        "crl_rules": (lambda c: rules.predict(c) == positive, len(rules.rules), "rules",
                      int(sum(r.length for r in rules.rules)))}
    compact = rules.compact
    if compact is not None and compact.method == "exact":
        entry = compact.for_class(rules.class_names[positive])
        predictors["crl_compact"] = (entry.evaluate, entry.terms, "terms", entry.literals)
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(train_c, train_y)
    leaves, tree_literals = tree_complexity(tree)
    predictors["decision_tree"] = (lambda c: tree.predict(c) == positive, leaves, "leaves", tree_literals)
    linear = LogisticRegression(max_iter=5000).fit(train_c, train_y)
    column = list(linear.classes_).index(positive)
    nonzero = int(np.count_nonzero(linear.coef_))
    predictors["logistic_regression"] = (lambda c: linear.predict_proba(c)[:, column] > 0.5, nonzero,
                                         "non-zero coefficients", nonzero)
    out = {}
    for name, (predicts, size, unit, literals) in predictors.items():
        on_test = np.asarray(predicts(test_c)).astype(bool)
        out[name] = {"truth_table": truth_table_agreement(predicts, rule, others),
                     "test_accuracy": _mean_ci(on_test == (test_y == positive), n_boot, seed),
                     "fidelity": _mean_ci(on_test == network_positive, n_boot, seed),
                     "size": int(size), "size_unit": unit, "literals": int(literals)}
    out["decision_tree"]["max_depth"] = max_depth
    return out
