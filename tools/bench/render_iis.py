"""Markdown sections of the IIS benchmarks (docs/bench/iis_*.json), discovered by report.py."""

from __future__ import annotations

from common import fmt, machine_line

from iis.sweep import SATURATION_IIS

TITLES = {"prototype": "Prototype concepts (M = 200)",
          "text": "Text concepts scored by the ground-truth concept annotations (Label-free CBM projection)",
          "prototype-raw-probe": "Prototype concepts, probe on raw features as in the official code (for comparison)"}


def _interval(values) -> str:
    return "n/a" if values is None or values[0] is None else f"[{values[0]:.3f}, {values[1]:.3f}]"


def _score_table(run: dict) -> list[str]:
    ratios = run["ratios"]
    lines = ["| backbone | M | probe test acc | bias-only ARR | " + " | ".join(f"ARR@{s:g}" for s in ratios)
             + " | IIS [95% CI] | IIS - first [95% CI] |",
             "|---|---|---|---|" + "---|" * len(ratios) + "---|---|"]
    for b in run["backbones"]:
        diff = "-" if b["difference"] is None else f"{b['difference']:+.3f} {_interval(b['difference_ci'])}"
        lines.append(f"| {b['label']} | {b['num_concepts']} | {fmt(b['probe']['test_accuracy'])} | "
                     f"{bias_only_arr(b)} | " + " | ".join(fmt(p["arr"]) for p in b["per_ratio"])
                     + f" | **{b['iis']:.3f}**{saturated_mark(b)} {_interval(b['iis_ci'])} | {diff} |")
    lines += ["", BIAS_ONLY_NOTE]
    return lines


#: the legend of the bias-only column and the saturation mark (iis.sweep.SATURATION_IIS)
BIAS_ONLY_NOTE = ("Bias-only ARR: the test accuracy of always predicting the training split's majority class, over "
                  "the probe's (n/a: a run from before it was recorded). (saturated): IIS >= "
                  f"{SATURATION_IIS}, where the score no longer separates representations.")


def bias_only_arr(backbone: dict) -> str:
    bias = (backbone.get("bias_only") or {}).get("arr")
    return "n/a" if bias is None else fmt(bias)


def saturated_mark(backbone: dict) -> str:
    return " (saturated)" if backbone["iis"] >= SATURATION_IIS else ""


def iis_pair(result: dict, library: str) -> str | None:
    """'IIS of the first backbone vs the second (paired difference)' of one library's run, for the summary."""
    run = result.get("runs", {}).get(library)
    if not run or len(run["backbones"]) < 2:
        return None
    a, b = run["backbones"][:2]
    return (f"{a['iis']:.3f} {_interval(a['iis_ci'])} vs {b['iis']:.3f} {_interval(b['iis_ci'])} "
            f"(difference {b['difference']:+.3f} {_interval(b['difference_ci'])})")


def _timings(run: dict) -> str:
    parts = []
    for b in run["backbones"]:
        t = b["timings"]
        stages = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s" for k, v in t.items() if k != "total_s")
        cached = "cached" if all(b["cached_features"].values()) else "extracted"
        parts.append(f"{b['label']}: {stages} (image features {cached})")
    shared = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in run["shared_timings"].items())
    return ("; ".join(parts) + (f"; shared: {shared}" if shared else "")
            + f". Whole `iis score`: {run['wall_time_s'] / 60:.1f} min, peak memory {run['peak_memory_mb'] / 1024:.1f} GB.")


def _section(result: dict, title: str, data_line: str) -> list[str]:
    b = result["baseline_test"]
    lines = [f"## {title}", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
             data_line,
             f"Trained backbone: run `{result['baseline_run']}` of `{result['baseline_command']}` (the settings of "
             f"`{result['baseline_config_command']}`; test accuracy {fmt(b['accuracy'])}, "
             f"{result['baseline_wall_time_s'] / 60:.1f} min). The random backbone is the same architecture at a "
             "seeded random initialisation with every residual branch active.", ""]
    for name, run in result["runs"].items():
        lines += [f"**{TITLES.get(name, name + ' concepts')}** (`{result['iis_commands'][name]}`):", ""]
        lines += _score_table(run)
        lines.append("")
        if name == "text":
            for b in run["backbones"]:
                lib = b["library"]
                dropped = lib["interpretability_filter"]["dropped"]
                duplicates = lib.get("duplicate_filter")  # result files from before the filter have none
                dup_step = ""
                if duplicates is not None:
                    kept = lib["activation_filter"]["kept"] - len(duplicates["dropped"])
                    dup_step = (f" -> {kept} after the duplicate filter (|r| >= {duplicates['min_abs_correlation']} "
                                "with an earlier phrase: " + (", ".join(
                                    f"{k} ~ {v['duplicate_of']} (r = {v['correlation']:.2f})"
                                    for k, v in duplicates["dropped"].items()) or "none") + ")")
                lines.append(f"- {b['label']}: {lib['phrases']} phrases -> {lib['activation_filter']['kept']} after the "
                             f"top-5 activation filter{dup_step} -> {lib['final']} after the interpretability filter "
                             f"(validation cos^3 > {lib['interpretability_filter']['cutoff']})"
                             + ("; dropped: " + ", ".join(f"{k} ({v:.2f})" for k, v in dropped.items()) if dropped
                                else ""))
        if run.get("figure"):
            lines.append(f"- figure: `{run['figure']}`")
        if run.get("explain"):
            e = run["explain"]
            lines += [f"- one test image explained (`{e['command']}`, figure `{e['figure']}`):", "",
                      "```", *e["output"], "```"]
        lines += [f"- wall time: {_timings(run)}", ""]
    return lines


def iis_synth_derm(result: dict) -> list[str]:
    return _section(result, "IIS on synth-derm: trained vs random resnet18",
                    f"Data: `{result['data_command']}` (train / val / test 70 / 15 / 15 %; concepts are extracted from "
                    "train, heads selected on val, everything reported on test).")


def iis_wbcatt(result: dict) -> list[str]:
    lines = _section(result, "IIS on WBCAtt: trained vs random resnet18",
                     "Data: `../shared/data/wbcatt` (official split 6169 / 1030 / 3099; concepts from train, heads "
                     "selected on val, reported on test).")
    lines += ["![ARR on WBCAtt](figures/iis/wbcatt_arr_prototype.png)", ""]
    return lines


RENDERERS = {"iis_synth_derm": iis_synth_derm, "iis_wbcatt": iis_wbcatt}
