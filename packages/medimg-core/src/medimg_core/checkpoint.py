"""Checkpoints as folders of safetensors + JSON, written atomically; never unpickled.

A checkpoint folder holds::

    model.safetensors    the weights (EMA weights when EMA is on; the raw ones in raw_model.safetensors)
    config.json          what rebuilds the model (architecture, classes, dataset card), plus versions
    state.safetensors    optimizer tensors, RNG states, scaler  (training checkpoints only)
    state.json           epoch, step, optimizer/scheduler scalars, best metric, history, python RNG
    README.md            a short model card
    <name>.safetensors / <name>.json   the method's own extra files (a frozen backbone, a push index...)

Writes go to a hidden temporary folder that is renamed into place, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medimg_core import __version__


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


def bad_value(path: str | Path, where: str, value: Any, expected: str) -> CheckpointError:
    """The error for a method's artefact file (rules.json, cbm.json, names.json, boundary.json, ...) holding a
    value it cannot use: names the file, the key (`where`), the value found (shortened) and what was expected."""
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CheckpointError(f"{path}: {where} is {shown}; expected {expected}")


def state_dict_to_cpu(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of a state dict (shared tensors are copied apart, as safetensors wants)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        entry = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{pid}/{key}"] = value.detach().cpu().contiguous()
                entry[key] = "__tensor__"
            else:
                entry[key] = value
        scalars["state"][str(pid)] = entry
    return tensors, scalars


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    state = {}
    for pid, entry in scalars["state"].items():
        state[int(pid)] = {k: (tensors[f"optimizer/{pid}/{k}"] if v == "__tensor__" else v) for k, v in entry.items()}
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The RNG states of torch (CPU and CUDA), numpy and python, as tensors + JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [py_version, list(py_state), py_gauss]}
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = scalars["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON readers reject the NaN literal."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, payload: Any) -> None:
    """Atomic, strict JSON write (temp file, then rename; NaN written as null)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False))
    os.replace(tmp, path)


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place, replacing an older checkpoint."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    raw_model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    training_state: Mapping[str, Any] | None = None,
    with_rng: bool = False,
    card: str | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at `directory` atomically. See the module docstring for its files.

    `extra_files` maps file names to what they hold: a `name.safetensors` a mapping of tensors (or a module,
    whose state dict is written), a `name.json` anything JSON-serialisable, any other name an existing file to
    copy in.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    current = "model.safetensors"  # the file being written, named in the error when writing fails
    try:
        save_file(state_dict_to_cpu(model), str(tmp / "model.safetensors"))
        if raw_model is not None:
            current = "raw_model.safetensors"
            save_file(state_dict_to_cpu(raw_model), str(tmp / "raw_model.safetensors"))
        current = "config.json"
        write_json(tmp / "config.json", {**config, "medimg_core_version": __version__, "torch_version": torch.__version__})
        if optimizer is not None or training_state is not None or with_rng:
            tensors: dict[str, torch.Tensor] = {}
            scalars: dict[str, Any] = dict(training_state or {})
            if optimizer is not None:
                opt_tensors, opt_scalars = _optimizer_to_flat(optimizer)
                tensors.update(opt_tensors)
                scalars["optimizer"] = opt_scalars
            if scheduler is not None:
                scalars["scheduler"] = scheduler.state_dict()
            if scaler is not None and scaler.is_enabled():
                scalars["scaler"] = scaler.state_dict()
            if with_rng:
                rng_tensors, rng_scalars = rng_state()
                tensors.update(rng_tensors)
                scalars["rng"] = rng_scalars
            current = "state.safetensors"
            save_file(tensors, str(tmp / "state.safetensors"))
            current = "state.json"
            write_json(tmp / "state.json", scalars)
        if card:
            current = "README.md"
            (tmp / "README.md").write_text(card)
        for name, payload in (extra_files or {}).items():
            current = name
            write_extra_file(tmp / name, payload)
        _match_file_modes(tmp)
    except BaseException as exc:  # a full disk or an interrupt: leave no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):
            raise CheckpointError(f"{final / current}: cannot write the checkpoint ({exc}){_disk_hint(exc)}; the "
                                  "previous one is kept") from exc
        raise
    _publish(tmp, final)
    return final


