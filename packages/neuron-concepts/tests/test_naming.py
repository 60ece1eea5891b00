"""Naming latents from annotations, a vocabulary with reports, a names file and a backend."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neuron_concepts import MockBackend, NamingBackend, auroc_matrix, name_latents
from neuron_concepts.naming import (
    LocalCLIPBackend,
    enrichment_scores,
    make_backend,
    read_names_file,
    read_reports,
    read_vocabulary,
    term_presence,
    top_activating,
)


def planted(n: int = 300, seed: int = 0):
    """Activations of 5 latents over n images with 3 binary concepts: latent 0 follows concept 'a', latent 2
    follows 'b', latent 3 fires where 'c' is absent, latent 1 is noise, latent 4 is dead."""
    rng = np.random.default_rng(seed)
    c = (rng.random((n, 3)) < 0.4).astype(float)
    A = np.zeros((n, 5))
    A[:, 0] = c[:, 0] * rng.uniform(0.5, 1.0, n)
    A[:, 1] = rng.random(n) * (rng.random(n) < 0.5)
    A[:, 2] = c[:, 1] * rng.uniform(0.2, 2.0, n) + 0.05 * rng.random(n) * (rng.random(n) < 0.1)
    A[:, 3] = (1 - c[:, 2]) * rng.uniform(0.1, 1.0, n)
    return A, c, ["a", "b", "c"]


def test_auroc_matrix_equals_sklearn_with_ties_and_missing_labels():
    A, c, _ = planted()
    c[::7, 1] = np.nan  # unannotated rows are left out of that concept only
    A = np.round(A, 1)  # many ties
    M = auroc_matrix(A, c)
    for k in range(4):
        for j in range(3):
            known = ~np.isnan(c[:, j])
            assert M[k, j] == pytest.approx(roc_auc_score(c[known, j], A[known, k]), abs=1e-12)
    assert np.isnan(auroc_matrix(A, np.ones((len(A), 1)))).all()  # one class only: undefined
    with pytest.raises(ValueError, match="values other than 0, 1"):
        auroc_matrix(A, np.full((len(A), 1), 2.0))


def test_annotation_naming_recovers_planted_concepts():
    A, c, names = planted()
    result = name_latents(A, ["annotations"], concepts=c, concept_names=names)
    assert sorted(result) == [0, 1, 2, 3]  # latent 4 is dead: no name
    assert result[0].name == "a" and result[0].source == "gt-attribute" and result[0].score > 0.99
    assert result[2].name == "b"
    assert result[3].name == "no c" and result[3].details["negated"] and result[3].score > 0.99
    assert result[1].score < 0.7  # noise matches nothing well
    plain = name_latents(A, ["annotations"], concepts=c, concept_names=names, negations=False)
    assert plain[3].name != "no c"
    with pytest.raises(ValueError, match="needs concept annotations"):
        name_latents(A, ["annotations"])


def test_vocabulary_enrichment_names_from_reports(tmp_path):
    A, c, _ = planted()
    n = len(A)
    reports = [" ".join(w for w, on in (("Pleural effusion noted.", c[i, 0]), ("mild cardiomegaly", c[i, 1]))
                        if on) or "no acute findings" for i in range(n)]
    reports[5] = None  # an image without a report
    vocab = ["pleural effusion", "cardiomegaly", "pneumothorax", "acute"]
    result = name_latents(A, ["vocabulary", "annotations"], vocabulary=vocab, reports=reports,
                          concepts=c, concept_names=["a", "b", "c"])
    assert result[0].name == "pleural effusion" and result[0].source == "vocab-enrichment"
    assert result[0].details["top_terms"][0][0] == "pleural effusion"
    assert result[2].name == "cardiomegaly"
    assert result[1].source == "gt-attribute"  # nothing enriched for noise: the next source names it
    # whole words, case-insensitive, spaces flexible
    p = term_presence(["Pleural  EFFUSION", "effusions", "pleural effusion."], ["pleural effusion"])
    assert p[:, 0].tolist() == [True, False, True]
    z = enrichment_scores(np.array([[1], [1], [0], [0]], dtype=bool), np.array([[0, 1], [2, 3]]))
    assert z[0, 0] > 0 > z[1, 0]
    # files
    (tmp_path / "vocab.txt").write_text("# terms\nCardiomegaly\n\ncardiomegaly\nedema\n")
    assert read_vocabulary(tmp_path / "vocab.txt") == ["Cardiomegaly", "edema"]
    (tmp_path / "r.csv").write_text("id,report\nx1,effusion\nx2,\n")
    assert read_reports(tmp_path / "r.csv") == {"x1": "effusion", "x2": ""}
    with pytest.raises(ValueError, match="missing column"):
        read_reports(tmp_path / "r.csv", text_column="text")
    with pytest.raises(ValueError, match="give a reports CSV"):
        name_latents(A, ["vocabulary"], vocabulary=vocab)


def test_names_file_json_and_csv(tmp_path):
    A, _, _ = planted()
    (tmp_path / "n.json").write_text(json.dumps({"0": "effusion", "3": "clear lungs", "9": "unused"}))
    (tmp_path / "n.csv").write_text("latent,name\n2,cardiomegaly\n")
    assert read_names_file(tmp_path / "n.csv") == {2: "cardiomegaly"}
    result = name_latents(A, ["file"], names=read_names_file(tmp_path / "n.json"))
    assert result[0].name == "effusion" and result[0].source == "external"
    assert result[1].name == "latent 1" and result[1].source == "none"
    (tmp_path / "bad.csv").write_text("id,label\n1,x\n")
    with pytest.raises(ValueError, match="'latent' and 'name'"):
        read_names_file(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps({"first": "x"}))
    with pytest.raises(ValueError, match="not an integer"):
        read_names_file(tmp_path / "bad.json")


def test_backend_interface_mock_and_local_models(tmp_path):
    A, _, _ = planted()
    mock = MockBackend()
    assert isinstance(mock, NamingBackend)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(A), 8, 8, 3), dtype=np.uint8)
    result = name_latents(A, ["backend"], backend=mock, images=lambda i: images[i], top_n=5)
    assert [r.source for r in result.values()] == ["backend:mock"] * 4
    assert len(mock.calls) == 4 and mock.calls[0]["n_images"] == 5 and mock.calls[0]["shape"] == (8, 8, 3)
    reports = ["edema"] * len(A)
    named = name_latents(A, ["backend"], backend=MockBackend(), images=lambda i: images[i], reports=reports,
                         vocabulary=["edema", "effusion"])
    assert named[0].name == "edema"
    assert isinstance(make_backend("mock"), MockBackend)
    with pytest.raises(ValueError, match="expected 'mock'"):
        make_backend("gpt-4")
    # the local backends import transformers lazily and never download: a clear error either way
    with pytest.raises((ImportError, FileNotFoundError), match="transformers|not found"):
        LocalCLIPBackend(tmp_path / "no-model")
    with pytest.raises(ValueError, match="unknown source"):
        name_latents(A, ["llm"])


def test_top_activating_order():
    A = np.array([[0.1, 0.0], [0.5, 0.0], [0.5, 2.0], [0.0, 1.0]])
    assert top_activating(A, 3).tolist() == [[1, 2, 0], [2, 3, 0]]
