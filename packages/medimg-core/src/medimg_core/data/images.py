"""Reading images safely and finding them inside a dataset root as their owners ship them."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from medimg_core.data.errors import ImageReadError, Problem

log = logging.getLogger("medimg")

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


def walk(root: str | Path, loops: list[Path] | None = None):
    """`os.walk(root)` that also enters symlinked folders, each real folder once.

    Users often keep data elsewhere and link it in (`images -> /data/isic/images`), so folder links are
    followed. A guard on the (device, inode) of every real folder entered skips a link back to a folder
    already walked (a loop such as `images/again -> ..`, or a second link to the same folder) instead of
    walking forever; each skipped link is appended to `loops` when given. Yields what os.walk yields; the
    caller may prune `dirnames` in place as with os.walk.
    """
    try:
        top = os.stat(root)
    except OSError:
        return
    seen = {(top.st_dev, top.st_ino)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in dirnames:
            try:
                st = os.stat(os.path.join(dirpath, d))
            except OSError:  # a dangling link or a folder that vanished
                continue
            if (st.st_dev, st.st_ino) in seen:
                if loops is not None:
                    loops.append(Path(dirpath) / d)
                continue
            seen.add((st.st_dev, st.st_ino))
            keep.append(d)
        dirnames[:] = keep
        yield dirpath, dirnames, filenames


class PathResolver:
    """Finds the file a metadata table names, inside a dataset root.

    Official releases are not always laid out as their CSVs say: file extensions and folder names
    differ in case (`.JPG` vs `.jpg`), and some CSVs carry a prefix folder the download does not
    have (WBCAtt's `PBC_dataset_normal_DIB/...`). The resolver tries, in order: the exact relative
    path; the same path matched case-insensitively; the path with leading folders dropped; and
    finally the file name alone when exactly one file of that name exists under the root.

    What counts as inside the root: paths that would leave it lexically (absolute paths, `..`) are
    refused. Symlinked folders anywhere under the root (or the root itself) are followed wherever they
    point: placing a link to the images is how users keep data elsewhere (see `walk` for the loop
    guard). A symlinked *file* must stay inside the dataset: its target must lie under the root or under
    a linked folder of the dataset; one pointing elsewhere (`images/x.png -> /etc/hostname`) is refused
    and `refused[relative]` says why, so that a table cannot make the loader read arbitrary files.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._by_lower_rel: dict[str, Path] | None = None
        self._by_lower_name: dict[str, list[Path]] | None = None
        self._linked_dirs: list[Path] = []
        #: folder links skipped by the loop guard while indexing
        self.loops: list[Path] = []
        #: {relative path: why it was refused} for file links that leave the dataset
        self.refused: dict[str, str] = {}

    def _build_index(self) -> None:
        by_rel: dict[str, Path] = {}
        by_name: dict[str, list[Path]] = defaultdict(list)
        for dirpath, dirnames, filenames in walk(self.root, self.loops):
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    self._linked_dirs.append(Path(os.path.realpath(os.path.join(dirpath, d))))
            for name in filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix().lower()
                by_rel[rel] = full
                by_name[name.lower()].append(full)
        self._by_lower_rel = by_rel
        self._by_lower_name = dict(by_name)
        if self.loops:
            shown = ", ".join(str(p.relative_to(self.root)) for p in self.loops[:5])
            log.warning("%s: skipped %d folder link(s) leading back to a folder already indexed (a loop or a "
                        "second link to the same folder): %s", self.root, len(self.loops), shown)

    def check_inside(self, relative: str) -> str | None:
        """Return an error message when `relative` would point outside the root."""
        posix = PurePosixPath(str(relative).replace("\\", "/"))
        if posix.is_absolute() or (len(str(relative)) > 1 and str(relative)[1] == ":"):
            return f"path {relative!r} is absolute; expected a path relative to the dataset root {self.root}"
        if ".." in posix.parts:
            return f"path {relative!r} leaves the dataset root {self.root}"
        return None

    def _accept(self, relative: str, path: Path) -> Path | None:
        """`path`, unless it is a file link whose target leaves the dataset (then None, reason in `refused`)."""
        if not os.path.islink(path):
            return path
        target = Path(os.path.realpath(path))
        if target.is_relative_to(self.root):
            return path
        if self._by_lower_rel is None:
            self._build_index()  # finds the linked folders, whose contents are part of the dataset
        if any(target.is_relative_to(base) for base in self._linked_dirs):
            return path
        self.refused[relative] = (
            f"image {relative!r} is a symbolic link to {target}, outside the dataset root {self.root}; linked "
            "files must stay inside the dataset (link the folder that holds the images instead, or copy the file)")
        return None

    def resolve(self, relative: str) -> Path | None:
        """The existing file for `relative`, or None when it cannot be found or is refused (see `refused`)."""
        if self.check_inside(relative) is not None:
            return None
        rel = PurePosixPath(str(relative).replace("\\", "/"))
        exact = self.root / rel
        if exact.is_file():
            return self._accept(relative, exact)
        if self._by_lower_rel is None:
            self._build_index()
        assert self._by_lower_rel is not None and self._by_lower_name is not None
        parts = rel.parts
        for start in range(len(parts)):
            hit = self._by_lower_rel.get(PurePosixPath(*parts[start:]).as_posix().lower())
            if hit is not None:
                return self._accept(relative, hit)
        candidates = self._by_lower_name.get(rel.name.lower(), [])
        if len(candidates) == 1:
            return self._accept(relative, candidates[0])
        return None

    def missing(self, relative: str) -> str:
        """Why `relative` resolved to nothing: the refusal of a file link, or not found."""
        return self.refused.get(relative) or f"image {relative!r} not found under {self.root}"
