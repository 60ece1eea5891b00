"""Markdown sections of the neuron-concepts benchmarks (docs/bench/neuron_concepts_*.json), found by report.py."""

from __future__ import annotations

from common import ci, fmt, machine_line


def _auroc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _times(times: dict) -> str:
    order = ("opaque", "encode", "sae", "name", "cav", "select", "cbm", "total")
    return ", ".join(f"{k} {times[k]:.0f} s" if times[k] >= 10 else f"{k} {times[k]:.1f} s"
                     for k in order if times.get(k) is not None)


def _header(result: dict, title: str) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in result.get("environment", {}).items())
    return [f"## {title}", "",
            f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. "
            f"Command: `{(env + ' ') if env else ''}{result['command']}`.", "",
            f"Pipeline: `{result['run_command']}` (folder `{result['pipeline']}`).", ""]


def _accuracy(result: dict) -> list[str]:
    o, c, cbm = result["opaque_test"], result["cbm_test"], result["cbm"]
    return ["| model | test accuracy [95% CI] | macro-F1 | AUROC |", "|---|---|---|---|",
            f"| opaque (medimg baseline recipe) | {ci(o, 'accuracy')} | {fmt(o['macro_f1'])} | "
            f"{fmt(o.get('auroc', o.get('auroc_mean')))} |",
            f"| CBM ({result['selected']} concepts, {cbm['n_nonzero']} non-zeros, C {cbm['C']:.3g}) | "
            f"{ci(c, 'accuracy')} | {fmt(c['macro_f1'])} | {fmt(c.get('auroc', c.get('auroc_mean')))} |", "",
            f"Accuracy gap (opaque - CBM): **{100 * result['accuracy_gap']:+.1f} points**. CBM agrees with the opaque "
            f"model on {100 * cbm['fidelity_to_opaque_test']:.1f}% of test images; the OMP decomposition explains "
            f"R^2 = {cbm['decomposition_r2_test']:.3f} of the test features; the opaque head on the decomposition's "
            f"reconstruction scores {fmt(cbm['opaque_head_on_reconstruction_accuracy_test'])}.", ""]


def _new(result: dict) -> bool:
    """Results written since names are checked on a held-out split (older ones hold the circular measure)."""
    return "relevant_named_confirmed" in result or "named_confirmed" in result


_NAME_COLUMN = {True: "named on train, holds on test", False: "train-best latent's name is the concept (circular)"}
_NAME_SUMMARY = {True: "relevant: named, holds on test", False: "circular naming measure (relevant)"}


def _name_cell(row: dict) -> str:
    if "name_confirmed" in row:
        if row["named_latent"] is None:
            return "no latent named so"
        return (f"{'yes' if row['name_confirmed'] else 'no'} (#{row['named_latent']}, "
                f"{_auroc(row['named_latent_test_auroc'])})")
    return "yes" if row.get("named_correctly") else "no"


def _name_summary(result: dict) -> str:
    if "relevant_named_confirmed" in result:
        return f"{result['relevant_named_confirmed']}/{result['relevant_count']}"
    return f"{result['naming_accuracy_relevant']:.2f}"


def naming_sentence(result: dict) -> str:
    """The naming result in words: names chosen on train above the naming floor, checked on test; an older result
    file holds only the circular measure, which is said for what it is."""
    if "relevant_named_confirmed" in result:
        return (f"label-relevant concepts with a name chosen on train (naming floor: train AUROC >= "
                f"{result['min_auroc']}) whose latent also reaches that floor on test: **{result['relevant_named_confirmed']} "
                f"of {result['relevant_count']}** (all {len(result['concepts'])} concepts: {result['named_confirmed_all']}; "
                f"{result['named']} of {result['alive']} alive latents named).")
    if "named_confirmed" in result:
        return (f"concepts with a name chosen on train (naming floor: train AUROC >= {result['min_auroc']}) whose "
                f"latent also reaches that floor on test: **{result['named_confirmed']} of {result['n_concepts']}** "
                f"({result['named']} of {result['alive']} alive latents named);")
    if "naming_accuracy_relevant" in result:
        return (f"this result file predates the held-out naming check: it holds only the circular measure (does the "
                f"latent with the best train AUROC for a concept carry that concept's name, itself the argmax of the same "
                f"train AUROC): {result['naming_accuracy_relevant']:.2f} of the label-relevant concepts.")
    return (f"this result file predates the held-out naming check: it holds only the circular measure (the train-best "
            f"latent's name is the concept) {result['naming_accuracy']:.2f};")


