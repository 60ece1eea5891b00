"""Naming floors chosen on validation (`naming.floor_from: val`): the F1 criterion on a hand-built table, and
planted latents (each firing on one drawn synth-derm concept) among noise latents that clear a low floor by chance,
for the annotation route (min_auroc) and the report route (min_z)."""

import numpy as np
import pytest

from medimg_core.config import ConfigError
from medimg_core.synthetic import DERM_CONCEPTS, SynthDerm
from neuron_concepts.config import NamingConfig
from neuron_concepts.naming import (
    LatentName,
    check_sources,
    choose_floor,
    floors_from_validation,
    holds_threshold,
    name_holds,
    name_latents,
    read_vocabulary,
    vocabulary_concepts,
)


def test_choose_floor_maximises_the_f1_of_named_and_holding():
    scores = [0.95, 0.9, 0.62, 0.6, 0.58, 0.55]
    holds = [True, True, False, False, False, False]
    out = choose_floor(scores, holds, [0.5, 0.6, 0.65, 0.9, 0.95])
    grid = {r["floor"]: r for r in out["grid"]}
    assert out["criterion"] == "holds_f1" and out["candidates"] == 6 and out["holding"] == 2
    assert grid[0.5]["named"] == 6 and grid[0.5]["f1"] == pytest.approx(2 * 2 / (6 + 2))
    assert grid[0.6]["named"] == 4 and grid[0.6]["precision"] == 0.5 and grid[0.6]["recall"] == 1.0
    assert grid[0.65]["f1"] == grid[0.9]["f1"] == 1.0
    assert grid[0.95]["named"] == 1 and grid[0.95]["f1"] == pytest.approx(2 / 3)
    # ties go to the highest floor: 0.65 and 0.9 both give F1 1
    assert out["chosen"] == 0.9
    # nothing holds: every F1 is 0, the highest floor names the fewest
    assert choose_floor(scores, [False] * 6, [0.5, 0.7])["chosen"] == 0.7
    with pytest.raises(ValueError, match="differ in shape"):
        choose_floor(scores, holds[:3], [0.5])
    with pytest.raises(ValueError, match="no candidate floor"):
        choose_floor(scores, holds, [])


def test_a_name_holds_when_its_concept_reaches_the_threshold_on_the_check_split():
    names = {0: LatentName(0, "radial streaming", "vocab-enrichment", 4.0),
             1: LatentName(1, "no streaks", "gt-attribute", 0.9),
             2: LatentName(2, "hairpin vessels", "vocab-enrichment", 3.0),  # a distractor: no concept
             3: LatentName(3, "latent 3", "none", 0.6)}
    check = np.array([[0.85], [0.15], [0.99], [0.99]])
    out = name_holds(names, ["streaks"], check, 0.8, {"radial streaming": "streaks"})
    assert out == {0: True, 1: True, 2: False}  # "no streaks" holds at 1 - 0.15; unnamed latents are left out
    assert name_holds(names, ["streaks"], check, 0.9, {"radial streaming": "streaks"}) == {0: False, 1: False,
                                                                                            2: False}


@pytest.fixture(scope="module")
def planted():
    """840 train / 180 val synth-derm plans with reports; latents 0-5 fire on drawn concept 0-5, latents 6-35
    are noise (uniform, silent half the time)."""
    data = SynthDerm(size=32, reports=True).plan(1200, seed=0)
    rng = np.random.default_rng(0)
    drawn = data.true_concepts.astype(float)
    A = np.zeros((len(data), 36))
    A[:, :6] = drawn * rng.uniform(0.5, 1.0, drawn.shape)
    A[:, 6:] = rng.random((len(data), 30)) * (rng.random((len(data), 30)) < 0.5)
    return data, drawn, A, data.indices("train"), data.indices("val")


