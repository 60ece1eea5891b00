"""Concepts from Neurons on synth-derm: does what the sparse autoencoder reads (the published raw features, each
feature standardised, or the features PCA-whitened) change which concepts its latents recover? Over the pipelines
given (one per seed).

    python tools/bench/neuron_concepts_sae_inputs.py --pipelines DIR [DIR ...] [--quick]
                                                     [--result neuron_concepts_sae_inputs] [-- --section.key VALUE ...]

Each DIR is a synth-derm `neuron-concepts run` (or `train-opaque` + `encode`) pipeline whose encode stage holds the
features (e.g. runs/bench-neuron-concepts-naming/*-seed{0,1,2} of neuron_concepts_naming.py). Nothing upstream is
retrained: on each pipeline's cached features the SAE is trained again from the command line once per input,

- published:    `train-sae ENCODE --sae.standardize false --sae.whiten false`,
- standardised: `train-sae ENCODE --sae.standardize true --sae.whiten false` (each feature at the train mean / sd),
- whitened:     `train-sae ENCODE --sae.whiten true --sae.standardize false` (every principal direction of the train
  covariance at unit variance: neuron_concepts.sae.whitening, ours),

with the pipeline's other settings (its encode stage's config; its seed). Per concept the generator draws (the
rule's and the others): the latent whose activation predicts it best on train (AUROC), scored on test
(`neuron_concepts.cav.concept_matching`, as the name stage reports it), next to the test AUROC of a logistic-regression
probe on the same features (neuron_concepts_synth_derm.probe_test_aurocs); per input, the SAE's test R^2, L0 and
dead fraction. Each as mean ± sd over the pipelines, and how many pipelines reach test AUROC >= 0.9 ("recovered").
`--quick` trains each SAE for 3 epochs at 2x expansion (for the tests; its numbers mean nothing); extra config
overrides after `--` go to every train-sae. Writes docs/bench/<--result>.json (rendered by
render_neuron_concepts_sae.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, display, mean_sd, run_command, split_overrides, write_result
from neuron_concepts_synth_derm import probe_test_aurocs

RESULT = "neuron_concepts_sae_inputs"
MATCH = 0.9  # a concept is recovered when its train-chosen latent reaches this test AUROC
#: the SAE inputs compared: label -> the train-sae options (both switches set, so a pipeline's own config cannot
#: turn the published arm into another)
VARIANTS = {
    "published": ["--sae.standardize", "false", "--sae.whiten", "false"],
    "standardised": ["--sae.standardize", "true", "--sae.whiten", "false"],
    "whitened": ["--sae.whiten", "true", "--sae.standardize", "false"],
}
QUICK = ["--sae.epochs", "3", "--sae.expansion", "2", "--sae.eval_every", "3"]


def encode_dir_of(pipeline: Path) -> Path:
    """The encode stage folder of a pipeline folder (its pipeline.json), or an error saying what is missing."""
    record = pipeline / "pipeline.json"
    if not record.is_file():
        raise SystemExit(f"{pipeline}: not a neuron-concepts pipeline folder (no pipeline.json)")
    stage = json.loads(record.read_text()).get("stages", {}).get("encode")
    if stage is None or not (pipeline / stage).is_dir():
        raise SystemExit(f"{pipeline}: the pipeline has no encode stage; run `neuron-concepts encode` on its opaque "
                         "run first")
    return pipeline / stage


def seed_of(encode: Path) -> int | None:
    """The seed of an encode stage (its config.yaml): the seed its train-sae runs with."""
    import yaml

    return (yaml.safe_load((encode / "config.yaml").read_text()) or {}).get("seed")


def latent_matching(sae_dir: Path, feats: dict) -> list[dict]:
    """Per annotated concept: the SAE latent best on train (AUROC), its train and test AUROC, and the best test
    AUROC of any latent (chosen on test: a ceiling, not a result); `feats` is the encode stage's features."""
    from neuron_concepts.cav import concept_matching
    from neuron_concepts.sae import encode_all, load_sae

    sae = load_sae(sae_dir)
    A = {s: encode_all(sae, feats[s]["features"]).numpy() for s in ("train", "test")}
    rows = concept_matching(A["train"], feats["train"]["concepts"].numpy(), A["test"],
                            feats["test"]["concepts"].numpy(), list(feats["card"].concept_names), {})
    for r in rows:
        del r["name"]  # no names here: the name stage is not run
    return rows