def synth_derm(result: dict) -> list[str]:
    lines = _header(result, "neuron-concepts (Concepts from Neurons) on synth-derm")
    lines += [f"Data: `{result['data']}`; label rule `{result['rule']}` (label-relevant: "
              f"{', '.join(result['label_relevant'])}).", ""]
    lines += _accuracy(result)
    s = result["sae"]
    lines += [f"SAE (ReLU + L1, published defaults, {s['n_latents']} latents): train R^2 {fmt(s['r2'])}, "
              f"test R^2 {fmt(s['test_r2'])}, L0 {s['l0']:.1f}, dead {100 * s['dead_fraction']:.1f}%; "
              f"{result['alive']} alive latents named, {result['cavs']} CAVs.", "",
              "Per ground-truth concept: the latent whose activation predicts it best on train (AUROC), scored on "
              "test; its annotation-based name; and, as a ceiling, the test AUROC of a supervised linear probe on "
              "the opaque model's features.", "",
              f"| concept | label-relevant | best latent | train AUROC | test AUROC | >= 0.9 | its name | {_NAME_COLUMN[_new(result)]} "
              "| best test AUROC of any latent | linear-probe test AUROC |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["concepts"]:
        lines.append(f"| {r['concept']} | {'yes' if r['label_relevant'] else 'no'} | {r['best_latent']} | "
                     f"{_auroc(r['train_auroc'])} | {_auroc(r['test_auroc'])} | "
                     f"{'yes' if (r['test_auroc'] or 0) >= 0.9 else 'no'} | {r['name']} | "
                     f"{_name_cell(r)} | {_auroc(r['best_test_auroc_any'])} | "
                     f"{_auroc(r['probe_test_auroc'])} |")
    lines += ["", f"Label-relevant concepts matched at AUROC >= 0.9: **{result['relevant_matched_0.9']} of "
              f"{result['relevant_count']}**; {naming_sentence(result)}",
              "", "Best latent per term of the rule (train-chosen, test AUROC): "
              + "; ".join(f"`{t['term']}` latent {t['best_latent']} {t['test_auroc']:.3f}" for t in result["rule_terms"])
              + ".", ""]
    if "term_indicator_test_auroc" in result:
        lines += ["A latent that fired exactly on a rule term, rather than on a concept, would score for the concepts "
                  "in that term (test AUROC of the term's indicator): "
                  + "; ".join(f"{name} {t['test_auroc']:.3f} (`{t['term']}`)"
                              for name, ts in result["term_indicator_test_auroc"].items() for t in ts)
                  + ".", ""]
    lines += ["SAE variants on the same cached features (`train-sae` and `name` rerun alone):", "",
              "| SAE | test R^2 | L0 | dead | fit time | " + " | ".join(r["concept"] for r in result["concepts"])
              + f" | relevant >= 0.9 | {_NAME_SUMMARY[_new(result)]} |",
              "|---|---|---|---|---|" + "---|" * len(result["concepts"]) + "---|---|",
              f"| ReLU + L1 (default) | {fmt(s['test_r2'])} | {s['l0']:.0f} | {100 * s['dead_fraction']:.0f}% | "
              f"{s['fit_time_s']:.0f} s | " + " | ".join(_auroc(r["test_auroc"]) for r in result["concepts"])
              + f" | {result['relevant_matched_0.9']}/{result['relevant_count']} | {_name_summary(result)} |"]
    for v in result["variants"]:
        lines.append(f"| {v['label']} | {fmt(v['sae']['r2'])} | {v['sae']['l0']:.0f} | "
                     f"{100 * v['sae']['dead_fraction']:.0f}% | {v['fit_time_s']:.0f} s | "
                     + " | ".join(_auroc(r["test_auroc"]) for r in v["rows"])
                     + f" | {v['relevant_matched_0.9']}/{v['relevant_count']} | {_name_summary(v)} |")
    if "pca_variance_ratio" in result:
        pca, single = result["pca_variance_ratio"], result["best_single_feature_test_auroc"]
        lines += ["", f"The opaque model's features: the first two principal components hold "
                  f"{100 * pca[0]:.1f}% and {100 * pca[1]:.1f}% of the variance (the next {100 * pca[2]:.1f}%). "
                  "Best single feature (train-chosen, either sign) per concept, test AUROC: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in single.items()) + "."]
    lines += ["", f"Wall time per stage: {_times(result['stage_wall_time_s'])}. Peak memory "
              f"{max(result['stage_peak_memory_mb'].values()) / 1024:.1f} GB.", "",
              f"Figures: {', '.join(f'`{f}`' for f in result['figures'])}.", ""]
    return lines


def wbcatt(result: dict) -> list[str]:
    lines = _header(result, "neuron-concepts (Concepts from Neurons) on WBCAtt")
    lines += _accuracy(result)
    s, r = result["sae"], result["sae_resampling"]
    lines += [f"Concepts matched by some latent at test AUROC >= 0.8 (latent chosen on train): "
              f"**{result['matched_test_auroc_0.8']} of {result['n_concepts']}** (>= 0.9: "
              f"{result['matched_test_auroc_0.9']}); {naming_sentence(result)} "
              f"{result['alive']} alive latents, {result['cavs']} CAVs, {result['selected']} selected.", "",
              "| SAE | train R^2 | test R^2 | L0 (test) | dead (train) | fit time |", "|---|---|---|---|---|---|",
              f"| ReLU + L1 ({s['n_latents']} latents) | {fmt(s['r2'])} | {fmt(s['test']['r2'])} | "
              f"{s['test']['l0']:.1f} | {100 * s['dead_fraction']:.1f}% | {s['fit_time_s']:.1f} s |",
              f"| same + resampling (`{r['command']}`; {r['resampled']} latents in {r['events']} events) | "
              f"{fmt(r['train']['r2'])} | {fmt(r['test']['r2'])} | {r['test']['l0']:.1f} | "
              f"{100 * r['train']['dead_fraction']:.1f}% | {r['fit_time_s']:.1f} s |", "",
              f"Wall time per stage: {_times(result['stage_wall_time_s'])} (SAE fit {result['sae_fit_time_s']:.1f} s, "
              f"selection {result['select_time_s']:.1f} s). Peak memory "
              f"{max(result['stage_peak_memory_mb'].values()) / 1024:.1f} GB.", "",
              "| concept | best latent | test AUROC | name |", "|---|---|---|---|"]
    for row in result["concepts"]:
        lines.append(f"| {row['concept']} | {row['best_latent']} | {_auroc(row['test_auroc'])} | {row['name']} |")
    lines += ["", "Concepts carrying the most of the predicted logit (mean |contribution| on test): "
              + "; ".join(f"{c['name']} (#{c['latent']}) {c['mean_abs_contribution']:.2f}"
                          for c in result["top_concepts"][:6]) + ".", "",
              f"Figures: {', '.join(f'`{f}`' for f in result['figures'])}.", ""]
    return lines


def _stat(stat: dict | None, digits: int = 2) -> str:
    """mean ± sd over seeds (one seed: the value)."""
    if not stat:
        return "n/a"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if stat["n"] > 1 else "")


def naming_routes(result: dict) -> list[str]:
    """The annotation-free (report) naming route against the annotation route on the same pipelines."""
    rates = result["report_rates"]
    lines = [
        "## neuron-concepts: naming without annotations (reports + vocabulary) against annotations", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
        f"Data: `{result['data']}` (one report per image from its drawn concepts: a drawn concept mentioned with "
        f"probability {rates['report_mention']}, an absent one mentioned with {rates['report_false_mention']} or "
        f"negated with {rates['report_negation']}; several phrasings per concept). Label rule `{result['rule']}` "
        f"(label-relevant: {', '.join(result['label_relevant'])}). Per seed ({', '.join(map(str, result['seeds']))}) "
        f"one opaque model ({result['config']}), encode and SAE; then the name stage on that SAE: from the "
        f"annotations, and from the vocabulary `{result['vocabulary']}` ranked by enrichment in the reports of each "
        f"latent's {result['vocabulary_top_n']} top train images (its `term => concept` lines only score the "
        "names)"
        + (", once at the given naming.min_z and once (vocabulary-val-floor) with naming.min_z chosen on the "
           "validation split (the floor of naming.min_z_grid with the highest F1 of \"named on train and holds on "
           "val\"; the val annotations serve that choice only)" if "vocabulary-val-floor" in result["summary"]
           else "")
        + "; cav, select and train-cbm after each."
        + (f" Config overrides: `{' '.join(result['overrides'])}`." if result.get("overrides") else ""), "",
        "| route | latents named | label-relevant concepts named | ... confirmed on test | all concepts confirmed on "
        f"test | label-relevant concepts recovered (best latent test AUROC >= {result['recovered_threshold']}) | "
        "CBM test accuracy | CBM not built |",
        "|---|---|---|---|---|---|---|---|"]
    summary = result["summary"]
    routes = [r for r in ("annotations", "vocabulary", "vocabulary-val-floor") if summary.get(r)]
    for route in routes:
        s = summary.get(route)
        if not s:
            continue
        n = s["relevant_count"]
        lines.append(f"| {route} | {_stat(s['named'], 1)} | {_stat(s['relevant_named'], 2)} of {n} | "
                     f"{_stat(s['relevant_named_confirmed'], 2)} of {n} | {_stat(s['concepts_named_confirmed'], 2)} "
                     f"of {len(s['times_named_confirmed'])} | {_stat(s['relevant_recovered'], 2)} of {n} | "
                     f"{_stat(s['cbm_test_accuracy'], 3)} | {s['cbm_not_built']} of {len(result['seeds'])} |")
    lines += ["", f"Opaque test accuracy: {_stat(summary.get('opaque_test_accuracy'), 3)}. A concept is *confirmed* "
              "when the latent named after it that has the highest train AUROC for it (a vocabulary term counts as "
              "the concept it stands for) reaches the naming floor's AUROC on test; *recovered* does not look at "
              "names (one SAE per seed, so it is the same for every route).", "",
              f"Per seed and concept, the train-chosen named latent's test AUROC (route: {' / '.join(routes)}; "
              "- where no latent carries the name):", "",
              "| seed | " + " | ".join(result["label_relevant"]) + " |", "|---|" + "---|" * len(result["label_relevant"])]
    for run in result["runs"]:
        cells = []
        for concept in result["label_relevant"]:
            parts = []
            for route in routes:
                row = next((r for r in run["routes"].get(route, {}).get("concept_naming_test", [])
                            if r["concept"] == concept), None)
                parts.append("-" if not row or row["check_auroc"] is None else f"{row['check_auroc']:.3f}")
            cells.append(" / ".join(parts))
        lines.append(f"| {run['seed']} | " + " | ".join(cells) + " |")
    chosen = [(run["seed"], run["routes"]["vocabulary-val-floor"]) for run in result["runs"]
              if run["routes"].get("vocabulary-val-floor", {}).get("floors_val")]
    if chosen:
        lines += ["", "naming.min_z chosen on validation (vocabulary-val-floor; given floor of the vocabulary route: "
                  f"{_given_min_z(result)}), with the F1 of \"named on train and holds on val\" at that floor and "
                  "the latents it names:", "",
                  "| seed | chosen min_z | val F1 | latents named | candidates (named at no floor) | their names "
                  "that hold on val |", "|---|---|---|---|---|---|"]
        for seed, r in chosen:
            f = r["floors_val"]["vocabulary"]
            row = next(g for g in f["grid"] if g["floor"] == f["chosen"])
            lines.append(f"| {seed} | {f['chosen']} | {row['f1']:.3f} | {r['named']} | {f['candidates']} | "
                         f"{f['holding']} |")
    return [*lines, ""]


def _given_min_z(result: dict) -> str:
    """The min_z the vocabulary route ran at (the same on every seed, or each seed's)."""
    values = sorted({run["routes"]["vocabulary"].get("min_z") for run in result["runs"]
                     if "vocabulary" in run["routes"]} - {None})
    return ", ".join(str(v) for v in values) or "not recorded"


RENDERERS = {"neuron_concepts_synth_derm": synth_derm, "neuron_concepts_wbcatt": wbcatt,
             "neuron_concepts_naming": naming_routes}
