"""The checkpoint of one scored backbone (kind "iis-heads"): a self-contained folder, enough to predict with
and explain through its heads without the run, the training data or the original weights::

    config.json                   medimg-core's contract (kind, format, versions, the full config, the dataset
                                  card, the preprocessing) plus library, num_concepts, num_outputs, ratios,
                                  selected_lr, gumbel_tau, multilabel, backbone (its record) and score (the result)
    model.safetensors             every selected head: "<s0.9|probe>/<parameter>"
    library.safetensors, .json    the concept library (`ConceptLibrary.files`)
    backbone.json (+ .safetensors) what rebuilds the backbone (`medimg_core.models.specs.backbone_files`: the
                                  weights, except for a seeded random initialisation, rebuilt from its spec)
    concept_pictures.safetensors  visual libraries: "pictures" (P, 64, 64[, 3]) uint8 of the elements that picture
                                  the concepts, and their element indices "elements" (P,)
    README.md                     the model card

Checkpoints written before this format (the `heads/` folder of an `iis score` run of iis 0.1: heads and a
short config only; library, backbone record, card and config in the run folder) are read by `old_layout_config`
and `ScoredBackbone.from_old_layout`, from the run folder around them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from iis.concepts import ConceptLibrary, concept_elements
from iis.config import IISConfig
from iis.model import ConceptHead
from medimg_core.checkpoint import CheckpointError, read_tensors, save_checkpoint
from medimg_core.config import ConfigError, config_to_dict, load_config
from medimg_core.data.card import DatasetCard
from medimg_core.data.preprocess import DataConfig, Preprocess
from medimg_core.models.specs import LoadedBackbone, backbone_files, load_backbone, restore_backbone
from medimg_core.pretrained import CHECKPOINT_FORMAT, checkpoint_config
from medimg_core.runs import read_json_object

__all__ = ["KIND", "PICTURE_SIZE", "ScoredBackbone", "head_state", "old_layout_config"]

KIND = "iis-heads"
#: the size concept pictures are stored (and drawn) at
PICTURE_SIZE = (64, 64)
PICTURES_FILE = "concept_pictures.safetensors"


def head_state(heads_dir: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The state dict of one saved head ("s0.9" or "probe") of a heads checkpoint folder (either format)."""
    flat = read_tensors(Path(heads_dir) / "model.safetensors", "the IIS heads")
    state = {k.split("/", 1)[1]: v for k, v in flat.items() if k.split("/", 1)[0] == key}
    if not state:
        keys = sorted({k.split("/", 1)[0] for k in flat})
        raise KeyError(f"{heads_dir}: no head {key!r}; saved heads: {keys}")
    return state


