"""docs/benchmarks.md sections of the dae-counterfactual benchmarks (discovered by report.py)."""

from __future__ import annotations

from common import ci, fmt, machine_line


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def _per_target(rows: list[dict], edit: str) -> list[str]:
    has_measure = any("measure" in r for r in rows)
    has_oracle = any("oracle_positive_rate" in r for r in rows)
    head = ["target grade" if edit == "grade" else "signed step"]
    head += [] if edit == "grade" else ["edited latent's grade"]
    head += ["re-encoded grade", "L1 to recon.", "SSIM to recon."]
    head += ["image classifier: P(grade > 0) > 0.5", "image classifier: expected grade"] if has_oracle else []
    head += ["measured structure (% of image)"] if has_measure else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['target']:g}"] + ([] if edit == "grade" else [fmt(r.get("edited_grade"), 2)])
        cells += [fmt(r["reencoded_grade"], 3), fmt(r["l1"], 5), fmt(r["ssim"], 5)]
        if has_oracle:
            cells += [fmt(r.get("oracle_positive_rate"), 2), fmt(r.get("oracle_expected_grade"), 2)]
        if has_measure:
            cells.append(fmt(r.get("measure"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


EDIT_NAMES = {"grade": "ours (`--edit grade`: the smallest move to each target grade)",
              "step": "the official notebooks' (`--edit step`: fixed steps along the normal, both signs)",
              "step-mean-difference": "ours (`--edit step --along mean-difference`: the notebooks' steps along the "
                                      "class-mean difference of the training latents)"}


def _variant(cf: dict) -> str:
    edit, along = cf.get("edit", "grade"), cf.get("settings", {}).get("along", "normal")
    return edit if along in (None, "normal") else f"{edit}-{along}"


def _swap_line(sw: dict) -> str:
    line = (f"- decoder probe ({sw['n_pairs']} pairs of a lowest- and a highest-grade image): the low image's x_T "
            "rendered with z_low + s (z_high - z_low)")
    if "pixel" in sw:
        px = sw["pixel"]
        line += (" changes the pixels by " + ", ".join(f"{fmt(v, 2)} (s = {k})" for k, v in
                                                       px["response_by_scale"].items() if k != "0")
                 + f" of the mean difference between the two images ({fmt(px['l1_inputs'], 4)} per pixel)")
    if "response_by_scale" in sw:
        line += ("; it moves " + (sw.get("measure") or "the measure") + " by "
                 + ", ".join(f"{fmt(v, 2)} (s = {k})" for k, v in sw["response_by_scale"].items() if k != "0")
                 + " of the real gap between the two groups")
    return line


def _cf_summary(cf: dict) -> list[str]:
    lat, prox, rec = cf["latent"], cf["proximity_to_reconstruction"], cf["reconstruction"]
    s = cf["settings"]
    edit = cf.get("edit", "grade")
    targets = cf.get("targets", cf.get("target_grades"))
    lines = [f"Counterfactuals with the {_variant(cf)} edit, {EDIT_NAMES[_variant(cf)]}: {cf['n_images']} {s.get('split', 'test')} "
             f"images x targets {[float(f'{t:g}') for t in targets]} (DDIM inversion {s['encode_steps']} steps, "
             f"rendering {s['render_steps']} steps):", "",
             f"- reconstruction (encode -> render) against the input: MSE {fmt(rec['mse'], 4)}, L1 {fmt(rec['l1'])}, "
             f"SSIM {fmt(rec['ssim'])}",
             f"- latent flip rate (re-encoded counterfactual on the target side, {lat['n_crossing_pairs']} pairs "
             f"that cross the hyperplane): **{ci(lat, 'flip_rate')}**; Spearman(target, re-encoded grade) "
             f"**{fmt(lat['spearman_target_vs_reencoded_grade'])}**, mean |re-encoded - edited latent's grade| "
             f"{fmt(lat['mean_abs_grade_error'], 2)}",
             f"- proximity to the reconstruction: L1 {fmt(prox['l1'], 5)}, SSIM {fmt(prox['ssim'], 5)}"]
    if "image_classifier" in cf:
        ic = cf["image_classifier"]
        lines.append(f"- image classifier (medimg-core baseline) flip rate: **{ci(ic, 'flip_rate')}** "
                     f"({ic['n_crossing_pairs']} pairs); Spearman(target, its expected grade) "
                     f"{fmt(ic['spearman_target_vs_expected_grade'])}")
    if "measure" in cf:
        m = cf["measure"]
        lines.append(f"- measured structure (`measure_structure`, the generator's ground truth) of the "
                     f"counterfactuals: Spearman with the target **{fmt(m['spearman_target_vs_measure'])}**; "
                     f"monotone series (never decreasing, ending higher than they start) "
                     f"**{fmt(m['monotone_fraction'], 2)}**, strictly increasing "
                     f"{fmt(m['strictly_increasing_fraction'], 2)}; inputs {fmt(m['mean_measure_inputs'], 2)}, "
                     f"reconstructions {fmt(m['mean_measure_reconstructions'], 2)}")
        if "effect_ratio" in m:
            lo, hi = m.get("real_gap_grades", [0, 4])
            lines.append(f"- size of the move: the mean measure changes by {fmt(m['change_lowest_to_highest_target'], 4)} "
                         f"from the lowest to the highest target, while the inputs of true grades {lo:g} and {hi:g} "
                         f"differ by {fmt(m['real_gap_lowest_to_highest_grade'], 2)}: effect ratio "
                         f"**{ci(m, 'effect_ratio')}** (1 = the counterfactuals span the real range)")
    if "towards_lowest" in cf:
        low = cf["towards_lowest"]
        inside = (f"; {fmt(1 - low['locality']['outside_fraction'], 2)} of that change lies inside the plaque"
                  if "locality" in low else "")
        lines.append(f"- towards grade {low['grade']:g}: for the {low['n_images']} images above it, the lowest "
                     f"target's counterfactual removes {fmt(low['measure_removed'], 3)} of the measure, against "
                     f"{fmt(low['real_excess'], 3)} between their reconstructions and real grade-{low['grade']:g} "
                     f"images: removal ratio **{ci(low, 'removal_ratio')}**{inside}")
    if "locality" in cf:
        loc = cf["locality"]
        lines.append(f"- locality: {fmt(loc['outside_fraction'], 2)} of each edit's change "
                     f"|counterfactual - reconstruction| falls outside the plaque (the generator's structure map of "
                     f"either image, {fmt(100 * loc['region_fraction'], 1)}% of the pixels); mean change per pixel "
                     f"outside {fmt(loc['mean_change_outside'], 4)}, inside {fmt(loc['mean_change_inside'], 4)}"
                     + (f"; outside the plaque grown by one pixel: {fmt(loc['outside_fraction_beyond_1px'], 2)}; "
                        "mean signed change outside per channel (R, G, B) "
                        f"{', '.join(fmt(v, 4) for v in loc['mean_signed_change_outside'])}"
                        if "outside_fraction_beyond_1px" in loc else ""))
    if "latent_swap" in cf:
        lines.append(_swap_line(cf["latent_swap"]))
    return [*lines, "", *_per_target(cf["per_target"], edit), ""]


def _edit_comparison(result: dict) -> list[str]:
    """Both edits on validation (where one was chosen) and test, with the same metrics."""
    edits = result.get("edits")
    if not edits:
        return []
    rows = [("image classifier flip rate [95% CI]", lambda m: ci(m["image_classifier"], "flip_rate")),
            ("latent flip rate [95% CI]", lambda m: ci(m["latent"], "flip_rate")),
            ("Spearman(target, re-encoded grade)", lambda m: m["latent"]["spearman_target_vs_reencoded_grade"]),
            ("Spearman(target, classifier's expected grade)",
             lambda m: m.get("image_classifier", {}).get("spearman_target_vs_expected_grade")),
            ("L1 to the reconstruction", lambda m: m["proximity_to_reconstruction"]["l1"]),
            ("SSIM to the reconstruction", lambda m: m["proximity_to_reconstruction"]["ssim"])]
    if any("measure" in m for m in edits["test"].values()):
        rows += [("monotone series (measure)", lambda m: m["measure"]["monotone_fraction"]),
                 ("effect ratio [95% CI]", lambda m: ci(m["measure"], "effect_ratio")),
                 ("share of the change inside the plaque", lambda m: 1 - m["locality"]["outside_fraction"]),
                 ("... inside the plaque grown by one pixel",
                  lambda m: 1 - m["locality"]["outside_fraction_beyond_1px"]),
                 ("removal ratio towards the lowest grade [95% CI]", lambda m: ci(m["towards_lowest"], "removal_ratio")),
                 ("share of that removal's change inside the plaque",
                  lambda m: 1 - m["towards_lowest"]["locality"]["outside_fraction"]),
                 ("... inside the plaque grown by one pixel",
                  lambda m: 1 - m["towards_lowest"]["locality"]["outside_fraction_beyond_1px"])]

    def cell(m: dict, get) -> str:
        try:
            value = get(m)
        except (KeyError, TypeError):
            return "n/a"
        return value if isinstance(value, str) else fmt(value, 3)

    chosen, variants = edits["chosen"], list(edits["test"])
    lines = ["The edits with the same metrics (val: where the edit is chosen; test: reported): "
             + "; ".join(f"**{v}**, {EDIT_NAMES.get(v, v)}" for v in variants)
             + f". The edit chosen on validation is **{chosen}**, by the rule: {edits['rule']}.", "",
             "| measure | " + " | ".join(f"{v}, val" for v in variants) + " | "
             + " | ".join(f"{v}, test" for v in variants) + " |",
             "|---|" + "---|" * (2 * len(variants))]
    for name, get in rows:
        lines.append(f"| {name} | " + " | ".join(cell(edits["val"][v], get) for v in variants) + " | "
                     + " | ".join(cell(edits["test"][v], get) for v in variants) + " |")
    lines.append("")
    return lines


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
    lines += [f"Issue targets (the {result['counterfactuals'].get('edit', 'grade')} edit's test values): " + "; ".join(f"{k} {fmt(v['value'])} (target {v['target']}): "
                                           f"{'met' if v['met'] else '**not met**'}" for k, v in met.items()) + ".", ""]
    lines += _edit_comparison(result)
    lines += [f"Wall time: data {_minutes(w['data'])}, baseline {_minutes(w['baseline'])}, DAE training "
              f"{_minutes(w['train'])}, encoding {_minutes(w['encode'])}, boundary {_minutes(w['fit_boundary'])}, "
              f"counterfactual evaluation {_minutes(w['evaluate'])} (one split, one edit). Peak memory: training "
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
              "representation.", ""]
    lines += _cf_summary(result["counterfactuals"])
    lines += _edit_comparison(result)
    w = result["wall_time_s"]
    lines += [f"Wall time: DAE training {_minutes(w['train'])}, encoding {_minutes(w['encode'])}, boundary "
              f"{_minutes(w['fit_boundary'])}, counterfactual evaluation {_minutes(w['evaluate'])} (one split, one "
              f"edit); the baseline "
              f"trained in {_minutes(w['baseline_train'] or w.get('baseline_train_reported'))}.", "",
              f"![RetinaMNIST counterfactuals]({result['figures']['counterfactuals'].removeprefix('docs/')})", "", "Commands:", ""]
    lines += [f"- {k}: `{v}`" for k, v in result["commands"].items()]
    return [*lines, ""]


RENDERERS = {"dae_synth_grade": dae_synth_grade, "dae_retinamnist": dae_retinamnist}
