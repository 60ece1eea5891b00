"""The rule protocols on hand-built rule sets whose answers are computed by hand, and CRL's concept-head AUROC."""

import numpy as np
import pytest

from crl.compact import compact_rules
from crl.rules import Rule, RuleSet
from medimg_benchmark.concepts import concept_head_recovery
from medimg_benchmark.rules import score_rules, tree_complexity, truth_table_agreement, truth_table_rows
from medimg_core.synthetic import card_for, parse_rule

CARD = card_for("synth-derm")
NAMES = list(CARD.concept_names)
RULE = parse_rule(CARD.extra["rule"], NAMES)  # (irregular_border & blue_white_veil) | streaks
IB, BWV, ST = (NAMES.index(n) for n in ("irregular_border", "blue_white_veil", "streaks"))


def _rule_set(formula, compact=False) -> RuleSet:
    """One rule voting malignant: malignant exactly where `formula` holds (bias benign 0.5, weight malignant 1)."""
    rules = RuleSet(NAMES, ["benign", "malignant"], np.array([0.5, 0.0]),
                    [Rule(formula, 1, np.array([0.0, 1.0]), 0.5, "hand-built", 3)])
    if compact:  # condensed on every concept pattern
        every = np.array([[int(b) for b in np.binary_repr(i, len(NAMES))] for i in range(2 ** len(NAMES))])
        rules.compact = compact_rules(rules, every, rules.predict(every))
    return rules


GENERATING = ("or", (("and", (("var", IB), ("var", BWV))), ("var", ST)))
ONE_NEGATED = ("or", (("and", (("var", IB), ("not", ("var", BWV)))), ("var", ST)))


def test_truth_table_rows_enumerate_the_rule_variables_with_the_others_fixed():
    rows, outputs = truth_table_rows(RULE)
    assert rows.shape == (8, 6) and outputs.tolist() == [False, True, False, True, False, True, True, True]
    others = [k for k in range(6) if k not in (IB, BWV, ST)]
    assert (rows[:, others] == 0).all()
    assert rows[5, IB] == 1 and rows[5, BWV] == 0 and rows[5, ST] == 1  # row 5 = 101 over the rule's variables
    assert (truth_table_rows(RULE, others=1)[0][:, others] == 1).all()
    with pytest.raises(ValueError, match="0 or 1, got 2"):
        truth_table_rows(RULE, others=2)


def test_the_generating_rule_agrees_everywhere_and_its_negation_nowhere():
    same = _rule_set(GENERATING)
    assert truth_table_agreement(lambda c: same.predict(c) == 1, RULE)["value"] == 1.0
    negated = _rule_set(("not", GENERATING))
    out = truth_table_agreement(lambda c: negated.predict(c) == 1, RULE)
    assert out["value"] == 0.0 and out["rows"] == 8 and not any(out["agrees"])


def test_one_negated_literal_disagrees_on_the_two_rows_it_changes():
    # (ib & ~bwv) | streaks differs from the rule where streaks = 0 and ib = 1 (bwv either way): rows 100 and 110
    rules = _rule_set(ONE_NEGATED)
    out = truth_table_agreement(lambda c: rules.predict(c) == 1, RULE)
    assert out["value"] == 0.75
    assert [i for i, a in enumerate(out["agrees"]) if not a] == [4, 6]


def test_a_rule_reading_another_concept_depends_on_the_value_the_others_are_fixed_at():
    # streaks | atypical_network with the others at 0 is streaks: it misses row 110 (ib & bwv without streaks)
    other = NAMES.index("atypical_network")
    rules = _rule_set(("or", (("var", ST), ("var", other))))
    assert truth_table_agreement(lambda c: rules.predict(c) == 1, RULE)["value"] == 7 / 8
    # with the others at 1 the model says malignant on every row; the rule on 5 of 8
    assert truth_table_agreement(lambda c: rules.predict(c) == 1, RULE, others=1)["value"] == 5 / 8


def _data(n, seed):
    """Concepts drawn at 0.5 and labels from the rule, as synth-derm draws them."""
    concepts = (np.random.default_rng(seed).random((n, 6)) < 0.5).astype(np.float32)
    return concepts, RULE.evaluate(concepts).astype(np.int64)


