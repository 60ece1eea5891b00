"""Short free-text dermoscopy reports for synth-derm, written from each image's DRAWN concepts.

The reports exist so that a method naming image features from text (neuron-concepts' vocabulary route) must
earn its names, as it would on real reports:

- **paraphrases**: each concept has several phrasings, including the clinical synonyms a dermatologist would use
  (`REPORT_TERMS`; e.g. streaks as "radial streaming", "pseudopods" or "peripheral streaks"); a mention picks one
  at random, so no single term covers a concept;
- **omissions**: a drawn concept is mentioned with probability `mention` only;
- **noise**: a concept that is not drawn is mentioned as present with probability `false_mention`, and
  explicitly negated ("No streaks seen.") with probability `negation`: real reports negate, and a term
  matcher that ignores negation counts those mentions too;
- **filler**: neutral sentences on size, colour and site (whose words are no concept's term).

The label (benign / malignant) and the rule are never written. Every random number comes from the stream
`[seed, STREAM_REPORT, index]` (synthetic.base) of each sample, drawn whatever the concepts are, so a sample's report depends on
its seed, index, drawn concepts and the options only (the same for any n), and the same options write the same
bytes.

This is written by hand: no library generates templated clinical text, and the templates are small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: every phrasing of each synth-derm concept a report may use (first: the plain name)
REPORT_TERMS: dict[str, tuple[str, ...]] = {
    "irregular_border": ("irregular border", "asymmetric outline", "ill-defined edge", "jagged border"),
    "blue_white_veil": ("blue-white veil", "blue-whitish structureless area", "bluish veil"),
    "dots_and_globules": ("dots and globules", "dots", "globules", "black dots"),
    "streaks": ("streaks", "radial streaming", "pseudopods", "peripheral streaks"),
    "atypical_network": ("atypical pigment network", "irregular network", "thickened network lines"),
    "regression_area": ("regression structures", "white scar-like area", "peppering"),
}

# "{}" is the term; a sentence starts with a capital letter
_PRESENT = ("{} present.", "Shows {}.", "{} in one part of the lesion.", "{} noted.")
_NEGATED = ("No {} seen.", "No {}.", "{} not seen.")
_SIZE = "Lesion about {} mm across."
_COLOUR = ("Mostly light brown.", "Mostly medium brown.", "Mostly dark brown.", "Two shades of brown.")
_SITE = ("Site: back.", "Site: chest.", "Site: left forearm.", "Site: right shin.", "Site: shoulder.",
         "Site: abdomen.")
_METHOD = ("Polarised dermoscopy.", "Non-polarised contact dermoscopy.")

#: words no report may contain (the label and its synonyms)
LABEL_WORDS = ("benign", "malignant", "melanoma", "naevus", "nevus")


@dataclass(frozen=True)
class ReportOptions:
    """Rates of a report: `mention` P(a drawn concept is mentioned), `false_mention` P(a concept not drawn is
    mentioned as present), `negation` P(a concept not drawn, and not falsely mentioned, is explicitly negated)."""

    mention: float = 0.7
    false_mention: float = 0.05
    negation: float = 0.15

    def __post_init__(self) -> None:
        for name in ("mention", "false_mention", "negation"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"report_{name} must be a probability in [0, 1], got {value!r}")
        if self.false_mention + self.negation > 1.0:
            raise ValueError(f"report_false_mention + report_negation must be at most 1, got "
                             f"{self.false_mention} + {self.negation}")

    def to_dict(self) -> dict[str, float]:
        return {"report_mention": float(self.mention), "report_false_mention": float(self.false_mention),
                "report_negation": float(self.negation)}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def write_report(rng: np.random.Generator, present: Sequence[bool], concept_names: Sequence[str],
                 options: ReportOptions) -> tuple[str, np.ndarray]:
    """One report and its mentions (K,) int8: 1 mentioned as present, -1 negated, 0 not mentioned.

    present (K,) bool: the drawn concepts, in the order of `concept_names` (each a key of REPORT_TERMS).
    Draws the same random numbers whatever `present` is.
    """
    k = len(concept_names)
    present = np.asarray(present, dtype=bool).reshape(-1)
    if present.shape != (k,):
        raise ValueError(f"write_report: present must have {k} values ({', '.join(concept_names)}), "
                         f"got shape {present.shape}")
    unknown = [c for c in concept_names if c not in REPORT_TERMS]
    if unknown:
        raise ValueError(f"write_report: no report phrasings for concept(s) {unknown}; known: {list(REPORT_TERMS)}")
    # --- every draw, always in this order ---
    u = rng.random(k)
    phrase = rng.random(k)
    template = rng.random(k)
    order = rng.permutation(k)
    size_mm = int(rng.integers(3, 15))
    colour, site, method = rng.integers(len(_COLOUR)), rng.integers(len(_SITE)), rng.integers(len(_METHOD))
    filler_on = rng.random(3) < (0.6, 0.6, 0.3)  # colour, site, method sentences

    mentions = np.where(present, np.where(u < options.mention, 1, 0),
                        np.where(u < options.false_mention, 1,
                                 np.where(u < options.false_mention + options.negation, -1, 0))).astype(np.int8)
    sentences = [_SIZE.format(size_mm)]
    if filler_on[0]:
        sentences.append(_COLOUR[colour])
    negated: list[str] = []
    for j in order:
        if mentions[j] == 0:
            continue
        terms = REPORT_TERMS[concept_names[j]]
        term = terms[int(phrase[j] * len(terms))]
        if mentions[j] > 0:
            sentences.append(_capital(_PRESENT[int(template[j] * len(_PRESENT))].format(term)))
        else:
            negated.append(_capital(_NEGATED[int(template[j] * len(_NEGATED))].format(term)))
    sentences += negated
    if filler_on[1]:
        sentences.append(_SITE[site])
    if filler_on[2]:
        sentences.append(_METHOD[method])
    return " ".join(sentences), mentions
