"""Errors for bad input data: every problem names where it is and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where it is (file, row, column) and what is wrong."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


class DatasetError(ValueError):
    """A dataset could not be read. `problems` lists every problem that was found."""

    def __init__(self, header: str, problems: list[Problem] | None = None):
        self.header = header
        self.problems = list(problems or [])
        super().__init__(self._format())

    def _format(self) -> str:
        if not self.problems:
            return self.header
        lines = [f"{self.header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        hidden = len(self.problems) - MAX_LISTED_PROBLEMS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more (run `medimg datasets verify` to list them all)")
        return "\n".join(lines)


class ImageReadError(DatasetError):
    """An image file is missing, truncated, not an image, or too large to decode safely."""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset format that is not registered; the message names it, the nearest name and the known ones. A
    KeyError as well, as a lookup in the registry was (its text is not quoted as a KeyError's would be)."""

    def __str__(self) -> str:
        return self._format()


class DatasetOptionError(DatasetError, TypeError):
    """A loader option is unknown or of the wrong type or value; the message names the option (and the
    dataset.json key when the descriptor set it). A TypeError as well, as unknown keyword arguments are."""


class ProblemLog:
    """Collects problems while a dataset is parsed so that all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: str | Path, message: str, row: int | None = None, column: str | None = None) -> None:
        self.problems.append(Problem(str(file), message, row, column))

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def __len__(self) -> int:
        return len(self.problems)

    def raise_if_any(self, header: str) -> None:
        if self.problems:
            raise DatasetError(header, self.problems)
