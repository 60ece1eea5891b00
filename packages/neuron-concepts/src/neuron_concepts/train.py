"""The pipeline's functions under their earlier module name, so that `from neuron_concepts.train import ...` keeps
working. They live in:

    neuron_concepts.config     the configs (NeuronConceptsConfig and one section per stage)
    neuron_concepts.folders    pipeline and stage folders, and the readers of what stages leave (load_features...)
    neuron_concepts.opaque     stage 1, the opaque model (train_opaque, resume_opaque, opaque_data, eval_datasets)
    neuron_concepts.stages     stages 2-7 (encode_stage, train_sae, name_stage, cav_stage, select_stage, train_cbm)
    neuron_concepts.pipeline   run_pipeline, pipeline_summary
    neuron_concepts.sae, cav, selection, bottleneck, figures   the building blocks

The stage functions `encode`, `name`, `cav` and `select` are now `encode_stage`, `name_stage`, `cav_stage` and
`select_stage` (their old names clashed with the config sections); the old names stay here as aliases.
"""

from neuron_concepts.bottleneck import load_cbm
from neuron_concepts.cav import concept_matching, concept_vectors
from neuron_concepts.config import (
    SPLITS,
    STAGES,
    CAVConfig,
    CBMConfig,
    EncodeConfig,
    NamingConfig,
    NeuronConceptsConfig,
    SAEConfig,
    SelectConfig,
)
from neuron_concepts.folders import (
    PIPELINE_FILE,
    STAGE_FILE,
    config_for_stage,
    find_opaque_run,
    load_cavs,
    load_features,
    load_names,
    new_pipeline,
    new_stage_dir,
    pipeline_of,
    require_stage,
    stage_chain,
)
from neuron_concepts.opaque import baseline_config, eval_datasets, opaque_data, resume_opaque, train_opaque
from neuron_concepts.pipeline import pipeline_summary, run_pipeline
from neuron_concepts.sae import fit_sae, load_sae, save_sae
from neuron_concepts.selection import discriminative_scores
from neuron_concepts.stages import cav_stage, encode_stage, name_stage, select_stage, train_cbm, train_sae

encode = encode_stage
name = name_stage
cav = cav_stage
select = select_stage
_opaque_data = opaque_data
_eval_datasets = eval_datasets

__all__ = [
    "PIPELINE_FILE", "SPLITS", "STAGES", "STAGE_FILE", "CAVConfig", "CBMConfig", "EncodeConfig", "NamingConfig",
    "NeuronConceptsConfig", "SAEConfig", "SelectConfig", "baseline_config", "cav", "cav_stage", "concept_matching",
    "concept_vectors", "config_for_stage", "discriminative_scores", "encode", "encode_stage", "eval_datasets",
    "find_opaque_run", "fit_sae", "load_cavs", "load_cbm", "load_features", "load_names", "load_sae", "name",
    "name_stage", "new_pipeline", "new_stage_dir", "opaque_data", "pipeline_of", "pipeline_summary", "require_stage",
    "resume_opaque", "run_pipeline", "save_sae", "select", "select_stage", "stage_chain", "train_cbm",
    "train_opaque", "train_sae",
]
