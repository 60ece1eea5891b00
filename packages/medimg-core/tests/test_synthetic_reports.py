"""synth-derm's free-text reports: deterministic, one per image, the configured rates, and no label."""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from medimg_core.cli import main
from medimg_core.synthetic import DERM_CONCEPTS, SynthDerm, generate, make
from medimg_core.synthetic.reports import LABEL_WORDS, REPORT_TERMS, ReportOptions, write_report


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _term_pattern(term: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(term.lower()) + r"(?!\w)")


PATTERNS = {c: [_term_pattern(t) for t in REPORT_TERMS[c]] for c in DERM_CONCEPTS}


def parse(report: str) -> np.ndarray:
    """What a report says of each concept, read back from the text alone: 1 present, -1 negated, 0 nothing."""
    out = np.zeros(len(DERM_CONCEPTS), dtype=np.int8)
    for sentence in re.split(r"(?<=\.)\s+", report.strip()):
        low = sentence.lower()
        negated = low.startswith("no ") or low.endswith("not seen.")
        hits = [j for j, c in enumerate(DERM_CONCEPTS) if any(p.search(low) for p in PATTERNS[c])]
        assert len(hits) <= 1, f"one sentence names two concepts: {sentence!r}"
        for j in hits:
            assert out[j] == 0, f"concept {DERM_CONCEPTS[j]} mentioned twice in {report!r}"
            out[j] = -1 if negated else 1
    return out


def test_reports_are_byte_identical_for_a_seed_and_recorded_in_the_card(tmp_path):
    options = {"size": 32, "reports": True, "report_mention": 0.6, "concept_noise": 0.1}
    first = _hashes(generate("synth-derm", 24, tmp_path / "a", seed=5, **options))
    second = _hashes(generate("synth-derm", 24, tmp_path / "b", seed=5, **options))
    assert first == second and "reports.csv" in first
    other = _hashes(generate("synth-derm", 24, tmp_path / "c", seed=6, **options))
    assert other["reports.csv"] != first["reports.csv"]
    extra = json.loads((tmp_path / "a" / "dataset.json").read_text())["card"]["extra"]
    assert extra["reports"] == "reports.csv"
    assert (extra["report_mention"], extra["report_false_mention"], extra["report_negation"]) == (0.6, 0.05, 0.15)
    assert extra["report_terms"]["streaks"] == list(REPORT_TERMS["streaks"])
    # a sample's report does not depend on n (its own stream), nor do reports change the images or labels
    small = make("synth-derm", 10, seed=5, size=32, reports=True, report_mention=0.6).reports
    assert small == make("synth-derm", 30, seed=5, size=32, reports=True, report_mention=0.6).reports[:10]
    plain = _hashes(generate("synth-derm", 24, tmp_path / "d", seed=5, size=32, concept_noise=0.1))
    assert "reports.csv" not in plain
    assert {k: v for k, v in first.items() if k.startswith("images/")} == \
        {k: v for k, v in plain.items() if k.startswith("images/")}
    assert pd.read_csv(tmp_path / "a" / "labels.csv").equals(pd.read_csv(tmp_path / "d" / "labels.csv"))


def test_every_image_of_every_split_has_a_report(tmp_path):
    out = generate("synth-derm", 40, tmp_path / "d", seed=2, size=32, reports=True)
    labels = pd.read_csv(out / "labels.csv")
    reports = pd.read_csv(out / "reports.csv", dtype=str, keep_default_na=False)
    assert list(reports.columns) == ["id", "report"]
    assert reports["id"].tolist() == labels["id"].tolist()
    assert set(labels["split"]) == {"train", "val", "test"}
    assert (reports["report"].str.len() > 10).all()


def test_mentions_follow_the_configured_rates_and_the_text_says_what_was_drawn():
    for mention, false_mention, negation in ((0.7, 0.05, 0.15), (0.4, 0.2, 0.3)):
        data = SynthDerm(size=32, reports=True, report_mention=mention, report_false_mention=false_mention,
                         report_negation=negation).plan(500, seed=1)
        m, drawn = data.report_mentions, data.true_concepts > 0
        # every mention is read back from the text alone (terms, negations), so the text carries these rates
        assert np.array_equal(np.stack([parse(r) for r in data.reports]), m)
        n_present, n_absent = drawn.sum(), (~drawn).sum()  # about 1350 and 1650 of 3000 concept slots
        assert n_present > 1000 and n_absent > 1000
        assert (m[drawn] == 1).mean() == pytest.approx(mention, abs=4 * np.sqrt(mention * (1 - mention) / n_present))
        assert not (m[drawn] == -1).any()  # a drawn concept is never negated
        assert (m[~drawn] == 1).mean() == pytest.approx(false_mention, abs=0.025)
        assert (m[~drawn] == -1).mean() == pytest.approx(negation, abs=0.03)
        # paraphrases: every phrasing of every concept is used
        text = " ".join(data.reports).lower()
        for concept, terms in REPORT_TERMS.items():
            for term in terms:
                assert _term_pattern(term).search(text), (concept, term)


def test_the_label_is_not_written():
    data = SynthDerm(size=32, reports=True).plan(300, seed=0)
    assert set(data.targets.tolist()) == {0, 1}
    for report in data.reports:
        assert not any(word in report.lower() for word in LABEL_WORDS), report
    # the reports are a function of the drawn concepts only: another rule (other labels) gives the same text
    other = SynthDerm(size=32, reports=True, rule="dots_and_globules & regression_area").plan(300, seed=0)
    assert not np.array_equal(other.targets, data.targets) and other.reports == data.reports


def test_write_report_draws_the_same_numbers_whatever_is_drawn():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    none = write_report(rng_a, [False] * 6, DERM_CONCEPTS, ReportOptions())[0]
    every = write_report(rng_b, [True] * 6, DERM_CONCEPTS, ReportOptions())[0]
    assert none != every and rng_a.random() == rng_b.random()
    assert write_report(np.random.default_rng(0), [True] * 6, DERM_CONCEPTS, ReportOptions(1.0, 0.0, 0.0))[1].all()


def test_report_options_and_cli(tmp_path):
    with pytest.raises(ValueError, match="report_mention must be a probability"):
        SynthDerm(reports=True, report_mention=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        SynthDerm(reports=True, report_false_mention=0.6, report_negation=0.6)
    with pytest.raises(ValueError, match="present must have 6 values"):
        write_report(np.random.default_rng(0), [True] * 3, DERM_CONCEPTS, ReportOptions())
    runner = CliRunner()
    out = tmp_path / "d"
    result = runner.invoke(main, ["synth", "synth-derm", "--n", "12", "--out", str(out), "--size", "32", "--reports",
                                  "--report-mention", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "dataset.json").read_text())["card"]["extra"]["report_mention"] == 0.5
    assert len(pd.read_csv(out / "reports.csv")) == 12
    result = runner.invoke(main, ["synth", "synth-derm", "--n", "4", "--out", str(tmp_path / "e"),
                                  "--report-mention", "0.5"])
    assert result.exit_code != 0 and "need --reports" in result.output
    result = runner.invoke(main, ["synth", "synth-cxr", "--n", "4", "--out", str(tmp_path / "f"), "--reports"])
    assert result.exit_code != 0 and "unknown option" in result.output
