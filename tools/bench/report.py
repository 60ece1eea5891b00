"""Render docs/benchmarks.md from the result files in docs/bench/*.json (written by the benchmarks).

    python tools/bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, ci, concept_numbers, fmt, machine_line


def baselines(result: dict) -> list[str]:
    lines = ["## Black-box baselines (`medimg train-baseline`)", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. "
             f"Regenerate: `{result['command']}`.", "",
             "| dataset | backbone | test accuracy [95% CI] | balanced acc. | macro-F1 | AUROC | best epoch | wall time | peak memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        m, t = run["metrics"], run["metrics"]["test"]
        auroc = ci(t, "auroc") if "auroc" in t else ci(t, "auroc_mean")
        lines.append(f"| {name} | {m['backbone']} | {ci(t, 'accuracy')} | {ci(t, 'balanced_accuracy')} | "
                     f"{ci(t, 'macro_f1')} | {auroc} | {m['best_epoch']}/{m['epochs_run']} | "
                     f"{m['wall_time_s'] / 60:.1f} min | {m['peak_memory_mb'] / 1024:.1f} GB |")
    lines.append("")
    for name, run in result["runs"].items():
        lines.append(f"- {name}: `{run['command']}`")
        extra = {k: v for k, v in run["metrics"]["test"].items() if k in ("mae", "qwk", "spearman")}
        if extra:
            lines.append("  - ordinal: " + ", ".join(f"{k} {fmt(v)}" for k, v in extra.items()))
    return [*lines, ""]


def loop_overhead(result: dict) -> list[str]:
    return [
        "## Training-loop overhead", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
        f"The medimg Trainer against a bare PyTorch loop on the same {result['model']} at {result['image_size']} px, "
        f"batch {result['batch']}, {result['steps_per_run']} steps per run, {result['repeats']} alternating repeats:",
        "",
        f"- bare loop: {', '.join(f'{t:.2f}' for t in result['bare_s'])} s",
        f"- Trainer: {', '.join(f'{t:.2f}' for t in result['trainer_s'])} s",
        f"- ratio of medians: **{result['ratio']:.3f}** ({result['overhead_percent']:+.1f}%; goal under +5%)", "",
    ]


def crl_logic_speed(result: dict) -> list[str]:
    return [
        "## CRL: speed of the logical layers", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
        f"Logic stack (binarize, {result['nodes_per_layer']}, skip, linear; {result['concepts']} concepts, "
        f"{result['classes']} classes, batch {result['batch']}), forward + backward, median:", "",
        f"- published per-element formulas: {1000 * result['logic_published_s']:.1f} ms",
        f"- matrix products (`crl.layers.LogicalFunction`): {1000 * result['logic_fast_s']:.1f} ms "
        f"(**{result['speedup']:.1f}x** faster; goal at least 10x)",
        f"- full training step at {result['image_size']} px, resnet18: plain classifier {result['plain_step_s']:.3f} s, "
        f"CRL {result['crl_step_s']:.3f} s (**{result['crl_extra_percent']:+.1f}%**; goal under +10%)", "",
    ]


def crl_synthetic(result: dict) -> list[str]:
    lines = ["## CRL on synth-derm (ground truth known)", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
             "| data | model | test accuracy [95% CI] | macro-F1 | concept accuracy (published: per-concept mean) | "
             "concept accuracy (pooled) | rules (mean length) | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        c, b = run["crl"], run["baseline"]
        cn = concept_numbers(c["test_concepts"])
        lines.append(f"| {name} | CRL | {ci(c['test'], 'accuracy')} | {fmt(c['test']['macro_f1'])} | "
                     f"{fmt(cn['concept_accuracy'])} | {fmt(cn['concept_accuracy_pooled'])} | {c['rules']['count']} "
                     f"({c['rules']['mean_length']:.2f}) | {c['wall_time_s'] / 60:.1f} min |")
        lines.append(f"| {name} | baseline | {ci(b['test'], 'accuracy')} | {fmt(b['test']['macro_f1'])} | - | - | - | "
                     f"{b['wall_time_s'] / 60:.1f} min |")
    lines += ["", concept_note([concept_numbers(run["crl"]["test_concepts"]) for run in result["runs"].values()])]
    for name, run in result["runs"].items():
        lines += [f"- {name}: data `{run['data']}`; CRL `{run['crl_command']}`; baseline `{run['baseline_command']}`"]
        rec = run.get("rule_recovery")
        if rec:
            lines += [f"  - rule recovery against `{rec['rule']}`: agreement {rec['agreement_seen']:.3f} on the "
                      f"{rec['combinations_seen']} concept combinations in the data (exact: {rec['exact_on_seen']}), "
                      f"{rec['agreement_all']:.3f} on all {rec['combinations_all']}; top rules: "
                      + "; ".join(f"`{t}`" for t in rec["top_rules"])]
            if "compact_rule" in rec:
                lines += [f"  - compact rule: `{rec['compact_rule']}`: same truth table as the generating rule on all "
                          f"{rec['combinations_all']} combinations: {'yes' if rec['compact_equals_rule'] else 'no'}; "
                          f"test fidelity {fmt(rec['compact_fidelity_test'])}"]
    return [*lines, ""]


def crl_wbcatt(result: dict) -> list[str]:
    c, b = result["crl"], result["baseline"]
    cn = concept_numbers(result["crl_concepts"])
    lines = ["## CRL on WBCAtt", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
             "| model | test accuracy [95% CI] | macro-F1 | concept macro-F1 (published) | concept positive-class F1 "
             "mean | concept accuracy (published) | concept accuracy (pooled) | rules (mean length) | wall time |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| CRL | {ci(c['test'], 'accuracy')} | {fmt(c['test']['macro_f1'])} | {fmt(cn['concept_macro_f1'])} | "
             f"{fmt(cn['concept_positive_f1_mean'])} | {fmt(cn['concept_accuracy'])} | "
             f"{fmt(cn['concept_accuracy_pooled'])} | "
             f"{c['rules']['count']} ({c['rules']['mean_length']:.2f}) | {c['wall_time_s'] / 60:.1f} min |"]
    if b:
        lines.append(f"| baseline | {ci(b['test'], 'accuracy')} | {fmt(b['test']['macro_f1'])} | - | - | - | - | - | "
                     f"{b['wall_time_s'] / 60:.1f} min |")
    lines += ["", f"- CRL: `{result['crl_command']}`"]
    if b:
        lines.append(f"- baseline: `{b['command']}`")
    lines.append(concept_note([cn]))
    return [*lines, ""]


def crl_interventions(result: dict) -> list[str]:
    ks = (0, 1, 2, 4, 8)
    lines = ["## CRL: concept interventions", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
             "Koh et al. (ICML 2020): test accuracy as k of the K concepts are set to their annotated values, in random "
             f"order (the mean over {result['orders']} orders per run) and per image in order of concept uncertainty "
             "(predicted probability closest to 0.5 first). CRL's logic layers read the corrected binary concepts; "
             "the bottleneck is a logistic regression fitted on the training split's predicted concept probabilities "
             "of the same run. Mean ± sd over the seeds listed.", ""]
    for setting, entry in result["settings"].items():
        runs = entry["runs"]
        k_all = runs[0]["concepts"]
        shown = [k for k in ks if k < k_all] + [k_all]
        lines += [f"{setting} (seeds {', '.join(str(r['seed']) for r in runs)}; {runs[0]['n']} test images, "
                  f"K = {k_all}):", "",
                  "| model | order | " + " | ".join(f"k = {k}" for k in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for model, by_order in entry["summary"].items():
            for order, curve in by_order.items():
                cells = []
                for k in shown:
                    stat = curve["accuracy"][curve["k"].index(k)]
                    cells.append(f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat["n"] > 1 else ""))
                lines.append(f"| {model} | {order} | " + " | ".join(cells) + " |")
        figure = f"figures/crl/interventions-{setting.replace('/', '-')}.png"
        lines += ["", f"- `{runs[0]['command']}` (one per run; {sum(r['wall_time_s'] for r in runs) / 60:.1f} min in "
                      f"all); figure of seed {runs[0]['seed']}: `docs/{figure}`", "", f"![{setting}]({figure})", ""]
    if result.get("missing_runs"):
        lines.append(f"Skipped (run folder gone): {', '.join(result['missing_runs'])}.")
    return [*lines, ""]


SMALL_DATA_ARMS = {"crl": "CRL, `small-lite0-cpu` (220 steps)",
                   "blackbox": "black box, `baseline-wbcatt-lite0-cpu` with 220 steps",
                   "crl-paper-lr": "CRL, `small-lite0-cpu` with the paper's logic lr 5e-4 and concept weight 1",
                   "crl-paper-lrs": "CRL, `small-lite0-cpu` with the paper's learning rates (logic 5e-4, backbone "
                                    "and concept head 5e-6) and concept weight 1",
                   "crl-two-epochs": "CRL, `wbc-lite0-cpu` as shipped (2 epochs: 20 steps here)"}


def crl_small_data(result: dict) -> list[str]:
    def stat(summary: dict, key: str) -> str:
        s = summary.get(key)
        return "-" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"

    arms = result["arms"]
    lines = ["## CRL on small data: 350-image WBCAtt subsets", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
             f"Stratified training subsets of {result['subset']} images (subset seed = training seed = "
             f"{', '.join(str(s) for s in result['seeds'])}); WBCAtt's official validation and test splits; "
             "EfficientNet-Lite0 from ImageNet (`imagenet-lite0`) at 128 px for every model. The bottleneck is a "
             "logistic regression on the same run's predicted concept probabilities (`crl intervene`). Test "
             "metrics, mean ± sd over the seeds; *classes predicted* is the fewest classes a run's CRL assigned "
             "any test image to (5: no collapse).", "",
             "| model | test accuracy | balanced accuracy | macro-F1 | concept macro-F1 (published) | concept "
             "accuracy (published) | bottleneck accuracy | bottleneck balanced accuracy | classes predicted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, label in SMALL_DATA_ARMS.items():
        if arm not in arms:
            continue
        summ = arms[arm]["summary"]
        lines.append(f"| {label} | {stat(summ, 'test_accuracy')} | {stat(summ, 'test_balanced_accuracy')} | "
                     f"{stat(summ, 'test_macro_f1')} | {stat(summ, 'concept_macro_f1')} | "
                     f"{stat(summ, 'concept_accuracy')} | {stat(summ, 'bottleneck_accuracy')} | "
                     f"{stat(summ, 'bottleneck_balanced_accuracy')} | {summ.get('min_classes_predicted', '-')} |")
    if "crl" in arms and "blackbox" in arms:
        gaps = [b["test"]["accuracy"] - c["test"]["accuracy"]
                for c, b in zip(arms["crl"]["runs"], arms["blackbox"]["runs"], strict=True)]
        lines += ["", f"Black box minus CRL (`small-lite0-cpu`), test accuracy per seed: "
                      f"{', '.join(f'{g:+.3f}' for g in gaps)} (largest {max(gaps):+.3f})."]
    lines += ["", "Per run (test accuracy [95% CI]; CRL: rules, compact prefix and its per-class test fidelity):", "",
              "| model | seed | test accuracy [95% CI] | balanced accuracy [95% CI] | rules (mean length) | compact "
              "prefix: rules kept, test fidelity | per class: rules for it / test fidelity | wall time |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in SMALL_DATA_ARMS:
        for r in arms.get(arm, {}).get("runs", []):
            rules, compact, per_class = "-", "-", "-"
            if "rules" in r:
                rules = f"{r['rules']['count']} ({r['rules']['mean_length']:.2f})"
                c = r["rules"].get("compact") or {}
                if c.get("method") == "prefix":
                    compact = f"{c['prefix_rules']}, {fmt(c.get('fidelity_test'))}"
                    per_class = "; ".join(f"{e['class']} {e['rules']} / {fmt(e['fidelity_test'])}"
                                          for e in c.get("per_class", [])) or "-"
            lines.append(f"| {arm} | {r['seed']} | {ci(r['test'], 'accuracy')} | {ci(r['test'], 'balanced_accuracy')} | "
                         f"{rules} | {compact} | {per_class} | {r['wall_time_s'] / 60:.1f} min |")
    lines += [""] + [f"- {arm}: `{entry['command']}` (seed 0; one per seed)" for arm, entry in arms.items()]
    return [*lines, ""]


def concept_note(numbers: list[dict]) -> str:
    """What the concept columns of the CRL tables are (and why a published column reads n/a)."""
    note = ("- Concept metrics: *published* is the CRL paper's definition (official code: per concept, the macro-F1 "
            "over present/absent and the accuracy, averaged over the concepts with at least one positive); the "
            "positive-class F1 mean and the pooled accuracy (every annotated entry) are this package's earlier "
            "numbers.")
    if any(n["concept_macro_f1"] is None and n["concept_positive_f1_mean"] is not None for n in numbers):
        note += " n/a: the result file was written before the published definitions were computed (rerun it)."
    return note


RENDERERS = {"baselines": baselines, "loop_overhead": loop_overhead, "crl_logic_speed": crl_logic_speed,
             "crl_synthetic": crl_synthetic, "crl_wbcatt": crl_wbcatt, "crl_interventions": crl_interventions,
             "crl_small_data": crl_small_data}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ground_truth_summary() -> list[str]:
    """One table of what each method's explanations recover of the synthetic generators' ground truth."""
    rows = []
    if r := _load("crl_synthetic"):
        rec = r["runs"]["clean"]["rule_recovery"]
        rows.append(f"| crl | synth-derm | rule recovery (truth-table agreement over {rec['combinations_seen']} concept "
                    f"combinations); rules (mean length) | {rec['agreement_seen']:.3f} (exact: {rec['exact_on_seen']}); "
                    f"{rec['rule_count']} ({rec['mean_rule_length']:.2f}) | exact rule |")
    if r := _load("neuron_concepts_synth_derm"):
        if "relevant_named_confirmed" in r:
            rows.append(f"| neuron-concepts | synth-derm | label-relevant concepts matched by an SAE latent (test AUROC "
                        f">= 0.9); label-relevant concepts named on train (train AUROC >= {r['min_auroc']}) whose "
                        f"named latent holds on test (test AUROC >= {r['min_auroc']}) | {r['relevant_matched_0.9']} of "
                        f"{r['relevant_count']}; {r['relevant_named_confirmed']} of {r['relevant_count']} | every "
                        "relevant one |")
        else:  # an older result file: its naming measure was circular, so only the matching is shown
            rows.append(f"| neuron-concepts | synth-derm | label-relevant concepts matched by an SAE latent (test AUROC "
                        f">= 0.9) | {r['relevant_matched_0.9']} of {r['relevant_count']} | every relevant one |")
    if r := _load("cipl_synth_cxr"):
        from render_cipl import mean_sd_text  # the CIPL renderer knows its result layout

        summ = r["summary"]
        rows.append(f"| cipl | synth-cxr | pointing game (class map maximum inside the finding's mask; detected "
                    f"findings), mean ± sd (min-max) over seeds {r['seeds']}; mask IoU | "
                    f"{mean_sd_text(summ['pointing_game'])}; {mean_sd_text(summ['iou'])} | pointing >= 0.8 |")
    if r := _load("iis_synth_derm"):
        from render_iis import iis_pair  # the IIS renderer knows its result layout

        pair = iis_pair(r, "prototype")
        if pair:
            rows.append(f"| iis | synth-derm | IIS of the trained resnet18 vs the same at random initialisation "
                        f"(Prototype concepts) | {pair} | trained clearly higher |")
    if r := _load("dae_synth_grade"):
        c = r["counterfactuals"]
        along = c.get("settings", {}).get("along")
        edit = c.get("edit", "grade") + ("" if along in (None, "normal") else f" along the {along}")
        inside = fmt(1 - c["locality"]["outside_fraction"], 2) if "locality" in c else "not measured"
        low = c.get("towards_lowest", {})
        removal = fmt(low.get("removal_ratio"), 2) if low else "not measured"
        flip = c.get("image_classifier", {}).get("flip_rate")
        rows.append(f"| dae-counterfactual | synth-grade | the {edit} edit (chosen on validation), test: image classifier "
                    f"flip rate; monotone series (generator's measure); effect ratio (change from the lowest to the "
                    f"highest target / real grade 0-4 gap); share of the change inside the plaque; removal ratio of "
                    f"the counterfactual to grade 0 | {fmt(flip)}; {fmt(c['measure']['monotone_fraction'], 2)}; "
                    f"{fmt(c['measure']['effect_ratio'], 3)}; {inside}; {removal} | valid, monotone, effect >= 0.5, "
                    "inside >= 0.7, removal >= 0.5 |")
    if not rows:
        return []
    return ["## Ground truth recovered on the synthetic sets", "",
            "The synthetic generators know the rule, the concepts, the lesion masks and the structure behind each "
            "grade, so each method's explanation can be scored against the truth (the sections below give "
            "dates, commands, intervals and the black-box comparison).", "",
            "| method | data | measured | result | target |", "|---|---|---|---|---|", *rows, ""]


def discover_renderers() -> dict:
    """Renderers of the method benchmarks: each tools/bench/render_<package>.py defines RENDERERS too."""
    import importlib

    found = dict(RENDERERS)
    for path in sorted(Path(__file__).parent.glob("render_*.py")):
        found.update(importlib.import_module(path.stem).RENDERERS)
    return found


def main() -> None:
    sections = ["# Benchmarks", "",
                "Every number below was written by a benchmark under `tools/bench/` into `docs/bench/*.json` and "
                "rendered by `python tools/bench/report.py`; none is edited by hand. `bash tools/bench/run_all.sh` "
                "reruns every benchmark and this report.", ""]
    renderers = discover_renderers()
    sections += ground_truth_summary()
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        render = renderers.get(result["name"])
        if render is None:
            sections += [f"## {result['name']}", "", "```json", json.dumps(result, indent=1)[:4000], "```", ""]
        else:
            sections += render(result)
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(sections))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
