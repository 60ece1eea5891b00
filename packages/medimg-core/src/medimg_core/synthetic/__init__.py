"""Synthetic datasets with ground truth: concepts, pixel masks, label rules, severities.

Three generators, deterministic by seed (the same seed writes byte-identical files):

- `synth-derm`: dermoscopy-like RGB lesions, six binary concepts with masks, binary label given by a
  Boolean rule over the concepts (default `(irregular_border & blue_white_veil) | streaks`).
- `synth-cxr`: grayscale chest-like images, five localized findings (multi-label), each with a mask.
- `synth-grade`: fundus-like RGB images, ordinal grade 0-4 binning the continuous severity of one
  plaque; `measure_structure(image)` reads the plaque's size back from pixels.

    >>> from medimg_core.synthetic import generate, make
    >>> path = generate("synth-derm", n=500, out="data/synth-derm", seed=0, spurious=0.8)
    >>> CSVDataset(path, split="train")      # or: medimg datasets verify data/synth-derm --format csv
    >>> data = make("synth-cxr", n=64, seed=0)   # in memory: data.images (N, H, W), data.masks (N, K, H, W)

Options shared by all generators: `size`, `label_noise`, `concept_noise`, `spurious`,
`split_fractions` (see `SyntheticGenerator`); each card (`card_for(name, ...)`) documents its
concepts, rule and columns.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from medimg_core.data.card import DatasetCard
from medimg_core.synthetic.base import SyntheticData, SyntheticGenerator
from medimg_core.synthetic.cxr import CXR_FINDINGS, SynthCXR
from medimg_core.synthetic.derm import DEFAULT_RULE, DERM_CONCEPTS, SynthDerm
from medimg_core.synthetic.grade import GRADE_EDGES, SynthGrade, grade_of, measure_structure, structure_map
from medimg_core.synthetic.rules import Rule, RuleSyntaxError, UnknownConceptError, parse_rule, truth_table

GENERATORS: dict[str, type[SyntheticGenerator]] = {
    SynthDerm.name: SynthDerm,
    SynthCXR.name: SynthCXR,
    SynthGrade.name: SynthGrade,
}

__all__ = [
    "CXR_FINDINGS",
    "DEFAULT_RULE",
    "DERM_CONCEPTS",
    "GENERATORS",
    "GRADE_EDGES",
    "Rule",
    "RuleSyntaxError",
    "SynthCXR",
    "SynthDerm",
    "SynthGrade",
    "SyntheticData",
    "SyntheticGenerator",
    "UnknownConceptError",
    "card_for",
    "generate",
    "get_generator",
    "grade_of",
    "make",
    "measure_structure",
    "parse_rule",
    "structure_map",
    "truth_table",
]


def get_generator(name: str, **options: Any) -> SyntheticGenerator:
    """The generator `name` with `options`; unknown names and options raise errors listing the valid ones."""
    try:
        cls = GENERATORS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(GENERATORS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown synthetic dataset {name!r}{hint} Known: {', '.join(sorted(GENERATORS))}") from None
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; {name} takes {', '.join(valid)}")
    return cls(**options)


def generate(name: str, n: int, out: str | Path, seed: int = 0, progress: bool | None = None,
             **options: Any) -> Path:
    """Write n samples of generator `name` to the new (or empty) folder `out`, readable with `--format csv`.

    Returns `out`. The same name, n, seed and options give byte-identical files.
    """
    return get_generator(name, **options).write(n, out, seed=seed, progress=progress)


def make(name: str, n: int, seed: int = 0, progress: bool | None = None, **options: Any) -> SyntheticData:
    """Render n samples of generator `name` in memory (the same samples `generate` writes).

    Returns SyntheticData: images uint8 (N, H, W, 3) or (N, H, W), masks uint8 (N, K, H, W),
    concepts (N, K), targets, ids, splits, further columns and the card.
    """
    return get_generator(name, **options).make(n, seed=seed, progress=progress)


def card_for(name: str, seed: int = 0, **options: Any) -> DatasetCard:
    """The card of generator `name` with these options and seed (as the written dataset.json carries it)."""
    return get_generator(name, **options).card(seed)
