"""What every synthetic generator shares: seeding, noise, splits, the spurious artifact and the writer.

A generator first *plans* a dataset (ground-truth concepts, targets, noise, splits, artifact flags:
cheap metadata), then *renders* each sample from its own random stream `[seed, 100, index]`. The
image stream does not depend on the ground truth drawn, so `render(seed, index, concepts=...)` with
other concept values gives the exact counterfactual of a sample: the same lesion with one concept
switched, everything else identical.

On disk a dataset is the folder the generic CSV loader reads (`--format csv`)::

    OUT/dataset.json   descriptor: columns, task, class names and the card
    OUT/labels.csv     one row per image
    OUT/images/<id>.png
    OUT/masks/<id>_<concept>.png   0/255 single-channel, only where the concept is present
    OUT/card.md        the card, human-readable
    OUT/reports.csv    id,report: one free-text report per image (only generators and options that write them,
                       e.g. synth-derm with reports=True; the card's extra["reports"] names the file)
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from medimg_core.data.base import MedicalImageDataset, SampleTable
from medimg_core.data.card import DatasetCard

SPLITS: tuple[str, ...] = ("train", "val", "test")
LICENSE = "CC0-1.0 (generated)"
DESCRIPTOR = "dataset.json"
CSV_NAME = "labels.csv"
REPORTS_NAME = "reports.csv"
#: show a progress bar when writing more images than this (each image also has a few mask files)
PROGRESS_MIN_IMAGES = 100

# Independent random streams of one seed: changing one option never changes the others' draws.
STREAM_TRUTH, STREAM_LABEL_NOISE, STREAM_CONCEPT_NOISE, STREAM_SPLITS, STREAM_ARTIFACT = 1, 2, 3, 4, 5
STREAM_REPORT = 6  # per sample: [seed, STREAM_REPORT, index]
STREAM_IMAGE = 100

# The spurious artifact's card text, shared by the generators that draw a sticker.
ARTIFACT_DOC = (
    "P(artifact | positive) - P(artifact | negative) = spurious in train and val; "
    "P(artifact) = 0.5 regardless of the label in test"
)


def stream(seed: int, *keys: int) -> np.random.Generator:
    """The numpy Generator of stream `keys` of `seed` (a SeedSequence of [seed, *keys])."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG with fixed settings (no time stamp, same bytes)."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=6, optimize=False)


