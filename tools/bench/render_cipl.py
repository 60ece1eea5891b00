"""Markdown sections of docs/benchmarks.md for the cipl benchmarks (discovered by report.py)."""

from __future__ import annotations

from common import ci, fmt, machine_line


def _mb(value) -> str:
    return "n/a" if value is None else f"{value / 1024:.1f} GB"


def _ceiling_note(summ: dict) -> list[str]:
    """The AUROC target is no target where both models sit at the ceiling on every seed."""
    lows = (summ["cipl_auroc"]["min"], summ["baseline_auroc"]["min"])
    if min(lows) < 0.999:
        return []
    return [f"No AUROC target: the lowest seed's mean AUROC is {lows[0]:.3f} (CIPL) and {lows[1]:.3f} (baseline), "
            "so a target of CIPL within 2 points of the baseline cannot fail on this data.", ""]


def mean_sd_text(stat: dict | None, digits: int = 3) -> str:
    """mean ± sd (min-max) of a summary statistic."""
    if not stat:
        return "n/a"
    return (f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f} ({stat['min']:.{digits}f}-"
            f"{stat['max']:.{digits}f})")


def synth_cxr(result: dict) -> list[str]:
    pre, runs, summ, targets = result["preset"], result["runs"], result["summary"], result["targets"]
    seeds = result["seeds"]
    step = runs[0]["cipl"].get("localisation_dense", {}).get("map_step")
    threads = result.get("threads")
    lines = [
        "## CIPL on synth-cxr (findings with masks): classification and localisation", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}"
        f". Command: `{f'OMP_NUM_THREADS={threads} ' if threads else ''}{result['command']}` (the thread count is "
        "part of the result: runs with other thread counts differ).", "",
        f"Data: {result['data']}. Both models: {pre['backbone']} from scratch at {pre['image_size']} px, "
        f"{pre['epochs']} epochs (CIPL: stage {pre['feature_stage']} at output stride {pre['output_stride']}, "
        f"{pre['prototypes_per_class']} prototypes x {pre['prototype_dim']} channels per class, {pre['warm_epochs']} "
        f"warm-up epochs, pushes after epochs {pre['push_epochs']}, each followed by {pre['last_layer_epochs']} "
        f"last-layer epoch(s)). Seeds {seeds}: one training of each model per seed; the same data for all.", "",
        "Pointing game: the maximum of the class map lies inside the generator's mask, over test findings present "
        "and detected (p > 0.5). The class map is the class's prototype similarity maps summed with their last-layer "
        "weights (the class logit's spatial distribution; `localisation_map: weighted`, chosen on the validation "
        "split, see the cipl README), upsampled bicubically with cells at their receptive-field centres. "
        "*top*: the map of the class's most activated prototype alone (the first row of `cipl reason`). IoU: the "
        "map min-max normalised, thresholded at 0.5, against the mask. *Cell* pointing game (a diagnostic of the "
        "grid): the feature cell holding the maximum overlaps the mask. *Prototypes on finding*: the share of a "
        "class's prototypes that the last push projected onto a feature cell overlapping that finding's mask in "
        "its source training image.", "",
        "| seed | CIPL mean AUROC [95% CI] | baseline mean AUROC [95% CI] | gap (points) | pointing game [95% CI] | "
        f"maps every {step} px | top-prototype map | cell pointing game | IoU | prototypes on finding | CIPL wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c, b = r["cipl"], r["baseline"]
        loc, dense = c["localisation"], c.get("localisation_dense", {})
        place = c.get("prototype_placement") or {}
        lines.append(
            f"| {r['seed']} | {ci(c['test'], 'auroc_mean')} | {ci(b['test'], 'auroc_mean')} | "
            f"{r['auroc_gap_points']:+.2f} | {ci(loc, 'pointing_game')} | {fmt(dense.get('pointing_game'))} | "
            f"{fmt(loc.get('top/pointing_game'))} | {fmt(loc.get('cell_pointing_game'))} | {fmt(loc.get('iou_mean'))} | "
            f"{fmt(place.get('on_finding'), 2)} | {c['wall_time_s'] / 60:.1f} min |")
    lines += [
        f"| **mean ± sd (min-max)** | {mean_sd_text(summ['cipl_auroc'])} | {mean_sd_text(summ['baseline_auroc'])} | "
        f"{mean_sd_text(summ['auroc_gap_points'], 2)} | **{mean_sd_text(summ['pointing_game'])}** | {mean_sd_text(summ['pointing_game_dense'])} | "
        f"{mean_sd_text(summ['top_pointing_game'])} | {mean_sd_text(summ['cell_pointing_game'])} | {mean_sd_text(summ['iou'])} | "
        f"{mean_sd_text(summ['prototypes_on_finding'], 2)} | - |", "",
        "Targets, judged on the means over seeds: " + "; ".join(
            f"{name}: {'met' if ok else '**NOT met**'}" for name, ok in targets.items()
            if not name.startswith("auroc_within")) + ".", "",
        *_ceiling_note(summ),
        "Per finding (mean ± sd over the seeds, min-max in brackets):", "",
        f"| finding | CIPL AUROC | baseline AUROC | pointing game | cell pointing game | misses: median px to the mask "
        f"(seeds with misses) | maps every {step} px | top-prototype map | IoU | prototypes on finding |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in summ["per_finding"].items():
        lines.append(f"| {name} | {mean_sd_text(f['cipl_auroc'])} | {mean_sd_text(f['baseline_auroc'])} | "
                     f"{mean_sd_text(f['pointing_game'], 2)} | {mean_sd_text(f.get('cell_pointing_game'), 2)} | "
                     f"{mean_sd_text(f.get('miss_distance_px'), 1)} ({(f.get('miss_distance_px') or {}).get('n', 0)}) | "
                     f"{mean_sd_text(f['pointing_game_dense'], 2)} | {mean_sd_text(f['top_pointing_game'], 2)} | {mean_sd_text(f['iou'], 2)} | "
                     f"{mean_sd_text(f['prototypes_on_finding'], 2)} |")
    first = runs[0]
    lines += [
        "",
        f"- CIPL: `{first['cipl_command']}` (each seed: `--seed S`)",
        f"- baseline: `{first['baseline_command']}`",
        f"- maps every {step} px (shift-and-stitch, `cipl.maps.dense_distance_maps`: the model run on the image "
        f"shifted by multiples of {step} px below its stride and the maps interleaved; not better than the model's own "
        f"grid on the validation split): `{first['dense_command']}`",
        f"- gallery and reasoning (seed {result['figures']['seed']}): `{result['gallery_command']}`; "
        f"`{result['reason_command']}`",
        "- wall times: " + "; ".join(f"seed {r['seed']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                                      r["stage_wall_s"].items()) for r in runs)
        + "; " + ", ".join(f"{k} {v:.0f} s" for k, v in result["stage_wall_s"].items()),
        "",
        f"![CIPL prototypes on synth-cxr]({result['figures']['gallery'].removeprefix('docs/')})", "",
    ]
    for fig in result["figures"]["reason"]:
        lines += [f"![CIPL reasoning on {result['figures']['reason_image']}]({fig.removeprefix('docs/')})", ""]
    return lines


def medmnist(result: dict) -> list[str]:
    lines = [
        "## CIPL on real data: PneumoniaMNIST, BreastMNIST (single-label) and the ChestX-ray14 table", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
        "| dataset | model | test accuracy [95% CI] | AUROC [95% CI] | macro-F1 | best epoch | wall time | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result.get("runs", {}).items():
        for label, m in (("CIPL", run["cipl"]), ("baseline", run["baseline"])):
            t = m["test"]
            lines.append(f"| {name} | {label} | {ci(t, 'accuracy')} | {ci(t, 'auroc')} | {fmt(t.get('macro_f1'))} | "
                         f"{m['best_epoch']}/{m['epochs_run']} | {m['wall_time_s'] / 60:.1f} min | "
                         f"{_mb(m['peak_memory_mb'])} |")
    lines.append("")
    for name, run in result.get("runs", {}).items():
        s = run["sizes"]
        lines.append(f"- {name} (train/val/test {s['train']}/{s['val']}/{s['test']}): CIPL `{run['cipl_command']}`; "
                     f"baseline `{run['baseline_command']}`")
    cx = result.get("chestxray14")
    if cx:
        lines += ["", f"ChestX-ray14 through CIPL's data path ({cx['command']}): label table {cx['label_table']}, "
                  f"{cx['images_found']} images on disk, {len(cx['classes'])} prototype classes (14 findings + "
                  f"{cx['classes'][-1]}); table load {cx['load_s']:.1f} s.", ""]
        for im in cx["images"]:
            lines.append(f"- {im['split']}: `{im['id']}` ({', '.join(im['labels'])}): input {im['input_shape']}, "
                         f"scores {im['scores_shape']} (finite: {im['scores_finite']}), similarity maps "
                         f"{im['similarity_maps_shape']}")
    return [*lines, ""]


RENDERERS = {"cipl_synth_cxr": synth_cxr, "cipl_medmnist": medmnist}
