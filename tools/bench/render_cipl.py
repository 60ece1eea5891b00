"""Markdown sections of docs/benchmarks.md for the cipl benchmarks (discovered by report.py)."""

from __future__ import annotations

from common import ci, fmt, machine_line


def _mb(value) -> str:
    return "n/a" if value is None else f"{value / 1024:.1f} GB"


def synth_cxr(result: dict) -> list[str]:
    c, b, pre = result["cipl"], result["baseline"], result["preset"]
    ct, bt, loc = c["test"], b["test"], c.get("localisation", {})
    lines = [
        "## CIPL on synth-cxr (findings with masks): classification and localisation", "",
        f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.", "",
        f"Data: {result['data']}. Both models: {pre['backbone']} from scratch at {pre['image_size']} px, "
        f"{pre['epochs']} epochs (CIPL: output_stride {pre['output_stride']}, {pre['prototypes_per_class']} prototypes "
        f"x {pre['prototype_dim']} channels per class, {pre['warm_epochs']} warm-up epochs, pushes after epochs "
        f"{pre['push_epochs']}, each followed by {pre['last_layer_epochs']} last-layer epoch(s)).", "",
        "| model | mean AUROC [95% CI] | mean best-threshold F1 | accuracy (per label, 0.5) | best epoch | wall time | peak memory |",
        "|---|---|---|---|---|---|---|",
        f"| CIPL | {ci(ct, 'auroc_mean')} | {fmt(ct.get('f1_best_mean'))} | {ci(ct, 'accuracy')} | "
        f"{c['best_epoch']}/{c['epochs_run']} | {c['wall_time_s'] / 60:.1f} min | {_mb(c['peak_memory_mb'])} |",
        f"| baseline | {ci(bt, 'auroc_mean')} | {fmt(bt.get('f1_best_mean'))} | {ci(bt, 'accuracy')} | "
        f"{b['best_epoch']}/{b['epochs_run']} | {b['wall_time_s'] / 60:.1f} min | {_mb(b['peak_memory_mb'])} |",
        "",
        f"AUROC gap CIPL - baseline: **{result['auroc_gap_points']:+.2f} points** (target: within 2 points: "
        f"{'met' if result['targets']['auroc_within_2_points'] else 'NOT met'}).", "",
    ]
    names = [k.split("/", 1)[1] for k in ct if k.startswith("auroc/")]
    lines += ["| finding | CIPL AUROC | baseline AUROC | pointing game (detected) | cell pointing game (detected) | "
              "IoU (detected) | n detected | misses: median px to mask | pointing game (all present) | "
              "max-map / weighted-map pointing |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {fmt(ct.get(f'auroc/{n}'))} | {fmt(bt.get(f'auroc/{n}'))} | "
                     f"{fmt(loc.get(f'pointing_game/{n}'))} | {fmt(loc.get(f'cell_pointing_game/{n}'))} | "
                     f"{fmt(loc.get(f'iou/{n}'))} | {loc.get(f'n/{n}', 0)} | "
                     f"{fmt(loc.get(f'miss_distance_px/{n}'), 1)} | {fmt(loc.get(f'all_present/pointing_game/{n}'))} | "
                     f"{fmt(loc.get(f'max/pointing_game/{n}'))} / {fmt(loc.get(f'weighted/pointing_game/{n}'))} |")
    pg, iou = loc.get("pointing_game"), loc.get("iou_mean")
    pg_ci, iou_ci = loc.get("pointing_game_ci") or [None, None], loc.get("iou_mean_ci") or [None, None]
    cpg, cpg_ci = loc.get("cell_pointing_game"), loc.get("cell_pointing_game_ci") or [None, None]
    lines += [
        f"| **all** | {fmt(ct.get('auroc_mean'))} | {fmt(bt.get('auroc_mean'))} | **{fmt(pg)}** "
        f"[{fmt(pg_ci[0])}, {fmt(pg_ci[1])}] | {fmt(cpg)} [{fmt(cpg_ci[0])}, {fmt(cpg_ci[1])}] | {fmt(iou)} [{fmt(iou_ci[0])}, {fmt(iou_ci[1])}] | {loc.get('n', 0)} | - | "
        f"{fmt(loc.get('all_present/pointing_game'))} | {fmt(loc.get('max/pointing_game'))} / "
        f"{fmt(loc.get('weighted/pointing_game'))} |", "",
        f"Pointing game: the maximum of the class map (the similarity map of the class's most activated prototype, "
        f"bicubic upsampling with cells at their receptive-field centres) lies inside the generator's mask, over test findings present and detected (p > 0.5); "
        f"target at least 0.8: {'met' if result['targets']['pointing_game_at_least_0.8'] else 'NOT met'}. IoU: the "
        f"map min-max normalised, thresholded at {loc.get('iou_threshold', 0.5)}, against the mask. Last column: the "
        f"same with the maximum over the class's prototypes, and with their sum weighted by the last layer. Cell "
        f"pointing game (a diagnostic, not the target): the feature cell holding the map's maximum (stride "
        f"{fmt((loc.get('grid_step_px') or [None])[0], 0)} px) overlaps the mask. A similarity map peaks at a cell "
        f"centre, so a finding smaller than a cell, or a peak on the cell beside a finding's edge, fails the "
        f"pixel-level game while the cell is right.", "",
    ]
    dense = result["cipl"].get("localisation_dense")
    if dense:
        step = dense.get("map_step")
        lines += [
            f"The same maps sampled every {step} px by shift-and-stitch (`cipl.maps.dense_distance_maps`: the model "
            f"run on the image shifted by every multiple of {step} px below its stride, the distance maps "
            f"interleaved, no interpolation until the final bicubic upsampling; `{result['dense_command']}`):", "",
            "| finding | pointing game (detected) | IoU | misses: median px to mask |", "|---|---|---|---|"]
        for n in names:
            lines.append(f"| {n} | {fmt(dense.get(f'pointing_game/{n}'))} | {fmt(dense.get(f'iou/{n}'))} | "
                         f"{fmt(dense.get(f'miss_distance_px/{n}'), 1)} |")
        dci = dense.get("pointing_game_ci") or [None, None]
        lines += [f"| **all** | **{fmt(dense.get('pointing_game'))}** [{fmt(dci[0])}, {fmt(dci[1])}] | "
                  f"{fmt(dense.get('iou_mean'))} | - |", ""]
    lines += [
        f"- CIPL: `{result['cipl_command']}`",
        f"- baseline: `{result['baseline_command']}`",
        f"- gallery: `{result['gallery_command']}`; reasoning: `{result['reason_command']}`",
        "- stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["stage_wall_s"].items()),
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