def test_floors_from_validation_keep_the_planted_latents_and_drop_the_lucky_noise(planted):
    data, drawn, A, tr, va = planted
    vocab, mapping = read_vocabulary("synth-derm"), vocabulary_concepts("synth-derm")
    reports = [data.reports[i] for i in tr]
    floors = floors_from_validation(A[tr], A[va], drawn[va], DERM_CONCEPTS, ["annotations", "vocabulary"],
                                    concepts=drawn[tr], vocabulary=vocab, reports=reports, term_concepts=mapping,
                                    top_n=200, holds=0.8)
    assert set(floors) == {"annotations", "vocabulary"}
    # the report route: at the fixed min_z 1.96 noise latents win a term by chance
    at_default = name_latents(A[tr], ["vocabulary"], vocabulary=vocab, reports=reports, top_n=200, min_z=1.96)
    lucky = [k for k, v in at_default.items() if k >= 6 and v.source != "none"]
    assert len(lucky) >= 5
    vocab_floor = floors["vocabulary"]
    assert vocab_floor["key"] == "naming.min_z" and vocab_floor["holding"] == 6
    assert [r["floor"] for r in vocab_floor["grid"]] == sorted(NamingConfig().min_z_grid)
    z = vocab_floor["chosen"]
    assert max(at_default[k].score for k in lucky) < z
    chosen = name_latents(A[tr], ["vocabulary"], vocabulary=vocab, reports=reports, top_n=200, min_z=z)
    named = {k for k, v in chosen.items() if v.source != "none"}
    assert named == set(range(6))  # every planted latent, after a phrasing of its own concept, and no noise
    # the annotation route: a floor of 0.5 names every noise latent, the chosen one none of them
    ann = floors["annotations"]
    assert ann["key"] == "naming.min_auroc" and ann["grid"][0]["floor"] == 0.5 and ann["grid"][0]["named"] == 36
    chosen = name_latents(A[tr], ["annotations"], concepts=drawn[tr], concept_names=DERM_CONCEPTS,
                          min_auroc=ann["chosen"])
    assert {k for k, v in chosen.items() if v.source != "none"} == set(range(6))
    # the vocabulary route cannot be checked without `term => concept` lines
    with pytest.raises(ValueError, match="term => concept"):
        floors_from_validation(A[tr], A[va], drawn[va], DERM_CONCEPTS, ["vocabulary"], vocabulary=vocab,
                               reports=reports, term_concepts={})


def test_floor_from_val_is_checked_before_anything_runs(tmp_path):
    nc = NamingConfig(floor_from="val")
    assert holds_threshold(nc) == 0.8 and holds_threshold(NamingConfig(min_auroc=0.6)) == 0.6
    assert holds_threshold(NamingConfig(floor_from="val", holds_auroc=0.7)) == 0.7
    (tmp_path / "n.json").write_text("{}")
    with pytest.raises(ConfigError, match="needs concept annotations"):
        check_sources(NamingConfig(sources=("file",), names_file=str(tmp_path / "n.json"), floor_from="val"), 0)
    vocab = tmp_path / "v.txt"
    vocab.write_text("streaks\nglobules\n")
    reports = tmp_path / "r.csv"
    reports.write_text("id,report\na,streaks\n")
    nc = NamingConfig(sources=("vocabulary",), vocabulary=str(vocab), reports=str(reports), floor_from="val")
    with pytest.raises(ConfigError, match="says for no term"):
        check_sources(nc, 2)
    vocab.write_text("radial streaming => streaks\nglobules\n")
    assert check_sources(nc, 2) == ["vocabulary"]
    with pytest.raises(ConfigError, match="min_z_grid is empty"):
        check_sources(NamingConfig(sources=("vocabulary",), vocabulary=str(vocab), reports=str(reports),
                                   floor_from="val", min_z_grid=()), 2)
    with pytest.raises(ConfigError, match="holds_auroc"):
        check_sources(NamingConfig(holds_auroc=1.5), 2)
