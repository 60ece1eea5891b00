"""The benchmark's concept protocol on a model whose answer is known: class 1's logit is feature 0."""

import numpy as np
import torch
from torch import nn

from medimg_benchmark.concepts import probe_recovery, score_tcav


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[1, 0] = 1.0

    def forward(self, x):
        return self.head(self.features(x))


def _data(n, seed):
    """Inputs (n, 4) whose feature 0 is raised by 3 where concept 'a' is present and feature 2 where 'b' is."""
    rng = np.random.default_rng(seed)
    concepts = (rng.random((n, 3)) < 0.5).astype(np.float32)
    concepts[:, 2] = 0  # 'never': no image shows it
    x = rng.standard_normal((n, 4)).astype(np.float32)
    x[:, 0] += 3 * concepts[:, 0]
    x[:, 2] += 3 * concepts[:, 1]
    return torch.from_numpy(x), concepts


def test_tcav_finds_the_concept_the_logit_reads_and_skips_an_absent_one():
    model = Linear()
    x, concepts = _data(200, 0)
    out = score_tcav(model, "features", x, concepts, ["a", "b", "never"], ["a"], x[:30], target=1, n_concept=40,
                     n_random=6, seed=0)
    assert out["skipped"] == ["never"] and set(out["concepts"]) == {"a", "b"}
    a = out["concepts"]["a"]
    assert a["in_rule"] and a["scores"] == [1.0] * 6  # grad . cav = cav[0] > 0 for every image and random set
    # random "concepts" (random set 0 against the others): a CAV's score is 1 exactly where its component on
    # feature 0 is positive, so random sets richer in 'a' than set 0 give 0; the t-test compares the two samples
    assert set(a["random_scores"]) <= {0.0, 1.0} and len(a["random_scores"]) == 5
    assert out["rule_found"] == int(a["significant"]) and (out["rule_total"], out["others_tested"]) == (1, 1)
    assert out["others_flagged"] == int(out["concepts"]["b"]["significant"])


def test_probe_recovery_auroc():
    model = Linear()
    x_train, c_train = _data(300, 1)
    x_test, c_test = _data(200, 2)
    out = probe_recovery(model, "features", x_train, c_train, x_test, c_test, ["a", "b", "never"], ["a"])
    assert out["a"]["auroc"] > 0.95 and out["b"]["auroc"] > 0.95  # both are encoded (features 0 and 2)
    assert out["never"]["auroc"] is None and out["a"]["in_rule"] and not out["b"]["in_rule"]
