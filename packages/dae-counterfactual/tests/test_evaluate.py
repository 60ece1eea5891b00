"""Counterfactual metrics on hand-made series (known flips, grades and measures)."""

import numpy as np
import pytest
import torch

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.evaluate import (
    counterfactual_metrics,
    image_distances,
    per_target_table,
    select_images,
)
from dae_counterfactual.explain import CounterfactualSeries

TARGETS = np.array([0.0, 2.0, 4.0])
# grade = 2 d + 1 on the hyperplane z_0 = 0: the targets sit at distances -0.5, 0.5, 1.5
PLANE = LatentBoundary.from_hyperplane([1.0, 0.0], 0.0, slope=2.0, offset=1.0)


def series(distance: float, reencoded: list[float], brightness: list[float], sid: str) -> CounterfactualSeries:
    image = torch.full((3, 8, 8), 0.5)
    cfs = torch.stack([torch.full((3, 8, 8), b) for b in brightness])
    d_edit = PLANE.distance_for_grade(TARGETS)
    r = np.asarray(reencoded)
    return CounterfactualSeries(id=sid, image=image, reconstruction=image.clone(), mode="grade", targets=TARGETS,
                                counterfactuals=cfs, grade=2 * distance + 1, distance=distance,
                                edited_grades=TARGETS.copy(), edited_distances=d_edit, reencoded_grades=r,
                                reencoded_distances=(r - 1) / 2)


def test_flip_rates_grades_and_measure():
    s1 = series(-1.0, [0.2, 1.6, 3.0], [0.5, 0.6, 0.7], "a")  # negative image: targets 2 and 4 cross
    s2 = series(+1.0, [1.4, 2.2, 3.8], [0.5, 0.4, 0.6], "b")  # positive image: target 0 crosses, stays positive
    m = counterfactual_metrics([s1, s2], PLANE, measure=lambda x: x.mean(axis=(1, 2, 3)) * 10)
    # crossing pairs: (a, 2), (a, 4), (b, 0); re-encoded sides: a2 + (1.6 > 1), a4 +, b0 + (1.4 > 1) -> 2 of 3
    assert m["latent"]["n_crossing_pairs"] == 3
    assert m["latent"]["flip_rate"] == pytest.approx(2 / 3)
    assert m["latent"]["target_side_agreement"] == pytest.approx(5 / 6)
    assert m["latent"]["mean_reencoded_grade_per_target"] == pytest.approx([0.8, 1.9, 3.4])
    assert m["latent"]["mean_abs_grade_error"] == pytest.approx(np.mean([0.2, 0.4, 1.0, 1.4, 0.2, 0.2]))
    # measured brightness: series a increases, series b dips -> half the series are monotone
    assert m["measure"]["monotone_fraction"] == 0.5
    assert m["measure"]["strictly_increasing_fraction"] == 0.5
    assert m["measure"]["mean_measure_per_target"] == pytest.approx([5.0, 5.0, 6.5])
    assert m["proximity_to_reconstruction"]["l1_per_target"] == pytest.approx([0.0, 0.1, 0.15])
    assert m["reconstruction"]["mse"] == 0.0 and m["reconstruction"]["ssim"] == pytest.approx(1.0)
    # inputs all measure 5 (brightness 0.5): no real gap between true grades 0 and 4 -> no ratio
    assert m["measure"]["change_lowest_to_highest_target"] == pytest.approx(1.5)
    assert np.isnan(m["measure"]["effect_ratio"])
    rows = per_target_table(m)
    assert [r["target"] for r in rows] == [0.0, 2.0, 4.0] and rows[2]["measure"] == pytest.approx(6.5)


def test_flat_series_are_not_monotone():
    flat = series(-1.0, [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], "flat")
    m = counterfactual_metrics([flat], PLANE, measure=lambda x: x.mean(axis=(1, 2, 3)))
    assert m["measure"]["monotone_fraction"] == 0.0
    assert np.isnan(m["latent"]["spearman_target_vs_reencoded_grade"])


def test_select_images_spreads_over_grades():
    targets = np.array([0] * 50 + [1] * 3 + [2] * 50)
    chosen = select_images(targets, 9, seed=0)
    assert len(chosen) == 9 and len(set(chosen)) == 9
    counts = np.bincount(targets[chosen], minlength=3)
    assert counts.tolist() == [3, 3, 3]
    assert select_images(targets, 9, seed=0).tolist() == chosen.tolist()
    assert len(select_images(targets, 500)) == len(targets)


def test_image_distances_by_hand():
    a = torch.zeros(1, 1, 8, 8)
    b = torch.full((1, 1, 8, 8), 0.5)
    d = image_distances(a, b)
    assert d["mse"] == pytest.approx(0.25) and d["l1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one shape"):
        image_distances(a, torch.zeros(1, 1, 4, 4))


