"""Frozen-backbone features, extracted once and cached as safetensors + JSON (never pickled).

`extract_features(backbone, dataset)` runs a `Backbone` over a dataset and returns::

    {
        "features": float32 (N, D)        pooled features, the input of a linear head,
        "spatial":  float16 (N, C, h, w)  spatial maps (only with spatial=True; float16 halves the disk
                                          and memory they take, at ~1e-3 relative precision),
        "targets":  int64 (N,) or float32 (N, L) for multilabel datasets,
        "concepts": float32 (N, K)        NaN where not annotated (K may be 0),
        "ids":      list[str]             sample ids, in dataset order,
    }

`FeatureCache` stores these under ``$MEDIMG_HOME/features`` (default ``~/.cache/medimg/features``),
one ``<dataset>/<key>.safetensors`` of tensors next to a ``<key>.json`` sidecar that holds the ids,
the key's components, library versions and the creation time. The key hashes the dataset card name,
the split, the ids' fingerprint, the labels, the backbone's timm name and input channels, the
fingerprint of its weights, the transform's repr and the spatial flag: any change there gives a new
entry. Files are written to a temporary name and renamed into place, so a crash leaves no half
entry; a truncated or corrupt entry is detected on reading, logged, and extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medimg_core.checkpoint import umask_file_mode
from medimg_core.data.splits import ids_fingerprint, write_json_atomic
from medimg_core.models.backbones import Backbone, weights_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "SPATIAL_DTYPE", "FeatureCache", "default_features_dir", "extract_features"]

#: bumped when the layout of cache entries changes (it is part of every key)
CACHE_FORMAT = 1
SPATIAL_DTYPE = torch.float16
_TENSOR_KEYS = ("features", "spatial", "targets", "concepts")


def default_features_dir() -> Path:
    """$MEDIMG_HOME/features (default ~/.cache/medimg/features)."""
    home = os.environ.get("MEDIMG_HOME") or Path.home() / ".cache" / "medimg"
    return Path(home) / "features"


def _collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, targets and concepts; keep ids as a list (masks, paths are not needed)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "target": torch.stack([torch.as_tensor(s["target"]) for s in samples]),
        "concepts": torch.stack([torch.as_tensor(s["concepts"], dtype=torch.float32) for s in samples]),
        "id": [str(s["id"]) for s in samples],
    }


@torch.no_grad()  # not inference_mode: its tensors could not feed a probe trained with autograd
def extract_features(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    spatial: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `backbone` (in eval mode, on `device`) over `dataset` in order; see the module docstring.

    The backbone is moved to `device` and left there; its train/eval mode is restored afterwards.
    Returns "features" (N, D) float32, "targets", "concepts" (N, K) float32, "ids", and with
    `spatial` also "spatial" (N, C, h, w) float16, all tensors on the CPU.
    """
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=torch.device(device).type == "cuda")
    was_training = backbone.training
    backbone.to(device).eval()
    feats: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    concepts: list[torch.Tensor] = []
    ids: list[str] = []
    try:
        for batch in tqdm(loader, desc=f"features {getattr(backbone, 'name', '')}", unit="batch",
                          disable=None if progress else True):
            images = batch["image"].to(device, non_blocking=True)
            if spatial:
                pooled, fmap = backbone.forward_both(images)
                maps.append(fmap.to("cpu", SPATIAL_DTYPE))
            else:
                pooled = backbone(images)
            feats.append(pooled.float().cpu())
            targets.append(batch["target"])
            concepts.append(batch["concepts"])
            ids += batch["id"]
    finally:
        backbone.train(was_training)
    out: dict[str, Any] = {
        "features": _cat(feats, (0, backbone.num_features), torch.float32),
        "targets": _cat(targets, (0,), torch.int64),
        "concepts": _cat(concepts, (0, 0), torch.float32),
        "ids": ids,
    }
    if spatial:
        out["spatial"] = _cat(maps, (0, backbone.feature_channels, 0, 0), SPATIAL_DTYPE)
    return out


def _cat(parts: list[torch.Tensor], empty_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts).contiguous() if parts else torch.zeros(empty_shape, dtype=dtype)


def _clean_repr(obj: Any) -> str:
    """repr without memory addresses (``<function f at 0x7f...>``), so it is stable across runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _labels_fingerprint(dataset: Any, ids: Sequence[str]) -> str:
    """Hash of the dataset's targets and concepts, taken in id order (else ""), when it exposes them."""
    digest = hashlib.sha256()
    found = False
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if len(ids) else np.zeros(0, dtype=np.int64)
    for name in ("targets", "concepts"):
        value = getattr(dataset, name, None)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.ndim == 0 or len(arr) != len(ids):
            continue
        arr = np.ascontiguousarray(arr[order])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
        found = True
    return digest.hexdigest()[:16] if found else ""


def _versions() -> dict[str, str]:
    import safetensors
    import timm

    from medimg_core import __version__

    return {"medimg_core": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "safetensors": safetensors.__version__}


