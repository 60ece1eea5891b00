"""synth-cxr: grayscale chest-radiograph-like images with five localized findings (multi-label)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from medimg_core.synthetic.base import SyntheticGenerator, prevalence_vector
from medimg_core.synthetic.draw import (
    blend,
    coords,
    corner_centre,
    disc,
    ellipse,
    ellipse_value,
    smooth_noise,
    soft_edge,
    to_uint8,
)

CXR_FINDINGS: tuple[str, ...] = ("nodule", "effusion", "cardiomegaly", "consolidation", "pneumothorax")

FINDING_LOOKS = {
    "nodule": "a small, sharp, bright round spot in the middle zone of one lung",
    "effusion": "a homogeneous white opacity filling the base of one lung, its top rising laterally (meniscus)",
    "cardiomegaly": "an enlarged heart shadow (cardiothoracic ratio about 0.6 instead of 0.4)",
    "consolidation": "a larger, fuzzy, mottled opacity in the middle zone of the lung opposite the nodule's",
    "pneumothorax": "a black rim without lung markings at the apex and side of one lung, edged by a thin pleural line",
}


class SynthCXR(SyntheticGenerator):
    """Grayscale chest-like images (lungs, ribs, mediastinum, heart) with five independent findings.

    Each finding has its own zone (nodule and consolidation: the middle zones of opposite lungs;
    effusion: a lung base; pneumothorax: a lung apex; cardiomegaly: the heart), so masks never overlap.
    The labels are the findings (`label_<finding>` columns), and the findings are also the concepts
    (`<finding>` columns, with masks); the two differ only by label_noise and concept_noise.

    Options (besides the shared ones, see SyntheticGenerator):
        prevalence: Bernoulli probability of each finding, one number, 5 numbers or {name: p}
            (default 0.3, so about 17% of images have no finding).
    """

    name = "synth-cxr"
    title = "Synthetic chest radiographs with localized findings and masks"
    task = "multilabel"
    channels = 1
    modality = "synthetic chest X-ray (grayscale)"
    id_prefix = "cxr"
    class_names: ClassVar[tuple[str, ...]] = CXR_FINDINGS
    concept_names: ClassVar[tuple[str, ...]] = CXR_FINDINGS
    artifact_description = "a bright laterality marker (a square with a dark L) in a random image corner"

    def __init__(
        self,
        *,
        prevalence: float | Sequence[float] | Mapping[str, float] = 0.3,
        size: int = 64,
        label_noise: float = 0.0,
        concept_noise: float = 0.0,
        spurious: float | None = None,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    ):
        super().__init__(size=size, label_noise=label_noise, concept_noise=concept_noise, spurious=spurious,
                         split_fractions=split_fractions)
        self.prevalence = prevalence_vector(prevalence, CXR_FINDINGS, self.name, default=0.3)

    def sample_truth(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return (rng.random((n, len(CXR_FINDINGS))) < self.prevalence[None, :]).astype(np.uint8), {}

    def targets_from_truth(self, truth: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(truth, dtype=np.float32).copy()

    def card_extra(self) -> dict[str, Any]:
        return {
            "rule": {f: f for f in CXR_FINDINGS},
            "finding_prevalence": {f: float(p) for f, p in zip(CXR_FINDINGS, self.prevalence, strict=True)},
            "no_finding_rate": round(float(np.prod(1 - self.prevalence)), 6),
        }

    def description(self) -> str:
        looks = "; ".join(f"`{f}`: {FINDING_LOOKS[f]}" for f in CXR_FINDINGS)
        return (
            "Grayscale chest-radiograph-like images: body outline, two lung fields with vascular markings and "
            "ribs, mediastinum and heart. Five findings, sampled independently, each in its own zone so masks "
            f"never overlap: {looks}. Multi-label task: label `<finding>` is 1 exactly where the finding is "
            "drawn (before label noise); images may have no finding. The findings are also the concepts, "
            "each with a pixel mask of the finding's region (the lung area it covers, or the heart "
            "for cardiomegaly). Image-left is the patient's right, as on a PA film."
        )

    def render_sample(
        self, rng: np.random.Generator, concepts: np.ndarray, artifact: bool, params: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Grayscale (H, W) uint8 and masks (5, H, W). Every random number is drawn whatever is present."""
        S = self.size
        yy, xx = coords(S)
        present = dict(zip(CXR_FINDINGS, np.asarray(concepts, dtype=bool), strict=True))

        # --- random parameters, always drawn in this order ---
        cx = 0.5 + rng.uniform(-0.02, 0.02)
        sc = rng.uniform(0.96, 1.03)
        tissue = rng.uniform(0.38, 0.46)
        lung_level = rng.uniform(0.14, 0.20)
        markings = smooth_noise(rng, S, 10) * 0.03 + smooth_noise(rng, S, 20) * 0.02
        rib_phase = rng.uniform(-0.012, 0.012)
        heart_rx_normal = rng.uniform(0.105, 0.12)
        heart_rx_big = rng.uniform(0.175, 0.19)
        sides = rng.integers(2, size=3)  # pneumothorax, effusion, nodule (consolidation: the other lung)
        nod_y, nod_dx, nod_r = rng.uniform(0.39, 0.44), rng.uniform(-0.04, 0.04), rng.uniform(0.05, 0.06)
        cons_y, cons_dx = rng.uniform(0.40, 0.43), rng.uniform(-0.02, 0.02)
        cons_ry, cons_rx = rng.uniform(0.065, 0.075), rng.uniform(0.08, 0.10)
        cons_edge, cons_mottle = smooth_noise(rng, S, 8), smooth_noise(rng, S, 16)
        eff_h = rng.uniform(0.15, 0.19)
        corner = int(rng.integers(4))
        noise = rng.normal(0.0, 0.012, (S, S)).astype(np.float32)

        # --- anatomy ---
        lungs = [(0.45, cx - 0.19 * sc, 0.29 * sc, 0.135 * sc), (0.45, cx + 0.19 * sc, 0.28 * sc, 0.13 * sc)]
        canvas = np.full((S, S), 0.04, dtype=np.float32)
        body = ellipse(yy, xx, 0.58, cx, 0.55 * sc, 0.47 * sc, S)
        canvas = blend(canvas, tissue + 0.08 * (yy - 0.5), body)
        lung_cover = [ellipse(yy, xx, *lung, S) for lung in lungs]
        lung_in = [ellipse_value(yy, xx, *lung) < 1.0 for lung in lungs]
        ribs = np.zeros((S, S), dtype=np.float32)
        for k in range(8):
            curve = 0.19 + k * 0.07 + rib_phase + 0.05 * ((xx - cx) / 0.3) ** 2
            ribs = np.maximum(ribs, soft_edge(0.011 - np.abs(yy - curve), S))
        lung_value = lung_level + markings + 0.07 * ribs
        for cover in lung_cover:
            canvas = blend(canvas, lung_value, cover)
        mediastinum = soft_edge(0.055 - np.abs(xx - cx), S) * soft_edge(0.8 - yy, S)
        canvas = blend(canvas, 0.6, mediastinum)
        trachea = soft_edge(0.012 - np.abs(xx - cx), S) * soft_edge(0.3 - yy, S)
        canvas = blend(canvas, 0.25, trachea)
        heart_rx, heart_ry = (heart_rx_big, 0.14) if present["cardiomegaly"] else (heart_rx_normal, 0.12)
        heart = (0.63, cx + 0.035, heart_ry * sc, heart_rx * sc)
        heart_in = ellipse_value(yy, xx, *heart) < 1.0
        visible = [inside & ~heart_in for inside in lung_in]

        masks = np.zeros((len(CXR_FINDINGS), S, S), dtype=np.uint8)

        def lung_geometry(side: int) -> tuple[float, float, float, float, float]:
            ly, lx, ry, rx = lungs[side]
            lateral = -1.0 if side == 0 else 1.0
            return ly, lx, ry, rx, lateral

        # pneumothorax: the apical-lateral rim between the lung edge and the collapsed lung
        ly, lx, ry, rx, lateral = lung_geometry(int(sides[0]))
        collapsed = (ly + 0.05, lx - lateral * 0.035, ry * 0.78, rx * 0.76)
        region = lung_in[int(sides[0])] & (ellipse_value(yy, xx, *collapsed) >= 1.0) & (yy < 0.31)
        if present["pneumothorax"]:
            canvas = np.where(region, 0.07 + 0.03 * ribs, canvas).astype(np.float32)
            rim = np.sqrt(ellipse_value(yy, xx, *collapsed))
            pleura = soft_edge(0.006 - np.abs(rim - 1.0) * collapsed[3], S) * (yy < 0.31) * lung_cover[int(sides[0])]
            canvas = blend(canvas, 0.45, pleura.astype(np.float32))
            masks[4] = region

        # effusion: the lung base below a meniscus that rises laterally
        ly, lx, ry, rx, lateral = lung_geometry(int(sides[1]))
        lat = np.clip((xx - lx) * lateral / rx, -1.0, 1.0)
        meniscus = ly + ry - eff_h * sc - 0.05 * lat
        region = visible[int(sides[1])] & (yy > meniscus)
        if present["effusion"]:
            fluid = soft_edge(yy - meniscus, S) * lung_cover[int(sides[1])]
            canvas = blend(canvas, 0.5, fluid.astype(np.float32))
            masks[1] = region

        # nodule: a sharp bright disc in the middle zone
        ly, lx, ry, rx, lateral = lung_geometry(int(sides[2]))
        ny, nx = nod_y, lx + nod_dx
        if present["nodule"]:
            canvas = canvas + 0.32 * disc(yy, xx, ny, nx, nod_r, S) * lung_cover[int(sides[2])]
            masks[0] = (np.hypot(yy - ny, xx - nx) < nod_r) & visible[int(sides[2])]

        # consolidation: a fuzzy mottled patch in the middle zone of the other lung
        side = 1 - int(sides[2])
        ly, lx, ry, rx, lateral = lung_geometry(side)
        patch_value = np.sqrt(ellipse_value(yy, xx, cons_y, lx + cons_dx, cons_ry, cons_rx)) + 0.18 * cons_edge
        region = (patch_value < 1.0) & visible[side]
        if present["consolidation"]:
            cover = soft_edge((1.0 - patch_value) * cons_ry, S, width_px=2.0) * lung_cover[side]
            canvas = canvas + (0.2 + 0.07 * cons_mottle) * cover
            masks[3] = region

        # the heart last: it hides what lies behind it
        canvas = blend(canvas, 0.6 + 0.03 * markings, ellipse(yy, xx, *heart, S))
        if present["cardiomegaly"]:
            masks[2] = heart_in

        # spurious artifact: a laterality marker (bright square, dark L) in a corner
        if artifact:
            my, mx = corner_centre(corner, 0.08)
            h = 0.05
            square = (np.abs(yy - my) < h) & (np.abs(xx - mx) < h)
            stroke = ((np.abs(xx - (mx - 0.02)) < 0.009) & (np.abs(yy - my) < 0.03)) | (
                (np.abs(yy - (my + 0.025)) < 0.009) & (xx > mx - 0.029) & (xx < mx + 0.025))
            canvas = np.where(square, 0.95, canvas)
            canvas = np.where(stroke, 0.15, canvas).astype(np.float32)

        canvas = canvas + noise
        return to_uint8(canvas), masks
