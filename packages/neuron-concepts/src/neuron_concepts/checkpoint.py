"""The model a pipeline ends with, as one self-contained checkpoint folder: `cbm/checkpoints/best` of a pipeline,
or what `ConceptsFromNeurons.save_pretrained` writes. With nothing else it predicts and explains from an image:

    config.json                  kind "neuron-concepts", format, versions, the resolved config, the dataset card,
                                 the preprocessing (size, channels, mean/std), the opaque model's architecture
                                 (backbone, in_chans, num_outputs) and the classes
    model.safetensors            the opaque classifier (backbone + linear head): its backbone gives the features h
    sae.safetensors + sae.json   the sparse autoencoder whose latents the concepts were found in
    cbm.safetensors + cbm.json   the selected concept vectors (K, d) and the bottleneck's classifier, with each
                                 concept's name, latent and name source
    README.md                    the model card
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from medimg_core.baseline import ImageClassifier
from medimg_core.checkpoint import (
    CheckpointError,
    load_weights,
    save_checkpoint,
    state_dict_to_cpu,
    write_extra_file,
    write_json,
)
from medimg_core.data import DatasetCard
from medimg_core.data.preprocess import Preprocess
from medimg_core.models import create_backbone
from medimg_core.pretrained import checkpoint_config
from neuron_concepts.bottleneck import ConceptBottleneck, cbm_meta, cbm_tensors, load_cbm
from neuron_concepts.config import NeuronConceptsConfig
from neuron_concepts.sae import SparseAutoencoder, load_sae

KIND = "neuron-concepts"
PACKAGE = "neuron-concepts"
#: the files besides config.json and README.md
MODEL_FILES = ("model.safetensors", "sae.safetensors", "sae.json", "cbm.safetensors", "cbm.json")


def checkpoint_json(cfg: NeuronConceptsConfig, card: DatasetCard, preprocess: Preprocess,
                    opaque_config: dict[str, Any], cbm: ConceptBottleneck, **extra: Any) -> dict[str, Any]:
    """config.json of the model: the contract's keys (medimg_core.pretrained) plus the opaque model's
    architecture (from its checkpoint config), the classes and the number of concepts; `extra` is added."""
    try:
        arch = {k: opaque_config[k] for k in ("backbone", "in_chans", "num_outputs")}
    except KeyError as exc:
        raise CheckpointError(f"the opaque model's config.json has no {exc}; expected a medimg baseline "
                              "checkpoint") from None
    return checkpoint_config(KIND, cfg, card, preprocess, package=PACKAGE, **arch,
                             drop_rate=opaque_config.get("drop_rate", 0.0), num_features=int(cbm.concepts.shape[1]),
                             task=card.task, class_names=list(card.class_names),
                             num_concepts=int(cbm.concepts.shape[0]), **extra)


def model_files(sae: SparseAutoencoder, cbm: ConceptBottleneck, latents: Sequence[int],
                sources: Sequence[str]) -> dict[str, Any]:
    """The extra files of the checkpoint (`save_checkpoint`'s extra_files): the SAE and the bottleneck."""
    return {"sae.safetensors": sae, "sae.json": sae.config(),
            "cbm.safetensors": {k: torch.from_numpy(v) for k, v in cbm_tensors(cbm).items()},
            "cbm.json": cbm_meta(cbm, latents, sources)}


def write_checkpoint(directory: Path, cfg: NeuronConceptsConfig, card: DatasetCard, preprocess: Preprocess,
                     model: ImageClassifier, opaque_config: dict[str, Any], sae: SparseAutoencoder,
                     cbm: ConceptBottleneck, latents: Sequence[int], sources: Sequence[str], **extra: Any) -> Path:
    """Write the checkpoint folder at `directory` atomically (see the module docstring); returns it."""
    config = checkpoint_json(cfg, card, preprocess, opaque_config, cbm, **extra)
    return save_checkpoint(directory, model, config, card=model_card(config, card, preprocess, sae, cbm, sources),
                           extra_files=model_files(sae, cbm, latents, sources))


def write_into(folder: Path, config: dict[str, Any], model: ImageClassifier, sae: SparseAutoencoder,
               cbm: ConceptBottleneck, latents: Sequence[int], sources: Sequence[str]) -> None:
    """The same files, written into an existing (temporary) folder: `save_pretrained` of a model read from
    stage folders of the older layout, which have no checkpoint to copy."""
    card = DatasetCard.from_dict(config["card"])
    preprocess = Preprocess.from_dict(config["preprocess"])
    save_file(state_dict_to_cpu(model), str(folder / "model.safetensors"))
    write_json(folder / "config.json", config)
    (folder / "README.md").write_text(model_card(config, card, preprocess, sae, cbm, sources))
    for name, payload in model_files(sae, cbm, latents, sources).items():
        write_extra_file(folder / name, payload)


def read_checkpoint(folder: Path, config: dict[str, Any]) -> tuple[ImageClassifier, SparseAutoencoder,
                                                                   ConceptBottleneck]:
    """(opaque classifier in eval mode, SAE, concept bottleneck) of a checkpoint folder with this config.json."""
    try:
        backbone = create_backbone(config["backbone"], pretrained=False, in_chans=config["in_chans"])
        model = ImageClassifier(backbone, config["num_outputs"], config.get("drop_rate", 0.0))
    except KeyError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: no {exc} (the opaque model's architecture)") from None
    load_weights(model, folder)
    sae = load_sae(folder)
    card = config.get("card") or {}
    return model.eval(), sae, load_cbm(folder, sae.n_latents, card.get("class_names"))


def model_card(config: dict[str, Any], card: DatasetCard, preprocess: Preprocess, sae: SparseAutoencoder,
               cbm: ConceptBottleneck, sources: Sequence[str]) -> str:
    """README.md of the checkpoint."""
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    seed = config.get("config", {}).get("seed")
    return (
        f"# Concepts from Neurons: {config['backbone']} on {card.title}\n\n"
        f"- task: {card.task}, classes: {', '.join(card.class_names)}\n"
        f"- input: {preprocess.channels} channels, {preprocess.image_size} px, normalisation "
        f"{preprocess.normalize}\n"
        f"- concept bottleneck over {cbm.concepts.shape[0]} concepts ({cbm.n_nonzero} non-zeros per image), "
        f"found among the {sae.n_latents} latents of a {sae.kind} sparse autoencoder of the opaque model's "
        f"{sae.d_in} features; name sources: "
        f"{', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}\n"
        f"- files: model.safetensors (the opaque classifier), sae.*, cbm.* (concept vectors and classifier)\n"
        f"- dataset licence: {card.license or 'see the dataset card'}\n"
        f"- made by the `neuron-concepts` pipeline (seed {seed}); load it with "
        "`neuron_concepts.ConceptsFromNeurons.from_pretrained(path)`\n"
    )