class FeatureCache:
    """Cached `extract_features` results under `root` (default ``$MEDIMG_HOME/features``).

    Example::

        cache = FeatureCache()
        train = cache.get_or_extract(backbone, train_set, split="train")
        train["features"]  # (N, D) float32, read from disk from the second call on
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_features_dir()

    # -- keys ---------------------------------------------------------------------------------------
    def key_components(self, dataset: Any, split: str, backbone: Backbone, transform_repr: str | None = None,
                       spatial: bool = False, ids: Sequence[str] | None = None) -> dict[str, Any]:
        """What identifies a cache entry (stored in its sidecar); `key` hashes it.

        `ids` (default: the dataset's) saves reading them again for datasets without an `ids` attribute.
        """
        if transform_repr is None:
            transform_repr = _clean_repr(getattr(dataset, "transform", None))
        card = getattr(dataset, "card", None)
        ids = _dataset_ids(dataset) if ids is None else [str(i) for i in ids]
        return {
            "format": CACHE_FORMAT,
            "dataset": card.name if card is not None else type(dataset).__name__,
            "split": str(split),
            "ids_fingerprint": ids_fingerprint(ids),
            "num_samples": len(dataset),
            "labels_fingerprint": _labels_fingerprint(dataset, ids),
            "backbone": getattr(backbone, "timm_name", type(backbone).__name__),
            "in_chans": int(getattr(backbone, "in_chans", 3)),
            "weights_fingerprint": weights_fingerprint(backbone),
            "transform": transform_repr,
            "spatial": bool(spatial),
        }

    def key(self, dataset: Any, split: str, backbone: Backbone, transform_repr: str | None = None,
            spatial: bool = False) -> str:
        """A 24-hex-digit hash of `key_components` (transform_repr defaults to repr(dataset.transform))."""
        return self._hash(self.key_components(dataset, split, backbone, transform_repr, spatial))

    @staticmethod
    def _hash(components: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()[:24]

    def paths(self, dataset_name: str, key: str) -> tuple[Path, Path]:
        """(tensors .safetensors, sidecar .json) of an entry."""
        folder = self.root / re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name or "dataset")
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    # -- read / write -------------------------------------------------------------------------------
    def get_or_extract(
        self,
        backbone: Backbone,
        dataset: Any,
        split: str | None = None,
        transform_repr: str | None = None,
        spatial: bool = False,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        progress: bool = True,
        refresh: bool = False,
    ) -> dict[str, Any]:
        """The cached features of `dataset` under `backbone`, extracting and storing them when absent.

        `split` defaults to ``dataset.split``. Returns what `extract_features` returns, in the dataset's
        current order, plus "key" (str) and "cached" (True when read from disk). `refresh` re-extracts.
        """
        split = str(split if split is not None else getattr(dataset, "split", ""))
        ids = _dataset_ids(dataset)
        components = self.key_components(dataset, split, backbone, transform_repr, spatial, ids=ids)
        key = self._hash(components)
        tensors_path, meta_path = self.paths(components["dataset"], key)
        if not refresh:
            hit = self._read(tensors_path, meta_path, ids, spatial)
            if hit is not None:
                return {**hit, "key": key, "cached": True}
        out = extract_features(backbone, dataset, batch_size=batch_size, device=device, spatial=spatial,
                               num_workers=num_workers, progress=progress)
        self._write(tensors_path, meta_path, out, components, key)
        return {**out, "key": key, "cached": False}

    def _read(self, tensors_path: Path, meta_path: Path, ids: list[str], spatial: bool) -> dict[str, Any] | None:
        if not (tensors_path.exists() and meta_path.exists()):
            return None
        from safetensors.torch import load_file

        try:
            meta = json.loads(meta_path.read_text())
            if tensors_path.stat().st_size != meta["file_size"]:
                raise ValueError(f"file is {tensors_path.stat().st_size} bytes, the sidecar says {meta['file_size']}")
            tensors = load_file(str(tensors_path))
            stored_ids = [str(i) for i in meta["ids"]]
            n = len(stored_ids)
            needed = ("features", "targets", "concepts", *(("spatial",) if spatial else ()))
            for name in needed:
                if name not in tensors or tensors[name].shape[0] != n:
                    raise ValueError(f"tensor {name!r} missing or not {n} rows")
        except Exception as exc:  # truncated / corrupt / foreign files: extract again
            logger.warning("feature cache entry %s is unreadable (%s: %s); extracting again",
                           tensors_path, type(exc).__name__, exc)
            return None
        out: dict[str, Any] = {k: tensors[k] for k in needed}
        if stored_ids != ids:  # same ids (the key says so), another order: follow the dataset
            position = {i: p for p, i in enumerate(stored_ids)}
            if len(position) != n or len(set(ids)) != len(ids) or set(ids) != set(position):
                logger.warning("feature cache entry %s has other ids than the dataset; extracting again", tensors_path)
                return None
            order = torch.as_tensor([position[i] for i in ids], dtype=torch.int64)
            out = {k: v[order] for k, v in out.items()}
        out["ids"] = list(ids)
        return out

    def _write(self, tensors_path: Path, meta_path: Path, out: dict[str, Any], components: dict[str, Any],
               key: str) -> None:
        from safetensors.torch import save_file

        tensors = {k: out[k].contiguous() for k in _TENSOR_KEYS if k in out}
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tensors_path.with_name(f".{tensors_path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={"key": key, "format": str(CACHE_FORMAT)})
            os.chmod(tmp, umask_file_mode())  # safetensors writes 0600; the sidecar JSON follows the umask
            size = tmp.stat().st_size
            os.replace(tmp, tensors_path)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(meta_path, {
            "key": key,
            "components": components,
            "ids": list(out["ids"]),
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
            "file_size": size,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    def entries(self) -> list[dict[str, Any]]:
        """The sidecars of every entry under `root` (without their id lists)."""
        out = []
        for meta_path in sorted(self.root.glob("*/*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            meta.pop("ids", None)
            out.append({**meta, "path": str(meta_path.with_suffix(".safetensors"))})
        return out


def _dataset_ids(dataset: Any) -> list[str]:
    """The sample ids of `dataset`: its `ids` attribute, else read sample by sample."""
    ids = getattr(dataset, "ids", None)
    if ids is None:
        ids = [dataset[i]["id"] for i in range(len(dataset))]
    return [str(i) for i in ids]

