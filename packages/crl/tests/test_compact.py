"""Compact rules (crl.compact) on cases whose answer is known, and the explanation's network/rule-set check."""

from itertools import product

import numpy as np
import pytest

from crl.compact import compact_rules, cubes_to_formula, minimal_sop, pattern_codes
from crl.explain import explain_concepts
from crl.rules import Rule, RuleSet, RulesFileError, _render, load_rules

DERM = ["irregular_border", "blue_white_veil", "dots_and_globules", "streaks", "atypical_network", "regression_area"]


def _rule(text: str, formula: tuple, weights: list[float]) -> Rule:
    from crl.rules import _count_literals

    return Rule(formula, 1, np.array(weights, dtype=np.float64), 0.5, text, _count_literals(formula))


def _derm_rule_model() -> RuleSet:
    """A weighted rule model (as CRL reads them out) whose argmax is synth-derm's default rule,
    malignant <=> (irregular_border & blue_white_veil) | streaks, spread over overlapping rules with
    distractors, as a trained model's are."""
    ib, bwv, streaks, dots = ("var", 0), ("var", 1), ("var", 3), ("var", 2)
    rules = [
        _rule("streaks", streaks, [-1.0, 1.0]),
        _rule("irregular_border & blue_white_veil", ("and", (ib, bwv)), [-0.8, 0.8]),
        _rule("~streaks", ("not", streaks), [0.3, -0.3]),
        _rule("irregular_border | dots_and_globules", ("or", (ib, dots)), [-0.1, 0.1]),
        _rule("~blue_white_veil & ~streaks", ("and", (("not", bwv), ("not", streaks))), [0.2, -0.2]),
    ]
    return RuleSet(DERM, ["benign", "malignant"], np.array([0.4, -0.4]), rules)


ALL = np.array(list(product([0, 1], repeat=6)), dtype=np.float32)


def test_the_generating_rule_of_synth_derm_comes_back():
    rules = _derm_rule_model()
    truth = ((ALL[:, 0] * ALL[:, 1]) + ALL[:, 3] > 0).astype(int)
    assert (rules.predict(ALL) == truth).all()  # the rule model encodes the rule (distractors included)
    compact = compact_rules(rules, ALL, test_concepts=ALL, test_predicted=truth)
    assert compact.method == "exact"
    malignant = compact.for_class("malignant")
    assert f"malignant <=> {malignant.text}" == "malignant <=> streaks | (irregular_border & blue_white_veil)"
    assert (malignant.literals, malignant.terms) == (3, 2)
    assert (malignant.evaluate(ALL) == truth.astype(bool)).all()  # the same truth table as the generating rule
    assert malignant.fidelity_train == 1.0 and malignant.fidelity_test == 1.0
    # benign is the complement, as a minimal sum of products
    assert compact.for_class("benign").text == "(~irregular_border & ~streaks) | (~blue_white_veil & ~streaks)"
    lines = "\n".join(compact.to_text(rules))
    assert "malignant <=> streaks | (irregular_border & blue_white_veil)    [3 literals; fidelity train 1.000, " \
           "test 1.000]" in lines


def test_unseen_patterns_are_dont_cares_and_test_fidelity_counts_them():
    # seen: 00 -> class 0, 10 -> class 1 (A is bit 0); the minimal class-1 formula is A (B never varied)
    rules = RuleSet(["A", "B"], ["no", "yes"], np.zeros(2), [_rule("A", ("var", 0), [-1.0, 1.0])])
    train = np.array([[0, 0], [1, 0], [1, 0]], dtype=np.float32)
    # on held-out images: 11 the network calls "no" (A holds: disagrees), 01 "no" (agrees)
    test = np.array([[1, 1], [0, 1]], dtype=np.float32)
    compact = compact_rules(rules, train, np.array([0, 1, 1]), test, np.array([0, 0]))
    yes, no = compact.for_class("yes"), compact.for_class("no")
    assert (yes.text, no.text) == ("A", "~A")
    assert yes.fidelity_train == 1.0 and yes.fidelity_test == 0.5 and no.fidelity_test == 0.5
    # one class never predicted: FALSE; every pattern of one class: TRUE
    compact = compact_rules(rules, train[:1], np.array([0]))
    assert (compact.for_class("no").text, compact.for_class("yes").text) == ("TRUE", "FALSE")


def test_minimal_sop_recovers_a_known_function_and_is_minimal():
    k = 10
    patterns = np.array(list(product([0, 1], repeat=k)), dtype=np.float32)
    codes = pattern_codes(patterns)
    f = (patterns[:, 5] > 0) | ((patterns[:, 0] > 0) & (patterns[:, 3] < 1))
    cubes = minimal_sop(codes[f], codes[~f], k)
    assert _render(cubes_to_formula(cubes, k), [f"c{i}" for i in range(k)]) == "c5 | (c0 & ~c3)"
    # with a third of the patterns seen, the formula is still exact on them and no longer than the truth
    rng = np.random.default_rng(0)
    seen = rng.random(len(codes)) < 0.3
    cubes = minimal_sop(codes[seen & f], codes[seen & ~f], k)
    formula = cubes_to_formula(cubes, k)
    from crl.rules import _count_literals, _evaluate

    assert (_evaluate(formula, patterns[seen]) == f[seen]).all()
    assert len(cubes) <= 2 and _count_literals(formula) <= 3


