"""Local weight files read without unpickling arbitrary objects, and the errors of `medimg_core.models`.

Below `backbones` (which loads such files into a timm model) and `weights` (which converts and verifies the
named offline sources); both re-raise these errors. See `backbones` for the formats accepted.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_CHECKPOINT_NESTING = ("state_dict", "model_state_dict", "model")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_DIR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BackboneError(RuntimeError):
    """A backbone cannot be built, or its weights cannot be loaded."""


class UnsafeCheckpointError(BackboneError):
    """A checkpoint holds pickled objects that only full (code-running) unpickling could read."""


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint, never unpickling arbitrary objects.

    `path` is a .safetensors file, a .pth/.pt/.bin file (``torch.load(weights_only=True)``), or a
    folder (``local-dir:`` prefix optional) holding model.safetensors or pytorch_model.bin. Nested
    state dicts ("state_dict", "model_state_dict", "model") are unwrapped; non-tensor entries dropped.
    """
    path = Path(str(path).removeprefix("local-dir:")).expanduser()
    if path.is_dir():
        file = next((path / f for f in _DIR_WEIGHT_FILES if (path / f).is_file()), None)
        if file is None:
            raise BackboneError(f"{path}: a weights folder needs one of {list(_DIR_WEIGHT_FILES)}")
        path = file
    if not path.is_file():
        raise BackboneError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise BackboneError(f"{path}: not a readable safetensors file ({exc})") from exc
    elif path.suffix in _TORCH_SUFFIXES:
        raw = _torch_load_weights_only(path)
    else:
        raise BackboneError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, "
                            f"{', '.join(_TORCH_SUFFIXES)} or a save_for_hf folder")
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}, "optimizer": ...} ...
        nested = None
        if isinstance(raw, Mapping):
            nested = next((raw[k] for k in _CHECKPOINT_NESTING if isinstance(raw.get(k), Mapping)), None)
        if nested is None:
            break
        raw = nested
    if not isinstance(raw, Mapping):
        raise BackboneError(f"{path}: holds a {type(raw).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in raw.items() if torch.is_tensor(v)}
    if not tensors:
        raise BackboneError(f"{path}: no tensors found (top-level keys: {list(raw)[:8]})")
    return tensors


def _torch_load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc) and not _starts_like_a_pickle(path):
            raise BackboneError(f"{path}: not a PyTorch weights file (neither a zip archive nor a pickle: it starts "
                                f"with {path.read_bytes()[:16]!r}); expected a .safetensors file or a .pth/.pt/.bin "
                                "written by torch.save") from None
        raise _unsafe(path, exc) from None
    except Exception as exc:
        if "weights only load failed" in str(exc).lower():
            raise _unsafe(path, exc) from None
        raise BackboneError(f"{path}: cannot be read as a PyTorch weights file ({type(exc).__name__}: {exc})") from exc


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether the file's first pickle parses up to its first 4 KB (by pickletools, which runs nothing): torch's
    weights-only unpickler reports 'Unsupported operand' both for an unsafe pickle and for bytes that are no
    pickle at all (a text file, an image renamed .pth), and only the first is a refusal. An unknown opcode means
    no pickle; a stream cut by the 4 KB window may still be one."""
    import io
    import pickletools

    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head:
        return False
    try:
        for _ in pickletools.genops(io.BytesIO(head)):
            pass
    except ValueError as exc:
        return "unknown" not in str(exc)
    return True


def _unsafe(path: Path, exc: Exception) -> UnsafeCheckpointError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), type(exc).__name__)
    return UnsafeCheckpointError(
        f"{path}: refused. This checkpoint holds pickled Python objects beyond tensors and plain "
        "containers, which only full unpickling could read, and unpickling can run arbitrary code; "
        "medimg never unpickles arbitrary objects (it loads .pth/.pt/.bin with torch.load(weights_only=True)). "
        "If you trust the file, convert it to safetensors once, elsewhere: "
        "state = torch.load(path, weights_only=False); safetensors.torch.save_file({k: v.contiguous() for k, v "
        "in state.items() if torch.is_tensor(v)}, 'weights.safetensors'). "
        f"(torch: {detail[:200]})"
    )