def test_effect_ratio_compares_the_move_with_real_images():
    # inputs of true grade 0 measure 1, of true grade 4 measure 9 (real gap 8); the counterfactuals move
    # from 2 (target 0) to 4 (target 4) on average: a quarter of the real range
    def make(grade: int, brightness_in: float, cf: list[float]) -> CounterfactualSeries:
        s = series(-1.0, [0.0, 1.0, 2.0], cf, f"g{grade}")
        s.image = torch.full((3, 8, 8), brightness_in)
        s.true_grade = float(grade)
        return s

    m = counterfactual_metrics([make(0, 0.1, [0.1, 0.2, 0.3]), make(4, 0.9, [0.3, 0.4, 0.5])], PLANE,
                               measure=lambda x: x.mean(axis=(1, 2, 3)) * 10)
    ms = m["measure"]
    assert ms["mean_measure_inputs_per_true_grade"] == pytest.approx({"0": 1.0, "4": 9.0})
    assert ms["real_gap_lowest_to_highest_grade"] == pytest.approx(8.0)
    assert ms["change_lowest_to_highest_target"] == pytest.approx(2.0)
    assert ms["effect_ratio"] == pytest.approx(0.25)


def step_series(distance: float, steps: list[float], brightness_in: float, cf: list[float], grade: float,
                sid: str) -> CounterfactualSeries:
    """A series in step mode (direction +1) on PLANE: the edited distance is distance + step / 100."""
    steps_arr = np.asarray(steps)
    d_edit = distance + steps_arr / 100
    return CounterfactualSeries(id=sid, image=torch.full((3, 8, 8), brightness_in),
                                reconstruction=torch.full((3, 8, 8), brightness_in), mode="step", targets=steps_arr,
                                counterfactuals=torch.stack([torch.full((3, 8, 8), b) for b in cf]),
                                grade=2 * distance + 1, distance=distance, edited_grades=2 * d_edit + 1,
                                edited_distances=d_edit, reencoded_grades=2 * d_edit + 1, reencoded_distances=d_edit,
                                true_grade=grade)


def test_step_mode_series_get_the_same_metrics():
    steps = [-200.0, 200.0]
    low = step_series(-1.0, steps, 0.1, [0.1, 0.3], 0.0, "low")  # edited distances -3, +1: the +200 step crosses
    high = step_series(1.0, steps, 0.9, [0.5, 0.9], 4.0, "high")  # -1, +3: the -200 step crosses
    m = counterfactual_metrics([low, high], PLANE, measure=lambda x: x.mean(axis=(1, 2, 3)) * 10)
    assert m["edit"] == "step" and m["targets"] == steps and "target_grades" not in m
    assert m["latent"]["n_crossing_pairs"] == 2 and m["latent"]["flip_rate"] == 1.0
    assert m["latent"]["mean_abs_grade_error"] == 0.0  # re-encoded grades equal the edited latents' grades
    # the real gap is between the lowest and the highest TRUE grade (0 and 4): 9 - 1 = 8; the counterfactuals
    # move from (1 + 5) / 2 = 3 to (3 + 9) / 2 = 6
    assert m["measure"]["real_gap_grades"] == [0.0, 4.0]
    assert m["measure"]["effect_ratio"] == pytest.approx(3 / 8)
    # towards the lowest grade: the grade-4 image's reconstruction measures 9, its -200 counterfactual 5, a real
    # grade-0 image 1: half the way
    low_block = m["towards_lowest"]
    assert low_block["n_images"] == 1 and low_block["removal_ratio"] == pytest.approx(0.5)
    # intervals over the images: each resample of two images holds both, one, or the other twice
    assert m["latent"]["flip_rate_ci"] == [1.0, 1.0]  # every crossing pair flips
    # only the resamples holding both images define the ratio, and all of those give 3/8
    assert m["measure"]["effect_ratio_ci"] == pytest.approx([3 / 8, 3 / 8], rel=1e-5)
    assert m["towards_lowest"]["removal_ratio_ci"] == pytest.approx([0.5, 0.5])  # defined only with both images
    flipped = step_series(-1.0, steps, 0.1, [0.1, 0.3], 0.0, "flipped")
    flipped.edited_distances = flipped.edited_distances[::-1].copy()  # as if made with direction -1
    with pytest.raises(ValueError, match="direction \\+1"):
        counterfactual_metrics([flipped], PLANE)
    with pytest.raises(ValueError, match="one mode"):
        counterfactual_metrics([low, series(-1.0, [0.0, 1.0, 2.0], [0.5, 0.5, 0.5], "g")], PLANE)


