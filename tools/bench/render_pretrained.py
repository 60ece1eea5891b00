"""Markdown of the scratch-against-ImageNet comparisons (discovered by report.py).

One section, rendered once from docs/bench/pretrained.json (tools/bench/pretrained.py); the neuron-concepts,
IIS and CIPL synth-cxr comparisons of their own scripts are added to it from their result files. Sentences
here state what the numbers are; what they mean is left to the package READMEs.
"""

from __future__ import annotations

import json
import re

from common import RESULTS, fmt, machine_line
from render_cipl import mean_sd_text
from render_iis import BIAS_ONLY_NOTE, bias_only_arr, saturated_mark

ARM_LABEL = {"scratch": "from scratch", "imagenet-lite0": "ImageNet (imagenet-lite0)"}
#: arms of one benchmark only (pretrained.py), not expected of the others
EXTRA_ARM_LABEL = {"imagenet-lite0-lr3e-4": "ImageNet (imagenet-lite0), lr 3e-4"}


def _ms(stat: dict | None, digits: int = 3) -> str:
    """mean ± sd (min-max), or the value and "(1 seed)" where there is one run."""
    if stat and stat.get("n", 1) == 1:
        return f"{stat['mean']:.{digits}f} (1 seed)"
    return mean_sd_text(stat, digits)


def _gb(stat: dict | None) -> str:
    return "n/a" if not stat else f"{stat['max'] / 1024:.1f} GB"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _label(arm: str) -> str:
    return ARM_LABEL.get(arm) or EXTRA_ARM_LABEL.get(arm, arm)


def _monitor(bench: dict) -> str:
    """The checkpoint-selection metric of a benchmark's runs (their `monitor`, e.g. val/accuracy)."""
    monitors = {r.get("monitor") for a in bench["arms"].values() for r in a["runs"].values() if r.get("monitor")}
    return "/".join(sorted(m.split("/", 1)[-1].replace("_", " ") for m in monitors)) or "value"


