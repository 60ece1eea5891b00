"""synth-derm: dermoscopy-like lesions whose benign/malignant label is a Boolean rule over six concepts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from medimg_core.synthetic.base import (
    REPORTS_NAME,
    STREAM_REPORT,
    SyntheticGenerator,
    prevalence_vector,
    stream,
)
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
from medimg_core.synthetic.reports import REPORT_TERMS, ReportOptions, write_report
from medimg_core.synthetic.rules import parse_rule, truth_table

DERM_CONCEPTS: tuple[str, ...] = (
    "irregular_border",
    "blue_white_veil",
    "dots_and_globules",
    "streaks",
    "atypical_network",
    "regression_area",
)
DEFAULT_RULE = "(irregular_border & blue_white_veil) | streaks"

CONCEPT_LOOKS = {
    "irregular_border": "jagged dark protrusions along one stretch of the lesion border",
    "blue_white_veil": "a bluish-grey blotch with whitish haze inside the lesion",
    "dots_and_globules": "several round near-black dots inside the lesion",
    "streaks": "dark radial lines with bulbous tips crossing the border outwards",
    "atypical_network": "a thick, irregular dark mesh on a lighter brown patch",
    "regression_area": "a white scar-like patch peppered with grey granules",
}

STICKER_GREEN = (0.2, 0.8, 0.1)
N_SECTORS = 6
SECTOR_MARGIN = 0.07  # fraction of a sector left blank on each side, so regions never touch


class SynthDerm(SyntheticGenerator):
    """Dermoscopy-like RGB lesions with six binary concepts, each drawn in its own sector of the lesion.

    Options (besides the shared ones, see SyntheticGenerator):
        rule: the label, a Boolean expression of `&`, `|`, `~` and parentheses over the concept names;
            malignant where true. Default `(irregular_border & blue_white_veil) | streaks`.
        prevalence: Bernoulli probability of each concept, one number, K numbers or {name: p} (default 0.45).
        reports: also write one short free-text dermoscopy report per image (`reports.csv`, columns id,report),
            written from the drawn concepts with paraphrases, omissions and noise (see synthetic.reports):
            a drawn concept is mentioned with probability `report_mention` (default 0.7), a concept not drawn
            is mentioned as present with probability `report_false_mention` (0.05) or else explicitly negated
            with probability `report_negation` (0.15). The label is never written.
    """

    name = "synth-derm"
    title = "Synthetic dermoscopy lesions with ground-truth concepts, masks and rule"
    task = "binary"
    channels = 3
    modality = "synthetic dermoscopy (RGB)"
    id_prefix = "derm"
    class_names: ClassVar[tuple[str, ...]] = ("benign", "malignant")
    concept_names: ClassVar[tuple[str, ...]] = DERM_CONCEPTS
    concept_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "border": ("irregular_border", "streaks"),
        "colour": ("blue_white_veil", "regression_area"),
        "structure": ("dots_and_globules", "atypical_network"),
    }
    artifact_description = "a green round sticker in a random image corner"

    def __init__(
        self,
        *,
        rule: str = DEFAULT_RULE,
        prevalence: float | Sequence[float] | Mapping[str, float] = 0.45,
        size: int = 64,
        label_noise: float = 0.0,
        concept_noise: float = 0.0,
        spurious: float | None = None,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
        reports: bool = False,
        report_mention: float = 0.7,
        report_false_mention: float = 0.05,
        report_negation: float = 0.15,
    ):
        super().__init__(size=size, label_noise=label_noise, concept_noise=concept_noise, spurious=spurious,
                         split_fractions=split_fractions)
        self.rule = parse_rule(rule, DERM_CONCEPTS)
        _, outputs = truth_table(self.rule)
        if outputs.all() or not outputs.any():
            raise ValueError(f"{self.name}: rule {str(self.rule)!r} is always {bool(outputs[0])}; "
                             "the labels would have one class")
        self.prevalence = prevalence_vector(prevalence, DERM_CONCEPTS, self.name, default=0.45)
        self.reports = bool(reports)
        try:
            self.report_options = ReportOptions(report_mention, report_false_mention, report_negation)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None

    # -- ground truth ----------------------------------------------------------------------------
    def sample_truth(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return (rng.random((n, len(DERM_CONCEPTS))) < self.prevalence[None, :]).astype(np.uint8), {}

    def targets_from_truth(self, truth: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.rule.evaluate(truth).astype(np.int64)

    def expected_positive_rate(self) -> float:
        """P(malignant) under the concept prevalences, before label noise (exact, from the truth table)."""
        names = self.rule.variables
        combos, outputs = truth_table(self.rule)
        p = np.array([self.prevalence[DERM_CONCEPTS.index(nm)] for nm in names])
        probs = np.prod(np.where(combos == 1, p[None, :], 1 - p[None, :]), axis=1)
        return float(probs[outputs].sum())

    # -- the card -----------------------------------------------------------------------------------
    def card_extra(self) -> dict[str, Any]:
        return {
            "rule": str(self.rule),
            "rule_variables": list(self.rule.variables),
            "concept_prevalence": {nm: float(p) for nm, p in zip(DERM_CONCEPTS, self.prevalence, strict=True)},
            "positive_rate": round(self.expected_positive_rate(), 6),
            **({"reports": REPORTS_NAME, **self.report_options.to_dict(),
                "report_terms": {c: list(REPORT_TERMS[c]) for c in DERM_CONCEPTS}} if self.reports else {}),
        }

    def sample_reports(self, seed: int, truth: np.ndarray) -> tuple[list[str], np.ndarray] | None:
        """With `reports`: one report per sample from its drawn concepts (stream [seed, STREAM_REPORT, i])."""
        if not self.reports:
            return None
        written = [write_report(stream(seed, STREAM_REPORT, i), row > 0, DERM_CONCEPTS, self.report_options)
                   for i, row in enumerate(np.asarray(truth))]
        mentions = np.stack([m for _, m in written]) if written else np.zeros((0, len(DERM_CONCEPTS)), np.int8)
        return [text for text, _ in written], mentions

    def description(self) -> str:
        looks = "; ".join(f"`{c}`: {CONCEPT_LOOKS[c]}" for c in DERM_CONCEPTS)
        return (
            "Dermoscopy-like RGB images: one brown lesion on a skin-coloured background. The lesion is cut "
            "into six angular sectors (random rotation, random assignment of concepts to sectors); each "
            "present concept is drawn inside its own sector only, so the pixel masks of different "
            f"concepts never overlap. Concepts: {looks}. Concepts are sampled independently (Bernoulli), so "
            f"no concept can be read from another. The label is `malignant` exactly where the rule "
            f"`{self.rule}` is true on the drawn concepts (before label noise). Masks cover the region in "
            "which a concept is drawn (its sector's border band for irregular_border and streaks, its "
            "sector's inner band otherwise). Concept annotations may be flipped (concept_noise) while the "
            "pixels and masks keep the truth (true_<concept> columns)."
            + (f" `{REPORTS_NAME}` holds one short free-text report per image (columns id, report), written "
               "from the drawn concepts with several phrasings per concept, omissions and noise: a drawn concept "
               f"is mentioned with probability {self.report_options.mention}, a concept not drawn is mentioned "
               f"as present with probability {self.report_options.false_mention} or else negated with "
               f"probability {self.report_options.negation}, plus filler on size, colour and site; the label is "
               "never written." if self.reports else "")
        )

    # -- drawing -------------------------------------------------------------------------------------
    def render_sample(
        self, rng: np.random.Generator, concepts: np.ndarray, artifact: bool, params: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and masks (6, H, W). Every random number is drawn whatever is present."""
        S = self.size
        yy, xx = coords(S)
        present = dict(zip(DERM_CONCEPTS, np.asarray(concepts, dtype=bool), strict=True))

        # --- random parameters, always drawn in this order ---
        skin = np.array([0.90, 0.74, 0.62]) + rng.uniform(-0.04, 0.04) + rng.uniform(-0.02, 0.02, 3)
        shade = smooth_noise(rng, S, 3) * 0.03
        grain = rng.normal(0.0, 0.012, (S, S, 3)).astype(np.float32)
        cy, cx = 0.5 + rng.uniform(-0.02, 0.02, 2)
        R = rng.uniform(0.24, 0.28)
        rot = rng.uniform(0.0, 2 * np.pi)
        sector_of = rng.permutation(N_SECTORS)  # concept k is drawn in sector sector_of[k]
        ph = rng.uniform(0.0, 2 * np.pi, 2)
        brown = np.array([0.55, 0.35, 0.22]) + rng.uniform(-0.06, 0.04) + rng.uniform(-0.02, 0.02, 3)
        lesion_tex = smooth_noise(rng, S, 6) * 0.05
        # irregular border
        n_spikes = int(rng.integers(3, 5))
        spike_phase = rng.uniform(0.0, 1.0)
        spike_amp = rng.uniform(0.28, 0.36)
        border_noise = smooth_noise(rng, S, 12) * 0.05
        # blue-white veil
        veil_tex = smooth_noise(rng, S, 8)
        veil_blue = np.array([0.45, 0.58, 0.80]) + rng.uniform(-0.04, 0.04, 3)
        # dots
        n_dots = int(rng.integers(4, 8))
        dot_u = rng.uniform(0.2, 0.8, 40)
        dot_r = np.sqrt(rng.uniform(0.3, 1.0, 40))  # uniform over the band's area
        dot_size = rng.uniform(0.024, 0.034, 40)
        # streaks
        n_streaks = int(rng.integers(4, 7))
        streak_jitter = rng.uniform(-0.04, 0.04, 8)
        streak_len = rng.uniform(1.22, 1.34, 8)
        # network
        net_angle = rng.uniform(0.0, np.pi)
        net_cell = rng.uniform(0.075, 0.095)
        net_warp = (smooth_noise(rng, S, 4), smooth_noise(rng, S, 4))
        net_width = smooth_noise(rng, S, 6)
        # regression
        pepper = rng.random((S, S))
        scar_tex = smooth_noise(rng, S, 6)
        # artifact and sensor noise
        corner = int(rng.integers(4))
        sensor = rng.normal(0.0, 0.008, (S, S, 3)).astype(np.float32)

        # --- skin ---
        canvas = np.broadcast_to(skin.astype(np.float32), (S, S, 3)) + shade[..., None] + grain
        canvas = canvas * (1.0 - 0.25 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2))[..., None]

        # --- lesion geometry: polar coordinates, smooth border radius, sectors ---
        d = np.hypot(yy - cy, xx - cx)
        theta = np.arctan2(yy - cy, xx - cx)
        rb = R * (1 + 0.05 * np.sin(2 * theta + ph[0]) + 0.03 * np.sin(3 * theta + ph[1]))
        rel = np.mod(theta - rot, 2 * np.pi) / (2 * np.pi / N_SECTORS)
        sector = np.minimum(np.floor(rel).astype(np.int64), N_SECTORS - 1)
        u = rel - sector
        inner_u = (u > SECTOR_MARGIN) & (u < 1 - SECTOR_MARGIN)

        def in_sector(name: str) -> np.ndarray:
            return (sector == sector_of[DERM_CONCEPTS.index(name)]) & inner_u

        def sector_angle(name: str, frac: float) -> float:
            return rot + (sector_of[DERM_CONCEPTS.index(name)] + frac) * 2 * np.pi / N_SECTORS

        def inner_band(name: str) -> np.ndarray:
            return in_sector(name) & (d >= 0.16 * rb) & (d <= 0.88 * rb)

        masks = np.zeros((len(DERM_CONCEPTS), S, S), dtype=np.uint8)

        # irregular border: spiky protrusions (and notches) of the border radius in its sector
        border_region = in_sector("irregular_border")
        window = np.where(border_region, np.sin(np.pi * np.clip((u - SECTOR_MARGIN) / (1 - 2 * SECTOR_MARGIN), 0, 1)), 0.0)
        tri = 1 - np.abs(2 * np.mod(n_spikes * u + spike_phase, 1.0) - 1)
        offset = R * window * (spike_amp * tri**1.5 - 0.08 + border_noise)
        radius = rb + offset if present["irregular_border"] else rb
        lesion_alpha = soft_edge(radius - d, S)
        lesion_col = brown[None, None, :] * (0.78 + 0.22 * np.clip(d / R, 0, 1))[..., None] + lesion_tex[..., None]
        if present["irregular_border"]:
            band = border_region & (d >= rb - 0.2 * R) & (d <= rb + (spike_amp + 0.06) * R)
            lesion_col = np.where(band[..., None], lesion_col * 0.62, lesion_col)
            masks[0] = band
        canvas = blend(canvas, lesion_col, lesion_alpha)

        # blue-white veil
        if present["blue_white_veil"]:
            region = inner_band("blue_white_veil")
            veil = veil_blue[None, None, :] + 0.18 * np.clip(veil_tex, 0, 1)[..., None] + 0.04 * veil_tex[..., None]
            canvas = blend(canvas, veil, region * np.float32(0.88))
            masks[1] = region

        # dots and globules: the first n_dots candidates that do not overlap an earlier dot
        if present["dots_and_globules"]:
            region = inner_band("dots_and_globules")
            placed: list[tuple[float, float, float]] = []
            for j in range(len(dot_u)):
                if len(placed) == n_dots:
                    break
                ang = sector_angle("dots_and_globules", dot_u[j])
                rb_here = R * (1 + 0.05 * np.sin(2 * ang + ph[0]) + 0.03 * np.sin(3 * ang + ph[1]))
                dist = 0.82 * dot_r[j] * rb_here
                py, px = cy + dist * np.sin(ang), cx + dist * np.cos(ang)
                if all(np.hypot(py - qy, px - qx) > dot_size[j] + qr + 0.01 for qy, qx, qr in placed):
                    placed.append((py, px, dot_size[j]))
            cover = np.zeros((S, S), dtype=np.float32)
            for py, px, pr in placed:
                cover = np.maximum(cover, disc(yy, xx, py, px, pr, S))
            canvas = blend(canvas, (0.13, 0.07, 0.05), cover * region)
            masks[2] = region

        # streaks: radial dark lines from inside the border outwards, with bulbous tips
        if present["streaks"]:
            region = in_sector("streaks") & (d >= 0.72 * rb) & (d <= 1.40 * rb)
            cover = np.zeros((S, S), dtype=np.float32)
            for j in range(n_streaks):
                frac = 0.14 + 0.72 * (j + 0.5) / n_streaks + streak_jitter[j]
                ang = sector_angle("streaks", frac)
                rb_here = R * (1 + 0.05 * np.sin(2 * ang + ph[0]) + 0.03 * np.sin(3 * ang + ph[1]))
                p0 = (cy + 0.75 * rb_here * np.sin(ang), cx + 0.75 * rb_here * np.cos(ang))
                tip = streak_len[j] * rb_here
                p1 = (cy + tip * np.sin(ang), cx + tip * np.cos(ang))
                line = soft_edge(0.013 - segment_distance(yy, xx, p0, p1), S)
                cover = np.maximum(cover, np.maximum(line, disc(yy, xx, p1[0], p1[1], 0.022, S)))
            canvas = blend(canvas, (0.26, 0.14, 0.08), cover * region)
            masks[3] = region

        # atypical network: a thick irregular dark mesh on a lighter patch
        if present["atypical_network"]:
            region = inner_band("atypical_network")
            ca, sa = np.cos(net_angle), np.sin(net_angle)
            a = (xx * ca + yy * sa) / net_cell + 0.35 * net_warp[0]
            b = (-xx * sa + yy * ca) / net_cell + 0.35 * net_warp[1]
            width = 0.14 + 0.07 * net_width
            dist_line = np.minimum(np.abs(a - np.rint(a)), np.abs(b - np.rint(b)))
            lines = soft_edge((width - dist_line) * net_cell, S)
            canvas = blend(canvas, (0.72, 0.52, 0.36), region * np.float32(0.6))
            canvas = blend(canvas, (0.20, 0.11, 0.06), lines * region * np.float32(0.95))
            masks[4] = region

        # regression area: white scar with grey peppering
        if present["regression_area"]:
            region = inner_band("regression_area")
            scar = np.array([0.93, 0.87, 0.85])[None, None, :] + 0.03 * scar_tex[..., None]
            canvas = blend(canvas, scar, region * np.float32(0.92))
            canvas = blend(canvas, (0.52, 0.52, 0.58), (region & (pepper < 0.14)) * np.float32(0.9))
            masks[5] = region

        # spurious artifact: a green sticker in a corner (outside every concept region)
        if artifact:
            sy, sx = corner_centre(corner, 0.075)
            canvas = blend(canvas, (0.12, 0.55, 0.08), disc(yy, xx, sy, sx, 0.058, S))
            canvas = blend(canvas, STICKER_GREEN, disc(yy, xx, sy, sx, 0.045, S))

        canvas = canvas + sensor
        return to_uint8(canvas), masks
