"""The one dataset contract that every method package reads.

A sample is a dict::

    {
        "image":    float tensor (C, H, W), in [0, 1] unless the transform normalises it,
        "target":   int64 scalar (binary, multiclass, ordinal) or float32 (L,) multi-hot (multilabel),
        "concepts": float32 (K,), 1/0 per binary concept, NaN where not annotated (K may be 0),
        "masks":    uint8 (K, H, W) per-concept pixel masks, only for datasets whose card has masks,
        "id":       str, the sample id,
        "path":     str, the source file ("" for in-memory images),
    }

and every dataset carries its `card` (task, class names, concept names and groups, licence...).
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from medimg_core.data.card import DatasetCard
from medimg_core.data.errors import DatasetError, DatasetOptionError, Problem, ProblemLog
from medimg_core.data.images import inspect_image, read_image
from medimg_core.data.tables import ROW_OFFSET


@dataclass
class SampleTable:
    """The parsed metadata of one split: what a loader produces from the official files.

    Exactly one of `paths` (files on disk) and `images` (an in-memory uint8 array, (N, H, W) or
    (N, H, W, 3)) is set. Masks likewise come as `mask_paths` (per sample, per concept, a file or
    None for an empty mask) or as an in-memory `masks` array (N, K, H, W).

    `extra["image_op"]`, when a loader sets it, is a function applied to every image read from `paths`
    (uint8 array in, uint8 array out: ODIR's fundus crop); it travels with `select`, so subsets apply it too.
    """

    ids: list[str]
    targets: np.ndarray
    concepts: np.ndarray
    paths: list[Path] | None = None
    images: np.ndarray | None = None
    groups: list[str] | None = None
    mask_paths: list[list[Path | None]] | None = None
    masks: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if (self.paths is None) == (self.images is None):
            raise ValueError("SampleTable needs exactly one of paths and images")
        for name in ("targets", "concepts"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SampleTable: {name} has {len(getattr(self, name))} rows, ids has {n}")
        if self.concepts.ndim != 2:
            raise ValueError(f"SampleTable: concepts must be (N, K), got shape {self.concepts.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: Sequence[int] | np.ndarray) -> SampleTable:
        """The rows at `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)

        def pick(seq):
            return None if seq is None else [seq[i] for i in idx]

        return SampleTable(
            ids=[self.ids[i] for i in idx],
            targets=self.targets[idx],
            concepts=self.concepts[idx],
            paths=pick(self.paths),
            images=None if self.images is None else self.images[idx],
            groups=pick(self.groups),
            mask_paths=pick(self.mask_paths),
            masks=None if self.masks is None else self.masks[idx],
            extra=dict(self.extra),
        )


def empty_concepts(n: int) -> np.ndarray:
    """A (n, 0) concept matrix for datasets without concept annotations."""
    return np.zeros((n, 0), dtype=np.float32)


class MedicalImageDataset(Dataset):
    """Base class of every medimg dataset: a SampleTable, a card and a transform.

    Subclasses for a source implement `read_table(root, split, **options)`, which parses the official
    files and raises DatasetError listing every problem found; `verify` and the constructor reuse it.
    """

    card: ClassVar[DatasetCard]
    #: split names accepted by the constructor, beyond those on the card
    split_aliases: ClassVar[dict[str, str]] = {"training": "train", "valid": "val", "validation": "val",
                                               "testing": "test"}

    def __init__(
        self,
        table: SampleTable,
        card: DatasetCard | None = None,
        split: str = "train",
        transform: Callable | None = None,
    ):
        self.table = table
        self.card = card if card is not None else type(self).card
        self.split = split
        self.transform = transform
        if self.card.has_masks and table.mask_paths is None and table.masks is None:
            raise ValueError(f"{self.card.name}: the card says masks exist but the table has none")
        if table.concepts.shape[1] != self.card.num_concepts:
            raise ValueError(
                f"{self.card.name}: table has {table.concepts.shape[1]} concept columns, "
                f"card names {self.card.num_concepts}"
            )

    # -- construction helpers -------------------------------------------------------------------
    @classmethod
    def normalize_split(cls, split: str) -> str:
        name = str(split).strip().lower()
        name = cls.split_aliases.get(name, name)
        splits = cls.card.splits
        if name not in splits:
            raise DatasetError(f"{cls.card.name}: unknown split {split!r}; expected one of {list(splits)}")
        return name

    @classmethod
    def read_table(cls, root: str | Path, split: str, **options: Any) -> SampleTable:
        raise NotImplementedError(f"{cls.__name__} does not read files from a root")

    @classmethod
    def option_names(cls) -> tuple[str, ...] | None:
        """The options `read_table` accepts (None: any; the loader checks them itself)."""
        params = inspect.signature(cls.read_table).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return tuple(p.name for p in params if p.name not in ("root", "split")
                     and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """An unknown option is a DatasetOptionError naming it and the options this loader takes."""
        names = cls.option_names()
        unknown = sorted(set(options) - set(names)) if names is not None else []
        if unknown:
            expected = f"expected some of {sorted(names)}" if names else "it takes no options"
            raise DatasetOptionError(f"{cls.card.name}: unknown option(s) {unknown}; {expected}")

    # -- the contract ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return self.table.ids

    @property
    def targets(self) -> np.ndarray:
        return self.table.targets

    @property
    def concepts(self) -> np.ndarray:
        return self.table.concepts

    @property
    def groups(self) -> list[str] | None:
        return self.table.groups

    def load_image(self, index: int) -> np.ndarray:
        """The raw uint8 image (H, W) or (H, W, 3) of sample `index`, before any transform."""
        if self.table.images is not None:
            return self.table.images[index]
        assert self.table.paths is not None
        image = read_image(self.table.paths[index], self.card.channels)
        op = self.table.extra.get("image_op")
        return image if op is None else op(image)

    def load_masks(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """Per-concept masks (K, H, W) uint8 in {0, 1}; an absent file is an empty mask."""
        if self.table.masks is not None:
            return self.table.masks[index]
        assert self.table.mask_paths is not None
        out = np.zeros((self.card.num_concepts, *size), dtype=np.uint8)
        for k, path in enumerate(self.table.mask_paths[index]):
            if path is not None:
                mask = read_image(path, 1)
                if mask.shape != size:
                    raise DatasetError(f"{path}: mask is {mask.shape}, image is {size}; expected the same size")
                out[k] = mask > 127
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        arr = self.load_image(index)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        image = tv_tensors.Image(tensor)
        sample: dict[str, Any] = {}
        if self.card.has_masks:
            masks = tv_tensors.Mask(torch.from_numpy(self.load_masks(index, tuple(arr.shape[:2]))))
            if self.transform is not None:
                image, masks = self.transform(image, masks)
            sample["masks"] = masks.as_subclass(torch.Tensor)
        elif self.transform is not None:
            image = self.transform(image)
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        target = self.table.targets[index]
        sample["image"] = image.as_subclass(torch.Tensor)
        sample["target"] = torch.as_tensor(target, dtype=torch.float32 if self.card.task == "multilabel" else torch.int64)
        sample["concepts"] = torch.from_numpy(np.asarray(self.table.concepts[index], dtype=np.float32))
        sample["id"] = self.table.ids[index]
        sample["path"] = "" if self.table.paths is None else str(self.table.paths[index])
        return sample

    # -- summaries ---------------------------------------------------------------------------------
    def class_counts(self) -> dict[str, int]:
        names = self.card.class_names
        if self.card.task == "multilabel":
            totals = np.asarray(self.table.targets).sum(axis=0)
            return {names[i]: int(totals[i]) for i in range(len(names))}
        counts = Counter(int(t) for t in self.table.targets)
        return {names[i]: counts.get(i, 0) for i in range(len(names))}

    def subset(self, index: Sequence[int] | np.ndarray, split: str | None = None) -> MedicalImageDataset:
        """A dataset of the rows at `index`, with the same card and transform."""
        return MedicalImageDataset(self.table.select(index), self.card, split or self.split, self.transform)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.card.name!r}, split={self.split!r}, n={len(self)})"

    # -- verification ------------------------------------------------------------------------------
    @classmethod
    def verify(cls, root: str | Path, check_images: bool = True, progress: bool = False, **options: Any) -> VerifyReport:
        """Parse every split and decode every image; collect all problems instead of stopping at one."""
        cls.check_options(options)
        report = VerifyReport(name=cls.card.name, root=str(root))
        try:  # the options may change the splits (a loader's own protocol without a split of the official one)
            splits = cls.card_for(root, **options).splits
        except DatasetError:
            splits = cls.card.splits
        for split in splits:
            try:
                table = cls.read_table(root, split, **options)
            except DatasetError as exc:
                report.add_problems(exc.problems or [Problem(str(root), exc.header)])
                continue
            card = cls.card_for(root, **options)
            if not report.split_sizes:  # notes describe the whole dataset: take them once
                report.notes.extend(cls.verify_notes(table))
            report.add_split(split, table, card)
        try:
            report.card = cls.card_for(root, **options)
        except DatasetError as exc:  # the table itself is unreadable: its problems are listed already
            report.add_problems(exc.problems or [Problem(str(root), exc.header)])
        if len(report.split_sizes) == len(splits):
            report.notes.extend(report.coverage_notes())
        if check_images:
            report.check_images(progress=progress)
        return report

    @classmethod
    def card_for(cls, root: str | Path, **options: Any) -> DatasetCard:
        """The card for the data at `root`; generic loaders build it from the files."""
        return cls.card

    @classmethod
    def verify_notes(cls, table: SampleTable) -> list[str]:
        """Facts worth a line in `verify` that are not errors (rows a loader dropped on purpose...)."""
        return list(table.extra.get("notes", []))


class FileDataset(MedicalImageDataset):
    """A dataset read from files under a root: `Loader(root, split=None, transform=None, **options)`.

    Subclasses implement `read_table(root, split, **options)` (and `card_for` when the card depends on the
    files or options). `split=None` is the card's first split.
    """

    def __init__(self, root: str | Path, split: str | None = None, transform: Callable | None = None,
                 **options: Any):
        self.check_options(options)
        split = self.normalize_split(split or self.card.splits[0])
        table = self.read_table(root, split, **options)
        super().__init__(table, self.card_for(root, **options), split, transform)


@dataclass
class VerifyReport:
    """What `medimg datasets verify` prints: counts, and every problem found."""

    name: str
    root: str
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    concept_coverage: dict[str, float] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    card: DatasetCard | None = None
    _files: list[tuple[Path, int]] = field(default_factory=list, repr=False)

    def add_split(self, split: str, table: SampleTable, card: DatasetCard) -> None:
        self.split_sizes[split] = len(table)
        ds = MedicalImageDataset(table, card, split)
        self.class_counts[split] = ds.class_counts()
        if card.num_concepts:
            self.concept_coverage[split] = float(np.mean(~np.isnan(table.concepts))) if len(table) else 0.0
        if table.paths is not None:
            self._files += [(p, card.channels) for p in table.paths]
        if table.mask_paths is not None:
            self._files += [(p, 1) for row in table.mask_paths for p in row if p is not None]

    @property
    def num_images(self) -> int:
        return sum(self.split_sizes.values())

    def add_problems(self, problems: Sequence[Problem]) -> None:
        """Add problems not listed yet: a problem of the whole table is found again by every split."""
        seen = set(self.problems)
        for problem in problems:
            if problem not in seen:
                self.problems.append(problem)
                seen.add(problem)

    def coverage_notes(self) -> list[str]:
        """A class with no image in a split whose metrics it needs (val, test): its metrics cannot be measured."""
        if self.card is None or self.card.task == "multilabel":
            return []
        notes = []
        for name in self.card.class_names:
            absent = [s for s, counts in self.class_counts.items() if counts.get(name, 0) == 0]
            if absent and len(absent) < len(self.class_counts):
                present = ", ".join(f"{s} {self.class_counts[s].get(name, 0)}" for s in self.class_counts
                                    if s not in absent)
                why = []
                if "train" in absent:
                    why.append("the model never learns it")
                evaluated = [s for s in absent if s != "train"]
                if evaluated:
                    why.append(f"its per-class metrics on {' and '.join(evaluated)} are undefined")
                notes.append(f"class '{name}' has no image in {' or '.join(absent)} (images: {present}); "
                             + " and ".join(why))
        return notes

    def check_images(self, progress: bool = False) -> None:
        from tqdm.auto import tqdm

        seen: set[Path] = set()
        files = [(p, c) for p, c in self._files if not (p in seen or seen.add(p))]
        odd: list[tuple[Path, str]] = []
        for path, channels in tqdm(files, desc="decoding images", unit="img", disable=None if progress else True):
            problem, note = inspect_image(path, channels)
            if problem is not None:
                self.add_problems([problem])
            elif note is not None:
                odd.append((path, note))
        if odd:
            shown = "; ".join(f"{p} ({n})" for p, n in odd[:5]) + (" ..." if len(odd) > 5 else "")
            self.notes.append(f"{len(odd)} image(s) tiny or of an extreme aspect ratio, stretched to the square "
                              f"training size: {shown}")

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        card = self.card
        return {
            "dataset": self.name,
            "root": self.root,
            "images": self.num_images,
            "split_sizes": self.split_sizes,
            "classes": card.num_classes if card else None,
            "class_counts": self.class_counts,
            "concepts": card.num_concepts if card else None,
            "concept_annotation_coverage": self.concept_coverage,
            "problems": [str(p) for p in self.problems],
            "notes": list(self.notes),
            "ok": self.ok,
        }

    def to_text(self) -> str:
        card = self.card
        lines = [f"dataset: {self.name} at {self.root}"]
        lines.append(f"images: {self.num_images} (" + ", ".join(f"{k} {v}" for k, v in self.split_sizes.items()) + ")")
        if card is not None:
            lines.append(f"task: {card.task}; classes: {card.num_classes} ({', '.join(card.class_names)})")
            kind = "binary concepts" if card.num_concepts else "concepts (none annotated)"
            lines.append(f"concepts: {card.num_concepts} {kind}")
        for split, counts in self.class_counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for split, cov in self.concept_coverage.items():
            lines.append(f"  {split}: {cov:.1%} of concept values annotated")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"errors: {len(self.problems)}")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("errors: none")
        return "\n".join(lines)


def collect_missing_files(
    resolver,
    relatives: Sequence[str],
    file_label: str,
    column: str,
    log: ProblemLog,
    rows: Sequence[int] | None = None,
) -> list[Path | None]:
    """Resolve each relative path; record a problem (with its CSV line) for each one not found.

    `rows` are the 0-based data rows of `relatives` in the table (default 0, 1, ...); problems give
    the line a spreadsheet shows (header = line 1).
    """
    out: list[Path | None] = []
    row_numbers = list(rows) if rows is not None else list(range(len(relatives)))
    for rel, row in zip(relatives, row_numbers, strict=True):
        line = int(row) + ROW_OFFSET
        outside = resolver.check_inside(rel)
        if outside is not None:
            log.add(file_label, outside, row=line, column=column)
            out.append(None)
            continue
        path = resolver.resolve(rel)
        if path is None:
            log.add(file_label, resolver.missing(rel), row=line, column=column)
        out.append(path)
    return out
