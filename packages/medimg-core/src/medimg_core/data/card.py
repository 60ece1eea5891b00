"""Dataset cards: what a dataset is, how its targets and concepts read, and where it comes from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

TaskType = Literal["binary", "multiclass", "multilabel", "ordinal"]
TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "multilabel", "ordinal")


@dataclass(frozen=True)
class DatasetCard:
    """Metadata of a dataset, carried by every dataset object as `dataset.card`.

    `class_names` are the class labels (binary, multiclass), the label names of a multi-hot
    target (multilabel) or the grade names (ordinal). `concept_groups` maps a source attribute
    (for example WBCAtt's `nucleus_shape`) to the binary concepts expanded from it.
    """

    name: str
    title: str
    task: TaskType
    class_names: tuple[str, ...]
    concept_names: tuple[str, ...] = ()
    concept_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    channels: int = 3
    splits: tuple[str, ...] = ("train", "val", "test")
    official_splits: bool = True
    has_masks: bool = False
    modality: str = ""
    description: str = ""
    license: str = ""
    citation: str = ""
    homepage: str = ""
    download: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASK_TYPES:
            raise ValueError(f"DatasetCard {self.name!r}: task {self.task!r} is not one of {TASK_TYPES}")
        if self.channels not in (1, 3):
            raise ValueError(f"DatasetCard {self.name!r}: channels must be 1 or 3, got {self.channels}")
        if self.task == "binary" and len(self.class_names) != 2:
            raise ValueError(f"DatasetCard {self.name!r}: a binary task needs 2 class names, got {self.class_names}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_concepts(self) -> int:
        return len(self.concept_names)

    def with_updates(self, **changes: Any) -> DatasetCard:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class_names"] = list(self.class_names)
        out["concept_names"] = list(self.concept_names)
        out["splits"] = list(self.splits)
        out["concept_groups"] = {k: list(v) for k, v in self.concept_groups.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetCard:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"dataset card: unknown field(s) {unknown}; expected some of {sorted(known)}")
        data = dict(data)
        for key in ("class_names", "concept_names", "splits"):
            if key in data:
                data[key] = tuple(data[key])
        if "concept_groups" in data:
            data["concept_groups"] = {k: tuple(v) for k, v in data["concept_groups"].items()}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """A human-readable card, as `medimg datasets info` prints it."""
        lines = [f"# {self.title} (`{self.name}`)", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"- task: {self.task}, {self.num_classes} classes: {', '.join(self.class_names)}",
            f"- image channels: {self.channels}; modality: {self.modality or 'n/a'}",
            f"- splits: {', '.join(self.splits)} ({'fixed: official or given by the data' if self.official_splits else 'seeded folds, written to a split file'})",
            f"- concepts: {self.num_concepts}" + (f" ({', '.join(self.concept_names)})" if self.concept_names else ""),
            f"- pixel masks per concept: {'yes' if self.has_masks else 'no'}",
        ]
        for group, names in self.concept_groups.items():
            lines.append(f"  - {group}: {', '.join(names)}")
        for key, value in self.extra.items():
            lines.append(f"- {key}: {value}")
        if self.license:
            lines.append(f"- licence: {self.license}")
        if self.homepage:
            lines.append(f"- homepage: {self.homepage}")
        if self.download:
            lines.append(f"- download: {self.download}")
        if self.citation:
            lines += ["", "Citation:", "", self.citation]
        return "\n".join(lines)
