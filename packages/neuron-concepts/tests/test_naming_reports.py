"""Naming without annotations: vocabularies whose terms map to concepts for scoring, the shipped synth-derm
vocabulary, and the report route on synth-derm's reports (names earned through paraphrases, omissions, noise)."""

import numpy as np
import pytest

from medimg_core.synthetic import DERM_CONCEPTS, SynthDerm
from medimg_core.synthetic.reports import REPORT_TERMS
from neuron_concepts import name_latents
from neuron_concepts.naming import (
    LatentName,
    auroc_matrix,
    concept_naming,
    concept_of,
    enrichment_scores,
    find_vocabulary,
    read_vocabulary,
    vocabulary_concepts,
)


def test_vocabulary_terms_and_the_concepts_they_stand_for(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# terms\nRadial streaming => streaks\nstreaks=>streaks\n\nregular outline => ~irregular_border\n"
                    "radial  streaming => blue_white_veil\nhairpin vessels  # a distractor\n")
    # the naming reads the terms alone; repeated terms (case, spaces aside) are kept once, the first mapping wins
    assert read_vocabulary(path) == ["Radial streaming", "streaks", "regular outline", "hairpin vessels"]
    mapping = vocabulary_concepts(path)
    assert mapping == {"Radial streaming": "streaks", "streaks": "streaks", "regular outline": "no irregular_border"}
    concepts = ["irregular_border", "streaks"]
    assert concept_of("radial STREAMING", concepts, mapping) == (1, False)
    assert concept_of("regular outline", concepts, mapping) == (0, True)
    assert concept_of("hairpin vessels", concepts, mapping) is None
    assert concept_of("radial streaming", concepts) is None  # without the mapping a term is no concept
    path.write_text("=> streaks\n")
    with pytest.raises(ValueError, match="no term before"):
        read_vocabulary(path)
    path.write_text("streaks =>\n")
    with pytest.raises(ValueError, match="names no concept"):
        vocabulary_concepts(path)
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped vocabulary"):
        read_vocabulary("no-such-vocabulary")


def test_concept_naming_counts_a_term_as_its_concept():
    names = {0: LatentName(0, "radial streaming", "vocab-enrichment", 4.0),
             1: LatentName(1, "pseudopods", "vocab-enrichment", 2.5),
             2: LatentName(2, "hairpin vessels", "vocab-enrichment", 2.1),
             3: LatentName(3, "bluish veil", "vocab-enrichment", 2.0)}
    mapping = {"radial streaming": "streaks", "pseudopods": "streaks", "bluish veil": "blue_white_veil"}
    concepts = ["streaks", "blue_white_veil"]
    fit = np.array([[0.95, 0.5], [0.97, 0.5], [0.5, 0.5], [0.5, 0.70]])
    check = np.array([[0.96, 0.5], [0.85, 0.5], [0.5, 0.5], [0.5, 0.72]])
    rows = {r["concept"]: r for r in concept_naming(names, concepts, fit, check, 0.9, mapping)}
    # two latents carry a streaks term; the one chosen on train (latent 1, 0.97) holds at 0.85 < 0.9 on test
    assert rows["streaks"]["latents_named"] == 2 and rows["streaks"]["latent"] == 1
    assert rows["streaks"]["check_auroc"] == 0.85 and not rows["streaks"]["confirmed"]
    assert rows["blue_white_veil"]["latent"] == 3 and not rows["blue_white_veil"]["confirmed"]
    assert concept_naming(names, concepts, fit, check, 0.7, mapping)[1]["confirmed"]
    assert all(r["latents_named"] == 0 for r in concept_naming(names, concepts, fit, check, 0.7))


def test_the_shipped_synth_derm_vocabulary_covers_every_report_phrasing():
    path = find_vocabulary("synth-derm")
    assert path.parent.name == "vocabulary" and path == find_vocabulary("synth-derm.txt")
    terms, mapping = read_vocabulary(path), vocabulary_concepts(path)
    for concept, phrasings in REPORT_TERMS.items():
        for term in phrasings:
            assert mapping.get(term) == concept, term
    distractors = [t for t in terms if t not in mapping]
    assert len(distractors) >= 10
    # a distractor is no concept's phrasing
    assert not set(distractors) & {t for p in REPORT_TERMS.values() for t in p}


def test_report_route_names_latents_from_synth_derm_reports():
    """Latents planted on synth-derm's drawn concepts (latent j fires on concept j, latent 6 is noise), named from
    the generated reports alone; the names are terms, scored through the vocabulary's mapping."""
    data = SynthDerm(size=32, reports=True).plan(1200, seed=0)
    rng = np.random.default_rng(0)
    drawn = data.true_concepts.astype(float)
    A = np.zeros((len(data), 7))
    A[:, :6] = drawn * rng.uniform(0.5, 1.0, drawn.shape)
    A[:, 6] = rng.random(len(data)) * (rng.random(len(data)) < 0.5)
    train, test = data.indices("train"), data.indices("test")
    vocab = read_vocabulary("synth-derm")
    mapping = vocabulary_concepts("synth-derm")
    # each phrasing carries a quarter of a concept's mentions: 16 top reports (the default naming.top_n) are
    # too few to name most latents, and a noise latent may win a term by chance (about 40 terms tested at z 1.96)
    few = name_latents(A[train], ["vocabulary"], vocabulary=vocab, reports=[data.reports[i] for i in train])
    assert sum(v.source != "none" for k, v in few.items() if k < 6) < 6
    names = name_latents(A[train], ["vocabulary"], vocabulary=vocab, reports=[data.reports[i] for i in train],
                         top_n=200)
    assert all(v.source in ("vocab-enrichment", "none") for v in names.values())
    named = {k: concept_of(v.name, DERM_CONCEPTS, mapping) for k, v in names.items() if v.source != "none"}
    # with 200 top reports every planted latent is named by a phrasing of its own concept, never by a distractor
    assert {k: m for k, m in named.items() if k < 6} == {j: (j, False) for j in range(6)}
    rows = concept_naming(names, DERM_CONCEPTS, auroc_matrix(A[train], drawn[train]),
                          auroc_matrix(A[test], drawn[test]), 0.9, mapping)
    assert [r["confirmed"] for r in rows] == [True] * 6


def test_enrichment_is_the_one_sided_hypergeometric_test():
    from scipy.stats import hypergeom, norm

    presence = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [1, 0], [0, 0]], dtype=bool)
    z = enrichment_scores(presence, np.array([[0, 1], [2, 3], [0, 2]]))
    # latent 0: both top reports of 6 mention the term, 3 reports do: p = C(3,2) / C(6,2) = 3/15
    assert z[0, 0] == pytest.approx(norm.isf(3 / 15))
    assert z[2, 0] == pytest.approx(norm.isf(hypergeom.sf(0, 6, 3, 2)))  # one of two: p = 12/15
    # a term in none of the top reports (or in no report) can name nothing: -inf, not the positive score a
    # smoothed log-odds ratio gives an absent term in a small top group
    assert z[1, 0] == -np.inf and (z[:, 1] == -np.inf).all()
