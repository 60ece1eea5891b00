"""Markdown section of the neuron-concepts SAE-input benchmark (docs/bench/neuron_concepts_sae_inputs.json, written
by neuron_concepts_sae_inputs.py), found by report.py. Numbers and definitions only: what they mean is left to the
package README."""

from __future__ import annotations

from common import machine_line


def _mean_sd(stat: dict | None, digits: int = 3) -> str:
    if stat is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def sae_inputs(result: dict) -> list[str]:
    summ, variants = result["summary"], list(result["variants"])
    n = len(result["runs"])
    relevant = set(result["label_relevant"])
    quick = " **Quick run (3-epoch SAEs): its numbers mean nothing.**" if result.get("quick") else ""
    lines = [f"## neuron-concepts on synth-derm: the SAE's input (raw, standardised, whitened), {n} pipelines", "",
             f"Date: {result['date']}. Machine: {machine_line(result['machine'])}. Command: "
             f"`{result['command']}`.{quick}", "",
             f"Pipelines (seeds {result['seeds']}): " + ", ".join(f"`{p}`" for p in result["pipelines"])
             + f". Rule: `{result['rule']}`. On each pipeline's cached features the SAE is trained again with "
             f"`{result['train_sae_command']}`, the options per input being: "
             + "; ".join(f"{k} `{v}`" for k, v in result["variants"].items()) + ". Whitened: every principal "
             "direction of the train features' covariance at unit variance (`sae.whiten`, not in the paper).", "",
             f"Per concept: test AUROC of the latent chosen on train (best train AUROC), mean ± sd over the {n} "
             f"pipelines, and in brackets in how many of them it reaches {result['recovered_threshold']} "
             "(recovered); next to it the test AUROC of a logistic-regression probe on the same features. "
             "Concepts in the rule are marked *.", "",
             "| concept | linear probe | " + " | ".join(variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for c in result["concepts"]:
        cells = [f"{_mean_sd(summ['variants'][v]['test_auroc'][c])} ({summ['variants'][v]['recovered'][c]}/{n})"
                 for v in variants]
        lines.append(f"| {c}{' *' if c in relevant else ''} | {_mean_sd(summ['probe_test_auroc'][c])} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"| SAE input | test R^2 | test L0 | dead latents (test) | rule concepts recovered (of "
                  f"{len(relevant)}) |", "|---|---|---|---|---|"]
    for v in variants:
        s = summ["variants"][v]
        lines.append(f"| {v} | {_mean_sd(s['r2'])} | {_mean_sd(s['l0'], 1)} | {_mean_sd(s['dead_fraction'])} | "
                     f"{_mean_sd(s['relevant_recovered'], 2)} |")
    pca = [r["pca_variance_ratio"][:3] for r in result["runs"]]
    lines += ["", "Share of the train features' variance on their first three principal components, per pipeline: "
              + "; ".join(", ".join(f"{v:.3f}" for v in p) for p in pca) + ".", ""]
    return lines


#: the second file: the same comparison with the whitening's eps at 1e-2 of the largest eigenvalue
#: (`neuron_concepts_sae_inputs.py --result neuron_concepts_sae_inputs_whiten_eps_1e-2 ... -- --sae.whiten_eps 0.01`)
RENDERERS = {"neuron_concepts_sae_inputs": sae_inputs, "neuron_concepts_sae_inputs_whiten_eps_1e-2": sae_inputs}