@dataclass
class SyntheticData:
    """A generated dataset in memory (or, without images, its plan).

    Arrays, N samples, K concepts, L labels, H = W = size:

    - `images`: uint8 (N, H, W, 3) for RGB generators, (N, H, W) for grayscale ones (None in a plan)
    - `masks`: uint8 (N, K, H, W) in {0, 1}; non-empty exactly where `true_concepts` is 1 (None in a plan)
    - `concepts`: float32 (N, K) 0/1, the annotations (with `concept_noise` flips)
    - `true_concepts`: uint8 (N, K) 0/1, what the pixels show
    - `targets`: int64 (N,) class index or grade, or float32 (N, L) multi-hot; with `label_noise`
    - `clean_targets`: the same before label noise
    - `ids`: N strings; `splits`: (N,) "train" / "val" / "test"
    - `columns`: further per-sample columns, e.g. `artifact` (N,) uint8, `severity` (N,) float
    - `reports`: N free-text reports, or None when the generator writes none
    - `report_mentions`: int8 (N, K), what each report says of each concept: 1 mentioned as present,
      -1 negated, 0 not mentioned (None without reports); not written to disk
    """

    name: str
    card: DatasetCard
    ids: list[str]
    splits: np.ndarray
    targets: np.ndarray
    clean_targets: np.ndarray
    concepts: np.ndarray
    true_concepts: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    seed: int = 0
    generator: SyntheticGenerator | None = field(default=None, repr=False)
    reports: list[str] | None = field(default=None, repr=False)
    report_mentions: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices of `split` (all rows when None)."""
        if split is None:
            return np.arange(len(self))
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return np.flatnonzero(self.splits == split)

    def table(self, split: str | None = None) -> SampleTable:
        """The rows of `split` as an in-memory SampleTable (images and masks in memory)."""
        if self.images is None or self.masks is None:
            raise ValueError(f"{self.name}: this is a plan without images; use make(...) to render them")
        idx = self.indices(split)
        return SampleTable(
            ids=[self.ids[i] for i in idx],
            targets=self.targets[idx],
            concepts=self.concepts[idx],
            images=self.images[idx],
            masks=self.masks[idx],
        )

    def dataset(self, split: str = "train", transform: Callable | None = None) -> MedicalImageDataset:
        """A MedicalImageDataset of `split`, the same samples the CSV loader reads from the written folder."""
        return MedicalImageDataset(self.table(split), self.card, split, transform)


class SyntheticGenerator(ABC):
    """Base of the generators: options shared by all, the plan, the in-memory and on-disk outputs.

    Shared options:
        size: image side in pixels (at least `min_size`).
        label_noise: fraction of labels changed (binary: flipped; ordinal: moved one grade;
            multilabel: fraction of label entries flipped). Exact count, seeded.
        concept_noise: fraction of concept annotations flipped; pixels and masks keep the truth.
        spurious: None for no artifact; else the strength s in [0, 1] of a label-correlated artifact:
            P(artifact | positive) = (1 + s) / 2, P(artifact | negative) = (1 - s) / 2 in train and val,
            P(artifact) = 1/2 independent of the label in test (s = 0 gives an uncorrelated artifact).
        split_fractions: train / val / test fractions (seeded random assignment).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    version: ClassVar[str] = "1.0"
    task: ClassVar[str]
    channels: ClassVar[int]
    modality: ClassVar[str]
    id_prefix: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    concept_names: ClassVar[tuple[str, ...]]
    concept_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: the label column of single-label tasks
    label_column: ClassVar[str] = "label"
    #: per-sample plan columns the renderer reads besides concepts and artifact (e.g. severity)
    render_columns: ClassVar[tuple[str, ...]] = ()
    #: what the spurious artifact looks like, for the card
    artifact_description: ClassVar[str] = ""
    min_size: ClassVar[int] = 32

    def __init__(
        self,
        *,
        size: int = 64,
        label_noise: float = 0.0,
        concept_noise: float = 0.0,
        spurious: float | None = None,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    ):
        if not isinstance(size, (int, np.integer)) or size < self.min_size:
            raise ValueError(f"{self.name}: size must be an integer of at least {self.min_size} pixels, got {size!r}")
        for opt, value in (("label_noise", label_noise), ("concept_noise", concept_noise)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{self.name}: {opt} must be a fraction in [0, 1], got {value}")
        if spurious is not None and not 0.0 <= float(spurious) <= 1.0:
            raise ValueError(f"{self.name}: spurious must be in [0, 1] (or None for no artifact), got {spurious}")
        fractions = tuple(float(f) for f in split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
            raise ValueError(
                f"{self.name}: split_fractions must be 3 non-negative fractions (train > 0) summing to 1, "
                f"got {split_fractions}"
            )
        self.size = int(size)
        self.label_noise = float(label_noise)
        self.concept_noise = float(concept_noise)
        self.spurious = None if spurious is None else float(spurious)
        self.split_fractions = fractions

    # -- options ------------------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        """Every keyword option the generator takes (its own and the shared ones)."""
        names: list[str] = []
        for klass in (cls, SyntheticGenerator):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind == p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    # -- hooks for the generators -----------------------------------------------------------------
    @abstractmethod
    def sample_truth(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ground truth of n samples: concepts uint8 (N, K) and further columns (e.g. severity)."""

    @abstractmethod
    def targets_from_truth(self, truth: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Clean targets from the ground truth: int64 (N,) or float32 (N, L)."""

    @abstractmethod
    def render_sample(
        self, rng: np.random.Generator, concepts: np.ndarray, artifact: bool, params: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One image (uint8 (H, W, 3) or (H, W)) and its masks uint8 (K, H, W) in {0, 1}.

        Must draw the same random numbers whatever `concepts`, `artifact` and `params` are.
        """

    @abstractmethod
    def description(self) -> str:
        """The card's description: what the images show, each concept, how the label is made."""

    def card_extra(self) -> dict[str, Any]:
        """Generator-specific card entries (JSON values), shown first in `extra`."""
        return {}

    def sample_reports(self, seed: int, truth: np.ndarray) -> tuple[list[str], np.ndarray] | None:
        """Free-text reports of the samples with ground truth `truth` (N, K), and their mentions (N, K) int8;
        None (the default) for a generator or options without reports."""
        return None

    def column_docs(self) -> dict[str, str]:
        """labels.csv columns beyond the standard ones, with their meaning."""
        return {}

    def positive(self, targets: np.ndarray) -> np.ndarray:
        """Which samples count as positive for the spurious correlation, (N,) bool."""
        targets = np.asarray(targets)
        if self.task == "multilabel":
            return targets.reshape(len(targets), -1).max(axis=1) > 0.5
        return targets > 0

    # -- the plan -------------------------------------------------------------------------------------
    def plan(self, n: int, seed: int = 0) -> SyntheticData:
        """Ground truth, noisy labels and annotations, splits and artifact flags of n samples; no pixels."""
        n, seed = _check_n_seed(n, seed)
        truth, columns = self.sample_truth(stream(seed, STREAM_TRUTH), n)
        truth = np.asarray(truth, dtype=np.uint8).reshape(n, len(self.concept_names))
        clean = self.targets_from_truth(truth, columns)
        targets = self.add_label_noise(stream(seed, STREAM_LABEL_NOISE), clean)
        concepts = flip_fraction(stream(seed, STREAM_CONCEPT_NOISE), truth, self.concept_noise).astype(np.float32)
        splits = assign_splits(stream(seed, STREAM_SPLITS), n, self.split_fractions)
        columns = dict(columns)
        columns["artifact"] = self.sample_artifact(stream(seed, STREAM_ARTIFACT), targets, splits)
        width = max(5, len(str(n - 1)))
        ids = [f"{self.id_prefix}_{i:0{width}d}" for i in range(n)]
        data = SyntheticData(self.name, self.card(seed), ids, splits, targets, clean, concepts, truth, columns,
                             seed=seed, generator=self)
        written = self.sample_reports(seed, truth)
        if written is not None:
            data.reports, data.report_mentions = written
        return data

    def add_label_noise(self, rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
        """Targets with `label_noise` of them changed (exact count, seeded)."""
        if self.task == "multilabel":
            return flip_fraction(rng, clean, self.label_noise).astype(np.float32)
        out = np.asarray(clean, dtype=np.int64).copy()
        count = int(round(self.label_noise * len(out)))
        idx = rng.permutation(len(out))[:count]
        if self.task == "binary":
            out[idx] = 1 - out[idx]
        else:  # ordinal / multiclass: move one class up or down, reflected at the ends
            step = rng.choice(np.array([-1, 1]), size=count)
            moved = out[idx] + step
            moved = np.where((moved < 0) | (moved >= len(self.class_names)), out[idx] - step, moved)
            out[idx] = moved
        return out

    def sample_artifact(self, rng: np.random.Generator, targets: np.ndarray, splits: np.ndarray) -> np.ndarray:
        """Artifact flags (N,) uint8 following the `spurious` design (all 0 when spurious is None)."""
        n = len(splits)
        u = rng.random(n)
        if self.spurious is None:
            return np.zeros(n, dtype=np.uint8)
        s = self.spurious
        p = np.where(self.positive(targets), 0.5 + s / 2, 0.5 - s / 2)
        p = np.where(splits == "test", 0.5, p)
        return (u < p).astype(np.uint8)

    # -- rendering -----------------------------------------------------------------------------------
    def render(
        self,
        seed: int,
        index: int,
        concepts: Sequence[float] | np.ndarray,
        artifact: bool = False,
        **params: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image and masks (K, H, W) of sample `index` of `seed` drawn with the given ground truth.

        With the sample's own values (`data.true_concepts[i]`, `data.columns[...][i]`) this is the
        dataset's image; with others it is the sample's exact counterfactual (same random stream).
        """
        concepts = np.asarray(concepts, dtype=np.float32).reshape(-1)
        if concepts.shape != (len(self.concept_names),):
            raise ValueError(f"{self.name}: concepts must have {len(self.concept_names)} values "
                             f"({', '.join(self.concept_names)}), got {concepts.shape}")
        return self.render_sample(stream(seed, STREAM_IMAGE, index), concepts > 0.5, bool(artifact), params)

    def _render_row(self, data: SyntheticData, i: int) -> tuple[np.ndarray, np.ndarray]:
        params = {k: data.columns[k][i] for k in self.render_columns}
        image, masks = self.render(data.seed, i, data.true_concepts[i], bool(data.columns["artifact"][i]), **params)
        empty = np.flatnonzero((masks.reshape(len(masks), -1).max(axis=1) > 0) != (data.true_concepts[i] > 0))
        if len(empty):  # a generator bug, never the user's: masks must match the drawn concepts
            raise RuntimeError(f"{self.name}: sample {i}: masks of {[self.concept_names[k] for k in empty]} "
                               "disagree with the drawn concepts")
        return image, masks

    def make(self, n: int, seed: int = 0, progress: bool | None = None) -> SyntheticData:
        """Render n samples in memory: the plan plus `images` and `masks` arrays."""
        data = self.plan(n, seed)
        shape = (self.size, self.size) if self.channels == 1 else (self.size, self.size, 3)
        images = np.zeros((len(data), *shape), dtype=np.uint8)
        masks = np.zeros((len(data), len(self.concept_names), self.size, self.size), dtype=np.uint8)
        for i in _progress(range(len(data)), progress, len(data), f"{self.name}: rendering"):
            images[i], masks[i] = self._render_row(data, i)
        data.images, data.masks = images, masks
        return data

    # -- the card and the descriptor --------------------------------------------------------------
    def card(self, seed: int = 0) -> DatasetCard:
        """The dataset card of this generator with these options and seed (what the CSV loader rebuilds)."""
        extra: dict[str, Any] = {
            **self.card_extra(),
            "generator": self.name,
            "generator_version": self.version,
            "seed": int(seed),
            "size": self.size,
            "label_noise": self.label_noise,
            "concept_noise": self.concept_noise,
            "spurious": self.spurious,
            "spurious_artifact": (f"{self.artifact_description}; column 'artifact'; {ARTIFACT_DOC}"
                                  if self.spurious is not None else None),
            "split_fractions": dict(zip(SPLITS, self.split_fractions, strict=True)),
            "columns": self.all_column_docs(),
        }
        return DatasetCard(
            name=self.name,
            title=self.title,
            task=self.task,  # type: ignore[arg-type]
            class_names=tuple(self.class_names),
            concept_names=tuple(self.concept_names),
            concept_groups={k: tuple(v) for k, v in self.concept_groups.items()},
            channels=self.channels,
            splits=SPLITS,
            official_splits=True,
            has_masks=True,
            modality=self.modality,
            description=self.description(),
            license=LICENSE,
            citation=f"Generated by medimg-core's {self.name} generator, version {self.version}, seed {int(seed)}.",
            extra=extra,
        )

    def label_columns(self) -> list[str]:
        """The label column(s) of labels.csv."""
        if self.task == "multilabel":
            return [f"label_{c}" for c in self.class_names]
        return [self.label_column]

    def all_column_docs(self) -> dict[str, str]:
        docs = {"id": "sample id (the image file stem)", "path": "image file, relative to the folder",
                "split": "train / val / test"}
        if self.task == "multilabel":
            docs["label_<name>"] = "0/1 label per class (with label_noise)"
            docs["label_<name>_clean"] = "0/1 label before label noise"
        else:
            docs[self.label_column] = "class name (with label_noise)"
            docs[f"{self.label_column}_clean"] = "class name before label noise"
        docs["<concept>"] = "0/1 concept annotation (with concept_noise)"
        docs["true_<concept>"] = "0/1 concept as drawn in the pixels"
        docs["mask_<concept>"] = "mask file (0/255 PNG), blank where the concept is absent"
        docs.update(self.column_docs())
        docs["artifact"] = "1 where the spurious artifact is drawn"
        return docs

    def descriptor(self, card: DatasetCard) -> dict[str, Any]:
        """The dataset.json of a written dataset."""
        out: dict[str, Any] = {"format": "csv", "csv": CSV_NAME, "image_column": "path", "id_column": "id"}
        if self.task == "multilabel":
            out["label_columns"] = self.label_columns()
        else:
            out["label_column"] = self.label_column
        out.update({
            "task": self.task,
            "class_names": list(self.class_names),
            "concept_columns": list(self.concept_names),
            "mask_columns": [f"mask_{c}" for c in self.concept_names],
            "split_column": "split",
            "channels": self.channels,
        })
        full = card.to_dict()
        keep = ("name", "title", "description", "modality", "license", "citation", "homepage", "download",
                "concept_groups", "extra")
        out["card"] = {k: full[k] for k in keep}
        return out

    def frame(self, data: SyntheticData, paths: list[str], mask_paths: list[list[str]]) -> pd.DataFrame:
        """labels.csv as a DataFrame (strings and ints; floats are written with 6 decimals)."""
        cols: dict[str, Any] = {"id": data.ids, "path": paths, "split": list(data.splits)}
        if self.task == "multilabel":
            for j, name in enumerate(self.label_columns()):
                cols[name] = data.targets[:, j].astype(np.int64)
            for j, name in enumerate(self.label_columns()):
                cols[f"{name}_clean"] = data.clean_targets[:, j].astype(np.int64)
        else:
            names = np.asarray(self.class_names, dtype=object)
            cols[self.label_column] = names[data.targets]
            cols[f"{self.label_column}_clean"] = names[data.clean_targets]
        for k, name in enumerate(self.concept_names):
            cols[name] = data.concepts[:, k].astype(np.int64)
        for k, name in enumerate(self.concept_names):
            cols[f"mask_{name}"] = [row[k] for row in mask_paths]
        for k, name in enumerate(self.concept_names):
            cols[f"true_{name}"] = data.true_concepts[:, k].astype(np.int64)
        for name, values in data.columns.items():
            cols[name] = values
        return pd.DataFrame(cols)

    # -- writing --------------------------------------------------------------------------------------
    def write(self, n: int, out: str | Path, seed: int = 0, progress: bool | None = None) -> Path:
        """Write n samples to the new (or empty) folder `out`; returns `out`. Same seed, same bytes."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out}: the output folder exists and is not empty; choose a new folder")
        data = self.plan(n, seed)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
        paths: list[str] = []
        mask_paths: list[list[str]] = []
        for i in _progress(range(len(data)), progress, len(data), f"{self.name}: writing {out}"):
            image, masks = self._render_row(data, i)
            rel = f"images/{data.ids[i]}.png"
            save_png(out / rel, image)
            paths.append(rel)
            row = []
            for k, name in enumerate(self.concept_names):
                if data.true_concepts[i, k]:
                    mask_rel = f"masks/{data.ids[i]}_{name}.png"
                    save_png(out / mask_rel, masks[k] * np.uint8(255))
                    row.append(mask_rel)
                else:
                    row.append("")
            mask_paths.append(row)
        self.frame(data, paths, mask_paths).to_csv(out / CSV_NAME, index=False, lineterminator="\n",
                                                   float_format="%.6f")
        if data.reports is not None:
            pd.DataFrame({"id": data.ids, "report": data.reports}).to_csv(out / REPORTS_NAME, index=False,
                                                                         lineterminator="\n")
        (out / "card.md").write_text(data.card.to_markdown() + "\n")
        # the descriptor last: a folder that was cut short is not mistaken for a dataset
        (out / DESCRIPTOR).write_text(json.dumps(self.descriptor(data.card), indent=1) + "\n")
        return out


# -- helpers ------------------------------------------------------------------------------------------


def _check_n_seed(n: int, seed: int) -> tuple[int, int]:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(n), int(seed)


def _progress(iterable, progress: bool | None, n: int, desc: str):
    from tqdm.auto import tqdm

    show = n > PROGRESS_MIN_IMAGES if progress is None else progress
    # disable=None: tqdm itself stays quiet when stderr is not a terminal (logs, CI)
    return tqdm(iterable, total=n, desc=desc, unit="img", disable=None if show else True)


def flip_fraction(rng: np.random.Generator, values: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of 0/1 `values` with round(fraction * size) entries flipped (chosen at random, seeded)."""
    out = np.asarray(values).copy()
    flat = out.reshape(-1)
    count = int(round(fraction * flat.size))
    idx = rng.permutation(flat.size)[:count]
    flat[idx] = 1 - flat[idx]
    return out


def assign_splits(rng: np.random.Generator, n: int, fractions: Sequence[float]) -> np.ndarray:
    """(n,) split names: a seeded random assignment with round(fraction * n) samples per split.

    Every split with a positive fraction gets at least one sample when n >= 3.
    """
    counts = [int(round(f * n)) for f in fractions[1:]]
    if n >= 3:
        counts = [max(1, c) if f > 0 else 0 for c, f in zip(counts, fractions[1:], strict=True)]
    counts = [min(c, n - 1) for c in counts]
    n_val, n_test = counts
    if n_val + n_test >= n:
        n_test = max(0, n - 1 - n_val)
    order = rng.permutation(n)
    out = np.full(n, "train", dtype="<U5")
    out[order[n - n_val - n_test : n - n_test]] = "val"
    out[order[n - n_test :]] = "test"
    return out


def prevalence_vector(prevalence: float | Sequence[float] | Mapping[str, float], names: Sequence[str],
                      generator: str, default: float = 0.45) -> np.ndarray:
    """Per-concept Bernoulli probabilities (K,) from one number, a sequence or a name -> value mapping.

    A mapping may name only some concepts; the others get `default`.
    """
    if isinstance(prevalence, Mapping):
        unknown = sorted(set(prevalence) - set(names))
        if unknown:
            raise ValueError(f"{generator}: prevalence names unknown concept(s) {unknown}; expected some of {list(names)}")
        p = np.array([float(prevalence.get(nm, default)) for nm in names])
    elif np.ndim(prevalence) == 0:
        p = np.full(len(names), float(prevalence))  # type: ignore[arg-type]
    else:
        p = np.asarray(prevalence, dtype=np.float64)
        if p.shape != (len(names),):
            raise ValueError(f"{generator}: prevalence needs {len(names)} values ({', '.join(names)}), got {p.shape}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"{generator}: prevalence values must be in [0, 1], got {p.tolist()}")
    return p