def score_pipeline(pipeline: Path, overrides: list[str]) -> dict:
    """Train the SAE of every variant on the pipeline's cached features and score it."""
    import numpy as np
    from sklearn.decomposition import PCA

    from medimg_core.synthetic import parse_rule
    from neuron_concepts.train import load_features

    encode = encode_dir_of(pipeline)
    feats = load_features(encode)
    card = feats["card"]
    if "test" not in feats or not card.num_concepts or "rule" not in card.extra:
        raise SystemExit(f"{encode}: expected the train and test features of a synth-derm dataset (concept "
                         "annotations and a rule); got " + ", ".join(s for s in ("train", "val", "test") if s in feats))
    names = list(card.concept_names)
    relevant = list(parse_rule(card.extra["rule"], names).variables)
    H = feats["train"]["features"].numpy()
    pca = PCA(min(5, *H.shape)).fit(H)
    out = {"pipeline": display(pipeline), "encode": display(encode), "seed": seed_of(encode), "rule": card.extra["rule"],
           "label_relevant": relevant, "concepts": names, "probe_test_auroc": probe_test_aurocs(feats),
           "pca_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
           "concept_prevalence_test": {c: float(v) for c, v in
                                       zip(names, np.asarray(feats["test"]["concepts"]).mean(0), strict=True)},
           "variants": {}}
    nc = str(Path(sys.executable).parent / "neuron-concepts")
    for label, options in VARIANTS.items():
        cmd = [nc, "train-sae", str(encode), *options, "--no-progress", *overrides]
        sae_dir, wall, _ = run_command(cmd, creates_in=pipeline)
        m = json.loads((sae_dir / "metrics.json").read_text())
        rows = latent_matching(sae_dir, feats)
        out["variants"][label] = {
            "command": display(cmd), "sae_dir": display(sae_dir), "wall_time_s": wall, "fit_time_s": m["fit_time_s"],
            "n_latents": m["n_latents"], "sae_test": {k: m["test"][k] for k in ("r2", "l0", "dead_fraction", "alive")},
            "whitening": m.get("whitening"), "concepts": {r["concept"]: r for r in rows},
            "relevant_recovered": [r["concept"] for r in rows
                                   if r["concept"] in relevant and (r["test_auroc"] or 0) >= MATCH],
        }
        print(f"{display(pipeline)} {label}: test R^2 {m['test']['r2']:.3f}, L0 {m['test']['l0']:.1f}; "
              + ", ".join(f"{r['concept']} {r['test_auroc'] if r['test_auroc'] is None else round(r['test_auroc'], 3)}"
                          for r in rows), flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    """Per variant and concept, mean ± sd over the pipelines of the train-chosen latent's test AUROC and how many
    pipelines recover it; the probes' mean ± sd; per variant the SAE's test R^2, L0 and dead fraction."""
    concepts = runs[0]["concepts"]
    out: dict = {"probe_test_auroc": {c: mean_sd([r["probe_test_auroc"][c] for r in runs]) for c in concepts},
                 "variants": {}}
    for label in VARIANTS:
        vs = [r["variants"][label] for r in runs]
        out["variants"][label] = {
            "test_auroc": {c: mean_sd([v["concepts"][c]["test_auroc"] for v in vs]) for c in concepts},
            "recovered": {c: sum((v["concepts"][c]["test_auroc"] or 0) >= MATCH for v in vs) for c in concepts},
            "relevant_recovered": mean_sd([len(v["relevant_recovered"]) for v in vs]),
            **{key: mean_sd([v["sae_test"][key] for v in vs]) for key in ("r2", "l0", "dead_fraction")},
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    argv, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipelines", nargs="+", required=True, help="synth-derm pipeline folders with cached features")
    p.add_argument("--quick", action="store_true", help="3-epoch SAEs at 2x expansion (tests only)")
    p.add_argument("--result", default=RESULT, help="the result file's name")
    p.add_argument("--results-dir", default=None, help="where the result file goes (default docs/bench)")
    args = p.parse_args(argv)
    import common

    if args.results_dir is not None:  # write_result writes to common.RESULTS
        common.RESULTS = Path(args.results_dir).resolve()
    pipelines = [Path(d).resolve() for d in args.pipelines]
    seeds: dict = {}
    for pipeline in pipelines:  # mean ± sd over pipelines is over seeds: one pipeline per seed
        seed = seed_of(encode_dir_of(pipeline))
        if seed in seeds:
            raise SystemExit(f"{pipeline}: the same seed ({seed}) as {seeds[seed]}; pass one pipeline per seed")
        seeds[seed] = pipeline
    overrides = (QUICK if args.quick else []) + overrides
    runs = []
    for pipeline in pipelines:
        runs.append(score_pipeline(pipeline, overrides))
        if len({tuple(r["concepts"]) for r in runs}) > 1 or len({r["rule"] for r in runs}) > 1:
            raise SystemExit(f"{pipeline}: another dataset (concepts or rule) than {runs[0]['pipeline']}")
    payload = {"command": command_line(), "quick": args.quick, "overrides": overrides,
               "variants": {k: " ".join(v) for k, v in VARIANTS.items()},
               "train_sae_command": "neuron-concepts train-sae <pipeline>/encode <options> --no-progress"
                                    + "".join(f" {o}" for o in overrides),
               "rule": runs[0]["rule"], "label_relevant": runs[0]["label_relevant"], "concepts": runs[0]["concepts"],
               "recovered_threshold": MATCH, "pipelines": [r["pipeline"] for r in runs],
               "seeds": [r["seed"] for r in runs], "runs": runs, "summary": summarise(runs)}
    write_result(args.result, payload)
    return payload


if __name__ == "__main__":
    main()