def _interval(numbers: dict, key: str) -> str:
    value, interval = numbers.get(key), numbers.get(f"{key}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


#: result files written before CRL's published concept metrics stored these under the published names
_OLD_CONCEPT_LABELS = {"concept_macro_f1": "concept positive f1 mean", "concept_accuracy": "concept accuracy pooled"}


def _metric_label(metric: str, metrics: list[str]) -> str:
    """A column's header: the metric's name, or what an older result file's concept key really holds."""
    if metric in _OLD_CONCEPT_LABELS and "concept_positive_f1_mean" not in metrics:
        return _OLD_CONCEPT_LABELS[metric]
    return {"concept_macro_f1": "concept macro f1 (published)",
            "concept_accuracy": "concept accuracy (published)"}.get(metric, metric.replace("_", " "))


def _compact_lines(runs: list[dict]) -> list[str]:
    """The compact rules of CRL runs (`crl evaluate`): per class, the rules that argue for it (prefix mode) or the
    formula's literals (exact mode), and the one-vs-rest fidelity to the network on test."""
    found = [r for r in runs if r.get("compact")]
    if not found:
        return []
    lines = []
    for r in found:
        c = r["compact"]
        made = ", condensed by `crl evaluate` (the run predates compact rules)" if c["computed_now"] else ""
        if c["method"] == "prefix":
            head = (f"the {c['prefix_rules']} most important rules (fidelity train {c['fidelity_train']:.3f}, "
                    f"test {c['fidelity_test']:.3f})")
            per_class = "; ".join(f"{e['class']} {e['rules']} rules, {e['literals']} literals, test "
                                  f"{e['fidelity_test']:.3f}" for e in c["per_class"])
        else:
            head = "exact formulas"
            per_class = "; ".join(f"{e['class']} {e['literals']} literals, test {e['fidelity_test']:.3f}"
                                  for e in c["per_class"])
        lines.append(f"  - compact rules of seed {r['seed']}{made}: {head}; per class (rules for it, their literals, "
                     f"one-vs-rest test fidelity): {per_class}")
    return lines


def single_command(result: dict) -> list[str]:
    lines = ["## From scratch against ImageNet weights (imagenet-lite0)", "",
             f"Last written: {result['date']}. Machine: {machine_line(result['machine'])}. Command: "
             "`python tools/bench/pretrained.py`, run in parts (`--only BENCH --arms ARM --seeds ...`); every run's "
             "own command, with its seed, is listed under its table (plus the scripts named in each part below).", "",
             "Same data and splits in both arms. *From scratch*: the earlier benchmark's command (resnet18 from random "
             "weights). *ImageNet*: the `*-lite0-cpu` preset, EfficientNet-Lite0 (4.7 M parameters) fine-tuned from "
             "the offline ImageNet weights (`medimg weights`). Numbers: mean ± sd (min-max) over the seeds; every "
             "run's test value with its 95% bootstrap interval is listed under each table.", ""]
    lite0 = [r for bench in result["benches"].values()
             for r in bench["arms"].get("imagenet-lite0", {}).get("runs", {}).values()]
    if lite0:
        loaded = [r for r in lite0 if _under_load(r)]
        lines += [f"The ImageNet arms of the tables below: {len(lite0)} runs, "
                  f"{sum(r['wall_time_s'] for r in lite0) / 60:.0f} min of wall time in all, of which "
                  f"{sum(r['wall_time_s'] for r in loaded) / 60:.0f} min in {len(loaded)} runs measured with other "
                  "work on the machine (upper bounds); alone: "
                  f"{sum(r['wall_time_s'] for r in lite0 if not _under_load(r)) / 60:.0f} min for the other "
                  f"{len(lite0) - len(loaded)} runs.", ""]
    for name, bench in result["benches"].items():
        metrics = bench["metrics"]
        missing = [ARM_LABEL[a] for a in ARM_LABEL if not bench["arms"].get(a, {}).get("runs")]
        lines += [f"### {name}", "",
                  "| arm | backbone | seeds | " + " | ".join(_metric_label(m, metrics) for m in metrics)
                  + f" | best validation {_monitor(bench)} (selection) | wall time | peak memory |",
                  "|---|---|---|" + "---|" * len(metrics) + "---|---|---|"]
        for arm, record in bench["arms"].items():
            runs = sorted(record["runs"].values(), key=lambda r: r["seed"])
            if not runs:
                continue
            summ = record["summary"]
            digits = {m: 1 if m == "rules" else 3 for m in metrics}
            wall, mem = summ["wall_time_s"], summ["peak_memory_mb"]
            best_val = _ms(summ["best_val"]) if summ.get("best_val") else "n/a"
            lines.append(f"| {_label(arm)} | {runs[0]['backbone']} | {record['seeds']} | "
                         + " | ".join(_ms(summ.get(m), digits[m]) for m in metrics)
                         + f" | {best_val} | {wall['mean'] / 60:.1f} min | {mem['max'] / 1024:.1f} GB |")
        lines.append("")
        for arm, record in bench["arms"].items():
            runs = sorted(record["runs"].values(), key=lambda r: r["seed"])
            if not runs:
                continue
            first = metrics[0]
            per_seed = "; ".join(f"seed {r['seed']} {_interval(r['numbers'], first)}" for r in runs)
            lines.append(f"- {_label(arm)}: `{record['command']}`; test {first.replace('_', ' ')} "
                         f"per seed: {per_seed}")
            evaluated = [r for r in runs if r.get("concept_evaluation")]
            if evaluated:
                example = evaluated[0]["concept_evaluation"]["command"]
                lines.append(f"  - published concept metrics of seed(s) {', '.join(str(r['seed']) for r in evaluated)} "
                             f"(trained before they were computed): `crl evaluate` on the run's best checkpoint and "
                             f"test split, e.g. `{example}`")
            lines += _compact_lines(runs)
            loaded = [r for r in runs if _under_load(r)]
            if loaded:
                lines.append(f"- Wall times of seed(s) {', '.join(str(r['seed']) for r in loaded)} were measured "
                             "with other work on the machine (1-minute load average after the run: "
                             + ", ".join(f"{r['load_average_after'][0]:.1f}" for r in loaded)
                             + f" on {runs[0]['machine']['cores']} cores): read them as upper bounds.")
        if missing:
            lines.append(f"- Not run yet by this script: {', '.join(missing)} (`--arms`); the earlier single-seed "
                         "benchmarks of these data are in the sections below.")
        lines.append("")
    lines += neuron_concepts() + iis() + cipl_synth_cxr()
    return lines


def neuron_concepts() -> list[str]:
    result = _load("neuron_concepts_pretrained")
    if not result:
        return []
    lines = ["### neuron-concepts: which concepts get a latent of their own", "",
             f"Last written: {result['date']}. Command: `python tools/bench/neuron_concepts_pretrained.py --dataset D "
             "--arms ARM`, one invocation per dataset and arm (one `neuron-concepts run` per arm and seed, listed "
             "below). "
             "A concept is matched when the latent chosen on train (highest AUROC for it) reaches test AUROC >= 0.9; "
             "the linear probe (logistic regression on the opaque model's pooled features, test AUROC) bounds what "
             "any linear latent could reach.", ""]
    for dataset, entry in result["datasets"].items():
        relevant = entry.get("relevant")
        scope = f"the rule's concepts ({', '.join(relevant)})" if relevant else "all annotated concepts"
        lines += [f"{dataset} (data: `{entry['data']}`), scored over {scope}:", "",
                  "| arm | preset | seeds | matched at 0.9 (per seed) | matched at 0.8 | latents named (per seed) | "
                  "opaque test accuracy | CBM test accuracy | wall time | peak memory |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for arm, record in entry["arms"].items():
            runs = sorted(record["runs"].values(), key=lambda r: r["seed"])
            if not runs:
                continue
            summ = record["summary"]
            per_seed = ", ".join(str(len(r["matched_0.9"])) for r in runs)
            named = ", ".join("?" if r.get("named") is None else str(r["named"]) for r in runs)
            not_built = sum(r["cbm_test_accuracy"] is None for r in runs)
            cbm = ("not built" if not_built == len(runs) else _ms(summ["cbm_test_accuracy"])
                   + (f" ({not_built} of {len(runs)} seeds not built)" if not_built else ""))
            lines.append(f"| {ARM_LABEL.get(arm, arm)} | `{record['preset']}` | {record['seeds']} | "
                         f"{_ms(summ['matched_0.9'], 2)} ({per_seed} of {len(runs[0]['scored'])}) | "
                         f"{_ms(summ['matched_0.8'], 2)} | {named} | {_ms(summ['opaque_test_accuracy'])} | "
                         f"{cbm} | {summ['wall_time_s']['mean'] / 60:.1f} min | "
                         f"{_gb(summ.get('peak_memory_mb'))} |")
        missing = [ARM_LABEL[a] for a in ARM_LABEL if not entry["arms"].get(a, {}).get("runs")]
        if missing:
            lines.append(f"Not run yet by this script: {', '.join(missing)}; the earlier single-seed benchmark is in "
                         f"the neuron-concepts {dataset} section of this page.")
        lines.append("")
        if relevant:
            lines += ["| arm | concept | best latent's test AUROC | matched (seeds) | linear probe test AUROC |",
                      "|---|---|---|---|---|"]
            for arm, record in entry["arms"].items():
                summ = record.get("summary") or {}
                for concept in relevant:
                    if concept not in summ.get("per_concept_test_auroc", {}):
                        continue
                    probe = (summ.get("probe_test_auroc") or {}).get(concept)
                    lines.append(f"| {ARM_LABEL.get(arm, arm)} | {concept} | "
                                 f"{_ms(summ['per_concept_test_auroc'][concept])} | "
                                 f"{summ['times_matched_0.9'][concept]} of {len(record['seeds'])} | {_ms(probe)} |")
            lines.append("")
        for arm, record in entry["arms"].items():
            if record["runs"]:
                first = min(record["runs"].values(), key=lambda r: r["seed"])
                lines.append(f"- {ARM_LABEL.get(arm, arm)}: `{first['command']}`")
                ordered = sorted(record["runs"].values(), key=lambda r: r["seed"])
                failed = [r for r in ordered if r.get("failure")]
                if failed:
                    best = [re.search(r"best annotation score, ([0-9.]+)", r["failure"]) for r in failed]
                    lines.append(
                        f"  - seed(s) {', '.join(str(r['seed']) for r in failed)} stopped at the cav stage: no latent "
                        f"reached the naming floor (naming.min_auroc {failed[0].get('min_auroc', 'n/a')}; best "
                        "annotation train AUROC per seed "
                        + ", ".join(m.group(1) if m else "n/a" for m in best)
                        + "), so no named bottleneck was built; their concept numbers are the name stage's.")
                reused = [r for r in ordered if r.get("opaque_reused")]
                if reused:
                    lines.append(f"  - seed(s) {', '.join(str(r['seed']) for r in reused)} reused the baseline "
                                 "benchmark's opaque model (`--opaque-run`), so their wall time leaves its training out.")
        lines.append("")
    return lines


def iis() -> list[str]:
    result = _load("iis_pretrained")
    if not result:
        return []
    lines = ["### IIS of four EfficientNet-Lite0 representations", "",
             f"Last written: {result['date']}. Command: `python tools/bench/iis_pretrained.py --dataset D --seed S`, "
             "one invocation per dataset (its date and seed are given with its table). Prototype library (M = 200), the paper's "
             "sparsity grid; IIS with its bootstrap interval and the difference from the random representation.", ""]
    for dataset, entry in result["datasets"].items():
        trained = entry["trained"]
        when = f"run {entry['date']}" if entry.get("date") else "date not recorded"
        lines += [f"{dataset} (seed {entry['seed']}, {when}):", "",
                  "| representation | probe test accuracy | bias-only ARR | IIS [95% CI] | IIS - random [95% CI] | "
                  "task test accuracy |", "|---|---|---|---|---|---|"]
        task = {"scratch (trained on the task)": trained.get("scratch"),
                "ImageNet, fine-tuned on the task": trained.get("fine-tuned")}
        for i, b in enumerate(entry["backbones"]):
            diff = "" if i == 0 else (f"{b['difference']:+.3f} [{b['difference_ci'][0]:+.3f}, "
                                      f"{b['difference_ci'][1]:+.3f}]")
            t = task.get(b["representation"])
            acc = (f"{t['test_accuracy']:.3f} [{t['test_accuracy_ci'][0]:.3f}, {t['test_accuracy_ci'][1]:.3f}]"
                   if t and t.get("test_accuracy_ci") else "-")
            lines.append(f"| {b['representation']} | {fmt(b['probe'].get('test_accuracy'))} | {bias_only_arr(b)} | "
                         f"{b['iis']:.3f}{saturated_mark(b)} [{b['iis_ci'][0]:.3f}, {b['iis_ci'][1]:.3f}] | {diff} | "
                         f"{acc} |")
        lines += ["", BIAS_ONLY_NOTE, "", f"- IIS: `{entry['iis_command']}` ({entry['iis_wall_time_s'] / 60:.1f} min, peak memory "
                      f"{entry['peak_memory_mb'] / 1024:.1f} GB)"]
        for kind, t in trained.items():
            note = f", reused from `{t['reused_from']}`" if t.get("reused_from") else ""
            lines.append(f"- {kind}: `{t['command']}` ({t['wall_time_s'] / 60:.1f} min{note})")
        lines.append("")
    return lines


def cipl_synth_cxr() -> list[str]:
    lite0, scratch = _load("cipl_synth_cxr_lite0"), _load("cipl_synth_cxr")
    if not lite0:
        return []
    lines = ["### CIPL on synth-cxr: localisation", "",
             f"Date: {lite0['date']}. Command: `OMP_NUM_THREADS={lite0.get('threads')} {lite0['command']}`; the "
             "scratch arm is the CIPL synth-cxr section below. Pointing game of the weighted class map over detected "
             "test findings, as there.", "",
             "| arm | backbone | seeds | CIPL mean AUROC | baseline mean AUROC | pointing game | per seed | IoU | "
             "CIPL wall time | peak memory |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in (("from scratch", scratch), ("ImageNet (imagenet-lite0)", lite0)):
        if not r:
            continue
        s = r["summary"]
        per_seed = ", ".join(fmt(run["cipl"]["localisation"].get("pointing_game")) for run in r["runs"])
        wall = sum(run["cipl"]["wall_time_s"] for run in r["runs"]) / len(r["runs"]) / 60
        peak = max(run["cipl"]["peak_memory_mb"] for run in r["runs"]) / 1024
        lines.append(f"| {label} | {r['preset']['backbone']} | {r['seeds']} | {_ms(s['cipl_auroc'])} | "
                     f"{_ms(s['baseline_auroc'])} | {_ms(s['pointing_game'])} | {per_seed} | {_ms(s['iou'])} | "
                     f"{wall:.1f} min | {peak:.1f} GB |")
    return [*lines, ""]


RENDERERS = {"pretrained": single_command, "neuron_concepts_pretrained": lambda r: [],
             "iis_pretrained": lambda r: [], "cipl_synth_cxr_lite0": lambda r: []}


def _under_load(run: dict) -> bool:
    """Whether the machine was busier than the run itself while it ran (its 1-minute load average after it
    exceeded the cores by more than one)."""
    load, cores = run.get("load_average_after"), run.get("machine", {}).get("cores")
    return bool(load and cores and load[0] > cores + 1)
