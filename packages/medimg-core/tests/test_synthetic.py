import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medimg_core.synthetic import (
    CXR_FINDINGS,
    DEFAULT_RULE,
    DERM_CONCEPTS,
    GENERATORS,
    RuleSyntaxError,
    SynthDerm,
    SynthGrade,
    UnknownConceptError,
    card_for,
    generate,
    get_generator,
    grade_of,
    make,
    measure_structure,
    parse_rule,
    truth_table,
)

NAMES = ("a", "b", "c", "d")


def _all_combos(k: int) -> np.ndarray:
    return ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(np.uint8)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the rule parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("a | b & ~c", lambda a, b, c, d: a | (b & ~c)),  # ~ binds tighter than &, & tighter than |
        ("~a & b", lambda a, b, c, d: (~a) & b),
        ("~(a & b)", lambda a, b, c, d: ~(a & b)),
        ("(a | b) & c", lambda a, b, c, d: (a | b) & c),
        ("a & b | c & d", lambda a, b, c, d: (a & b) | (c & d)),
        ("~~a | ((b))", lambda a, b, c, d: a | b),
        ("a & (b | ~(c | d))", lambda a, b, c, d: a & (b | ~(c | d))),
    ],
)
def test_rule_precedence_and_parentheses(expr, expected):
    combos = _all_combos(4)
    rule = parse_rule(expr, NAMES)
    cols = [combos[:, k].astype(bool) for k in range(4)]
    assert np.array_equal(rule.evaluate(combos), expected(*cols))
    again = parse_rule(str(rule), NAMES)  # the canonical form parses to the same rule
    assert again == rule and np.array_equal(again.evaluate(combos), rule.evaluate(combos))


def test_rule_canonical_form_variables_and_quoted_names():
    rule = parse_rule(DEFAULT_RULE, DERM_CONCEPTS)
    assert str(rule) == DEFAULT_RULE
    assert rule.variables == ("irregular_border", "blue_white_veil", "streaks")
    assert str(parse_rule("c|b&a", NAMES)) == "c | (b & a)"
    assert parse_rule("d & a", NAMES).variables == ("a", "d")  # in concept order
    spaced = parse_rule('"nucleus shape" & ~`x-y`', ["nucleus shape", "x-y"])
    assert spaced.evaluate(np.array([[1, 0], [1, 1]])).tolist() == [True, False]
    assert str(spaced) == '"nucleus shape" & ~"x-y"'
    assert rule.evaluate(np.array([0, 0, 0, 1, 0, 0])).tolist() == [True]  # one row (K,)


@pytest.mark.parametrize(
    ("expr", "position", "fragment"),
    [
        ("a &", 3, "found the end"),
        ("a & & b", 4, "found '&'"),
        ("(a | b", 6, "missing ')'"),
        ("a | b)", 5, "unexpected ')'"),
        ("a b", 2, "unexpected 'b'"),
        ("a + b", 2, "unexpected character '+'"),
        ("", 0, "empty rule"),
        ("a & ()", 5, "empty parentheses"),
        ("__import__('os')", 11, "unexpected character"),
        ('a & "b', 4, "unterminated"),
    ],
)
def test_rule_syntax_errors_name_the_token_and_position(expr, position, fragment):
    with pytest.raises(RuleSyntaxError) as info:
        parse_rule(expr, NAMES)
    assert info.value.position == position
    assert fragment in str(info.value) and f"position {position}" in str(info.value)


