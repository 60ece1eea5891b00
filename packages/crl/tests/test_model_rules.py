"""CRL end to end on hand-set weights: rules, scores, fidelity of the rule set, export."""

from itertools import product

import numpy as np
import pytest
import torch

from crl.model import CRL
from crl.rules import extract_rules, load_rules

NAMES = ["A", "B", "C"]


def _hand_set_model() -> CRL:
    torch.manual_seed(0)
    model = CRL(n_concepts=3, n_classes=2, in_features=3, logic_layers=(2, 2))
    ones = {
        (0, "conj"): [(0, 0), (4, 0), (1, 1), (2, 1)],
        (0, "disj"): [(0, 0), (2, 0), (3, 1), (5, 1)],
        (1, "conj"): [(0, 0), (2, 0), (5, 1), (3, 1)],
        (1, "disj"): [(1, 0), (6, 0), (0, 1), (1, 1)],
    }
    with torch.no_grad():
        for (layer, kind), cells in ones.items():
            w = getattr(model.logic[layer], kind).weight
            w.fill_(0.1)
            for i, j in cells:
                w[i, j] = 0.9
        model.classifier.weight.copy_(torch.tensor([[0.5, -0.2, 0.1, 0, 0.3, 0, 0, -0.4],
                                                    [-0.5, 0.2, 0, 0.6, -0.3, 0.7, 0.1, 0.4]]))
        model.classifier.bias.copy_(torch.tensor([0.05, -0.05]))
        model.concept_head.weight.copy_(torch.eye(3))
        model.concept_head.bias.zero_()
    return model


COMBOS = np.array(list(product([0, 1], repeat=3)), dtype=np.float32)
EXPECTED_SCORES = [[-0.45, 0.55], [-0.55, 0.65], [-0.45, 0.55], [-0.25, 1.75], [0.25, 0.45], [0.85, -0.15],
                   [-0.55, 0.65], [0.15, 1.35]]


def test_forward_on_hand_set_weights():
    model = _hand_set_model()
    out = model(torch.from_numpy(2 * COMBOS - 1))  # concept logits +-1
    torch.testing.assert_close(out["logits"], torch.tensor(EXPECTED_SCORES), atol=1e-6, rtol=0)
    assert torch.equal(out["concepts"], torch.from_numpy(COMBOS))
    torch.testing.assert_close(model.predict_from_concepts(torch.from_numpy(COMBOS)), out["logits"])
    counts = [o.sum(0).tolist() for o in out["layer_outputs"]]
    assert counts == [[2, 2, 6, 6], [2, 5, 4, 4]]


def test_extracted_rules_texts_weights_and_support():
    rules = extract_rules(_hand_set_model(), COMBOS, NAMES, ["neg", "pos"])
    table = {r.text: (r.layer, np.round(r.weights, 4).tolist(), r.support) for r in rules.rules}
    assert table == {
        "B & C": (1, [0.0, 0.7], 0.25),
        "(A & ~B) | (B & C)": (2, [0.0, 0.6], 0.5),
        "(A & ~B) & (A | C)": (2, [0.5, -0.5], 0.25),
        "~A | ~C": (1, [-0.4, 0.4], 0.75),
        "A & ~B": (1, [0.3, -0.3], 0.25),
        "(~A | ~C) & ~(B & C)": (2, [-0.2, 0.2], 0.625),
        "(B & C) | ~(A | C)": (2, [0.1, 0.0], 0.5),
        "A | C": (1, [0.0, 0.1], 0.75),
    }
    np.testing.assert_allclose(rules.bias, [0.05, -0.05])
    assert [r.text for r in rules.rules][:2] == ["B & C", "(A & ~B) | (B & C)"]  # sorted by importance
    np.testing.assert_allclose(rules.scores(COMBOS), EXPECTED_SCORES, atol=1e-6)


@pytest.mark.parametrize("pruning", ["support", "logical"])
def test_rule_set_alone_reproduces_the_network(pruning):
    torch.manual_seed(1)
    model = CRL(n_concepts=5, n_classes=3, in_features=5, logic_layers=(16, 16))
    with torch.no_grad():  # random memberships: about a third of the literals in each rule
        for layer in model.logic:
            for nodes in (layer.conj, layer.disj):
                nodes.weight.copy_((torch.rand_like(nodes.weight) < 0.15).float() * 0.4 + 0.3)
    all_combos = np.array(list(product([0, 1], repeat=5)), dtype=np.float32)
    seen = all_combos[::3]  # "training" patterns
    rules = extract_rules(model, seen, list("abcde"), ["x", "y", "z"], pruning=pruning)
    network = model.predict_from_concepts(torch.from_numpy(all_combos)).numpy()
    check = seen if pruning == "support" else all_combos
    idx = [np.flatnonzero((all_combos == row).all(1))[0] for row in check]
    np.testing.assert_allclose(rules.scores(check), network[idx], atol=1e-5)
    assert np.array_equal(rules.predict(check), network[idx].argmax(1))
    assert all(0 <= r.support <= 1 and r.length >= 1 for r in rules.rules)


def test_rules_json_round_trip_and_text(tmp_path):
    rules = extract_rules(_hand_set_model(), COMBOS, NAMES, ["neg", "pos"])
    _, text_path = rules.save(tmp_path)
    again = load_rules(tmp_path)
    np.testing.assert_allclose(again.scores(COMBOS), rules.scores(COMBOS))
    text = text_path.read_text()
    assert "== pos (bias -0.050) ==" in text and "B & C" in text
    combos, classes = again.truth_table()
    assert combos.shape == (8, 3) and classes.shape == (8,)
