"""Measuring the counterfactuals (and an independent image classifier to judge them).

Pure: counterfactual series, a boundary and image arrays in (the run-level benchmark, `evaluate_run`, is in
`dae_counterfactual.api`). The boundary's own metrics (`boundary_metrics`: AUROC from the signed distance,
Spearman, MAE and quadratic kappa of the calibrated grade) are in `dae_counterfactual.metrics`.

Counterfactuals (`counterfactual_metrics`), over (image, target) pairs. A target is a grade (mode "grade",
`LatentBoundary.edit_to_grade`: the smallest move whose calibrated grade is the target) or a signed step along
the hyperplane normal (mode "step", `edit_fixed_step` with direction +1: the official notebooks' edit, negative
steps towards the healthy side); both are ordered so that a higher target means more pathology:

- reconstruction error of encode -> render (MSE, L1, SSIM against the input);
- latent flip rate: among pairs whose edited latent lies on the other side of the hyperplane than
  the image's own latent, the fraction whose *re-encoded* counterfactual the latent classifier puts
  on the target side;
- image flip rate: the same with an independent image classifier (a medimg-core baseline run) on the
  counterfactual images, among pairs whose target side differs from its prediction on the input;
- Spearman correlation between target and re-encoded calibrated grade (pooled), and the mean |error| between
  the re-encoded grade and the edited latent's calibrated grade (the target itself in grade mode);
- proximity of each counterfactual to the reconstruction (L1, SSIM);
- with a `measure` (synth-grade's measure_structure): Spearman of measured structure vs target grade
  and the fraction of monotone series: the measure never decreases as the target grade rises and ends
  higher than it starts (also reported: strictly increasing series); and the size of the move: the change
  of the mean measure from the lowest to the highest target, divided by the difference of the inputs'
  mean measure between the lowest and the highest true grade (the grades equal to the lowest and highest
  target in grade mode; effect_ratio, 1 = the real range); and `towards_lowest`: for the inputs above the lowest
  grade, how much of their structure the lowest target's counterfactual removes, as a share of the way from
  their reconstruction to the mean of real lowest-grade inputs (removal_ratio, 1 = as little as a real
  lowest-grade image), with the locality of those counterfactuals alone;
- with a `region` (synth-grade's plaque map): locality, the share of each edit's change
  |counterfactual - reconstruction| outside the pathology (change_outside_region).

Flip rates, the effect ratio and the removal ratio carry 95% percentile bootstrap intervals over the images
(`*_ci`; medimg_core.metrics.bootstrap_ci, an image's pairs resampled together).

The effect ratio, removal ratio and locality are ours (the paper shows its counterfactuals and reports flip
rates); they exist because the synthetic generator knows the structure behind each grade.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.explain import CounterfactualSeries

# the image and boundary metrics live in dae_counterfactual.metrics; importing them here keeps
# `from dae_counterfactual.evaluate import image_distances, grade_metrics, ...` working
from dae_counterfactual.metrics import (  # noqa: F401
    _spearman,
    boundary_metrics,
    grade_metrics,
    image_distances,
    per_image,
)
from medimg_core.baseline import load_baseline
from medimg_core.data.transforms import TransformConfig, eval_transform
from medimg_core.metrics import bootstrap_ci
from medimg_core.synthetic import measure_structure, structure_map

Measure = Callable[[np.ndarray], np.ndarray]
#: images (N, C, H, W) -> pathology maps (N, H, W) bool
Region = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------ the image classifier


class ImageOracle:
    """An independent image classifier (a `medimg train-baseline` run) applied to [0, 1] images.

    Images are quantised to uint8 (as if saved as PNG) and get the baseline's own eval transform.
    """

    def __init__(self, run_dir: str | Path, positive_min_grade: int = 1, device: str | torch.device = "cpu"):
        self.model, self.config = load_baseline(run_dir, map_location=str(device))
        self.device = device
        self.run_dir = Path(run_dir)
        self.transform = eval_transform(TransformConfig(size=self.config["image_size"],
                                                        channels=self.config["in_chans"],
                                                        normalize=self.config["normalize"]))
        self.num_classes = int(self.config["num_outputs"])
        self.task = self.config["card"]["task"]
        if self.task == "multilabel":
            raise ValueError(f"{run_dir}: a multi-label baseline cannot judge a binary pathology")
        if not 0 < positive_min_grade < self.num_classes:
            raise ValueError(f"{run_dir}: positive_min_grade {positive_min_grade} is not a class index in "
                             f"1..{self.num_classes - 1} of this baseline")
        self.positive_min_grade = positive_min_grade

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """Class probabilities (N, classes) of images (N, C, H, W) in [0, 1]."""
        out = []
        for s in range(0, images.shape[0], batch_size):
            x = (images[s:s + batch_size].clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            x = self.transform(tv_tensors.Image(x)).as_subclass(torch.Tensor)
            out.append(torch.softmax(self.model(x.to(self.device)).float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def positive_probability(self, images: torch.Tensor) -> np.ndarray:
        """P(class >= positive_min_grade) (N,)."""
        return self.probabilities(images)[:, self.positive_min_grade:].sum(axis=1)

    def expected_grade(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities @ np.arange(probabilities.shape[1])


# ------------------------------------------------------------------------------------ counterfactual metrics


def select_images(targets: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n indices spread evenly over the grades (round robin over grades, random within), sorted."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    groups = [list(rng.permutation(np.flatnonzero(targets == g))) for g in np.unique(targets)]
    chosen: list[int] = []
    while len(chosen) < min(n, targets.size):
        for group in groups:
            if group and len(chosen) < n:
                chosen.append(int(group.pop()))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def counterfactual_metrics(series: Sequence[CounterfactualSeries], boundary: LatentBoundary,
                           oracle: ImageOracle | None = None, measure: Measure | None = None,
                           region: Region | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of counterfactual series made in grade mode, or in step mode with direction +1 (signed steps; see
    the module docstring). Every series must have the same mode and targets. n_boot, seed: the bootstrap over
    images of the intervals.

    region: images (N, C, H, W) -> pathology maps (N, H, W) bool (synth-grade: the generator's plaque); the
    change |counterfactual - reconstruction| outside the union of both images' maps is reported.
    """
    if not series:
        raise ValueError("no counterfactual series to evaluate")
    mode = series[0].mode
    if any(s.mode != mode for s in series):
        raise ValueError("every series must be made in one mode ('grade' or 'step')")
    targets = series[0].targets
    k = targets.size
    if any(s.targets.size != k or not np.allclose(s.targets, targets) for s in series):
        raise ValueError("every series must have the same targets")
    order = np.argsort(targets, kind="stable")
    if mode == "step" and any((np.diff(s.edited_distances[order]) < 0).any() for s in series):
        raise ValueError("step-mode series must be made with direction +1 (signed steps: a larger step moves "
                         "towards the pathology)")
    n = len(series)
    images = torch.stack([s.image for s in series]).numpy()
    recons = torch.stack([s.reconstruction for s in series]).numpy()
    cfs = torch.stack([s.counterfactuals for s in series]).numpy()  # (n, k, C, H, W)
    flat_cf = cfs.reshape(n * k, *cfs.shape[2:])
    recon_rep = np.repeat(recons, k, axis=0)
    t_all = np.tile(targets, n)
    orig_side = np.array([s.distance > 0 for s in series])
    target_side = np.stack([s.edited_distances > 0 for s in series])  # (n, k)
    reenc_side = np.stack([s.reencoded_distances > 0 for s in series])
    reenc_grade = np.stack([s.reencoded_grades for s in series])
    edited_grade = np.stack([s.edited_grades for s in series])
    crossing = target_side != orig_side[:, None]
    out: dict[str, Any] = {"edit": mode, "n_images": n, "targets": targets.tolist(), "n_pairs": n * k,
                           "reconstruction": image_distances(images, recons)}
    if mode == "grade":
        out["target_grades"] = targets.tolist()
    out["latent"] = {
        "flip_rate": float((reenc_side == target_side)[crossing].mean()) if crossing.any() else float("nan"),
        "flip_rate_ci": _flip_ci(reenc_side == target_side, crossing, n_boot, seed),
        "n_crossing_pairs": int(crossing.sum()),
        "target_side_agreement": float((reenc_side == target_side).mean()),
        "spearman_target_vs_reencoded_grade": _spearman(t_all, reenc_grade.reshape(-1)),
        "mean_abs_grade_error": float(np.abs(reenc_grade - edited_grade).mean()),
        "mean_edited_grade_per_target": edited_grade.mean(axis=0).tolist(),
        "mean_reencoded_grade_per_target": reenc_grade.mean(axis=0).tolist(),
    }
    l1, ssim = per_image(flat_cf, recon_rep)
    out["proximity_to_reconstruction"] = {"l1": float(l1.mean()), "ssim": float(ssim.mean()),
                                          "l1_per_target": l1.reshape(n, k).mean(axis=0).tolist(),
                                          "ssim_per_target": ssim.reshape(n, k).mean(axis=0).tolist()}
    if oracle is not None:
        cf_t = torch.from_numpy(flat_cf).float()
        p_cf = oracle.probabilities(cf_t)
        p_in = oracle.probabilities(torch.from_numpy(images).float())
        pos_cf = p_cf[:, oracle.positive_min_grade:].sum(1).reshape(n, k) > 0.5
        pos_in = p_in[:, oracle.positive_min_grade:].sum(1) > 0.5
        o_cross = target_side != pos_in[:, None]
        exp_cf = oracle.expected_grade(p_cf)
        out["image_classifier"] = {
            "run": str(oracle.run_dir),
            "flip_rate": float((pos_cf == target_side)[o_cross].mean()) if o_cross.any() else float("nan"),
            "flip_rate_ci": _flip_ci(pos_cf == target_side, o_cross, n_boot, seed),
            "n_crossing_pairs": int(o_cross.sum()),
            "target_side_agreement": float((pos_cf == target_side).mean()),
            "positive_rate_inputs": float(pos_in.mean()),
            "positive_rate_per_target": pos_cf.mean(axis=0).tolist(),
            "spearman_target_vs_expected_grade": _spearman(t_all, exp_cf),
            "mean_expected_grade_per_target": exp_cf.reshape(n, k).mean(axis=0).tolist(),
        }
    truth = np.array([np.nan if s.true_grade is None else s.true_grade for s in series])
    known = truth[~np.isnan(truth)]
    if mode == "grade":
        grade_lo, grade_hi = float(targets.min()), float(targets.max())
    else:
        grade_lo, grade_hi = (float(known.min()), float(known.max())) if known.size else (np.nan, np.nan)
    if measure is not None:
        m_cf = np.asarray(measure(flat_cf), dtype=np.float64).reshape(n, k)
        m_in = np.asarray(measure(images), dtype=np.float64).reshape(n)
        m_rec = np.asarray(measure(recons), dtype=np.float64).reshape(n)
        steps = np.diff(m_cf[:, order], axis=1)
        per_series = [_spearman(targets, row) for row in m_cf]
        out["measure"] = {
            "spearman_target_vs_measure": _spearman(t_all, m_cf.reshape(-1)),
            # never decreasing and higher at the highest target than at the lowest (a flat series is not monotone)
            "monotone_fraction": float(((steps >= 0).all(axis=1) & (steps.sum(axis=1) > 0)).mean()),
            "strictly_increasing_fraction": float((steps > 0).all(axis=1).mean()),
            "mean_series_spearman": float(np.nanmean(per_series)) if not np.isnan(per_series).all() else float("nan"),
            "mean_measure_per_target": m_cf.mean(axis=0).tolist(),
            "mean_measure_inputs": float(np.mean(m_in)),
            "mean_measure_reconstructions": float(np.mean(m_rec)),
        }
        out["measure"].update(_effect_size(targets, m_cf, m_in, truth, grade_lo, grade_hi))
        out["measure"]["effect_ratio_ci"] = _ci(
            lambda mc, mi, t: _effect_size(targets, mc, mi, t, grade_lo, grade_hi)["effect_ratio"],
            (m_cf, m_in, truth), n_boot, seed)
        lowest = int(order[0])
        out["towards_lowest"] = _towards_lowest(cfs[:, lowest], recons, m_cf[:, lowest], m_rec, m_in, truth,
                                                grade_lo, region)
        out["towards_lowest"]["removal_ratio_ci"] = _ci(_removal_ratio(grade_lo), (m_cf[:, lowest], m_rec, m_in,
                                                                                  truth), n_boot, seed)
    if region is not None:
        out["locality"] = change_outside_region(flat_cf, recon_rep, region)
    return out