def test_towards_lowest_reports_the_locality_of_the_removal():
    # a 4x4 "plaque" in the corner of an 8x8 image: the grade-4 image's counterfactual to grade 0 darkens the
    # plaque fully and one pixel outside it
    def image(plaque: float, outside: float = 0.0) -> torch.Tensor:
        x = torch.full((3, 8, 8), outside)
        x[:, :4, :4] = plaque
        return x

    region = lambda x: np.pad(np.ones((len(x), 4, 4), bool), ((0, 0), (0, 4), (0, 4)))  # noqa: E731
    s_hi = series(1.0, [0.0, 1.0, 2.0], [0.0, 0.0, 0.0], "hi")
    s_hi.image, s_hi.reconstruction, s_hi.true_grade = image(1.0), image(1.0), 4.0
    cf0 = image(0.0)
    cf0[:, 7, 7] = 1.0  # one changed pixel outside
    s_hi.counterfactuals = torch.stack([cf0, image(1.0), image(1.0)])
    s_lo = series(-1.0, [0.0, 1.0, 2.0], [0.0, 0.0, 0.0], "lo")
    s_lo.image, s_lo.reconstruction, s_lo.true_grade = image(0.0), image(0.0), 0.0
    s_lo.counterfactuals = torch.stack([image(0.0), image(0.0), image(0.0)])
    measure = lambda x: np.asarray(x)[:, :, :4, :4].mean(axis=(1, 2, 3))  # noqa: E731
    m = counterfactual_metrics([s_hi, s_lo], PLANE, measure=measure, region=region)
    low = m["towards_lowest"]
    assert low["n_images"] == 1 and low["removal_ratio"] == pytest.approx(1.0)
    # 16 plaque pixels changed by 3 (summed over channels), one outside pixel by 3: 1/17 of the change outside
    assert low["locality"]["outside_fraction"] == pytest.approx(1 / 17)


def test_latent_swap_probe_renders_the_low_image_with_interpolated_latents(tiny_config, randomise):
    from dae_counterfactual.evaluate import latent_swap_probe
    from dae_counterfactual.model import DiffusionAutoencoder

    model = randomise(DiffusionAutoencoder(tiny_config(), 3, 16)).eval()
    g = torch.Generator().manual_seed(0)
    x_low, x_high = torch.rand(2, 3, 16, 16, generator=g) * 0.2, torch.rand(2, 3, 16, 16, generator=g) * 0.2 + 0.8
    brightness = lambda x: x.mean(axis=(1, 2, 3))  # noqa: E731
    out = latent_swap_probe(model, x_low, x_high, brightness, 3, 3, scales=(0.0, 1.0))
    assert out["n_pairs"] == 2 and out["measure_high_inputs"] > out["measure_low_inputs"]
    z = model.encode(x_low)
    recon = model.render(model.encode_stochastic(x_low, z, 3), z, 3)  # scale 0 is the reconstruction
    assert out["measure_by_scale"]["0"] == pytest.approx(float(brightness(recon.numpy()).mean()))
    assert out["response_by_scale"]["0"] == 0.0
    gap = out["measure_high_inputs"] - out["measure_low_inputs"]
    expected = (out["measure_by_scale"]["1"] - out["measure_by_scale"]["0"]) / gap
    assert out["response_by_scale"]["1"] == pytest.approx(expected)
    # the pixel response needs no measure: mean |render_s - render_0| against mean |x_high - x_low|
    pixel = out["pixel"]
    assert pixel["l1_by_scale"]["0"] == 0.0 and pixel["l1_inputs"] == pytest.approx(float((x_high - x_low).abs().mean()))
    assert pixel["response_by_scale"]["1"] == pytest.approx(pixel["l1_by_scale"]["1"] / pixel["l1_inputs"])
    bare = latent_swap_probe(model, x_low, x_high, None, 3, 3, scales=(0.0, 1.0))
    assert "response_by_scale" not in bare and bare["pixel"]["l1_by_scale"] == pytest.approx(pixel["l1_by_scale"])
    with pytest.raises(ValueError, match="one shape"):
        latent_swap_probe(model, x_low, x_high[:1], brightness, 3, 3)


def test_change_outside_the_pathology_region():
    from dae_counterfactual.evaluate import change_outside_region

    ref = np.zeros((2, 1, 2, 2))
    cf = ref.copy()
    cf[0, 0, 0, 0] = 1.0  # inside the region (pixel (0, 0))
    cf[0, 0, 1, 1] = 3.0  # outside
    cf[1, 0, 0, 0] = 2.0  # inside only

    def region(images):
        maps = np.zeros((len(images), 2, 2), bool)
        maps[:, 0, 0] = True
        return maps

    out = change_outside_region(cf, ref, region)
    assert out["outside_fraction"] == pytest.approx((3 / 4 + 0) / 2)
    assert out["mean_change_inside"] == pytest.approx(1.5) and out["mean_change_outside"] == pytest.approx(3 / 6)
    assert out["region_fraction"] == pytest.approx(0.25)
    assert out["mean_signed_change_outside"] == pytest.approx([3 / 6])
    # (1, 1) is diagonal to the region: outside the one-pixel ring (a cross) too
    assert out["outside_fraction_beyond_1px"] == pytest.approx(out["outside_fraction"])
    # a change right next to the region is outside it but inside its one-pixel ring
    ring = np.zeros((1, 1, 2, 2))
    ring[0, 0, 0, 1] = 1.0
    ring[0, 0, 1, 1] = 1.0
    out = change_outside_region(ring, np.zeros_like(ring), region)
    assert out["outside_fraction"] == pytest.approx(1.0) and out["outside_fraction_beyond_1px"] == pytest.approx(0.5)
    s = series(-1.0, [0.2, 1.6, 3.0], [0.5, 0.6, 0.7], "a")
    m = counterfactual_metrics([s], PLANE, region=lambda x: np.zeros((len(x), 8, 8), bool))
    assert m["locality"]["outside_fraction"] == pytest.approx(1.0)  # no region: every change is outside
