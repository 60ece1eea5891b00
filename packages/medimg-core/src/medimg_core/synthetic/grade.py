"""synth-grade: fundus-like RGB images whose ordinal grade 0-4 bins the severity of one lesion.

The lesion is a yellow-white plaque whose radius and opacity grow continuously with a severity
s in [0, 1]; every pixel's value is non-decreasing in s, so `measure_structure` (the plaque's
intensity-weighted area, read from the pixels alone) is non-decreasing in s and strictly increasing
once the plaque shows. That makes counterfactual images checkable: moving an image towards a higher
grade must raise the measure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from medimg_core.synthetic.base import SyntheticGenerator
from medimg_core.synthetic.draw import (
    blend,
    coords,
    corner_centre,
    disc,
    segment_distance,
    smooth_noise,
    soft_edge,
    to_uint8,
)

GRADE_EDGES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
N_GRADES = len(GRADE_EDGES) + 1
PLAQUE = (0.98, 0.92, 0.62)
#: blue-channel window of measure_structure: background stays below the low end, the plaque reaches the top
MEASURE_LOW, MEASURE_HIGH = 0.30, 0.56
STICKER_GREEN = (0.2, 0.8, 0.1)  # low blue: the artifact never counts in measure_structure


def grade_of(severity: np.ndarray | float) -> np.ndarray:
    """Grade 0..4 of severity in [0, 1]: the number of edges (0.2, 0.4, 0.6, 0.8) at or below it."""
    return np.digitize(np.asarray(severity, dtype=np.float64), GRADE_EDGES).astype(np.int64)


def lesion_radius(severity: float, size: int = 1) -> float:
    """Plaque radius (in pixels for `size`, in image units for size=1): 0.03 + 0.13 * s."""
    return float(size) * (0.03 + 0.13 * float(severity))


def lesion_opacity(severity: float) -> float:
    """Plaque opacity: 0 at s = 0, rising steeply to about 0.5 at s = 0.2, 1 at s = 1."""
    s = float(np.clip(severity, 0.0, 1.0))
    return min(1.0, 4.0 * s) * (0.55 + 0.45 * s)


def _as_hwc_float(image: Any) -> np.ndarray:
    """(H, W, 3) / (3, H, W) / (N, ...) uint8 or float [0, 1], numpy or torch -> float (..., H, W, 3)."""
    arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float32) / scale
    if arr.ndim not in (3, 4):
        raise ValueError(f"measure_structure: expected an RGB image (H, W, 3) or (3, H, W), or a batch; got {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[-3] == 3:
        arr = np.moveaxis(arr, -3, -1)
    if arr.shape[-1] != 3:
        raise ValueError(f"measure_structure: expected 3 channels, got shape {arr.shape}")
    return arr


def structure_map(image: Any) -> np.ndarray:
    """Per-pixel plaque score in [0, 1], (H, W) (or (N, H, W) for a batch), read from the blue channel."""
    arr = _as_hwc_float(image)
    return np.clip((arr[..., 2] - MEASURE_LOW) / (MEASURE_HIGH - MEASURE_LOW), 0.0, 1.0)


def measure_structure(image: Any) -> float | np.ndarray:
    """The plaque's size from pixels: its intensity-weighted area in percent of the image.

    Accepts uint8 or float [0, 1] images (H, W, 3) or (3, H, W), numpy or torch, or a batch of them
    (then returns an (N,) array). Background, vessels and the artifact contribute nothing; the value
    is non-decreasing in the generator's severity and strictly increasing once the plaque is visible.
    """
    score = structure_map(image)
    out = 100.0 * score.mean(axis=(-2, -1))
    return float(out) if np.ndim(out) == 0 else out


class SynthGrade(SyntheticGenerator):
    """Fundus-like RGB images with an ordinal grade 0-4 from the continuous severity of one plaque.

    Options (besides the shared ones, see SyntheticGenerator):
        grade_weights: relative frequency of grades 0..4 (default equal); severity is uniform within
            the grade's bin [0, 0.2), [0.2, 0.4), ... [0.8, 1].

    label_noise moves a grade one step up or down. Concept `lesion` = grade > 0 (a clinically
    relevant plaque; grade-0 images can show a faint sub-threshold spot, which is not annotated).
    """

    name = "synth-grade"
    title = "Synthetic fundus-like images with an ordinal lesion grade and continuous severity"
    task = "ordinal"
    channels = 3
    modality = "synthetic fundus photograph (RGB)"
    id_prefix = "grade"
    class_names: ClassVar[tuple[str, ...]] = tuple(str(g) for g in range(N_GRADES))
    concept_names: ClassVar[tuple[str, ...]] = ("lesion",)
    label_column = "grade"
    render_columns = ("severity",)
    artifact_description = "a green round sticker in a random image corner, outside the field of view"

    def __init__(
        self,
        *,
        grade_weights: Sequence[float] | None = None,
        size: int = 64,
        label_noise: float = 0.0,
        concept_noise: float = 0.0,
        spurious: float | None = None,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    ):
        super().__init__(size=size, label_noise=label_noise, concept_noise=concept_noise, spurious=spurious,
                         split_fractions=split_fractions)
        w = np.ones(N_GRADES) if grade_weights is None else np.asarray(grade_weights, dtype=np.float64)
        if w.shape != (N_GRADES,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"{self.name}: grade_weights needs {N_GRADES} non-negative weights, got {grade_weights}")
        self.grade_weights = w / w.sum()

    # -- ground truth ----------------------------------------------------------------------------
    def sample_truth(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        grades = rng.choice(N_GRADES, size=n, p=self.grade_weights)
        lo = np.array((0.0, *GRADE_EDGES))[grades]
        hi = np.array((*GRADE_EDGES, 1.0))[grades]
        # 6 decimals, as labels.csv holds them, so memory and disk agree; rounding stays inside the bin
        severity = np.round(lo + (hi - lo) * rng.random(n), 6)
        severity = np.minimum(severity, np.where(grades == N_GRADES - 1, 1.0, hi - 1e-6))
        columns = {"severity": severity, "pathology": (grades > 0).astype(np.uint8)}
        return (grades > 0).astype(np.uint8)[:, None], columns

    def targets_from_truth(self, truth: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return grade_of(columns["severity"])

    # -- the card -----------------------------------------------------------------------------------
    def card_extra(self) -> dict[str, Any]:
        return {
            "rule": "grade = number of the edges 0.2, 0.4, 0.6, 0.8 at or below severity; lesion = grade > 0; "
                    "pathology = grade > 0",
            "grade_edges": list(GRADE_EDGES),
            "grade_weights": [round(float(w), 6) for w in self.grade_weights],
            "lesion_radius": "(0.03 + 0.13 * severity) * size pixels",
            "lesion_opacity": "min(1, 4 * severity) * (0.55 + 0.45 * severity)",
            "measure": "medimg_core.synthetic.measure_structure(image): plaque area x intensity, % of the image",
        }

    def column_docs(self) -> dict[str, str]:
        return {
            "severity": "continuous ground-truth severity in [0, 1] (grade = its bin)",
            "pathology": "0/1, grade_clean > 0",
        }

    def description(self) -> str:
        return (
            "Fundus-like RGB images: a dark circular field of view, an orange retina with texture, a darker "
            "fovea, a pale optic disc and dark-red vessels. One yellow-white plaque (random position) grows "
            "continuously with a ground-truth severity s in [0, 1]: radius (0.03 + 0.13 s) of the image side, "
            "opacity rising from 0 at s = 0 to 1 at s = 1. The ordinal grade 0-4 bins s at 0.2, 0.4, 0.6, 0.8; "
            "the binary pathology is grade > 0. Concept `lesion` = grade > 0, with the plaque's pixel mask. "
            "`measure_structure(image)` measures the plaque from the pixels (non-decreasing in s), so "
            "counterfactual images can be checked for a monotonic change; `render(seed, index, concepts, "
            "severity=s)` redraws a sample at any severity."
        )

    # -- drawing -------------------------------------------------------------------------------------
    def render(self, seed: int, index: int, concepts: Sequence[float] | np.ndarray | None = None,
               artifact: bool = False, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of sample `index` of `seed` at severity `params["severity"]`.

        `concepts` is derived (lesion = grade > 0) and may be left out.
        """
        if "severity" not in params:
            raise TypeError(f"{self.name}: render needs severity=<float in [0, 1]>")
        severity = float(params["severity"])
        if not 0.0 <= severity <= 1.0:
            raise ValueError(f"{self.name}: severity must be in [0, 1], got {severity}")
        lesion = np.array([float(grade_of(severity) > 0)])
        return super().render(seed, index, lesion, artifact, severity=severity)

    def render_sample(
        self, rng: np.random.Generator, concepts: np.ndarray, artifact: bool, params: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and the mask (1, H, W). Every random number is drawn whatever the severity."""
        S = self.size
        yy, xx = coords(S)
        severity = float(params["severity"])

        # --- random parameters, always drawn in this order ---
        retina = np.array([0.80, 0.38, 0.16]) + rng.uniform(-0.03, 0.03, 3)
        texture = smooth_noise(rng, S, 6) * 0.04
        grain = rng.normal(0.0, 0.01, (S, S, 3)).astype(np.float32)
        fovea = 0.5 + rng.uniform(-0.02, 0.02, 2)
        disc_side = -1.0 if rng.random() < 0.5 else 1.0
        disc_y = 0.5 + rng.uniform(-0.04, 0.04)
        vessel_turns = rng.uniform(-0.5, 0.5, (4, 6))
        vessel_width = rng.uniform(0.008, 0.012, 4)
        lesion_angle = rng.uniform(0.0, 2 * np.pi)
        lesion_dist = rng.uniform(0.16, 0.28)
        lesion_tex = 0.88 + 0.12 * (smooth_noise(rng, S, 8) * 0.5 + 0.5)
        corner = int(rng.integers(4))

        # --- retina in a circular field of view ---
        r = np.hypot(yy - 0.5, xx - 0.5)
        fov = soft_edge(0.47 - r, S)
        base = retina[None, None, :] * (1.0 - 0.35 * (r / 0.47) ** 2)[..., None] + texture[..., None] + grain
        base = blend(base, base * 0.72, disc(yy, xx, fovea[0], fovea[1], 0.07, S, soft_px=3.0))
        disc_x = 0.5 + disc_side * 0.3
        base = blend(base, (0.97, 0.70, 0.22), disc(yy, xx, disc_y, disc_x, 0.07, S, soft_px=1.5))
        vessels = np.zeros((S, S), dtype=np.float32)
        toward_centre = 0.0 if disc_side < 0 else np.pi
        for v, spread in enumerate((0.7, -0.7, 1.3, -1.3)):
            direction = toward_centre + spread
            py, px = disc_y, disc_x
            for step in range(6):
                direction += 0.3 * vessel_turns[v, step]
                qy, qx = py + 0.075 * np.sin(direction), px + 0.075 * np.cos(direction)
                line = soft_edge(vessel_width[v] - segment_distance(yy, xx, (py, px), (qy, qx)), S)
                vessels = np.maximum(vessels, line)
                py, px = qy, qx
        base = blend(base, (0.50, 0.10, 0.06), vessels * np.float32(0.85))

        # --- the plaque: radius and opacity grow with severity; each pixel is non-decreasing in s ---
        ly = 0.5 + lesion_dist * np.sin(lesion_angle)
        lx = 0.5 + lesion_dist * np.cos(lesion_angle)
        radius = lesion_radius(severity)
        coverage = soft_edge(radius - np.hypot(yy - ly, xx - lx), S, width_px=1.5)
        base = blend(base, PLAQUE, coverage * np.float32(lesion_opacity(severity)) * lesion_tex)

        canvas = blend(np.full((S, S, 3), 0.02, dtype=np.float32), base, fov)
        if artifact:
            sy, sx = corner_centre(corner, 0.075)
            canvas = blend(canvas, STICKER_GREEN, disc(yy, xx, sy, sx, 0.05, S))
        masks = np.zeros((1, S, S), dtype=np.uint8)
        if concepts[0]:
            masks[0] = np.hypot(yy - ly, xx - lx) < radius
        return to_uint8(canvas), masks
