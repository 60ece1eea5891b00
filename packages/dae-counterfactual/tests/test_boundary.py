"""LatentBoundary: the calibrated edit against hand-computed points (research notes, section 6)."""

import json

import numpy as np
import pytest

from dae_counterfactual.boundary import LatentBoundary


@pytest.fixture
def plane():
    # w = (3, 4), b = -5, grade = 2 d + 1: at z = (0, 0) the distance is -1 and the grade -1
    return LatentBoundary.from_hyperplane([3.0, 4.0], -5.0, slope=2.0, offset=1.0)


def test_distance_grade_and_prediction(plane):
    z = np.array([[0.0, 0.0], [0.6, 0.8], [3.0, 4.0]])
    np.testing.assert_allclose(plane.distance(z), [-1.0, 0.0, 4.0])
    np.testing.assert_allclose(plane.grade(z), [-1.0, 1.0, 9.0])
    np.testing.assert_array_equal(plane.predict(z), [0, 0, 1])
    np.testing.assert_allclose(plane.distance_for_grade([0, 1, 2, 3]), [-0.5, 0.0, 0.5, 1.0])


def test_edit_to_grade_lands_exactly_on_the_target(plane):
    edited = plane.edit_to_grade(np.zeros((1, 2)), [0, 1, 2, 3])
    assert edited.shape == (1, 4, 2)
    np.testing.assert_allclose(edited[0], [[0.3, 0.4], [0.6, 0.8], [0.9, 1.2], [1.2, 1.6]], atol=1e-12)
    np.testing.assert_allclose(plane.distance(edited[0]), [-0.5, 0.0, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(plane.grade(edited[0]), [0.0, 1.0, 2.0, 3.0], atol=1e-12)


def test_edit_is_the_minimal_l2_move(plane):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 2))
    edited = plane.edit_to_grade(z, [2.5])[:, 0]
    # the move is parallel to the normal (3, 4) / 5: any other point at grade 2.5 is farther away
    moves = edited - z
    np.testing.assert_allclose(moves[:, 0] * 4 - moves[:, 1] * 3, 0, atol=1e-12)
    np.testing.assert_allclose(plane.grade(edited), 2.5)


def test_edit_in_standardised_space():
    # u = ((0 - 1) / 2, (0 + 1) / 0.5) = (-0.5, 2); d = (3 * -0.5 + 4 * 2 - 5) / 5 = 0.3; grade 1.6
    plane = LatentBoundary.from_hyperplane([3.0, 4.0], -5.0, 2.0, 1.0, mean=[1.0, -1.0], scale=[2.0, 0.5])
    z = np.zeros((1, 2))
    np.testing.assert_allclose(plane.distance(z), [0.3])
    np.testing.assert_allclose(plane.grade(z), [1.6])
    # target 3: d* = 1, u' = u + 0.7 (0.6, 0.8) = (-0.08, 2.56), z' = mu + sigma u' = (0.84, 0.28)
    edited = plane.edit_to_grade(z, [3.0])[0, 0]
    np.testing.assert_allclose(edited, [0.84, 0.28], atol=1e-12)
    np.testing.assert_allclose(plane.grade(edited[None]), [3.0])


def test_fixed_step_edit_of_the_notebooks():
    # D = 2, w = (3, 4), mu = (1, -1), sigma = (2, 0.5): z' = z + dir * step / sqrt(D) * sigma * w / |w|
    plane = LatentBoundary.from_hyperplane([3.0, 4.0], -5.0, 2.0, 1.0, mean=[1.0, -1.0], scale=[2.0, 0.5])
    z = np.zeros((1, 2))
    up = plane.edit_fixed_step(z, [1.0, 2.0], direction=1)[0]
    down = plane.edit_fixed_step(z, [1.0], direction=-1)[0]
    np.testing.assert_allclose(up[0], [0.848528, 0.282843], atol=1e-6)
    np.testing.assert_allclose(up[1], [1.697056, 0.565685], atol=1e-6)
    np.testing.assert_allclose(down[0], [-0.848528, -0.282843], atol=1e-6)
    # direction None crosses the hyperplane: z is on the positive side (d = 0.3), so it moves down
    np.testing.assert_allclose(plane.edit_fixed_step(z, [1.0])[0, 0], down[0])
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        plane.edit_fixed_step(z, [1.0], direction=2)


