"""Text concepts: lists, the annotation and open_clip backends, cos^3 and the Label-free CBM filters."""

import sys
import types

import numpy as np
import pytest
import torch

from iis.text import (
    AnnotationBackend,
    ConceptList,
    OpenClipBackend,
    TextConceptBackend,
    TextConfig,
    build_text_library,
    cos_cubed_similarity,
    find_concept_list,
    load_concept_list,
    top5_activation,
)
from medimg_core.synthetic import make


def _write(tmp_path, text: str):
    path = tmp_path / "concepts.txt"
    path.write_text(text)
    return path


def test_concept_list_format(tmp_path):
    path = _write(tmp_path, "# a comment\nlarge cell => big cell size\n\nsmall cell => ~big cell size  # negated\n"
                            "Large  cell\nplain phrase\n")
    cl = load_concept_list(path)
    assert cl.phrases == ["large cell", "small cell", "plain phrase"]
    assert cl.targets == [("big cell size", False), ("big cell size", True), None]
    assert any("repeats line 2" in n for n in cl.notes)
    for bad, message in (("=> x\n", "no phrase"), ("a phrase =>\n", "names no concept"), ("# only\n", "no concept")):
        with pytest.raises(ValueError, match=message):
            load_concept_list(_write(tmp_path, bad))
    with pytest.raises(FileNotFoundError):
        load_concept_list(tmp_path / "missing.txt")


class _Toy:
    """A dataset-like object with annotated concepts."""

    def __init__(self, concepts):
        self.concepts = np.asarray(concepts, dtype=np.float32)
        self.card = types.SimpleNamespace(name="toy", concept_names=("a", "b"))


def test_annotation_backend_scores_negation_and_nan():
    ds = _Toy([[1, 0], [0, np.nan], [1, 1]])
    cl = ConceptList(["A", "not A", "B", "free text"], [("a", False), ("A", True), ("b", False), None])
    backend = AnnotationBackend()
    assert isinstance(backend, TextConceptBackend)
    kept = backend.prepare(cl, ds)
    assert kept.phrases == ["A", "not A", "B"] and kept.targets[1] == ("a", True)
    assert any("without '=> concept'" in n for n in kept.notes)
    scores = backend.scores(ds, kept)
    np.testing.assert_array_equal(scores[:, :2], [[1, 0], [0, 1], [1, 0]])
    assert np.isnan(scores[1, 2]) and scores[2, 2] == 1
    with pytest.raises(ValueError, match="does not annotate"):
        backend.prepare(ConceptList(["x"], [("c", False)]), ds)
    with pytest.raises(ValueError, match="no phrase names an annotated concept"):
        backend.prepare(ConceptList(["x"], [None]), ds)
    ds.card.concept_names = ()
    with pytest.raises(ValueError, match="has none"):
        backend.prepare(cl, ds)


def test_open_clip_backend_needs_local_weights(tmp_path):
    with pytest.raises(ValueError, match="local weights file"):
        OpenClipBackend("ViT-B-16", None)
    with pytest.raises(FileNotFoundError, match="not found"):
        OpenClipBackend("ViT-B-16", tmp_path / "none.bin")


def test_open_clip_backend_with_a_stand_in_module(tmp_path, monkeypatch):
    """The backend's calls into open_clip, checked with a stand-in module (open_clip is not installed here)."""
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"0")
    calls = {}

    class Model(torch.nn.Module):
        def encode_text(self, tokens):
            return torch.nn.functional.one_hot(tokens[:, 0], 3).float() * 2.0

        def encode_image(self, images):
            return images.mean(dim=(2, 3))

    def create(name, pretrained):
        calls["create"] = (name, pretrained)
        return Model(), None, lambda img: torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1)

    fake = types.SimpleNamespace(create_model_and_transforms=create,
                                 get_tokenizer=lambda name: lambda texts: torch.tensor([[i] for i in range(len(texts))]))
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    data = make("synth-derm", n=6, seed=0, size=32).dataset("train")
    backend = OpenClipBackend("ViT-B-16", weights, batch_size=2)
    scores = backend.scores(data, ConceptList(["red", "green", "blue"], [None] * 3))
    assert calls["create"] == ("ViT-B-16", str(weights))
    rgb = np.stack([data.load_image(i).reshape(-1, 3).mean(0) for i in range(len(data))])
    np.testing.assert_allclose(scores, rgb / np.linalg.norm(rgb, axis=1, keepdims=True), rtol=1e-5)


def test_open_clip_backend_without_the_package(tmp_path, monkeypatch):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        OpenClipBackend("ViT-B-16", weights).scores(None, ConceptList(["x"], [None]))


def test_cos_cubed_by_hand_and_with_unknown_entries():
    t = torch.tensor([[0.0], [1.0], [2.0]])
    # centred: -1, 0, 1 -> cubed -1, 0, 1 -> unit (-0.7071, 0, 0.7071) for both: similarity 1
    assert cos_cubed_similarity(t, t * 3 + 5).item() == pytest.approx(1.0, abs=1e-6)
    assert cos_cubed_similarity(t, -t).item() == pytest.approx(-1.0, abs=1e-6)
    s = torch.tensor([[0.0], [2.0], [1.0]])  # centred -1, 1, 0: cubed dot = (-1)(-1)*... = 1 / 2
    assert cos_cubed_similarity(t, s).item() == pytest.approx(0.5, abs=1e-6)
    rng = np.random.default_rng(0)
    teacher = torch.tensor(rng.normal(size=(20, 3)), dtype=torch.float32)
    student = torch.tensor(rng.normal(size=(20, 3)), dtype=torch.float32)
    with_nan = teacher.clone()
    with_nan[15:, 1] = float("nan")
    full = cos_cubed_similarity(with_nan, student)
    assert full[0] == pytest.approx(cos_cubed_similarity(teacher, student)[0].item())
    assert full[1] == pytest.approx(cos_cubed_similarity(teacher[:15, 1:2], student[:15, 1:2]).item(), abs=1e-6)


