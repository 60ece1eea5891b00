"""The benchmark's run folder: benchmark.json, benchmark.md, index.html and figures/example_maps.png.

- `benchmark.json`: every number (per seed, per explainer, per protocol: value and bootstrap interval, the images'
  values, the sanity check's steps), the summary over seeds, the config, the seeds, torch's thread count and the
  libraries' versions. NaN (undefined) is written as null.
- `benchmark.md`: the tables, mean ± sd over seeds: explainer x map protocol with the share of seeds whose sanity
  check passed (`markdown_table`), concept x TCAV, probe and CRL concept-head AUROC (`concept_rows`), rule model x
  rule protocol (`rules_rows`) and, when run, explainer x data randomisation (`data_randomisation_rows`).
- `index.html`: the same table and the figure on one self-contained page (medimg_core.report's page helpers:
  every text escaped, the figure embedded only if it is a regular file inside the run folder).
- `figures/example_maps.png`: each explainer's map on one scored test image of the first seed, with the ground-truth
  mask's outline (medimg_core.figures.overlay_grid).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medimg_benchmark.maps import PROTOCOLS

FIGURE = "figures/example_maps.png"


def fmt_mean_sd(cell: dict[str, Any]) -> str:
    """"0.812 ± 0.034" from {"mean", "sd"}; "n/a" for an undefined mean; "0.812 ± n/a" with one seed."""
    mean, sd = cell.get("mean"), cell.get("sd")
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None and math.isfinite(sd) else f"{mean:.3f} ± n/a"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the summary table: explainer, each protocol (mean ± sd), sanity passed (k/n seeds)."""
    header = ["explainer", *[f"{label} ({'↑' if better == 'higher' else '↓'})" for label, better in PROTOCOLS.values()],
              "sanity check passed (seeds)"]
    rows = []
    for name, row in result["summary"].items():
        passes = row["sanity_passes"]
        rows.append([name, *[fmt_mean_sd(row[p]) for p in PROTOCOLS], f"{sum(passes)}/{len(passes)}"])
    return header, rows


def markdown_table(result: dict[str, Any]) -> str:
    return _markdown(*table_rows(result))


def concept_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the TCAV table: concept, in the rule, mean TCAV score ± sd over seeds, significant in
    how many seeds."""
    summary = result["concept_summary"]["per_concept"]
    header = ["concept", "in the rule", "TCAV score for malignant (mean ± sd over seeds)", "significant (seeds)",
              "linear probe test AUROC (mean ± sd over seeds)", "CRL concept head test AUROC (mean ± sd over seeds)"]
    rows = [[name, "yes" if row["in_rule"] else "no", fmt_mean_sd({"mean": row["tcav_mean"], "sd": row["tcav_sd"]}),
             f"{row['significant_seeds']}/{row['n_seeds']}",
             fmt_mean_sd({"mean": row["probe_auroc_mean"], "sd": row["probe_auroc_sd"]}),
             fmt_mean_sd({"mean": row["crl_auroc_mean"], "sd": row["crl_auroc_sd"]})]
            for name, row in summary.items()]
    return header, rows


def rules_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the rules table: model, truth-table agreement with the generating rule, test accuracy,
    agreement with CRL's network on test, size (what it counts) and literals, mean ± sd over seeds."""
    header = ["model", "truth-table agreement with the generating rule (↑)", "test accuracy (↑)",
              "agreement with CRL's network on test (fidelity, ↑)", "size (↓)", "size counts", "literals (↓)"]
    rows = [[result["rules_models"][name], fmt_mean_sd(row["truth_table"]), fmt_mean_sd(row["test_accuracy"]),
             fmt_mean_sd(row["fidelity"]), fmt_mean_sd(row["size"]), row["size_unit"], fmt_mean_sd(row["literals"])]
            for name, row in result["rules_summary"].items()]
    return header, rows


def rules_line(result: dict[str, Any]) -> str:
    """What the rules table shows: the models, the rows of the truth table, the concepts they read."""
    first = result["seeds"][0]["crl"]
    table = next(iter(first["rules"].values()))["truth_table"]
    accuracy = ", ".join(f"{s['crl']['test_accuracy']:.3f}" for s in result["seeds"])
    depth = first["rules"]["decision_tree"]["max_depth"]
    return (f"Rules: CRL ({first['preset']}; its network's test accuracy per seed: {accuracy}) trained on the same "
            f"data and seeds; its rule set, its compact rule for malignant, and two plain baselines fitted on its "
            f"predicted training concepts (decision tree of depth at most {depth}; logistic regression, L2, C = 1, "
            f"malignant where its probability is above 0.5). Truth-table agreement (ours): the share of the "
            f"{table['rows']} assignments of the rule's concepts ({', '.join(table['variables'])}; the other "
            f"concepts at {table['others_fixed_at']}) on which the model predicts malignant exactly where the "
            f"generating rule does. Fidelity: agreement with CRL's network's class on the test images (Craven & "
            f"Shavlik 1996); 95% bootstrap intervals over test images in benchmark.json. Concept AUROCs of CRL's "
            f"head are in the concepts table.")


