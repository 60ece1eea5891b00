"""Reading images safely and finding them inside a dataset root as their owners ship them."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from medimg_core.data.errors import ImageReadError, Problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file fully into a uint8 array (H, W) for 1 channel or (H, W, 3) for 3.

    Raises ImageReadError naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            img.load()  # full decode: a truncated file fails here, not later inside a transform
            if img.mode == "I;16" or img.mode == "I":
                # 16-bit grayscale (common for X-rays): rescale to 8 bit before conversion
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                img = Image.fromarray(arr.astype(np.uint8))
            return np.asarray(img.convert(mode), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (expected PNG, JPEG, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: unreadable or truncated image ({exc})") from None


def check_image(path: Path, channels: int) -> Problem | None:
    """Fully decode one image; return the problem, or None when it is readable."""
    try:
        read_image(path, channels)
    except ImageReadError as exc:
        return Problem(str(path), str(exc).split(": ", 1)[-1])
    return None


class PathResolver:
    """Finds the file a metadata table names, inside a dataset root.

    Official releases are not always laid out as their CSVs say: file extensions and folder names
    differ in case (`.JPG` vs `.jpg`), and some CSVs carry a prefix folder the download does not
    have (WBCAtt's `PBC_dataset_normal_DIB/...`). The resolver tries, in order: the exact relative
    path; the same path matched case-insensitively; the path with leading folders dropped; and
    finally the file name alone when exactly one file of that name exists under the root.
    Paths that would leave the root (absolute paths, `..`) are refused.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._by_lower_rel: dict[str, Path] | None = None
        self._by_lower_name: dict[str, list[Path]] | None = None

    def _build_index(self) -> None:
        by_rel: dict[str, Path] = {}
        by_name: dict[str, list[Path]] = defaultdict(list)
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix().lower()
                by_rel[rel] = full
                by_name[name.lower()].append(full)
        self._by_lower_rel = by_rel
        self._by_lower_name = dict(by_name)

    def check_inside(self, relative: str) -> str | None:
        """Return an error message when `relative` would point outside the root."""
        posix = PurePosixPath(str(relative).replace("\\", "/"))
        if posix.is_absolute() or (len(str(relative)) > 1 and str(relative)[1] == ":"):
            return f"path {relative!r} is absolute; expected a path relative to the dataset root {self.root}"
        if ".." in posix.parts:
            return f"path {relative!r} leaves the dataset root {self.root}"
        return None

    def resolve(self, relative: str) -> Path | None:
        """The existing file for `relative`, or None when it cannot be found."""
        if self.check_inside(relative) is not None:
            return None
        rel = PurePosixPath(str(relative).replace("\\", "/"))
        exact = self.root / rel
        if exact.is_file():
            return exact
        if self._by_lower_rel is None:
            self._build_index()
        assert self._by_lower_rel is not None and self._by_lower_name is not None
        parts = rel.parts
        for start in range(len(parts)):
            hit = self._by_lower_rel.get(PurePosixPath(*parts[start:]).as_posix().lower())
            if hit is not None:
                return hit
        candidates = self._by_lower_name.get(rel.name.lower(), [])
        if len(candidates) == 1:
            return candidates[0]
        return None