def test_top5_activation_filter_statistic():
    scores = np.array([[0.1, 1.0], [0.2, np.nan], [0.3, 0.0], [0.4, 0.0], [0.5, 0.0], [0.6, 1.0]])
    assert top5_activation(scores).tolist() == pytest.approx([0.4, 0.4])  # mean of the five largest known


def test_build_text_library_learns_and_filters():
    rng = np.random.default_rng(0)
    n, d = 600, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(3, d)).astype(np.float32)
    scores = (x @ w_true.T > 0).astype(np.float32)  # three concepts readable from the features
    noise = (rng.random((n, 1)) < 0.5).astype(np.float32)  # one that is not
    scores = np.concatenate([scores, noise, np.zeros((n, 1), np.float32)], axis=1)  # and one never active
    cl = ConceptList(["c0", "c1", "c2", "noise", "silent"], [None] * 5)
    xt = torch.from_numpy(x)
    lib, report = build_text_library(xt[:400], xt[400:], scores[:400], scores[400:], cl,
                                     TextConfig(proj_steps=400, interpretability_cutoff=0.3), seed=0)
    assert report["activation_filter"]["dropped"] == ["silent"]
    assert "noise" in report["interpretability_filter"]["dropped"]
    assert lib.names == ["c0", "c1", "c2"] and lib.kind == "text" and lib.vectors.shape == (3, d)
    assert all(v > 0.3 for v in report["similarity"].values())
    acts = (xt[:400] @ lib.vectors.T - lib.mean) / lib.std
    assert torch.allclose(acts.mean(0), torch.zeros(3), atol=1e-4)
    head = lib.make_head(num_outputs=2, ratio=0.3)
    assert head(xt[:5]).shape == (5, 2)
    with pytest.raises(ValueError, match="no text concept left"):
        build_text_library(xt[:400], xt[400:], np.zeros((400, 5), np.float32), np.zeros((200, 5), np.float32), cl,
                           TextConfig())


def test_shipped_concept_lists_name_real_concepts():
    from medimg_core.data import get_dataset_class
    from medimg_core.synthetic import card_for

    for name in ("wbcatt", "derm7pt", "ddi", "fitzpatrick17k-skincon", "synth-derm", "synth-cxr", "ham10000",
                 "chestxray14", "retinamnist"):
        cl = load_concept_list(find_concept_list(name))
        assert len(cl) >= 5 and not cl.notes, name
        card = card_for(name) if name.startswith("synth") else get_dataset_class(name).card
        mapped = [t for t in cl.targets if t is not None]
        if card.concept_names:
            assert len(mapped) == len(cl), f"{name}: every phrase should name an annotated concept"
            assert {t[0] for t in mapped} <= set(card.concept_names), name
        else:
            assert not mapped, f"{name} has no concept annotations to map to"
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped list"):
        find_concept_list("no-such-dataset")


def test_score_duplicates_by_hand():
    from iis.text import score_duplicates

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    scores = np.stack([a, -a, 2 * a + 1, b, a + 0.5 * rng.normal(size=50)], axis=1)
    scores[:5, 1] = np.nan  # compared on the samples both know
    kept, dropped = score_duplicates(scores, 0.98)
    assert kept == [0, 3, 4]
    assert dropped[1][0] == 0 and dropped[1][1] == pytest.approx(-1.0)
    assert dropped[2][0] == 0 and dropped[2][1] == pytest.approx(1.0)
    assert score_duplicates(scores, 0.5)[0] == [0, 3]  # a loose threshold also drops the noisy copy
    assert score_duplicates(np.stack([np.ones(50), a], axis=1), 0.98)[0] == [0, 1]  # a constant column has no r


def test_negation_pair_is_one_concept():
    rng = np.random.default_rng(1)
    n, d = 600, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    big = (x @ rng.normal(size=d) > 0).astype(np.float32)
    other = (x @ rng.normal(size=d) > 0).astype(np.float32)
    scores = np.stack([big, 1 - big, other], axis=1)  # "large cell", "small cell" (its negation), another
    cl = ConceptList(["large cell", "small cell", "other"], [("big", False), ("big", True), ("other", False)])
    xt = torch.from_numpy(x)
    lib, report = build_text_library(xt[:400], xt[400:], scores[:400], scores[400:], cl,
                                     TextConfig(proj_steps=200, interpretability_cutoff=0.3), seed=0)
    assert lib.names == ["large cell", "other"] and lib.extra["targets"] == [["big", False], ["other", False]]
    assert report["duplicate_filter"]["dropped"]["small cell"]["duplicate_of"] == "large cell"
    kept_both, _ = build_text_library(xt[:400], xt[400:], scores[:400], scores[400:], cl,
                                      TextConfig(proj_steps=200, interpretability_cutoff=0.3,
                                                 dedupe_correlation=None), seed=0)
    assert kept_both.names == ["large cell", "small cell", "other"]
    cut = kept_both.subset([2, 0])
    assert cut.names == ["other", "large cell"] and torch.equal(cut.vectors, kept_both.vectors[[2, 0]])
    assert torch.equal(cut.mean, kept_both.mean[[2, 0]]) and cut.extra["targets"][0] == ["other", False]
    with pytest.raises(ValueError, match="outside"):
        kept_both.subset([3])