def _ci(metric, arrays: tuple[np.ndarray, ...], n_boot: int, seed: int) -> list[float]:
    """[low, high] of a percentile bootstrap over the images (rows of every array), NaN where undefined."""
    try:
        _, low, high = bootstrap_ci(metric, *arrays, n_boot=n_boot, seed=seed)
    except ValueError:  # the point value itself is undefined
        return [float("nan"), float("nan")]
    return [low, high]


def _flip_ci(agree: np.ndarray, crossing: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """Interval of the flip rate agree[crossing].mean() (both (n, k)), resampling images with all their pairs."""
    if not crossing.any():
        return [float("nan"), float("nan")]

    def rate(a: np.ndarray, c: np.ndarray) -> float:
        return float(a[c].mean()) if c.any() else float("nan")

    return _ci(rate, (agree, crossing), n_boot, seed)


def _removal_ratio(grade_lo: float):
    """removal_ratio of `_towards_lowest` from per-image measures: (cf at the lowest target, reconstruction,
    input, true grade), each (n,)."""
    def ratio(m_low: np.ndarray, m_rec: np.ndarray, m_in: np.ndarray, truth: np.ndarray) -> float:
        above, at_lo = truth > grade_lo, truth == grade_lo
        if not above.any() or not at_lo.any():
            return float("nan")
        excess = m_rec[above].mean() - m_in[at_lo].mean()
        return float((m_rec[above].mean() - m_low[above].mean()) / excess) if abs(excess) > 1e-12 else float("nan")
    return ratio


def change_outside_region(counterfactuals: np.ndarray, references: np.ndarray, region: Region) -> dict[str, Any]:
    """Where an edit changes the image: |cf - ref| summed over channels, (N, H, W), split by the pathology
    region (the union of both images' maps). outside_fraction: the share of the total change that falls
    outside (0: every change is on the pathology); mean_change_outside / _inside: mean per pixel.

    Two diagnostics of the change outside: outside_fraction_beyond_1px, the same share outside the region grown
    by one pixel (a plaque's soft edge, below the map's threshold, lies in that ring), and
    mean_signed_change_outside, the mean of cf - ref per channel outside the region (a uniform drift of the
    whole image shows here; changes that cancel do not).
    """
    from scipy.ndimage import binary_dilation

    diff = np.asarray(counterfactuals, np.float64) - np.asarray(references, np.float64)
    change = np.abs(diff).sum(axis=1)
    inside = np.asarray(region(counterfactuals), bool) | np.asarray(region(references), bool)
    ring = np.stack([binary_dilation(m) for m in inside]) if inside.size else inside
    total = change.sum(axis=(1, 2))
    moved = total > 0
    outside = (change * ~inside).sum(axis=(1, 2))
    beyond = (change * ~ring).sum(axis=(1, 2))
    signed = [float(diff[:, c][~inside].mean()) if (~inside).any() else float("nan") for c in range(diff.shape[1])]
    return {"outside_fraction": float((outside[moved] / total[moved]).mean()) if moved.any() else float("nan"),
            "outside_fraction_beyond_1px": float((beyond[moved] / total[moved]).mean()) if moved.any()
            else float("nan"),
            "mean_change_outside": float(change[~inside].mean()) if (~inside).any() else float("nan"),
            "mean_change_inside": float(change[inside].mean()) if inside.any() else float("nan"),
            "mean_signed_change_outside": signed, "region_fraction": float(inside.mean())}


def _effect_size(targets: np.ndarray, m_cf: np.ndarray, m_in: np.ndarray, truth: np.ndarray, grade_lo: float,
                 grade_hi: float) -> dict[str, Any]:
    """How far the counterfactuals move the measure, against how far it differs between real images.

    change = mean measure at the highest target - at the lowest; real_gap = mean measure of the
    inputs whose true grade is grade_hi - of those at grade_lo (needs both among the inputs);
    effect_ratio = change / real_gap (1: the counterfactuals span the real range).
    """
    lo, hi = int(np.argmin(targets)), int(np.argmax(targets))
    change = float(m_cf[:, hi].mean() - m_cf[:, lo].mean())
    per_grade = {f"{g:g}": float(m_in[truth == g].mean()) for g in np.unique(truth[~np.isnan(truth)])}
    at_lo, at_hi = truth == grade_lo, truth == grade_hi
    gap = float(m_in[at_hi].mean() - m_in[at_lo].mean()) if at_lo.any() and at_hi.any() else float("nan")
    ratio = change / gap if np.isfinite(gap) and abs(gap) > 1e-12 else float("nan")
    return {"change_lowest_to_highest_target": change, "mean_measure_inputs_per_true_grade": per_grade,
            "real_gap_grades": [grade_lo, grade_hi], "real_gap_lowest_to_highest_grade": gap,
            "effect_ratio": ratio}


def _towards_lowest(cf_lowest: np.ndarray, recons: np.ndarray, m_cf_lowest: np.ndarray, m_rec: np.ndarray,
                    m_in: np.ndarray, truth: np.ndarray, grade_lo: float, region: Region | None) -> dict[str, Any]:
    """The lowest target's counterfactuals (n, C, H, W) of the inputs above the lowest true grade: removal_ratio =
    (mean measure of their reconstructions - of the counterfactuals) / (mean measure of their reconstructions -
    of the real inputs at grade_lo); with a region, the locality of those counterfactuals alone."""
    above, at_lo = truth > grade_lo, truth == grade_lo
    out: dict[str, Any] = {"n_images": int(above.sum()), "grade": grade_lo}
    if not above.any() or not at_lo.any():
        return {**out, "removal_ratio": float("nan"), "measure_removed": float("nan"), "real_excess": float("nan")}
    out.update({"measure_removed": float(m_rec[above].mean() - m_cf_lowest[above].mean()),
                "real_excess": float(m_rec[above].mean() - m_in[at_lo].mean()),
                "removal_ratio": _removal_ratio(grade_lo)(m_cf_lowest, m_rec, m_in, truth)})
    if region is not None:
        out["locality"] = change_outside_region(cf_lowest[above], recons[above], region)
    return out


@torch.no_grad()
def latent_swap_probe(model, x_low: torch.Tensor, x_high: torch.Tensor, measure: Measure | None, encode_steps: int,
                      render_steps: int, scales: Sequence[float] = (0.0, 1.0, 2.0, 5.0),
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """How strongly the decoder follows z_sem, independent of the boundary.

    Pairs (low-grade image i, high-grade image i), x (P, C, H, W) each: render the low image's own x_T
    with z_low + s (z_high - z_low) for each scale s (s = 0: its reconstruction, s = 1: the high image's
    whole z_sem). Always (no measure needed): `pixel`, the mean |render_s - render_0| per pixel against the
    mean |x_high - x_low| of the inputs (pixel response 1: the render changed as much as the two images
    differ). With a measure (images (N, C, H, W) -> (N,)): response[s] = (measure at s - measure at 0) /
    (measure of the high inputs - of the low inputs): 1 means the rendered structure moved as far as the real
    images differ.
    """
    if x_low.shape != x_high.shape or x_low.shape[0] == 0:
        raise ValueError(f"latent_swap_probe: expected two image batches of one shape, got {tuple(x_low.shape)} "
                         f"and {tuple(x_high.shape)}")
    x_low, x_high = x_low.to(device), x_high.to(device)
    z_low, z_high = model.encode(x_low), model.encode(x_high)
    x_T = model.encode_stochastic(x_low, z_low, encode_steps)
    renders = {f"{scale:g}": model.render(x_T, z_low + float(scale) * (z_high - z_low), render_steps).cpu()
               for scale in scales}
    base = renders["0"] if "0" in renders else model.render(x_T, z_low, render_steps).cpu()
    input_gap = float((x_high - x_low).abs().mean())
    pixel = {k: float((v - base).abs().mean()) for k, v in renders.items()}
    out: dict[str, Any] = {
        "n_pairs": int(x_low.shape[0]), "z_distance": float((z_high - z_low).norm(dim=1).mean()),
        "pixel": {"l1_inputs": input_gap, "l1_by_scale": pixel,
                  "response_by_scale": {k: v / input_gap if input_gap > 1e-12 else float("nan")
                                        for k, v in pixel.items()}}}
    if measure is None:
        return out
    m_low = float(np.mean(measure(x_low.cpu().numpy())))
    m_high = float(np.mean(measure(x_high.cpu().numpy())))
    rendered = {k: float(np.mean(measure(v.numpy()))) for k, v in renders.items()}
    m_base = float(np.mean(measure(base.numpy())))
    gap = m_high - m_low
    out.update({"measure_low_inputs": m_low, "measure_high_inputs": m_high, "measure_by_scale": rendered,
                "response_by_scale": {k: (v - m_base) / gap if abs(gap) > 1e-12 else float("nan")
                                      for k, v in rendered.items()}})
    return out


def per_target_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target grade from `counterfactual_metrics` output."""
    rows = []
    for j, g in enumerate(metrics["targets"]):
        row = {"target": g, "edited_grade": metrics["latent"]["mean_edited_grade_per_target"][j],
               "reencoded_grade": metrics["latent"]["mean_reencoded_grade_per_target"][j],
               "l1": metrics["proximity_to_reconstruction"]["l1_per_target"][j],
               "ssim": metrics["proximity_to_reconstruction"]["ssim_per_target"][j]}
        if "image_classifier" in metrics:
            row["oracle_positive_rate"] = metrics["image_classifier"]["positive_rate_per_target"][j]
            row["oracle_expected_grade"] = metrics["image_classifier"]["mean_expected_grade_per_target"][j]
        if "measure" in metrics:
            row["measure"] = metrics["measure"]["mean_measure_per_target"][j]
        rows.append(row)
    return rows


def region_for(card_name: str) -> Region | None:
    """The pathology map a synthetic dataset's generator reads from pixels (synth-grade's plaque), else None."""
    if card_name == "synth-grade":
        return lambda images: np.asarray(structure_map(np.asarray(images, dtype=np.float32))) > 0
    return None


def measure_for(card_name: str) -> Measure | None:
    """The structure measure a synthetic dataset's generator provides (synth-grade), else None."""
    if card_name == "synth-grade":
        return lambda images: np.atleast_1d(measure_structure(np.asarray(images, dtype=np.float32)))
    return None
