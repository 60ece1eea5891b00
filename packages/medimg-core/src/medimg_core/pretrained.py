"""Trained models as self-contained folders, and one loader for all of them.

A checkpoint folder (`checkpoints/best` of a run, or what `save_pretrained(dir)` writes) holds::

    config.json           {"kind", "format", "versions", "config" (the full resolved config), "card" (the
                          dataset card), "preprocess" (Preprocess.to_dict()), and the method's own entries}
    model.safetensors     the weights
    <name>.safetensors    any other tensors the method needs to rebuild itself (a frozen backbone, a boundary...)
    <name>.json           any other small structured artefact (rules, a push index...)
    README.md             the model card

`load_pretrained(path)` reads the folder's kind and hands it to the class registered for that kind. Method
packages declare theirs as entry points of the group `medimg.pretrained` (`kind = "package.module:Class"`), so
the core never imports a method; `register_pretrained(kind, loader)` adds one at run time (tests, plug-ins).
The loader is called as `loader(path, **kwargs)`; a class is called through its `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

from medimg_core.checkpoint import CheckpointError, best_checkpoint, load_config_json
from medimg_core.config import config_to_dict
from medimg_core.data.card import DatasetCard
from medimg_core.data.preprocess import Preprocess

#: checkpoint folders written from this format on carry "preprocess", "versions" and every tensor they need
CHECKPOINT_FORMAT = 2
ENTRY_POINT_GROUP = "medimg.pretrained"

_LOADERS: dict[str, Callable[..., Any]] = {}


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of medimg-core, torch, timm and the given distributions (missing ones: "absent")."""
    out = {}
    for name in ("medimg-core", "torch", "timm", *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def checkpoint_config(kind: str, config: Any, card: DatasetCard, preprocess: Preprocess, *,
                      package: str | None = None, **extra: Any) -> dict[str, Any]:
    """The config.json of a checkpoint of `kind`: the contract's keys plus the method's own `extra`.

    `config` is the resolved config dataclass (or its dict), `package` the method's distribution name (for
    its version). `extra` may not override the contract's keys.
    """
    clash = {"kind", "format", "versions", "config", "card", "preprocess"} & set(extra)
    if clash:
        raise ValueError(f"checkpoint_config: {sorted(clash)} are the contract's keys")
    return {"kind": kind, "format": CHECKPOINT_FORMAT,
            "versions": versions(*([package] if package else [])),
            "config": config if isinstance(config, Mapping) else config_to_dict(config),
            "card": card.to_dict(), "preprocess": preprocess.to_dict(), **extra}


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder for `path`: a run folder's checkpoints/best, or the folder itself."""
    return best_checkpoint(path)


def read_checkpoint_config(path: str | Path, kind: str | tuple[str, ...] | None = None) -> tuple[Path, dict[str, Any]]:
    """(checkpoint folder, its config.json) for a run or checkpoint folder; with `kind`, a folder of another kind
    is a CheckpointError naming both. Malformed JSON is a CheckpointError naming the file."""
    folder = checkpoint_folder(path)
    try:
        config = load_config_json(folder)
    except ValueError as exc:  # json.JSONDecodeError
        raise CheckpointError(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and config.get("kind") not in kinds:
        raise CheckpointError(f"{folder}: a checkpoint of kind {config.get('kind')!r}, expected "
                              f"{' or '.join(map(repr, kinds))}")
    return folder, config


def register_pretrained(kind: str, loader: Callable[..., Any]) -> None:
    """Make `load_pretrained` hand folders of `kind` to `loader` (a class with from_pretrained, or a function)."""
    _LOADERS[kind] = loader


def registered_kinds() -> list[str]:
    """Every kind `load_pretrained` knows: registered at run time or declared by an installed package."""
    return sorted(set(_LOADERS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def _loader_for(kind: str) -> Callable[..., Any]:
    if kind in _LOADERS:
        return _LOADERS[kind]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            _LOADERS[kind] = ep.load()
            return _LOADERS[kind]
    raise CheckpointError(f"no installed package loads checkpoints of kind {kind!r} (known kinds: "
                          f"{', '.join(registered_kinds()) or 'none'}); install the method's package")


def load_pretrained(path: str | Path, **kwargs: Any) -> Any:
    """The trained model object (a method's estimator) of a run or checkpoint folder, whatever its method."""
    _, config = read_checkpoint_config(path)
    kind = config.get("kind")
    if not isinstance(kind, str):
        raise CheckpointError(f"{path}: config.json has no kind; it was not written by medimg")
    loader = _loader_for(kind)
    method = getattr(loader, "from_pretrained", loader)
    return method(path, **kwargs)
