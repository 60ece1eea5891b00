"""Concepts from Neurons as an estimator, and the entry points that read a pipeline or stage folder.

    model = ConceptsFromNeurons("synth-derm-cpu", train__epochs=2).fit(train, val)   # runs the whole pipeline
    model.predict_proba(test)                        # the concept bottleneck's class probabilities (N, C)
    model.explain("image.png").to_text(top_k=5)      # the concepts behind one decision
    model.save_pretrained("cfn-model"); ConceptsFromNeurons.from_pretrained("runs/<pipeline folder>")

`fit(train, val)` runs every stage (neuron_concepts.pipeline) in a new pipeline folder under `out`, on the given
datasets (copies with the method's transforms; the originals are not changed); the opaque model is trained with
medimg-core's baseline recipe, or taken from `opaque_run=` (a trained baseline run folder). The fitted model is
the pipeline's checkpoint (`cbm/checkpoints/best`, see neuron_concepts.checkpoint); `run_` is the cbm stage
folder. `from_pretrained` takes a pipeline folder, its cbm stage folder, or a checkpoint folder, including
pipelines written before the cbm stage kept a checkpoint (read from their stage folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medimg_core.baseline import load_baseline
from medimg_core.config import load_config
from medimg_core.estimator import Estimator
from medimg_core.pretrained import read_checkpoint_config
from medimg_core.runs import Run
from neuron_concepts.bottleneck import load_cbm
from neuron_concepts.checkpoint import KIND, checkpoint_json, read_checkpoint, write_into
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.explain import Explanation, explain_tensor
from neuron_concepts.folders import PIPELINE_FILE, STAGE_FILE, require_stage, stage_chain, stage_folder
from neuron_concepts.opaque import opaque_data, opaque_preprocess
from neuron_concepts.pipeline import run_pipeline
from neuron_concepts.sae import load_sae

CONFIGS = Path(__file__).parent / "configs"


class ConceptsFromNeurons(Estimator):
    """Concepts from Neurons (Gong et al., IPMI 2025) as an estimator (see the module docstring).

    Fitted attributes: `model_` (the opaque classifier: backbone + linear head), `sae_` (the sparse
    autoencoder), `cbm_` (the concept bottleneck over the selected concept vectors), plus the base's
    `checkpoint_`, `card_`, `preprocess_`, `run_`.
    """

    config_class = NeuronConceptsConfig
    configs_dir = CONFIGS
    kind = KIND

    def __init__(self, config: str | Path | NeuronConceptsConfig | None = None, opaque_run: str | Path | None = None,
                 **params: Any):
        super().__init__(config, **params)
        self.opaque_run = opaque_run

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**super().get_params(deep), "opaque_run": self.opaque_run}

    def set_params(self, **params: Any) -> ConceptsFromNeurons:
        if "opaque_run" in params:
            self.opaque_run = params.pop("opaque_run")
        super().set_params(**params)
        return self

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, train: Dataset, val: Dataset | None = None) -> ConceptsFromNeurons:
        """Run the pipeline on `train` and `val` (medimg datasets): the opaque model (unless `opaque_run`), its
        features, the SAE, the names, CAVs, the selection and the bottleneck. `val` chooses the opaque model's
        best epoch and the bottleneck's C; it may be None only with `cbm__C` set and an `opaque_run`."""
        cfg = self.resolved_config()
        if val is None and (cfg.cbm.C is None or self.opaque_run is None):
            raise ValueError(f"{type(self).__name__}.fit needs a validation dataset: the opaque model's best epoch "
                             "and the bottleneck's C (cbm.C) are chosen on it")
        pipeline = run_pipeline(cfg, self.opaque_run, datasets={"train": train, "val": val},
                                command=[f"{type(self).__name__}.fit"])
        cbm_dir = stage_folder(pipeline, "cbm")
        folder, config = read_checkpoint_config(cbm_dir, self.kind)
        return self._fitted_from(folder, config, Run(cbm_dir))

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> ConceptsFromNeurons:
        """The fitted model of a pipeline folder, its cbm stage folder (a rerun's `cbm-2` too) or a checkpoint
        folder. Pipelines written before the cbm stage kept a checkpoint are read from their stage folders."""
        path = Path(path)
        if (path / PIPELINE_FILE).is_file() and not (path / "checkpoints").is_dir():
            path = stage_folder(path, "cbm")
        if (path / STAGE_FILE).is_file():
            require_stage(path, "cbm")
            if not (path / "checkpoints").is_dir():
                return cls._from_stage_folders(path, **kwargs)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def _from_stage_folders(cls, cbm_dir: Path, **kwargs: Any) -> ConceptsFromNeurons:
        """A cbm stage folder of the older layout: the opaque run, the SAE and the bottleneck in their own stage
        folders; the checkpoint config is rebuilt from them (nothing is written)."""
        chain = stage_chain(cbm_dir)
        _, opaque_config, bcfg, card = opaque_data(chain["opaque"])
        cfg = load_config(NeuronConceptsConfig, cbm_dir / "config.yaml")
        cbm = load_cbm(cbm_dir)
        config = checkpoint_json(cfg, card, opaque_preprocess(opaque_config, bcfg, card), opaque_config, cbm,
                                 layout="stage folders, before the cbm stage kept a checkpoint")
        return cls(cfg, **kwargs)._fitted_from(cbm_dir, config, Run(cbm_dir))

    def _load(self, folder: Path, config: dict[str, Any]) -> None:
        if (folder / "model.safetensors").is_file():
            self.model_, self.sae_, self.cbm_ = read_checkpoint(folder, config)
        else:  # a cbm stage folder of the older layout (see _from_stage_folders)
            chain = stage_chain(folder)
            self.model_, self.sae_ = load_baseline(chain["opaque"])[0], load_sae(chain["sae"])
            self.cbm_ = load_cbm(folder, self.sae_.n_latents, (config.get("card") or {}).get("class_names"))
        self.model_.to(self.device_).eval()

    def _write_pretrained(self, folder: Path) -> None:
        if (self.checkpoint_ / "model.safetensors").is_file():
            super()._write_pretrained(folder)
        else:  # read from stage folders: write the checkpoint's files from the loaded model
            config = {k: v for k, v in self.checkpoint_config_.items() if k != "layout"}
            write_into(folder, config, self.model_, self.sae_, self.cbm_, self.cbm_.latents, self.cbm_.sources)

    # -- predictions and explanations ----------------------------------------------------------------
    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """The bottleneck's probabilities (N, C) of a preprocessed batch x (N, C, H, W), from the opaque model's
        pooled features (N, d)."""
        self.model_.to(self.device_).eval()
        h = self.model_.backbone(x.to(self.device_))
        return self.cbm_.predict_proba(h.double().cpu().numpy())

    def explain(self, x: Any, target: int | str | None = None) -> Explanation:
        """The concepts that carry one image's `target` class logit (default: the predicted class); x is an
        image file, a preprocessed (C, H, W) / (1, C, H, W) tensor or a dataset sample."""
        self._require_fitted()
        tensor, shown = self.as_input(x)
        self.model_.to(self.device_)
        return explain_tensor(self.model_, self.cbm_, tensor, shown, target, list(self.card_.class_names))


def explain_image(cbm_dir: str | Path, image_path: str | Path, target: str | int | None = None,
                  device: str = "cpu") -> Explanation:
    """Run one image file through the opaque model's backbone and the concept bottleneck of `cbm_dir` (a cbm
    stage folder, its pipeline folder or a checkpoint folder); decompose the logit of `target` (a class name
    or index; default the predicted class)."""
    return ConceptsFromNeurons.from_pretrained(cbm_dir).to(device).explain(image_path, target)