def test_fit_recovers_a_linear_grade_and_calibrates():
    rng = np.random.default_rng(0)
    n, d = 400, 8
    z = rng.normal(size=(n, d))
    direction = np.zeros(d)
    direction[:2] = [0.6, 0.8]
    severity = z @ direction
    grades = np.digitize(severity, [-1.0, -0.3, 0.3, 1.0])  # 0..4
    for classifier in ("svm", "logistic"):
        boundary = LatentBoundary(classifier=classifier, standardize=False).fit(z, grades)
        np.testing.assert_allclose(boundary.normal_[:2], direction[:2], atol=0.15)
        assert boundary.slope_ > 0
        pred = boundary.predict(z)
        assert (pred == (grades >= 1)).mean() > 0.9
        # the fitted calibration is the least-squares line of the grade on the distance
        dist = boundary.distance(z)
        slope, offset = np.polyfit(dist, grades, 1)
        assert boundary.slope_ == pytest.approx(slope) and boundary.offset_ == pytest.approx(offset)
        edited = boundary.edit_to_grade(z[:10], [0.0, 4.0])
        np.testing.assert_allclose(boundary.grade(edited.reshape(-1, d)).reshape(10, 2), [[0.0, 4.0]] * 10, atol=1e-9)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(60, 5))
    grades = (z[:, 0] > 0).astype(int) + (z[:, 0] > 1).astype(int)
    boundary = LatentBoundary(classifier="logistic", C=0.5).fit(z, grades)
    path = boundary.save(tmp_path / "b.json")
    again = LatentBoundary.load(path)
    assert again.get_params() == boundary.get_params()
    np.testing.assert_array_equal(again.grade(z), boundary.grade(z))
    np.testing.assert_array_equal(again.edit_to_grade(z, [0, 2]), boundary.edit_to_grade(z, [0, 2]))
    np.testing.assert_array_equal(again.edit_fixed_step(z, [100.0], along="mean-difference"),
                                  boundary.edit_fixed_step(z, [100.0], along="mean-difference"))
    data = json.loads(path.read_text())
    del data["mean_difference"]  # a boundary written before the class-mean difference was stored
    old = LatentBoundary.from_dict(data)
    np.testing.assert_array_equal(old.edit_fixed_step(z, [100.0]), boundary.edit_fixed_step(z, [100.0]))
    with pytest.raises(ValueError, match="refit it"):
        old.edit_fixed_step(z, [100.0], along="mean-difference")
    data["format"] = "other"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a latent boundary file"):
        LatentBoundary.load(path)


def test_bad_inputs_are_named():
    boundary = LatentBoundary()
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="both 0 and 1"):
        boundary.fit(z, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="3 values for 4 latents"):
        boundary.fit(z, [0, 1, 1])
    z[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2, dimension 1"):
        boundary.fit(z, [0, 1, 1, 0])
    plane = LatentBoundary.from_hyperplane([1.0, 0.0], 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="dimensions"):
        plane.distance(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="flat"):
        plane.edit_to_grade(np.zeros((1, 2)), [1.0])


@pytest.mark.parametrize("classifier", ["svm", "logistic"])
def test_fit_and_calibration_against_hand_computed_points(classifier):
    """Four latents on a line: the hyperplane is z_0 = 0 (by symmetry), the distances are -2, -1, 1, 2 and the
    least-squares line of the grades (0, 0, 2, 4) on them is grade = 1.0 d + 1.5 (sum d g / sum d^2 = 10 / 10, mean
    grade 1.5). An edit to grade 3 moves z_0 to d* = (3 - 1.5) / 1 = 1.5 and leaves z_1 alone."""
    z = np.array([[-2.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    grades = np.array([0, 0, 2, 4])
    boundary = LatentBoundary(classifier=classifier, standardize=False, C=10.0).fit(z, grades)
    np.testing.assert_allclose(boundary.normal_, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(boundary.distance(z), [-2.0, -1.0, 1.0, 2.0], atol=1e-3)
    assert boundary.slope_ == pytest.approx(1.0, abs=1e-3) and boundary.offset_ == pytest.approx(1.5, abs=1e-3)
    edited = boundary.edit_to_grade(np.array([[-2.0, 0.5]]), [3.0])[0, 0]
    np.testing.assert_allclose(edited, [1.5, 0.5], atol=2e-3)
    assert boundary.grade(edited[None])[0] == pytest.approx(3.0, abs=1e-12)  # exactly on the target


def test_fixed_steps_along_the_class_mean_difference():
    # two classes whose means differ along (1, 1) in standardised space; the classifier's normal is (1, 0)-ish
    # because only z_0 separates them cleanly, while z_1 shifts the mean too but overlaps
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1], n // 2)
    z = np.c_[np.where(y == 1, 3.0, -3.0) + rng.normal(size=n) * 0.3, np.where(y == 1, 1.0, -1.0) + rng.normal(size=n) * 3]
    boundary = LatentBoundary(standardize=False).fit(z, y)
    u = (z - boundary.mean_) / boundary.scale_
    expected = u[y == 1].mean(axis=0) - u[y == 0].mean(axis=0)
    np.testing.assert_allclose(boundary.mean_difference_, expected)
    unit = boundary.edit_direction("mean-difference")
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected))
    step = boundary.edit_fixed_step(z[:1], [np.sqrt(2.0)], direction=1, along="mean-difference")[0, 0]
    np.testing.assert_allclose(step - z[0], unit)  # step / sqrt(D) = 1 unit along the direction
    normal = boundary.edit_fixed_step(z[:1], [np.sqrt(2.0)], direction=1)[0, 0]
    np.testing.assert_allclose(normal - z[0], boundary.normal_)
    with pytest.raises(ValueError, match="'normal' or 'mean-difference'"):
        boundary.edit_direction("sideways")