def _heads(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    flat = read_tensors(folder / "model.safetensors", "the IIS heads")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        head, _, name = key.partition("/")
        out.setdefault(head, {})[name] = tensor
    return out


@dataclass
class ScoredBackbone:
    """The fitted state of one scored backbone: its rebuilt backbone, concept library, every selected head
    (state dicts by key: "s<ratio>" and "probe"), and what they were trained for.

    pictures: element index -> its picture (64, 64[, 3]) uint8, for the elements that picture the concepts.
    """

    loaded: LoadedBackbone
    library: ConceptLibrary
    heads: dict[str, dict[str, torch.Tensor]]
    ratios: list[float]
    selected_lr: list[float]
    num_outputs: int
    tau: float
    multilabel: bool
    preprocess: Preprocess
    card: DatasetCard
    config: dict[str, Any]
    score: dict[str, Any] = field(default_factory=dict)
    pictures: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.loaded.spec.label

    def head(self, ratio: float) -> ConceptHead:
        """The trained concept head at sparsity `ratio` (one of `ratios`), in eval mode."""
        key = f"s{float(ratio):g}"
        if key not in self.heads:
            raise KeyError(f"no head at ratio {float(ratio):g}; the heads are at {self.ratios}")
        with torch.random.fork_rng(devices=[]):  # the fresh head's random init leaves the global state as it was
            head = self.library.make_head(self.num_outputs, float(ratio), self.tau)
        head.load_state_dict(self.heads[key])
        return head.eval()

    def picture_elements(self) -> list[int]:
        """The elements whose pictures show the concepts of every head (sorted; none for text libraries)."""
        if self.library.kind == "text":
            return []
        heads: Iterable[Any] = [self.head(s) for s in self.ratios] if self.library.kind == "end2end" else [None]
        return sorted({e for head in heads for e in concept_elements(self.library, head) if e is not None})

    # -- the checkpoint folder ---------------------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        """config.json: the contract's keys plus the heads' own."""
        record = backbone_files(self.loaded)["backbone.json"]
        return checkpoint_config(
            KIND, self.config, self.card, self.preprocess, package="iis", library=self.library.kind,
            num_concepts=self.library.num_concepts, num_outputs=self.num_outputs, ratios=self.ratios,
            selected_lr=self.selected_lr, gumbel_tau=self.tau, multilabel=self.multilabel, backbone=record,
            score=self.score)

    def save(self, folder: str | Path) -> Path:
        """Write the self-contained checkpoint folder (atomically; see the module docstring)."""
        flat = {f"{key}/{name}": t for key, state in self.heads.items() for name, t in state.items()}
        extra: dict[str, Any] = {**self.library.files(), **backbone_files(self.loaded)}
        if self.pictures:
            order = sorted(self.pictures)
            extra[PICTURES_FILE] = {"pictures": torch.from_numpy(np.stack([self.pictures[e] for e in order])),
                                    "elements": torch.tensor(order, dtype=torch.int64)}
        return save_checkpoint(folder, flat, self.checkpoint_config(), card=self.model_card(), extra_files=extra)

    @classmethod
    def load(cls, folder: str | Path, config: Mapping[str, Any]) -> ScoredBackbone:
        """From a checkpoint folder of this format and its config.json."""
        folder = Path(folder)
        try:
            library = ConceptLibrary.load(folder)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{folder}: cannot read the concept library ({exc})") from None
        pictures: dict[int, np.ndarray] = {}
        if (folder / PICTURES_FILE).is_file():
            stored = load_file(str(folder / PICTURES_FILE))
            pictures = {int(e): p.numpy() for e, p in zip(stored["elements"], stored["pictures"], strict=True)}
        return cls._from_config(restore_backbone(folder), library, _heads(folder), config, pictures)

    @classmethod
    def from_old_layout(cls, folder: str | Path, config: Mapping[str, Any]) -> ScoredBackbone:
        """From the heads/ folder of a run written before this format, with `old_layout_config(folder)`: the
        library and the backbone record are read next to it, the backbone is rebuilt from its spec and checked
        against the stored weights fingerprint."""
        folder = Path(folder)
        info = config["backbone"]
        loaded = load_backbone(info["spec"], info["in_chans"], info.get("seed", config["config"].get("seed", 0)))
        if loaded.fingerprint != info["weights_fingerprint"]:
            raise ValueError(f"{info['spec']}: the weights loaded now (fingerprint {loaded.fingerprint}) are not the "
                             f"ones scored in {folder.parent} ({info['weights_fingerprint']})")
        library = ConceptLibrary.load(folder.parent / "library")
        return cls._from_config(loaded, library, _heads(folder), config, {})

    @classmethod
    def _from_config(cls, loaded: LoadedBackbone, library: ConceptLibrary, heads: dict[str, dict[str, torch.Tensor]],
                     config: Mapping[str, Any], pictures: dict[int, np.ndarray]) -> ScoredBackbone:
        card = DatasetCard.from_dict(config["card"])
        return cls(loaded=loaded, library=library, heads=heads, ratios=[float(s) for s in config["ratios"]],
                   selected_lr=[float(lr) for lr in config.get("selected_lr", [])],
                   num_outputs=int(config["num_outputs"]), tau=float(config.get("gumbel_tau", 0.1)),
                   multilabel=bool(config.get("multilabel", card.task == "multilabel")),
                   preprocess=Preprocess.from_dict(config["preprocess"], where="config.json preprocess"),
                   card=card, config=dict(config["config"]), score=dict(config.get("score") or {}), pictures=pictures)

    def model_card(self) -> str:
        p, score = self.preprocess, self.score
        weights = ("rebuilt from its spec and seed (a random initialisation)" if self.loaded.spec.kind == "random"
                   else "included (backbone.safetensors)")
        lines = [f"# IIS heads: {self.label} on {self.card.title}", "",
                 f"- representation: {self.loaded.spec} ({self.loaded.backbone.timm_name}, "
                 f"{self.loaded.backbone.num_features}-d pooled features); weights {weights}",
                 f"- concept library: {self.library.kind}, M = {self.library.num_concepts}",
                 f"- heads: one per sparsity ratio {', '.join(f'{s:g}' for s in self.ratios)} and the linear probe",
                 f"- task: {self.card.task}, classes: {', '.join(self.card.class_names)}",
                 f"- input: {p.channels} channels, {p.image_size} px, normalisation {p.normalize}"]
        if score.get("iis") is not None:
            low, high = score.get("iis_ci", [float("nan")] * 2)
            lines.append(f"- IIS {score['iis']:.4f} [95% CI {low:.4f}, {high:.4f}], probe test accuracy "
                         f"{score.get('probe', {}).get('test_accuracy', float('nan')):.4f}")
        lines.append(f"- dataset licence: {self.card.license or 'see the dataset card'}")
        lines.append(f"- written by iis (`iis score` / `InterpretabilityScore`), seed {self.config.get('seed', 0)}")
        return "\n".join(lines) + "\n"


def old_layout_config(heads: str | Path) -> dict[str, Any]:
    """The config.json a heads/ folder written before the self-contained format would have, assembled from its
    run folder (config.yaml, card.json, backbones/<i>/backbone.json and library/); a CheckpointError says what is
    missing and how to convert the run."""
    heads = Path(heads)
    backbone_dir = heads.parent
    run_dir = backbone_dir.parent.parent
    needed = [run_dir / "config.yaml", run_dir / "card.json", backbone_dir / "backbone.json",
              backbone_dir / "library" / "library.json", heads / "config.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{heads}: a heads folder written before iis checkpoints were self-contained; it is read from its "
            f"`iis score` run folder, which lacks {', '.join(missing)}. Load the whole run folder where it is "
            "complete and convert it: InterpretabilityScore.from_pretrained(RUN).save_pretrained(NEW_FOLDER)")
    try:
        cfg = load_config(IISConfig, run_dir / "config.yaml")
    except ConfigError as exc:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: does not fit this iis version's config ({exc})") from None
    old = read_json_object(heads / "config.json", "the heads' settings")
    info = read_json_object(backbone_dir / "backbone.json", "the scored backbone's name and weights")
    card = read_json_object(run_dir / "card.json", "the dataset card of the scored run")
    preprocess = Preprocess.from_config(DataConfig(image_size=int(info["image_size"]), normalize=info["normalize"]),
                                        None, int(info["in_chans"]))
    score = {}
    if (backbone_dir / "result.json").is_file():
        score = json.loads((backbone_dir / "result.json").read_text()).get("result", {})
    return {"kind": KIND, "format": 1, "config": config_to_dict(cfg), "card": card, "preprocess": preprocess.to_dict(),
            "library": old.get("library"), "num_concepts": old.get("num_concepts"),
            "num_outputs": old["num_outputs"], "ratios": old["ratios"], "selected_lr": old.get("selected_lr", []),
            "gumbel_tau": old.get("gumbel_tau", 0.1), "multilabel": card.get("task") == "multilabel",
            "backbone": info, "score": score}


def is_old_layout(config: Mapping[str, Any]) -> bool:
    """A heads config.json written before the self-contained format (no "format" key)."""
    return config.get("kind") == KIND and int(config.get("format", 1)) < CHECKPOINT_FORMAT
