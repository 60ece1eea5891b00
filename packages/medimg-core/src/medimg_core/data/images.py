"""Reading images safely and finding them inside a dataset root as their owners ship them."""

from __future__ import annotations

import logging
import os
import unicodedata
import warnings
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from medimg_core.data.errors import ImageReadError, Problem

log = logging.getLogger("medimg")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


#: an image whose shorter side is below this many pixels, or whose sides differ by more than MAX_ASPECT times,
#: is read, but `medimg datasets verify` notes it (it is stretched to the training size)
MIN_SIDE = 8
MAX_ASPECT = 10.0


def _rescale_to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """A high-bit-depth image (16-bit of any byte order, 32-bit integer, 32-bit float) scaled to 0-255.

    The image's own minimum becomes 0 and its maximum 255 (a constant image becomes 0): nothing is clipped,
    whatever the range of the values (0-1 floats, 0-1000 floats, 12-bit data in 16-bit files...).
    """
    values = np.asarray(arr, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageReadError(f"{path}: {bad} pixel value(s) are NaN or infinite; expected finite intensities")
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    return scaled.astype(np.uint8)


#: PIL modes of high-bit-depth grayscale images: rescaled to 8 bit by `to_8bit` (PIL's own conversion clips)
WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def to_8bit(img: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """`img` itself when it is 8-bit; a high-bit-depth grayscale image (`WIDE_MODES`, or any other `I;16*`)
    rescaled to mode L from its own minimum and maximum (see `_rescale_to_uint8`), never clipped."""
    if img.mode in WIDE_MODES or img.mode.startswith("I;16"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(img), Path(path)))
    return img


def _too_large(path: Path, exc: Exception) -> ImageReadError:
    limit = Image.MAX_IMAGE_PIXELS
    return ImageReadError(
        f"{path}: image too large to decode safely ({exc}); expected at most {limit} pixels "
        f"(about {limit // 10**6} megapixels). A small file of this size is a decompression bomb; a real scan this "
        "large must be downscaled first (or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file fully into a uint8 array (H, W) for 1 channel or (H, W, 3) for 3.

    8-bit images are converted to the channels asked for. High-bit-depth grayscale images (16-bit of any
    byte order: I;16, I;16B, I;16L, I;16N; 32-bit integer: I; 32-bit float: F) are rescaled from their own
    minimum and maximum to 0-255, never clipped. Raises ImageReadError naming the file when it is missing,
    truncated, not an image, larger than PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`; PIL's
    warning above it counts as an error), or holds NaN or infinite values.
    """
    path = Path(path)
    mode = "L" if channels == 1 else "RGB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # full decode: a truncated file fails here, not later inside a transform
                return np.asarray(to_8bit(img, path).convert(mode), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, exc) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (expected PNG, JPEG, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"{path}: unreadable or truncated image ({exc})") from None


def size_note(shape: tuple[int, ...]) -> str | None:
    """Why an image of `shape` (H, W[, C]) deserves a note (tiny, or extreme aspect ratio), or None."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_SIDE:
        return f"{w} x {h} pixels, smaller than {MIN_SIDE} on a side"
    if max(h, w) > MAX_ASPECT * min(h, w):
        return f"{w} x {h} pixels, an aspect ratio above {MAX_ASPECT:g}:1"
    return None


def inspect_image(path: Path, channels: int) -> tuple[Problem | None, str | None]:
    """Fully decode one image: (its problem or None, a size note or None)."""
    try:
        arr = read_image(path, channels)
    except ImageReadError as exc:
        return Problem(str(path), str(exc).split(": ", 1)[-1]), None
    return None, size_note(arr.shape)


def check_image(path: Path, channels: int) -> Problem | None:
    """Fully decode one image; return the problem, or None when it is readable."""
    return inspect_image(path, channels)[0]


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


def nfc(text: str) -> str:
    """Unicode NFC form: macOS writes file names decomposed (NFD), tables are mostly composed (NFC)."""
    return unicodedata.normalize("NFC", text)


#: how `PathResolver.resolve_how` found a file: as written, in another letter case or Unicode form, after
#: dropping leading folders, or by its file name alone (the last two are fallbacks that `verify` notes)
EXACT, CASE, FOLDERS, NAME = "exact", "case", "folders", "name"


class PathResolver:
    """Finds the file a metadata table names, inside a dataset root.

    Official releases are not always laid out as their CSVs say: file extensions and folder names
    differ in case (`.JPG` vs `.jpg`), file names are in another Unicode form (macOS writes `é` decomposed,
    NFD, where the table has it composed, NFC), and some CSVs carry a prefix folder the download does not
    have (WBCAtt's `PBC_dataset_normal_DIB/...`). The resolver tries, in order: the exact relative
    path; the same path matched case-insensitively and in NFC form; the path with leading folders dropped;
    and finally the file name alone when exactly one file of that name exists under the root.
    `resolve_how` says which one matched: loaders use it to refuse a fallback that lands on another
    column's file (an image taken as its own mask when `masks/` is missing) and `verify` notes every fallback.

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

    @staticmethod
    def _key(text: str) -> str:
        return nfc(text).lower()

    def _build_index(self) -> None:
        by_rel: dict[str, Path] = {}
        by_name: dict[str, list[Path]] = defaultdict(list)
        for dirpath, dirnames, filenames in walk(self.root, self.loops):
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    self._linked_dirs.append(Path(os.path.realpath(os.path.join(dirpath, d))))
            for name in filenames:
                full = Path(dirpath) / name
                by_rel[self._key(full.relative_to(self.root).as_posix())] = full
                by_name[self._key(name)].append(full)
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

    def refusal(self, relative: str, what: str = "file") -> str | None:
        """Why the file `relative` may not be read (it leaves the root, or it is a file link out of the dataset),
        or None. Says nothing about whether it exists."""
        outside = self.check_inside(relative)
        if outside is not None:
            return outside
        path = self.root / PurePosixPath(str(relative).replace("\\", "/"))
        if path.is_file() and self._accept(relative, path) is None:
            return self.missing(relative, what)
        return None

    def resolve_how(self, relative: str) -> tuple[Path | None, str]:
        """(the existing file for `relative` or None, how it was found: EXACT, CASE, FOLDERS or NAME)."""
        if self.check_inside(relative) is not None:
            return None, ""
        rel = PurePosixPath(str(relative).replace("\\", "/"))
        exact = self.root / rel
        if exact.is_file():
            return self._accept(relative, exact), EXACT
        if self._by_lower_rel is None:
            self._build_index()
        assert self._by_lower_rel is not None and self._by_lower_name is not None
        parts = rel.parts
        for start in range(len(parts)):
            hit = self._by_lower_rel.get(self._key(PurePosixPath(*parts[start:]).as_posix()))
            if hit is not None:
                return self._accept(relative, hit), CASE if start == 0 else FOLDERS
        candidates = self._by_lower_name.get(self._key(rel.name), [])
        if len(candidates) == 1:
            return self._accept(relative, candidates[0]), NAME
        return None, ""

    def resolve(self, relative: str) -> Path | None:
        """The existing file for `relative`, or None when it cannot be found or is refused (see `refused`)."""
        return self.resolve_how(relative)[0]

    def missing(self, relative: str, what: str = "image") -> str:
        """Why `relative` resolved to nothing: the refusal of a file link, or not found."""
        if relative in self.refused:
            return self.refused[relative].replace("image ", f"{what} ", 1)
        return f"{what} {relative!r} not found under {self.root}"