def test_score_rules_on_exact_concepts():
    train_c, train_y = _data(400, 0)
    test_c, test_y = _data(100, 1)
    rules = _rule_set(GENERATING, compact=True)
    network = rules.predict(test_c)  # a network that follows its rules
    out = score_rules(rules, train_c, train_y, test_c, test_y, network, RULE, positive=1, n_boot=50, seed=0)
    assert list(out) == ["crl_rules", "crl_compact", "decision_tree", "logistic_regression"]
    for name, row in out.items():
        assert row["truth_table"]["value"] == 1.0, name  # depth 3 writes the rule; so do weights 1, 1, 2
        assert row["test_accuracy"] == {"value": 1.0, "low": 1.0, "high": 1.0}, name
        assert row["fidelity"]["value"] == 1.0, name
    assert (out["crl_rules"]["size"], out["crl_rules"]["size_unit"], out["crl_rules"]["literals"]) == (1, "rules", 3)
    assert (out["crl_compact"]["size"], out["crl_compact"]["literals"]) == (2, 3)  # streaks | (ib & bwv)
    assert out["decision_tree"]["max_depth"] == 3
    # the tree: streaks? yes -> leaf (1); no -> ib? no -> leaf (2); yes -> bwv? two leaves (3, 3): 4 leaves, 9 literals
    assert (out["decision_tree"]["size"], out["decision_tree"]["literals"]) == (4, 9)
    assert out["logistic_regression"]["size"] == out["logistic_regression"]["literals"] <= 6


def test_score_rules_against_a_network_that_disagrees():
    train_c, train_y = _data(200, 0)
    test_c, test_y = _data(80, 1)
    rules = _rule_set(ONE_NEGATED)
    network = 1 - rules.predict(test_c)  # the network says the opposite of its rules on every image
    out = score_rules(rules, train_c, train_y, test_c, test_y, network, RULE, positive=1, n_boot=50, seed=0)
    assert out["crl_rules"]["fidelity"]["value"] == 0.0 and out["crl_rules"]["truth_table"]["value"] == 0.75
    # the rule set is wrong exactly where streaks = 0 and irregular_border = 1
    wrong = (test_c[:, ST] == 0) & (test_c[:, IB] == 1)
    assert out["crl_rules"]["test_accuracy"]["value"] == pytest.approx(1 - wrong.mean())
    cell = out["crl_rules"]["test_accuracy"]
    assert cell["low"] <= cell["value"] <= cell["high"]
    assert "crl_compact" not in out  # no compact form given


def test_score_rules_refuses_mismatched_inputs():
    train_c, train_y = _data(50, 0)
    rules = _rule_set(GENERATING)
    with pytest.raises(ValueError, match="one class only"):
        score_rules(rules, train_c, np.zeros(50, dtype=np.int64), train_c, train_y, train_y, RULE, positive=1)
    with pytest.raises(ValueError, match="49 targets"):
        score_rules(rules, train_c, train_y[:49], train_c, train_y, train_y, RULE, positive=1)


def test_tree_complexity_of_a_stump():
    from sklearn.tree import DecisionTreeClassifier

    x = np.array([[0.0], [1.0], [0.0], [1.0]])
    tree = DecisionTreeClassifier(max_depth=3).fit(x, [0, 1, 0, 1])
    assert tree_complexity(tree) == (2, 2)


def test_concept_head_recovery():
    truth = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.5], [0.6, 0.1, 0.5], [0.4, 0.9, 0.5]])
    out = concept_head_recovery(probs, truth, ["a", "b", "c"], ["a"], n_boot=50, seed=0)
    assert out["a"]["auroc"] == 1.0 and out["a"]["in_rule"] and out["a"]["low"] <= 1.0 <= out["a"]["high"]
    assert out["b"] == {"auroc": None, "low": None, "high": None, "in_rule": False}  # no positive image
    assert out["c"]["auroc"] is None  # no negative image
    flipped = concept_head_recovery(1 - probs, truth, ["a", "b", "c"], ["a"], n_boot=50, seed=0)
    assert flipped["a"]["auroc"] == 0.0
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        concept_head_recovery(probs[:, :2], truth, ["a", "b", "c"], ["a"])
