"""`medimg benchmark --quick` end to end through click's CliRunner: the structure of what it writes (every cell
filled, every interval ordered, the model-independent reference fails the sanity check), not its values."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medimg_benchmark.cli import benchmark
from medimg_benchmark.maps import EDGE_REFERENCE, PROTOCOLS
from medimg_core.posthoc import METHODS

EXPLAINERS = [*METHODS, EDGE_REFERENCE]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(benchmark, ["--quick", "--device", "cpu", "--out", str(out), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    return runs[0], result.output


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_writes_json_markdown_html_and_figure(quick_run):
    run, output = quick_run
    for name in ("benchmark.json", "benchmark.md", "index.html", "figures/example_maps.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert f"benchmark written to {run}" in output
    page = (run / "index.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "Content-Security-Policy" in page


def test_every_number_is_there_with_an_ordered_interval(quick_run):
    run, _ = quick_run
    result = json.loads((run / "benchmark.json").read_text())
    assert result["config"]["seeds"] == [0, 1] and result["config"]["quick"] is True
    assert [s["data_seed"] for s in result["seeds"]] == [1000, 1001]
    assert isinstance(result["torch_threads"], int) and result["torch_threads"] >= 1
    assert result["versions"]["torch"] and result["versions"]["captum"] and result["versions"]["grad-cam"]
    assert result["explainers"] == EXPLAINERS
    for record in result["seeds"]:
        assert 1 <= record["scored_images"] <= 6 and len(record["scored_ids"]) == record["scored_images"]
        assert Path(record["model_run"]).is_dir()
        for name in EXPLAINERS:
            row = record["explainers"][name]
            for protocol in PROTOCOLS:
                cell = row[protocol]
                assert all(_finite(cell[k]) for k in ("value", "low", "high")), (record["seed"], name, protocol, cell)
                assert cell["low"] <= cell["value"] <= cell["high"], (record["seed"], name, protocol, cell)
                assert cell["n"] + cell["undefined"] == (record["scored_images"] if protocol != "sanity_spearman_abs"
                                                         else min(2, record["scored_images"]))
            assert isinstance(row["passes_sanity"], bool)
            assert [s["layer"] for s in row["sanity_steps"]] == row["sanity_layers"]
            assert row["sanity_layers"][0] == "head"
    for name in EXPLAINERS:
        for protocol in PROTOCOLS:
            cell = result["summary"][name][protocol]
            assert _finite(cell["mean"]) and _finite(cell["sd"]) and cell["n_seeds"] == 2, (name, protocol, cell)


def test_the_model_independent_reference_fails_the_sanity_check(quick_run):
    run, _ = quick_run
    result = json.loads((run / "benchmark.json").read_text())
    assert result["summary"][EDGE_REFERENCE]["sanity_passes"] == [False, False]
    for record in result["seeds"]:
        assert record["explainers"][EDGE_REFERENCE]["sanity_spearman_abs"]["value"] == pytest.approx(1.0)


def test_the_markdown_table_has_every_cell_filled(quick_run):
    run, _ = quick_run
    tables = [block.splitlines() for block in (run / "benchmark.md").read_text().split("\n\n")
              if block.startswith("|")]
    assert len(tables) == 4  # the maps, the concepts, the rules, the data randomisation
    header, rows = tables[0][0], tables[0][2:]
    assert header.count("|") == len(PROTOCOLS) + 3
    assert [r.split("|")[1].strip() for r in rows] == EXPLAINERS
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert all(re.fullmatch(r"-?\d+\.\d{3} ± \d+\.\d{3}", c) for c in cells[:-1]), row
        assert re.fullmatch(r"[0-2]/2", cells[-1]), row
    assert rows[-1].endswith("| 0/2 |")  # edge_reference


def test_tcav_scores_every_concept_against_the_rule(quick_run):
    run, _ = quick_run
    result = json.loads((run / "benchmark.json").read_text())
    for record in result["seeds"]:
        c = record["concepts"]
        assert c["rule_total"] == 3 and c["others_tested"] + c["rule_total"] + len(c["skipped"]) == 6
        assert 0 <= c["rule_found"] <= 3 and 0 <= c["others_flagged"] <= c["others_tested"]
        for name, row in c["concepts"].items():
            assert 0 <= row["tcav_mean"] <= 1 and 0 <= row["p_value"] <= 1, name
            assert len(row["scores"]) == c["n_random"] and len(row["random_scores"]) == c["n_random"] - 1
            assert row["in_rule"] == (name in ("irregular_border", "blue_white_veil", "streaks"))
        for name, row in c["probe"].items():
            assert row["auroc"] is None or 0 <= row["auroc"] <= 1, name
    summary = result["concept_summary"]
    assert len(summary["rule_found"]) == len(result["seeds"])
    table = [block.splitlines() for block in (run / "benchmark.md").read_text().split("\n\n")
             if block.startswith("|")][1]
    assert [r.split("|")[1].strip() for r in table[2:]] == list(summary["per_concept"])
    assert "Rule concepts found (significant, score > 0.5) per seed:" in (run / "benchmark.md").read_text()


def test_data_randomisation_compares_each_explainer_with_a_permuted_label_model(quick_run):
    run, _ = quick_run
    result = json.loads((run / "benchmark.json").read_text())
    summary = result["data_randomisation_summary"]
    assert list(summary["explainers"]) == EXPLAINERS
    for record in result["seeds"]:
        rows = record["data_randomisation"]["explainers"]
        # the reference's maps do not depend on the model: identical for both models, so it must fail
        assert rows[EDGE_REFERENCE]["spearman_abs"]["value"] == pytest.approx(1.0) and not rows[EDGE_REFERENCE]["passes"]
        for name, row in rows.items():
            cell = row["spearman_abs"]
            assert cell["low"] <= cell["value"] <= cell["high"] or not _finite(cell["value"]), name
    table = [block.splitlines() for block in (run / "benchmark.md").read_text().split("\n\n")
             if block.startswith("|")][3]
    assert [r.split("|")[1].strip() for r in table[2:]] == EXPLAINERS and table[-1].endswith("| 0/2 |")


def _ordered(cell) -> bool:
    return all(_finite(cell[k]) for k in ("value", "low", "high")) and cell["low"] <= cell["value"] <= cell["high"]


def test_crl_concept_head_and_rules_against_the_generator(quick_run):
    run, _ = quick_run
    result = json.loads((run / "benchmark.json").read_text())
    rule_concepts = ["irregular_border", "blue_white_veil", "streaks"]
    for record in result["seeds"]:
        crl = record["crl"]
        assert Path(crl["model_run"]).is_dir() and crl["preset"] == "synthetic-cpu"
        assert Path(crl["model_run"]).parent == Path(record["model_run"]).parent  # models/ of the same run
        assert list(crl["concepts"]) == list(record["concepts"]["probe"])  # same concepts, same order
        for name, row in crl["concepts"].items():
            assert row["in_rule"] == (name in rule_concepts)
            assert row["auroc"] is None or row["low"] <= row["auroc"] <= row["high"], name
        assert list(crl["rules"]) == ["crl_rules", "crl_compact", "decision_tree", "logistic_regression"]
        for name, row in crl["rules"].items():
            table = row["truth_table"]
            assert table["rows"] == 8 and table["variables"] == rule_concepts and table["others_fixed_at"] == 0
            assert table["value"] == sum(table["agrees"]) / 8, name
            assert _ordered(row["test_accuracy"]) and _ordered(row["fidelity"]), name
            assert isinstance(row["size"], int) and isinstance(row["literals"], int) and row["size_unit"], name
    summary = result["rules_summary"]
    for name, row in summary.items():
        for key in ("truth_table", "test_accuracy", "fidelity", "size", "literals"):
            assert _finite(row[key]["mean"]) and _finite(row[key]["sd"]) and row[key]["n_seeds"] == 2, (name, key)
    tables = [block.splitlines() for block in (run / "benchmark.md").read_text().split("\n\n")
              if block.startswith("|")]
    concepts, rules = tables[1], tables[2]
    assert concepts[0].count("|") == 7 and "CRL concept head test AUROC" in concepts[0]
    assert [r.split("|")[1].strip() for r in rules[2:]] == [result["rules_models"][n] for n in summary]
    for row in rules[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert all(re.fullmatch(r"-?\d+\.\d{3} ± \d+\.\d{3}", c) for i, c in enumerate(cells) if i != 4), row
        assert cells[4] in ("rules", "terms", "leaves", "non-zero coefficients"), row
    assert "Truth-table agreement (ours)" in (run / "benchmark.md").read_text()
    page = (run / "index.html").read_text()
    assert "truth-table agreement with the generating rule" in page and "CRL concept head test AUROC" in page


def test_bad_seeds_are_refused_with_the_value():
    result = CliRunner().invoke(benchmark, ["--quick", "--seeds", "0,x", "--device", "cpu"])
    assert result.exit_code == 2 and "'0,x'" in result.output
    result = CliRunner().invoke(benchmark, ["--quick", "--seeds", "1 1", "--device", "cpu"])
    assert result.exit_code == 2 and "must not repeat" in result.output


def test_medimg_benchmark_through_the_entry_point(monkeypatch):
    """As installed: the pyproject's entry point, loaded by core's plugin hook, gives `medimg benchmark`."""
    import tomllib

    from medimg_core.cli import COMMANDS_ENTRY_POINT_GROUP, add_plugin_commands

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"][COMMANDS_ENTRY_POINT_GROUP]
    assert declared == {"benchmark": "medimg_benchmark.cli:benchmark"}
    eps = [importlib.metadata.EntryPoint(n, v, COMMANDS_ENTRY_POINT_GROUP) for n, v in declared.items()]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: eps)
    group = click.Group("medimg")
    assert add_plugin_commands(group) == ["benchmark"]
    result = CliRunner().invoke(group, ["benchmark", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "Not yet in" in result.output
