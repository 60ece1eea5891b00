"""The estimator API every method offers, in the scikit-learn style.

    model = ConceptRuleLearner("synthetic-cpu", train__epochs=5)      # only stores its settings
    model.fit(train, val)                                             # -> model; writes a run folder
    model.predict_proba(x); model.predict(x)                          # x: (N, C, H, W), a dataset, or image files
    model.explain(x, target=None).to_text()                           # an Explanation (medimg_core.explain)
    model.save_pretrained("my-model"); ConceptRuleLearner.from_pretrained("my-model")

Settings: `config` is a shipped preset's name, a YAML path or a config object (None: the method's defaults);
keyword arguments override single keys, with `__` between a section and its key as scikit-learn nests
parameters (`train__epochs=5` is the command line's `--train.epochs 5`). Nothing is checked or built until
`fit`, and `get_params` / `set_params` work as scikit-learn's.

A method subclasses `Estimator` and provides its config class, shipped presets, checkpoint kind and recipe
(`medimg_core.experiment`), plus `_load(folder, config)` (rebuild the fitted state from a checkpoint folder),
`_scores(x)` (class probabilities of a preprocessed batch) and `explain`. Fitting always ends by loading the
best checkpoint through `_load`, so a fitted estimator and one loaded with `from_pretrained` are the same.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medimg_core.checkpoint import CheckpointError
from medimg_core.config import ConfigError, config_to_dict, load_config
from medimg_core.data.card import DatasetCard
from medimg_core.data.preprocess import Preprocess, load_image
from medimg_core.explain import Explanation
from medimg_core.pretrained import read_checkpoint_config
from medimg_core.runs import Run

#: files of a training checkpoint that an inference checkpoint leaves out
TRAINING_STATE_FILES = ("state.safetensors", "state.json", "raw_model.safetensors")


class NotFittedError(RuntimeError):
    """The estimator is used before `fit` or `from_pretrained`."""


class Estimator:
    """Base of every method's estimator (see the module docstring)."""

    #: the method's config dataclass
    config_class: ClassVar[type]
    #: the folder of its shipped presets (`config="name"` looks there)
    configs_dir: ClassVar[Path | None] = None
    #: the checkpoint kind it loads
    kind: ClassVar[str | tuple[str, ...]]

    def __init__(self, config: str | Path | Any | None = None, **params: Any):
        self.config = config
        self.params = dict(params)

    # -- settings, scikit-learn style --------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"config": self.config, **self.params}

    def set_params(self, **params: Any) -> Estimator:
        if "config" in params:
            self.config = params.pop("config")
        self.params.update(params)
        return self

    def __repr__(self) -> str:
        args = ([repr(self.config)] if self.config is not None else []) + [f"{k}={v!r}" for k, v in self.params.items()]
        return f"{type(self).__name__}({', '.join(args)})"

    def resolved_config(self) -> Any:
        """The config `fit` trains with: defaults, then the preset or file, then the keyword arguments."""
        overrides = {key.replace("__", "."): value for key, value in self.params.items()}
        if self.config is not None and not isinstance(self.config, (str, Path)):
            base = copy.deepcopy(self.config)
            if not isinstance(base, self.config_class):
                raise ConfigError(f"{type(self).__name__}: config is a {type(base).__name__}, expected a "
                                  f"{self.config_class.__name__}, a preset name or a YAML path")
            from medimg_core.config import _flatten_sections

            return load_config(self.config_class, None,
                               {**_flatten_sections(self.config_class, config_to_dict(base)), **overrides})
        return load_config(self.config_class, self._config_path(), overrides)

    def _config_path(self) -> Path | None:
        if self.config is None:
            return None
        path = Path(self.config)
        if path.is_file():
            return path
        if self.configs_dir is not None:
            shipped = Path(self.configs_dir) / f"{str(self.config).removesuffix('.yaml')}.yaml"
            if shipped.is_file():
                return shipped
        available = sorted(p.stem for p in Path(self.configs_dir).glob("*.yaml")) if self.configs_dir else []
        raise ConfigError(f"{self.config!r} is neither a YAML file nor a preset of {type(self).__name__} "
                          f"({', '.join(available) or 'none shipped'})")

    # -- fitted state --------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "checkpoint_", None) is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(train, val) or "
                                 f"{type(self).__name__}.from_pretrained(path)")

    def _fitted_from(self, folder: Path, config: dict[str, Any], run: Run | None) -> Estimator:
        """Set the attributes every fitted estimator has, then the method's own (`_load`)."""
        self.checkpoint_ = Path(folder)
        self.checkpoint_config_ = config
        self.card_ = DatasetCard.from_dict(config["card"])
        self.preprocess_ = self._preprocess_of(config)
        self.run_ = run
        self._load(Path(folder), config)
        return self

    def _preprocess_of(self, config: dict[str, Any]) -> Preprocess:
        """The stored preprocessing; checkpoints written before it was stored rebuild it from their config."""
        if "preprocess" in config:
            return Preprocess.from_dict(config["preprocess"], where=f"{self.checkpoint_}/config.json preprocess")
        from medimg_core.config import config_from_dict

        cfg = config_from_dict(self.config_class, config["config"])
        card = DatasetCard.from_dict(config["card"])
        return Preprocess.from_config(cfg.data, card, config.get("in_chans"))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Estimator:
        """A fitted estimator from a run folder (its best checkpoint) or a checkpoint folder."""
        folder, config = read_checkpoint_config(path, cls.kind)
        run = None
        if (Path(path) / "checkpoints").is_dir():
            run = Run(path)
        elif folder.parent.name == "checkpoints" and (folder.parent.parent / "config.yaml").is_file():
            run = Run(folder.parent.parent)
        from medimg_core.config import config_from_dict

        try:
            cfg = config_from_dict(cls.config_class, config["config"])
        except (KeyError, ConfigError) as exc:
            raise CheckpointError(f"{folder}/config.json: its config does not fit {cls.__name__} ({exc})") from None
        estimator = cls(cfg, **kwargs)
        return estimator._fitted_from(folder, config, run)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the fitted model as a self-contained checkpoint folder at `path` (without training state),
        atomically; an existing folder is replaced only if it is a checkpoint folder itself."""
        self._require_fitted()
        target = Path(path)
        if target.exists() and not (target / "config.json").is_file():
            raise FileExistsError(f"{target} exists and is not a checkpoint folder; choose a new path")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            self._write_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        from medimg_core.checkpoint import _publish

        _publish(tmp, target)
        return target

    def _write_pretrained(self, folder: Path) -> None:
        """Copy the fitted checkpoint's inference files; methods whose state changes after fitting override."""
        for item in sorted(self.checkpoint_.iterdir()):
            if item.is_file() and not item.is_symlink() and item.name not in TRAINING_STATE_FILES:
                shutil.copyfile(item, folder / item.name)

    # -- what a method implements ---------------------------------------------------------------------
    def fit(self, train: Dataset, val: Dataset | None = None) -> Estimator:
        raise NotImplementedError

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, C) of a preprocessed batch x (N, C, H, W)."""
        raise NotImplementedError

    def explain(self, x: Any, target: int | str | None = None) -> Explanation:
        raise NotImplementedError

    # -- prediction ------------------------------------------------------------------------------------
    @property
    def classes_(self) -> list[str]:
        self._require_fitted()
        return list(self.output_names_ if hasattr(self, "output_names_") else self.card_.class_names)

    @property
    def device_(self) -> torch.device:
        return torch.device(getattr(self, "_device", "cpu"))

    def to(self, device: str | torch.device) -> Estimator:
        """Run predictions and explanations on `device` ("cpu", "cuda", "auto")."""
        from medimg_core.distributed import select_device

        self._device = str(select_device(str(device)))
        return self

    def predict_proba(self, x: Any, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C) (multi-label: per-label probabilities) of images: a preprocessed tensor
        (C, H, W) or (N, C, H, W), a dataset (its images go through the stored preprocessing), an image file
        path or a list of paths."""
        self._require_fitted()
        parts = [self._scores(batch) for batch in self._batches(x, batch_size)]
        if not parts:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        return np.concatenate(parts)

    def predict(self, x: Any, batch_size: int = 64) -> np.ndarray:
        """Predicted class indices (N,) (multi-label: a 0/1 matrix (N, L) at probability 0.5)."""
        proba = self.predict_proba(x, batch_size)
        if self.card_.task == "multilabel":
            return (proba >= 0.5).astype(np.int64)
        return proba.argmax(axis=1)

    def as_input(self, x: Any) -> tuple[torch.Tensor, np.ndarray | None]:
        """One image as a model input (1, C, H, W) and, where known, the picture (H, W, 3): a file path, a
        preprocessed tensor (C, H, W) / (1, C, H, W), or a dataset sample dict."""
        self._require_fitted()
        if isinstance(x, (str, Path)):
            return load_image(x, self.preprocess_)
        if isinstance(x, Mapping):
            x = x["image"]
        tensor = torch.as_tensor(x).float()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[0] != 1:
            raise ValueError(f"explain takes one image: (C, H, W) or (1, C, H, W), got {tuple(tensor.shape)}")
        self._check_shape(tensor)
        return tensor, self.preprocess_.to_display(tensor[0])

    def _check_shape(self, x: torch.Tensor) -> None:
        p = self.preprocess_
        if x.shape[1] != p.channels:
            raise ValueError(f"the model takes {p.channels}-channel images, got {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)}); pass image files or a dataset to preprocess them")

    def _batches(self, x: Any, batch_size: int) -> Iterable[torch.Tensor]:
        if isinstance(x, (str, Path)):
            x = [x]
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], (str, Path)):
            for i in range(0, len(x), batch_size):
                yield torch.cat([load_image(p, self.preprocess_)[0] for p in x[i:i + batch_size]])
            return
        if isinstance(x, Dataset):
            dataset = self._with_eval_transform(x)
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                yield batch["image"]
            return
        tensor = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got shape {tuple(tensor.shape)}")
        self._check_shape(tensor)
        yield from torch.split(tensor, batch_size)

    def _with_eval_transform(self, dataset: Dataset) -> Dataset:
        """A shallow copy of a medimg dataset with the stored preprocessing as its transform."""
        if not hasattr(dataset, "transform"):
            raise TypeError(f"{type(dataset).__name__}: expected a medimg dataset (with a transform attribute)")
        copied = copy.copy(dataset)
        copied.transform = self.preprocess_.eval_transform()
        return copied


def with_transform(dataset: Dataset, transform: Any) -> Dataset:
    """A shallow copy of a medimg dataset with `transform`: fit never changes the datasets it is given."""
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__}: expected a medimg dataset (medimg_core.data), which has a "
                        "transform attribute")
    copied = copy.copy(dataset)
    copied.transform = transform
    return copied