def test_rule_unknown_names_suggest_the_nearest():
    with pytest.raises(UnknownConceptError, match=r"unknown concept 'streak' at position 33; did you mean 'streaks'") as info:
        parse_rule("(irregular_border & blue_veil) | streak", DERM_CONCEPTS)
    assert info.value.names == ["blue_veil", "streak"] and "did you mean 'blue_white_veil'" in str(info.value)
    with pytest.raises(UnknownConceptError, match="'blue' at position 10; did you mean 'blue_white_veil'") as info:
        parse_rule("streaks & blue", DERM_CONCEPTS)
    assert info.value.names == ["blue"]
    with pytest.raises(ValueError, match="NaN"):
        parse_rule("a", NAMES).evaluate(np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(ValueError, match="concepts must be"):
        parse_rule("a", NAMES).evaluate(np.zeros((2, 3)))


def test_truth_table():
    rule = parse_rule(DEFAULT_RULE, DERM_CONCEPTS)
    combos, outputs = truth_table(rule)
    assert combos.shape == (8, 3) and combos[1].tolist() == [0, 0, 1]  # first name most significant
    assert outputs.tolist() == [False, True, False, True, False, True, True, True]
    combos, outputs = truth_table(parse_rule("a & ~b", NAMES), names=("b", "a", "c"))
    assert combos.shape == (8, 3)
    assert np.array_equal(outputs, (combos[:, 1] == 1) & (combos[:, 0] == 0))
    with pytest.raises(ValueError, match="not among names"):
        truth_table(parse_rule("a & d", NAMES), names=("a",))


# -- generators: determinism, ground truth, noise, masks ------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_gives_byte_identical_files(tmp_path, name):
    options = {"spurious": 0.5, "label_noise": 0.1, "concept_noise": 0.05, "size": 32}
    first = _hashes(generate(name, 24, tmp_path / "a", seed=7, **options))
    second = _hashes(generate(name, 24, tmp_path / "b", seed=7, **options))
    assert first == second
    assert {"dataset.json", "labels.csv", "card.md", "images/" + f"{GENERATORS[name].id_prefix}_00000.png"} <= set(first)
    assert len([p for p in first if p.startswith("masks/")]) > 0
    other = _hashes(generate(name, 24, tmp_path / "c", seed=8, **options))
    assert other["labels.csv"] != first["labels.csv"]
    with pytest.raises(ValueError, match="not empty"):
        generate(name, 4, tmp_path / "a", seed=7)


def test_card_rule_reproduces_every_label_without_noise():
    for expr in (DEFAULT_RULE, "~streaks & (dots_and_globules | regression_area)", "atypical_network"):
        data = SynthDerm(rule=expr).plan(500, seed=1)
        card = data.card
        rule = parse_rule(card.extra["rule"], card.concept_names)
        assert np.array_equal(rule.evaluate(data.concepts).astype(np.int64), data.targets)
        assert np.array_equal(data.targets, data.clean_targets)
        assert 0.2 < data.targets.mean() < 0.8
    # concepts are independent Bernoulli draws near the asked prevalence
    data = SynthDerm(prevalence=0.4).plan(2000, seed=0)
    assert np.allclose(data.true_concepts.mean(axis=0), 0.4, atol=0.04)
    corr = np.corrcoef(data.true_concepts.T.astype(float))
    assert np.abs(corr[~np.eye(6, dtype=bool)]).max() < 0.08


def test_label_and_concept_noise_flip_the_asked_fraction():
    clean = SynthDerm().plan(1000, seed=3)
    noisy = SynthDerm(label_noise=0.2, concept_noise=0.1).plan(1000, seed=3)
    assert np.array_equal(noisy.clean_targets, clean.targets)
    assert np.mean(noisy.targets != noisy.clean_targets) == pytest.approx(0.2, abs=0.002)
    assert np.mean(noisy.concepts != noisy.true_concepts) == pytest.approx(0.1, abs=0.002)
    assert np.array_equal(noisy.true_concepts, clean.true_concepts)
    grade = SynthGrade(label_noise=0.3).plan(400, seed=0)
    moved = grade.targets - grade.clean_targets
    assert np.mean(moved != 0) == pytest.approx(0.3, abs=0.003) and set(np.unique(np.abs(moved))) <= {0, 1}
    cxr = get_generator("synth-cxr", label_noise=0.1).plan(300, seed=0)
    assert np.mean(cxr.targets != cxr.clean_targets) == pytest.approx(0.1, abs=0.002)
    # annotation noise leaves the pixels alone
    a, b = make("synth-derm", 8, seed=2, size=32), make("synth-derm", 8, seed=2, size=32, concept_noise=0.3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_masks_are_non_empty_exactly_where_concepts_are_present(name):
    data = make(name, 40, seed=5)
    n, k = data.true_concepts.shape
    size = data.card.extra["size"]
    assert data.masks.shape == (n, k, size, size) and data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) <= {0, 1}
    assert np.array_equal(data.masks.reshape(n, k, -1).max(axis=2), data.true_concepts)
    assert data.true_concepts.any(axis=0).all() and (data.true_concepts == 0).any(axis=0).all()
    if name != "synth-grade":
        assert data.masks.sum(axis=1).max() <= 1  # concepts are drawn in separate regions
    shape = (n, size, size) if data.card.channels == 1 else (n, size, size, 3)
    assert data.images.shape == shape and data.images.dtype == np.uint8
    assert sorted(set(data.splits)) == ["test", "train", "val"]
    assert (data.splits == "train").sum() == 28  # 70 / 15 / 15
    if name == "synth-cxr":
        assert (data.targets.sum(axis=1) == 0).any()  # some images have no finding


def test_derm_concept_changes_pixels_only_inside_its_mask():
    gen = SynthDerm()
    base = np.zeros(6)
    plain, _ = gen.render(0, 3, base)
    for k in range(6):
        concepts = base.copy()
        concepts[k] = 1
        image, masks = gen.render(0, 3, concepts)
        changed = (image != plain).any(axis=2)
        assert changed.any(), DERM_CONCEPTS[k]
        assert not (changed & (masks[k] == 0)).any(), DERM_CONCEPTS[k]
        assert masks[k].sum() > 40  # large enough to learn at 64 px


def test_spurious_artifact_correlates_with_the_label_in_train_not_test():
    data = SynthDerm(spurious=0.9).plan(4000, seed=0)
    art, y = data.columns["artifact"].astype(float), data.targets.astype(float)
    train, test = data.splits == "train", data.splits == "test"
    assert np.corrcoef(art[train], y[train])[0, 1] > 0.8
    assert abs(np.corrcoef(art[test], y[test])[0, 1]) < 0.1
    assert data.card.extra["spurious"] == 0.9 and "sticker" in data.card.extra["spurious_artifact"]
    assert not SynthDerm().plan(50, seed=0).columns["artifact"].any()
    # the artifact is drawn in a corner, away from the lesion and every mask
    gen = SynthDerm()
    concepts = np.ones(6)
    with_art, masks = gen.render(0, 1, concepts, artifact=True)
    without, _ = gen.render(0, 1, concepts, artifact=False)
    changed = (with_art != without).any(axis=2)
    assert changed.sum() > 20 and not (changed & masks.any(axis=0)).any()
    cxr = get_generator("synth-cxr", spurious=1.0).plan(400, seed=0)
    pos = cxr.targets.max(axis=1) > 0
    assert np.array_equal(cxr.columns["artifact"][cxr.splits == "train"] > 0, pos[cxr.splits == "train"])


def test_grade_measure_increases_with_severity():
    gen = SynthGrade()
    grid = np.round(np.linspace(0.0, 1.0, 11), 2)
    for index in range(3):
        values = np.array([measure_structure(gen.render(4, index, severity=s)[0]) for s in grid])
        assert values[0] == pytest.approx(0.0, abs=0.01)
        assert np.all(np.diff(values) >= 0)
        assert np.all(np.diff(values[2:]) > 0)  # strictly once the plaque shows (s >= 0.2)
    data = make("synth-grade", 40, seed=1)
    assert np.array_equal(data.targets, grade_of(data.columns["severity"]))
    assert np.array_equal(data.columns["pathology"], (data.targets > 0).astype(np.uint8))
    measured = measure_structure(data.images)  # a batch
    assert measured.shape == (40,)
    assert np.corrcoef(measured, data.columns["severity"])[0, 1] > 0.9
    chw = torch.from_numpy(data.images[0]).permute(2, 0, 1).float() / 255
    assert measure_structure(chw) == pytest.approx(measured[0], abs=1e-4)
    assert grade_of([0.0, 0.19, 0.2, 0.61, 1.0]).tolist() == [0, 0, 1, 3, 4]


def test_options_and_errors():
    with pytest.raises(ValueError, match="did you mean 'synth-derm'"):
        make("synth-drm", 4)
    with pytest.raises(TypeError, match="unknown option"):
        make("synth-cxr", 4, rule="nodule")
    with pytest.raises(ValueError, match="always"):
        SynthDerm(rule="streaks & ~streaks")
    with pytest.raises(ValueError, match="size"):
        SynthDerm(size=16)
    with pytest.raises(ValueError, match="label_noise"):
        SynthDerm(label_noise=1.5)
    with pytest.raises(ValueError, match="split_fractions"):
        SynthDerm(split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(UnknownConceptError):
        make("synth-derm", 4, rule="streak")
    data = make("synth-derm", 6, seed=0, size=48, prevalence={"streaks": 1.0}, split_fractions=(0.5, 0.5, 0.0))
    assert data.images.shape == (6, 48, 48, 3) and data.true_concepts[:, 3].all() and data.targets.all()
    assert "test" not in set(data.splits)


# -- the written folder is a CSV dataset ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_csv_loader_reads_the_written_folder(tmp_path, name):
    csv_dataset = pytest.importorskip("medimg_core.data.csv_dataset")
    out = generate(name, 30, tmp_path / name, seed=3, size=32, spurious=0.5)
    descriptor = json.loads((out / "dataset.json").read_text())
    assert descriptor["format"] == "csv" and descriptor["split_column"] == "split"
    ds = csv_dataset.CSVDataset(out, split="train")
    card = ds.card
    assert card == card_for(name, seed=3, size=32, spurious=0.5)
    k = card.num_concepts
    sample = ds[0]
    assert sample["image"].shape == (card.channels, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["concepts"].shape == (k,) and not torch.isnan(sample["concepts"]).any()
    assert sample["masks"].shape == (k, 32, 32)
    if name == "synth-cxr":
        assert sample["target"].shape == (len(CXR_FINDINGS),)
    # the files hold exactly what make() renders in memory
    data = make(name, 30, seed=3, size=32, spurious=0.5)
    idx = data.indices("train")
    assert ds.ids == [data.ids[i] for i in idx]
    assert np.array_equal(ds.targets, data.targets[idx]) and np.array_equal(ds.concepts, data.concepts[idx])
    for j in (0, len(ds) - 1):
        assert np.array_equal(ds.load_image(j), data.images[idx[j]])
        assert np.array_equal(ds.load_masks(j, (32, 32)), data.masks[idx[j]])
    mem = data.dataset("train")[0]
    assert torch.equal(mem["image"], sample["image"]) and torch.equal(mem["masks"], sample["masks"])
    if name == "synth-derm":
        rule = parse_rule(card.extra["rule"], card.concept_names)
        assert np.array_equal(rule.evaluate(ds.concepts).astype(np.int64), ds.targets)
    assert data.card.to_markdown() + "\n" == (out / "card.md").read_text()