def data_randomisation_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the data randomisation table, or None when it was not run."""
    summary = result.get("data_randomisation_summary")
    if not summary:
        return None
    header = ["explainer", "Spearman of |maps|, true vs permuted-label model (↓)", "SSIM (↓)",
              "passed (seeds)"]
    rows = [[name, fmt_mean_sd(row["spearman_abs"]), fmt_mean_sd(row["ssim"]),
             f"{sum(row['passes'])}/{len(row['passes'])}"] for name, row in summary["explainers"].items()]
    return header, rows


def data_randomisation_line(result: dict[str, Any]) -> str:
    summary = result["data_randomisation_summary"]
    accuracy = ", ".join(f"{a:.3f}" for a in summary["permuted_model_test_accuracy"])
    return ("Data randomisation (Adebayo et al. 2018, section 4): the baseline retrained per seed on permuted labels "
            f"(its test accuracy against the true labels: {accuracy}); each explainer's maps of it compared with "
            f"those of the true model on the same images; passed when the mean Spearman of |maps| is below "
            f"{_threshold(result)} (ours).")


def concept_line(result: dict[str, Any]) -> str:
    """What the TCAV table shows, from its numbers."""
    c = result["concept_summary"]
    first = result["seeds"][0]["concepts"]
    return (f"Concepts (TCAV, Kim et al. 2018) on layer {first['layer']}: {first['n_concept']} images per concept and "
            f"per random set, {first['n_random']} random sets, up to {first['class_images']} malignant test images; "
            f"t-test against random concepts, Bonferroni over the {c['others_tested'] + c['rule_total']} concepts. "
            f"Rule concepts found (significant, score > 0.5) per seed: {c['rule_found']} of {c['rule_total']}; "
            f"other concepts flagged significant per seed: {c['others_flagged']} of {c['others_tested']}.")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def _about(result: dict[str, Any]) -> list[str]:
    cfg = result["config"]
    seeds = result["seeds"]
    scored = ", ".join(f"seed {s['seed']}: {s['scored_images']} ({s['selection']}), test accuracy "
                       f"{s['test_accuracy']:.3f}" for s in seeds)
    return [
        f"{result['benchmark']}. Model: the medimg-core baseline ({cfg['preset']}, {cfg['epochs']} epochs) trained "
        f"per seed on {cfg['n_images']} {result['generator']} images at {cfg['image_size']} px (data seeds "
        f"{[s['data_seed'] for s in seeds]}, model seeds {cfg['seeds']}). Rule: {seeds[0]['rule']}.",
        "Maps of the class 'malignant' are scored against the union of the masks of the rule's concepts present "
        f"in each image. Images scored per seed: {scored}. Sanity check on the first {cfg['sanity_images']} of them.",
        "Cells: mean ± sd over seeds of each seed's mean over images (its 95% bootstrap interval over images is in "
        "benchmark.json). Sanity: Spearman correlation of |maps| before and after cascading randomisation of every "
        f"block; passed when below {_threshold(result)} (ours). '{result['reference_explainer']}' is the image's "
        "own gradient magnitude, independent of the model: it must fail the sanity check.",
        f"torch threads: {result['torch_threads']}; wall time {result['seconds']:.0f} s"
        f"{'; --quick budget (CI-sized, not for reporting)' if cfg['quick'] else ''}.",
        "Not yet in this version: neuron-concepts latents' recovery AUROC, intervention curves, prototypes, "
        "counterfactuals, harder synthetic settings, CIPL's class maps.",
    ]


def _threshold(result: dict[str, Any]) -> float:
    first = result["seeds"][0]["explainers"]
    return next(iter(first.values()))["sanity_threshold"]


def write_figure(figure: dict[str, Any], path: Path) -> Path:
    """Each explainer's map of the first scored image (`figure`: "maps" {name: (n, H, W)}, "display" (n, H, W, 3)
    uint8, "masks" (n, H, W), "seed", "id"), with the ground truth's outline."""
    from medimg_core.figures import overlay_grid

    names = list(figure["maps"])
    image, mask = figure["display"][0], figure["masks"][0]
    return overlay_grid([image] * len(names), [figure["maps"][n][0] for n in names], names, path,
                        contours=[mask.astype(np.uint8)] * len(names), contour_names=["rule concepts' masks"],
                        ncols=4, title=f"{figure['id']} (seed {figure['seed']}), class malignant")


def write_outputs(result: dict[str, Any], run_dir: str | Path, figure: dict[str, Any] | None = None) -> Path:
    """Write benchmark.json, benchmark.md, index.html (and the figure when given) into `run_dir`."""
    from medimg_core.explain import jsonable
    from medimg_core.report import embedded_figure, html_page, write_page

    run_dir = Path(run_dir)
    if figure is not None:
        write_figure(figure, run_dir / FIGURE)
    tmp = run_dir / f".benchmark.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
    os.replace(tmp, run_dir / "benchmark.json")
    about = _about(result)
    concepts = concept_line(result)
    sections = [(None, table_rows(result)), (concepts, concept_rows(result)), (rules_line(result), rules_rows(result))]
    permuted = data_randomisation_rows(result)
    if permuted is not None:
        sections.append((data_randomisation_line(result), permuted))
    text = "# medimg benchmark\n\n" + "\n\n".join(about)
    body = ["<h1>medimg benchmark</h1>", *(f"<p>{html.escape(p)}</p>" for p in about)]
    for line, table in sections:
        text += ("" if line is None else "\n\n" + line) + "\n\n" + _markdown(*table)
        body += ([] if line is None else [f"<p>{html.escape(line)}</p>"]) + [_html_table(*table)]
    (run_dir / "benchmark.md").write_text(text + "\n")
    fig = embedded_figure(run_dir, FIGURE, "each explainer's map on one test image; outline: ground truth")
    body.append(fig if fig is not None else "<p>No figure.</p>")
    write_page(html_page("medimg benchmark", body), run_dir / "index.html")
    return run_dir