def test_prefix_mode_is_the_smallest_prefix_reaching_the_fidelity():
    rules = _derm_rule_model()
    network = rules.predict(ALL)
    for target in (0.8, 0.9, 1.0):
        compact = compact_rules(rules, ALL, network, ALL, network, exact_max_concepts=4, prefix_fidelity=target)
        assert compact.method == "prefix" and compact.target_fidelity == target
        fidelities = [float((RuleSet(DERM, rules.class_names, rules.bias, rules.rules[:n]).predict(ALL)
                             == network).mean()) for n in range(len(rules.rules) + 1)]
        expected = next(n for n, f in enumerate(fidelities) if f >= target)
        assert compact.prefix_rules == expected and compact.fidelity_train == fidelities[expected]
        assert compact.fidelity_test == fidelities[expected]  # same images here
    assert "the 2 most important of 5 rules" in "\n".join(compact.to_text(rules))
    # per class at target 1.0: both kept rules argue for malignant (streaks: 1 literal; ib & bwv: 2)
    assert [c.to_json() for c in compact.per_class] == [
        {"class": "benign", "rules": 0, "literals": 0, "fidelity_train": 1.0, "fidelity_test": 1.0},
        {"class": "malignant", "rules": 2, "literals": 3, "fidelity_train": 1.0, "fidelity_test": 1.0}]
    assert "malignant (bias -0.400) [2 rules for it, 3 literals; fidelity train 1.000, test 1.000]" \
        in "\n".join(compact.to_text(rules))
    # at 0.8 the prefix is `streaks` alone: it misses ib & bwv & ~streaks, 8 of the 64 patterns
    compact = compact_rules(rules, ALL, network, ALL[32:], network[32:], exact_max_concepts=4, prefix_fidelity=0.8)
    malignant = compact.per_class[1]
    assert (compact.prefix_rules, malignant.rules, malignant.literals) == (1, 1, 1)
    assert malignant.fidelity_train == 1 - 8 / 64
    # ALL[32:] has irregular_border on: the 8 of its 32 patterns with bwv & ~streaks are missed
    assert malignant.fidelity_test == 1 - 8 / 32
    with pytest.raises(ValueError, match="prefix_fidelity"):
        compact_rules(rules, ALL, prefix_fidelity=0.0)


def test_compact_rules_round_trip_through_rules_json(tmp_path):
    rules = _derm_rule_model()
    rules.compact = compact_rules(rules, ALL)
    rules.save(tmp_path)
    loaded = load_rules(tmp_path)
    assert loaded.compact.to_json() == rules.compact.to_json()
    assert "malignant <=> streaks | (irregular_border & blue_white_veil)" in (tmp_path / "rules.txt").read_text()
    assert loaded.to_text() == rules.to_text()
    prefix = _derm_rule_model()
    prefix.compact = compact_rules(prefix, ALL, exact_max_concepts=2)
    prefix.save(tmp_path / "p")
    assert load_rules(tmp_path / "p").compact.to_json() == prefix.compact.to_json()
    data = rules.to_json()
    data["compact"]["classes"][1]["formula"] = ["var", 9]
    with pytest.raises(RulesFileError, match=r"'compact'\['classes'\]\[1\]\['formula'\]"):
        RuleSet.from_json(data)
    data = rules.to_json()
    data["compact"]["classes"] = data["compact"]["classes"][:1]
    with pytest.raises(RulesFileError, match="one entry per class"):
        RuleSet.from_json(data)


def test_explanation_shows_the_network_and_flags_a_different_class():
    rules = _derm_rule_model()
    rules.compact = compact_rules(rules, ALL)
    concepts = np.array([0, 0, 0, 1, 0, 0], dtype=np.float32)  # streaks: the rules say malignant
    agree = explain_concepts(rules, concepts, network_scores=np.array([0.2, 0.8]))
    assert agree.agrees and "WARNING" not in agree.to_text()
    assert "the network's prediction: malignant (probabilities: benign 0.200, malignant 0.800)" in agree.to_text()
    assert "compact rule: malignant <=> streaks | (irregular_border & blue_white_veil) (holds for these concepts)" \
        in agree.to_text()
    differ = explain_concepts(rules, concepts, network_scores=np.array([0.7, 0.3]))
    assert differ.predicted == 1 and differ.network_predicted == 0 and differ.agrees is False
    text = differ.to_text()
    assert text.startswith("prediction: malignant") and "the network's prediction: benign" in text
    assert "WARNING: the rule set's class (malignant) differs from the network's (benign)" in text
    d = differ.to_dict()
    assert d["predicted"] == 1 and d["network_predicted"] == 0 and d["rules_agree_with_network"] is False
    assert d["network_scores"] == {"benign": 0.7, "malignant": 0.3}
    assert d["compact_rules"]["benign"] == {"rule": "(~irregular_border & ~streaks) | (~blue_white_veil & ~streaks)",
                                            "holds": False}
    alone = explain_concepts(rules, concepts)  # rules only: nothing to compare with
    assert alone.agrees is None and alone.to_dict()["network_predicted"] is None
    with pytest.raises(ValueError, match="2 classes"):
        explain_concepts(rules, concepts, network_scores=np.array([0.2, 0.3, 0.5]))
