"""docs/benchmarks.md sections of the dae-counterfactual benchmarks (discovered by report.py)."""

from __future__ import annotations

from common import ci, fmt, machine_line


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def _per_target(rows: list[dict]) -> list[str]:
    has_measure = any("measure" in r for r in rows)
    has_oracle = any("oracle_positive_rate" in r for r in rows)
    head = ["target grade", "re-encoded grade", "L1 to recon.", "SSIM to recon."]
    head += ["image classifier: P(grade > 0) > 0.5", "image classifier: expected grade"] if has_oracle else []
    head += ["measured structure (% of image)"] if has_measure else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['target']:g}", fmt(r["reencoded_grade"], 3), fmt(r["l1"], 5), fmt(r["ssim"], 5)]
        if has_oracle:
            cells += [fmt(r.get("oracle_positive_rate"), 2), fmt(r.get("oracle_expected_grade"), 2)]
        if has_measure:
            cells.append(fmt(r.get("measure"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cf_summary(cf: dict) -> list[str]:
    lat, prox, rec = cf["latent"], cf["proximity_to_reconstruction"], cf["reconstruction"]
    s = cf["settings"]
    lines = [f"Counterfactuals: {cf['n_images']} test images x target grades {cf['target_grades']} "
             f"(DDIM inversion {s['encode_steps']} steps, rendering {s['render_steps']} steps):", "",
             f"- reconstruction (encode -> render) against the input: MSE {fmt(rec['mse'], 4)}, L1 {fmt(rec['l1'])}, "
             f"SSIM {fmt(rec['ssim'])}",
             f"- latent flip rate (re-encoded counterfactual on the target side, {lat['n_crossing_pairs']} pairs "
             f"that cross the hyperplane): **{fmt(lat['flip_rate'])}**; Spearman(target grade, re-encoded grade) "
             f"**{fmt(lat['spearman_target_vs_reencoded_grade'])}**, mean |re-encoded - target| "
             f"{fmt(lat['mean_abs_grade_error'], 2)}",
             f"- proximity to the reconstruction: L1 {fmt(prox['l1'], 5)}, SSIM {fmt(prox['ssim'], 5)}"]
    if "image_classifier" in cf:
        ic = cf["image_classifier"]
        lines.append(f"- image classifier (medimg-core baseline) flip rate: **{fmt(ic['flip_rate'])}** "
                     f"({ic['n_crossing_pairs']} pairs); Spearman(target grade, its expected grade) "
                     f"{fmt(ic['spearman_target_vs_expected_grade'])}")
    if "measure" in cf:
        m = cf["measure"]
        lines.append(f"- measured structure (`measure_structure`, the generator's ground truth) of the "
                     f"counterfactuals: Spearman with the target grade **{fmt(m['spearman_target_vs_measure'])}**; "
                     f"monotone series (never decreasing, ending higher than they start) **{fmt(m['monotone_fraction'], 2)}**, strictly increasing "
                     f"{fmt(m['strictly_increasing_fraction'], 2)}; inputs {fmt(m['mean_measure_inputs'], 2)}, "
                     f"reconstructions {fmt(m['mean_measure_reconstructions'], 2)}")
        if "effect_ratio" in m:
            lines.append(f"- size of the move: the mean measure changes by {fmt(m['change_lowest_to_highest_target'], 4)} "
                         f"from the lowest to the highest target, while the inputs of those true grades differ by "
                         f"{fmt(m['real_gap_lowest_to_highest_grade'], 2)}: effect ratio "
                         f"**{fmt(m['effect_ratio'], 4)}** (1 = the counterfactuals span the real range)")
    if "locality" in cf:
        loc = cf["locality"]
        lines.append(f"- locality: {fmt(loc['outside_fraction'], 2)} of each edit's change "
                     f"|counterfactual - reconstruction| falls outside the plaque (the generator's structure map of "
                     f"either image, {fmt(100 * loc['region_fraction'], 1)}% of the pixels); mean change per pixel "
                     f"outside {fmt(loc['mean_change_outside'], 4)}, inside {fmt(loc['mean_change_inside'], 4)}")
    if "latent_swap" in cf:
        sw = cf["latent_swap"]
        lines.append(f"- decoder probe ({sw['n_pairs']} pairs of a lowest- and a highest-grade test image): the low "
                     "image's x_T rendered with z_low + s (z_high - z_low) moves the measure by "
                     + ", ".join(f"{fmt(v, 2)} (s = {k})" for k, v in sw["response_by_scale"].items() if k != "0")
                     + " of the real gap between the two groups")
    return [*lines, "", *_per_target(cf["per_target"]), ""]


def _train_line(t: dict) -> str:
    return (f"DAE: {t['parameters'] / 1e6:.2f} M parameters (encoder {t['encoder_parameters'] / 1e6:.2f} M), "
            f"{t['steps']} steps in {t['epochs_run']} epochs, {_minutes(t['wall_time_s'])} on {t['device']} "
            f"({t['precision']}); final training loss {fmt(t['final_loss'], 4)}, validation noise MSE "
            f"{fmt(t['val_mse'], 4)}.")


def dae_synth_grade(result: dict) -> list[str]:
    b, tg, w = result["boundary"], result["targets"], result["wall_time_s"]
    lines = ["## dae-counterfactual on synth-grade (32 px, CPU budget)", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.",
             "", _train_line(result["train"]), "",
             "Latent classifier (linear SVM on standardised z_sem, pathology = grade > 0) and grade calibration "
             "(linear regression of the grade on the signed distance), official synthetic split:", "",
             "| split | AUROC [95% CI] | accuracy | balanced acc. | grade Spearman [95% CI] | grade MAE | QWK |",
             "|---|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        bb, gg = b[split]["binary"], b[split]["grade"]
        lines.append(f"| {split} | {ci(bb, 'auroc')} | {fmt(bb['accuracy'])} | {fmt(bb['balanced_accuracy'])} | "
                     f"{ci(gg, 'spearman')} | {fmt(gg['mae'])} | {fmt(gg['qwk'])} |")
    base = result["baseline"]["test"]
    lines += ["", f"Image classifier (`medimg train-baseline`, resnet18, 10 epochs) on the same test split: accuracy "
              f"{ci(base, 'accuracy')}, grade MAE {fmt(base.get('mae'))}, Spearman {fmt(base.get('spearman'))}.", ""]
    lines += _cf_summary(result["counterfactuals"])
    met = {k: v for k, v in tg.items() if "met" in v}
    lines += ["Issue targets: " + "; ".join(f"{k} {fmt(v['value'])} (target {v['target']}): "
                                           f"{'met' if v['met'] else '**not met**'}" for k, v in met.items()) + ".", ""]
    cf = result["counterfactuals"]
    ratio = cf.get("measure", {}).get("effect_ratio")
    budget = (f"a {result['train']['parameters'] / 1e6:.1f} M-parameter DAE, "
              f"{_minutes(result['train']['wall_time_s'])} of training")
    if ratio is not None and ratio < 0.01:
        lines += ["Reading: the latents separate the grades and the calibration is monotone, and the edits push "
                  "the rendered structure in the right direction, but by a tiny fraction of the real difference "
                  f"between grades: at this CPU budget ({budget}) the decoder "
                  "reconstructs almost everything from the stochastic code x_T and responds only weakly to z_sem, "
                  "so these counterfactuals are not usable as explanations. DiffAE-sized models train for days on "
                  "GPUs (see the package README).", ""]
    elif ratio is not None and ratio < 0.5:
        swap = cf.get("latent_swap", {}).get("response_by_scale", {}).get("1")
        swap_text = (f"; rendered with a high-grade image's z_sem, a low-grade image's x_T moves the measure by "
                     f"{swap:.2f} of the real gap, so the decoder does use z_sem" if swap is not None else "")
        lines += ["Reading: the latents separate the grades, the calibration is monotone, and the counterfactual "
                  "series change the generator's structure in the direction of the target grade, on the structure "
                  f"itself (see the locality line), but by {ratio:.2f} of the real difference between the lowest "
                  f"and highest grade at this CPU budget ({budget}){swap_text}. The minimal edit along the "
                  "hyperplane normal moves z_sem far less than that swap; larger effects need longer training "
                  "(see the package README).", ""]
    lines += [f"Wall time: data {_minutes(w['data'])}, baseline {_minutes(w['baseline'])}, DAE training "
              f"{_minutes(w['train'])}, encoding {_minutes(w['encode'])}, boundary {_minutes(w['fit_boundary'])}, "
              f"counterfactual evaluation {_minutes(w['evaluate'])}. Peak memory: training "
              f"{result['peak_memory_mb']['train'] / 1024:.1f} GB, evaluation "
              f"{result['peak_memory_mb']['evaluate'] / 1024:.1f} GB.", "",
              f"![synth-grade counterfactuals]({result['figures']['counterfactuals'].removeprefix('docs/')})", "",
              "Commands:", ""]
    lines += [f"- {k}: `{v}`" for k, v in result["commands"].items()]
    return [*lines, ""]


def dae_retinamnist(result: dict) -> list[str]:
    d, base, off = result["dae"], result["baseline"], result["official_gpu_val"]
    lines = ["## dae-counterfactual on RetinaMNIST (grade 0-4, CPU budget)", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: `{result['command']}`.",
             "", _train_line(result["train"]), "",
             "Grade > 0 (binary) and the grade (0-4) on the official splits. DAE: linear SVM on z_sem and the "
             "grade regressed on the signed distance; baseline: the resnet18 run of `medimg train-baseline` "
             f"(`{result['baseline_run']}`), P(grade > 0) = 1 - p(grade 0), grade = expected grade of its softmax "
             "(MAE of the argmax grade in brackets).", "",
             "| split | model | grade > 0 AUROC [95% CI] | accuracy | grade Spearman [95% CI] | grade MAE | QWK |",
             "|---|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        db, dg = d[split]["binary"], d[split]["grade"]
        bb, bg, ba = base[split]["binary"], base[split]["grade_expected"], base[split]["grade_argmax"]
        lines.append(f"| {split} | DAE (CPU) | {ci(db, 'auroc')} | {fmt(db['accuracy'])} | {ci(dg, 'spearman')} | "
                     f"{fmt(dg['mae'])} | {fmt(dg['qwk'])} |")
        lines.append(f"| {split} | baseline | {ci(bb, 'auroc')} | {fmt(bb['accuracy'])} | {ci(bg, 'spearman')} | "
                     f"{fmt(bg['mae'])} ({fmt(ba['mae'])}) | {fmt(ba['qwk'])} |")
    lines.append(f"| val | DAE (paper's code, GPU, 128 px) | {fmt(off['auroc'])} | {fmt(off['accuracy'])} | "
                 f"{fmt(off['grade_spearman'])} | {fmt(off['grade_mae'])} | - |")
    dv = d["val"]
    lines += ["", f"The last row: {off['source']} (a 128 px DAE trained for 1.25 M steps of batch 8 on GPUs), "
              "for scale; it is not a run of this package.", "",
              f"CPU budget vs GPU: on the validation split this package's CPU model (32 px, "
              f"{result['train']['steps']} steps of batch {result.get('batch_size', 32)}, "
              f"{_minutes(result['train']['wall_time_s'])}) reaches grade > 0 AUROC {fmt(dv['binary']['auroc'])} "
              f"against {fmt(off['auroc'])} and grade Spearman {fmt(dv['grade']['spearman'])} against "
              f"{fmt(off['grade_spearman'])} for the paper's GPU model, which saw about "
              f"{10e6 / max(1, result['train']['steps'] * result.get('batch_size', 32)):.0f} times as many training "
              "images at 16 times the pixels. The latent numbers are the classifier on top of an unsupervised "
              "representation; how far a small, briefly trained DAE is from a converged one shows most in its "
              "counterfactuals (below), whose edits are much weaker than their calibrated targets.", ""]
    lines += _cf_summary(result["counterfactuals"])
    w = result["wall_time_s"]
    lines += [f"Wall time: DAE training {_minutes(w['train'])}, encoding {_minutes(w['encode'])}, boundary "
              f"{_minutes(w['fit_boundary'])}, counterfactual evaluation {_minutes(w['evaluate'])}; the baseline "
              f"trained in {_minutes(w['baseline_train'] or w.get('baseline_train_reported'))}.", "",
              f"![RetinaMNIST counterfactuals]({result['figures']['counterfactuals'].removeprefix('docs/')})", "", "Commands:", ""]
    lines += [f"- {k}: `{v}`" for k, v in result["commands"].items()]
    return [*lines, ""]


RENDERERS = {"dae_synth_grade": dae_synth_grade, "dae_retinamnist": dae_retinamnist}