def _disk_hint(exc: BaseException) -> str:
    """A hint when an error reads like a full disk or a file-size limit (safetensors reports its own type)."""
    errno_ = getattr(exc, "errno", None)
    text = str(exc).lower()
    if errno_ in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
            k in text for k in ("no space left", "file too large", "disk quota", "os error 28", "os error 27")):
        return (". The disk looks full (or a file-size or quota limit was reached): free some space, or train into "
                "another --out, then continue with --resume")
    return ""


def umask_file_mode() -> int:
    """The permissions a new file gets under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _match_file_modes(folder: Path) -> None:
    """Give every file of `folder` the permissions of its config.json (what the umask gives a new file):
    safetensors writes its files 0600, so other users of a shared machine could read a run's config but not
    its weights."""
    reference = folder / "config.json"
    if not reference.is_file():
        return
    mode = stat.S_IMODE(reference.stat().st_mode)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)


def write_extra_file(path: Path, payload: Any) -> None:
    """One of a checkpoint's extra files (see `save_checkpoint`)."""
    if Path(path).name in ("model.safetensors", "config.json", "state.safetensors", "state.json", "README.md"):
        raise ValueError(f"{path.name} is one of the checkpoint's own files; extra files need other names")
    if path.suffix == ".safetensors":
        save_file(state_dict_to_cpu(payload), str(path))
    elif path.suffix == ".json":
        write_json(path, payload)
    else:
        shutil.copyfile(payload, path)


def find_checkpoint(directory: str | Path) -> Path:
    """The checkpoint folder at `directory`, or the previous one left by a crash mid-publish."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(f".{directory.name}.old")):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"{directory}: no checkpoint here (expected model.safetensors and config.json)")


def best_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for `path`: a run folder's checkpoints/best, or `path` itself."""
    path = Path(path)
    return find_checkpoint(path / "checkpoints" / "best" if (path / "checkpoints").is_dir() else path)


def load_config_json(directory: str | Path) -> dict[str, Any]:
    return json.loads((find_checkpoint(directory) / "config.json").read_text())


def load_weights(model: torch.nn.Module, directory: str | Path, file: str = "model.safetensors",
                 strict: bool = True) -> torch.nn.Module:
    """Load weights saved by `save_checkpoint` into `model` (safetensors only: nothing is unpickled)."""
    path = find_checkpoint(directory) / file
    state = read_tensors(path, "weights")
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # missing or unexpected keys, tensors of another shape
        first = str(exc).strip().splitlines()
        shown = " ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{path}: the weights do not fit the model ({shown[:600]}); expected a checkpoint "
                              "written for this model") from None
    if strict is False and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(f"{path}: keys do not fit the model (missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]})")
    return model


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (nothing is unpickled), every floating-point one finite: a missing,
    corrupt or foreign file (a pickle renamed .safetensors), or a tensor holding NaN or infinity, is a
    CheckpointError naming the file (and the tensor), so that no damaged weights give a confident answer."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found ({what})")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise CheckpointError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc}); expected a safetensors "
                              "file") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()} "
                                  f"({what}); expected finite weights: the file is damaged or comes from a training "
                                  "that diverged")
    return tensors


def load_training_state(
    directory: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore optimizer, scheduler, scaler and RNG states; return the remaining scalars (epoch, ...)."""
    folder = find_checkpoint(directory)
    file = folder / "state.safetensors"
    try:
        tensors = load_file(str(file))
        file = folder / "state.json"
        scalars = json.loads(file.read_text())
        if not isinstance(scalars, dict):
            raise TypeError(f"expected a JSON object, found {type(scalars).__name__}")
    except Exception as exc:  # safetensors and json raise several types on corrupt files
        raise CheckpointError(f"{file}: cannot read the training state ({type(exc).__name__}: {exc})") from None
    if optimizer is not None and "optimizer" in scalars:
        _optimizer_from_flat(optimizer, tensors, scalars.pop("optimizer"))
    if scheduler is not None and "scheduler" in scalars:
        scheduler.load_state_dict(scalars.pop("scheduler"))
    if scaler is not None and "scaler" in scalars:
        scaler.load_state_dict(scalars.pop("scaler"))
    if restore_rng and "rng" in scalars:
        set_rng_state(tensors, scalars.pop("rng"))
    return scalars
