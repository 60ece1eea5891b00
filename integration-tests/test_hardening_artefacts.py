"""Hardening: the methods' own artefact files, tampered with or damaged (issue 19's new-user probe, U5, U11-U13,
U15-U19, U21, U22, U26, U28, U30, E8).

A run folder is untrusted input: rules.json, cbm.json, names.json, cavs.json, selection.json, sae.json and
boundary.json may have been edited by hand, cut short or replaced, and a method's safetensors may hold NaN or a
pickle. Each case must end in a `CheckpointError` (or another error the commands print cleanly) that names the
file, the key or value and what was expected; never a TypeError or IndexError from deep inside, never a
confident answer from damaged weights. The commands print it with exit status 1 and no traceback, and a stage
or scoring that fails leaves no half folder behind. `python tools/reliability.py` counts these cases into
docs/reliability.md.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from medimg_core.checkpoint import CheckpointError, read_tensors
from medimg_core.runs import RunFolderError
from medimg_core.synthetic import generate

#: what a clean refusal of a damaged artefact may be (all printed by the CLIs without a traceback)
REFUSED = (CheckpointError, RunFolderError)


class _Evil:
    """A pickle payload: unpickling it would write a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _write_pickle(path: Path) -> Path:
    marker = path.parent / "PWNED"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    return marker


def _poison(path: Path, key: str | None = None, value: float = float("nan")) -> None:
    """Write one value of the first (or the named) floating tensor of a safetensors file as NaN or infinity."""
    tensors = load_file(str(path))
    key = key or next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(path))


def _clean(result, code: int = 1) -> str:
    """The output of a command that failed cleanly with `code`, whitespace folded."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return re.sub(r"\s+", " ", result.output)


def _edit_json(path: Path, edit: Callable[[Any], Any] | str) -> None:
    """Replace a JSON file by `edit(data)` (NaN written as the bare NaN Python's json reads), or by raw text."""
    if isinstance(edit, str):
        path.write_text(edit)
        return
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set(key: str, value: Any) -> Callable[[dict], dict]:
    return lambda d: {**d, key: value}


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda d: {k: v for k, v in d.items() if k != key}


# ---------------------------------------------------------------------------------------- CRL: rules.json


def _rules_folder(folder: Path) -> Path:
    from crl.rules import Rule, RuleSet

    formula = ("and", (("var", 0), ("not", ("var", 1))))
    rules = RuleSet(["dots", "streaks", "veil"], ["benign", "malignant"], np.array([0.1, -0.1]),
                    [Rule(formula, 0, np.array([-0.5, 0.5]), 0.3, "dots & ~streaks", 2)])
    rules.save(folder)
    return folder


def _rule(edit: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(d: dict) -> dict:
        edit(d["rules"][0])
        return d
    return apply


#: (edit of rules.json, what the message says): the probe's seven edits (U12) and more of the class
RULES = {
    "rules-a-list": (lambda d: [1, 2, 3], "expected a JSON object with 'concept_names'"),
    "rules-no-rules": (_drop("rules"), "no 'rules'"),
    "rules-weight-a-word": (_rule(lambda r: r["weights"].update(malignant="big")),
                            "'rules'[0]['weights']['malignant'] is \"big\"; expected a finite number"),
    "rules-formula-exec": (_rule(lambda r: r.update(formula=["exec", "import os"])),
                           "kind one of const, var, not, and, or"),
    "rules-var-99": (_rule(lambda r: r.update(formula=["var", 99])), "a concept index in [0, 2]"),
    "rules-three-class-names": (lambda d: {**d, "class_names": ["benign", "malignant", "other"]},
                                "'bias' is [0.1, -0.1]; expected a list of 3 numbers"),
    "rules-short-bias": (_set("bias", [0.1]), "expected a list of 2 numbers"),
    "rules-weight-nan": (_rule(lambda r: r["weights"].update(benign=float("nan"))), "a finite number"),
    "rules-support-above-one": (_rule(lambda r: r.update(support=1.5)), "a fraction in [0, 1]"),
    "rules-weights-of-other-classes": (_rule(lambda r: r.update(weights={"a": 1.0})), "one weight per class"),
    "rules-duplicate-concepts": (_set("concept_names", ["dots", "dots", "veil"]), "names that differ"),
    "rules-not-json": ("{\"rules\": [", "not valid JSON"),
    "rules-empty-file": ("", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(RULES))
def test_a_tampered_rules_json_names_the_file_and_the_value(tmp_path, case):
    from crl.rules import load_rules

    edit, message = RULES[case]
    folder = _rules_folder(tmp_path)
    _edit_json(folder / "rules.json", edit)
    with pytest.raises(CheckpointError) as info:
        load_rules(folder)
    text = str(info.value)
    assert str(folder / "rules.json") in text and message in text, f"{case}: {text}"


def test_rules_json_as_written_loads_with_its_text_rendered_from_the_formula(tmp_path):
    from crl.rules import load_rules

    folder = _rules_folder(tmp_path)
    _edit_json(folder / "rules.json", _rule(lambda r: r.update(rule="benign always")))  # an edited text
    rules = load_rules(folder)
    assert rules.rules[0].text == "dots & ~streaks" and rules.rules[0].length == 2
    assert rules.predict(np.array([[1, 0, 0], [0, 0, 0]])).tolist() == [1, 0]


# ------------------------------------------------------------- neuron-concepts: cbm, sae, names, cavs, selection


def _cbm_folder(folder: Path) -> Path:
    from neuron_concepts import ConceptBottleneck
    from neuron_concepts.bottleneck import save_cbm

    rng = np.random.default_rng(0)
    cbm = ConceptBottleneck(rng.normal(size=(6, 5)), n_nonzero=2, C=1.0,
                            concept_names=[f"c{i}" for i in range(6)], class_names=["benign", "malignant"])
    cbm.fit(rng.normal(size=(40, 5)), np.arange(40) % 2)
    folder.mkdir(parents=True, exist_ok=True)
    save_cbm(cbm, folder, latents=[0, 3, 5, 7, 9, 11], sources=["annotations"] * 6)
    return folder


#: (edit of cbm.json, what the message says), read with an SAE of 32 latents and the model's two classes (U15, U16)
CBM = {
    "cbm-latent-999999": (lambda d: {**d, "latents": [999999, *d["latents"][1:]]}, "in [0, 31] (the SAE's latents)"),
    "cbm-latent-a-word": (lambda d: {**d, "latents": ["abc", *d["latents"][1:]]}, "6 latent indices"),
    "cbm-one-class-name": (_set("class_names", ["benign"]), "2 class names"),
    "cbm-classes-of-another-model": (_set("class_names", ["malignant", "benign"]),
                                     "the model's classes ['benign', 'malignant']"),
    "cbm-concept-names-cut-short": (lambda d: {**d, "concept_names": d["concept_names"][:3]}, "6 names"),
    "cbm-the-word-hello": ('"hello"', "expected a JSON object"),
    "cbm-no-latents": (_drop("latents"), "no 'latents'"),
    "cbm-unknown-task": (_set("task", "regression"), "binary, multiclass, multilabel or ordinal"),
    "cbm-n-nonzero-zero": (_set("n_nonzero", 0), "an integer >= 1"),
    "cbm-not-json": ("{", "expected"),
}


@pytest.mark.parametrize("case", sorted(CBM))
def test_a_tampered_cbm_json_names_the_file_and_the_value(tmp_path, case):
    from neuron_concepts.bottleneck import load_cbm

    edit, message = CBM[case]
    folder = _cbm_folder(tmp_path / "cbm")
    _edit_json(folder / "cbm.json", edit)
    with pytest.raises(REFUSED) as info:
        load_cbm(folder, n_latents=32, class_names=["benign", "malignant"])
    text = str(info.value)
    assert str(folder / "cbm.json") in text and message in text, f"{case}: {text}"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_cbm_weights_holding_nan_or_infinity_are_refused(tmp_path, value):
    from neuron_concepts.bottleneck import load_cbm

    folder = _cbm_folder(tmp_path / "cbm")
    _poison(folder / "cbm.safetensors", "W", value)
    with pytest.raises(CheckpointError, match=r"cbm\.safetensors: tensor 'W' holds 1 NaN or infinite"):
        load_cbm(folder)


def test_a_pickle_in_place_of_cbm_safetensors_is_refused_without_running_it(tmp_path):
    from neuron_concepts.bottleneck import load_cbm

    folder = _cbm_folder(tmp_path / "cbm")
    marker = _write_pickle(folder / "cbm.safetensors")
    with pytest.raises(CheckpointError, match=r"cbm\.safetensors: cannot read .*expected a safetensors file"):
        load_cbm(folder)
    assert not marker.exists()


def test_cbm_as_written_loads(tmp_path):
    from neuron_concepts.bottleneck import load_cbm

    cbm = load_cbm(_cbm_folder(tmp_path / "cbm"), n_latents=32, class_names=["benign", "malignant"])
    assert cbm.latents == [0, 3, 5, 7, 9, 11] and cbm.class_names == ["benign", "malignant"]


def _sae_folder(folder: Path) -> Path:
    from neuron_concepts import SparseAutoencoder
    from neuron_concepts.sae import save_sae

    folder.mkdir(parents=True, exist_ok=True)
    save_sae(SparseAutoencoder(5, 10), folder)
    return folder


SAE = {
    "sae-kind-gelu": (lambda f: _edit_json(f / "sae.json", _set("kind", "gelu")), "sae.json: not the settings"),
    "sae-unknown-key": (lambda f: _edit_json(f / "sae.json", _set("evil", 1)), "sae.json: not the settings"),
    "sae-nan-weights": (lambda f: _poison(f / "sae.safetensors", "W_enc"), "tensor 'W_enc' holds 1 NaN"),
    "sae-other-width": (lambda f: _edit_json(f / "sae.json", _set("d_in", 7)), "do not fit the autoencoder"),
}


@pytest.mark.parametrize("case", sorted(SAE))
def test_a_damaged_sae_names_the_file(tmp_path, case):
    from neuron_concepts.sae import load_sae

    damage, message = SAE[case]
    folder = _sae_folder(tmp_path / "sae")
    damage(folder)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_sae(folder)


def _names_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "names.json").write_text(json.dumps([
        {"latent": k, "name": f"concept {k}", "source": "annotations", "score": 0.9, "details": {}}
        for k in (1, 4, 6)]))
    return folder


def _entry(i: int, **changes: Any) -> Callable[[list], list]:
    def apply(records: list) -> list:
        records[i] = {**records[i], **changes}
        return records
    return apply


#: (edit of names.json, what the message says), read for an SAE of 32 latents (U19)
NAMES = {
    "names-an-object": (lambda d: {"a": 1}, "the file is {\"a\": 1}; expected a list of records"),
    "names-latent-1e9": (_entry(0, latent=1_000_000_000), "in [0, 31] (the SAE has 32 latents)"),
    "names-latent-negative": (_entry(1, latent=-5), "entry 1 'latent' is -5"),
    "names-latent-twice": (_entry(2, latent=1), "each latent named once"),
    "names-no-name": (lambda d: [{k: v for k, v in r.items() if k != "name"} for r in d], "entry 0 has no 'name'"),
    "names-score-a-word": (_entry(0, score="high"), "a finite number or null"),
}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_a_tampered_names_json_names_the_file_and_the_entry(tmp_path, case):
    from neuron_concepts.folders import load_names

    edit, message = NAMES[case]
    folder = _names_folder(tmp_path / "name")
    _edit_json(folder / "names.json", edit)
    with pytest.raises(CheckpointError) as info:
        load_names(folder, n_latents=32)
    text = str(info.value)
    assert str(folder / "names.json") in text and message in text, f"{case}: {text}"


def _cavs_folder(folder: Path) -> Path:
    from safetensors.numpy import save_file as save_numpy

    folder.mkdir(parents=True, exist_ok=True)
    latents = np.array([1, 4, 6, 8, 9], dtype=np.int64)
    save_numpy({"cavs": np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), "latents": latents},
               str(folder / "cavs.safetensors"))
    (folder / "cavs.json").write_text(json.dumps([{"latent": int(k), "name": f"n{k}", "source": "annotations"}
                                                  for k in latents]))
    return folder


CAVS = {
    "cavs-cut-to-three": (lambda f: _edit_json(f / "cavs.json", lambda d: d[:3]),
                          "cavs.json: 3 entries; expected one per vector of cavs.safetensors (5)"),
    "cavs-other-latent": (lambda f: _edit_json(f / "cavs.json", _entry(2, latent=7)), "expected latent 6"),
    "cavs-nan-vector": (lambda f: _poison(f / "cavs.safetensors", "cavs"), "tensor 'cavs' holds 1 NaN"),
    "cavs-json-a-number": (lambda f: _edit_json(f / "cavs.json", "3"), "expected a list of records"),
    "cavs-pickle": (lambda f: _write_pickle(f / "cavs.safetensors"), "expected a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(CAVS))
def test_damaged_cavs_name_the_file(tmp_path, case):
    from neuron_concepts.folders import load_cavs

    damage, message = CAVS[case]
    folder = _cavs_folder(tmp_path / "cav")
    damage(folder)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_cavs(folder)
    assert not (folder / "PWNED").exists()


@pytest.mark.parametrize("selection, message", [
    ([{"cav_index": 5, "name": "n"}], "an index into the cav stage's 5 vectors"),
    ([{"cav_index": "0", "name": "n"}], "entry 0 'cav_index' is \"0\""),
    ([], "at least one selected concept"),
])
def test_a_tampered_selection_json_names_the_entry(tmp_path, selection, message):
    from neuron_concepts.folders import load_selection

    (tmp_path / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_selection(tmp_path, n_cavs=5)


def test_a_failed_stage_leaves_no_half_folder_and_the_pipeline_keeps_its_record(tmp_path):
    """U19's class through the mechanism every stage function uses (`settled_stages`)."""
    from neuron_concepts.config import NeuronConceptsConfig
    from neuron_concepts.folders import PIPELINE_FILE, record_stage, settled_stages, start_stage

    pipeline = tmp_path / "pipeline"
    (pipeline / "cav").mkdir(parents=True)
    (pipeline / "name").mkdir()
    record_stage(pipeline, "cav", pipeline / "cav")
    before = json.loads((pipeline / PIPELINE_FILE).read_text())

    @settled_stages
    def failing_stage(parent: Path) -> Path:
        start_stage("cav", parent, NeuronConceptsConfig(), pipeline)
        raise IndexError("latent 1000000000 is out of range")

    with pytest.raises(IndexError):
        failing_stage(pipeline / "name")
    assert sorted(p.name for p in pipeline.iterdir()) == ["cav", "name", PIPELINE_FILE]
    assert json.loads((pipeline / PIPELINE_FILE).read_text())["stages"] == before["stages"]


# ------------------------------------------------------------------------------------ dae-cf: boundary.json


def _boundary_file(path: Path) -> Path:
    from dae_counterfactual import LatentBoundary

    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 4))
    grades = (z[:, 0] > 0).astype(int) * 2
    return LatentBoundary().fit(z, grades).save(path)


#: (edit of boundary.json, what the message says) (U21, U22)
BOUNDARY = {
    "boundary-coef-cut-short": (lambda d: {**d, "coef": d["coef"][:2]}, "'mean' is"),
    "boundary-other-format": (_set("format", "something-else"), "not a latent boundary file"),
    "boundary-coef-all-zero": (lambda d: {**d, "coef": [0.0] * len(d["coef"])}, "not all zeros"),
    "boundary-coef-nan": (lambda d: {**d, "coef": [float("nan"), *d["coef"][1:]]},
                          "'coef'[0] is NaN; expected a finite number"),
    "boundary-scale-zero": (lambda d: {**d, "scale": [0.0, *d["scale"][1:]]}, "a standard deviation > 0"),
    "boundary-slope-infinite": (_set("slope", float("inf")), "'slope' is Infinity; expected a finite number"),
    "boundary-unknown-param": (lambda d: {**d, "params": {**d["params"], "evil": 1}}, "the settings of"),
    "boundary-a-list": ("[1, 2]", "not a latent boundary file"),
    "boundary-not-json": ("{", "not valid JSON"),
    "boundary-no-coef": (_drop("coef"), "no 'coef'"),
}


@pytest.mark.parametrize("case", sorted(BOUNDARY))
def test_a_tampered_boundary_json_names_the_file_not_the_latents(tmp_path, case):
    from dae_counterfactual import LatentBoundary

    edit, message = BOUNDARY[case]
    path = _boundary_file(tmp_path / "boundary.json")
    _edit_json(path, edit)
    with pytest.raises(CheckpointError) as info:
        LatentBoundary.load(path)
    text = str(info.value)
    assert str(path) in text and message in text and "latents must be finite" not in text, f"{case}: {text}"


# ----------------------------------------------------------------------------- NaN weights in any checkpoint


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_weights_holding_nan_or_infinity_are_refused_naming_file_and_tensor(tmp_path, value):
    """U11's class in core: every method's model.safetensors is read through `load_weights` -> `read_tensors`."""
    from medimg_core.checkpoint import load_weights

    model = torch.nn.Linear(3, 2)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    _poison(folder / "model.safetensors", "bias", value)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'bias' holds 1 NaN or infinite value"):
        load_weights(torch.nn.Linear(3, 2), folder)
    with pytest.raises(CheckpointError, match="expected finite weights"):
        read_tensors(folder / "model.safetensors", "weights")


# ------------------------------------------------------------------- through the commands, on tiny real runs

CRL_TINY = ["--config", "synthetic-cpu", "--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size",
            "32", "--train.epochs", "1", "--bootstrap", "20", "--model.logic_layers", "[16, 16]", "--no-progress"]
NC_TINY = ["--config", "synth-derm-cpu", "--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size",
           "32", "--train.epochs", "1", "--train.batch_size", "16", "--train.num_workers", "0", "--sae.expansion", "2",
           "--sae.batch_size", "32", "--sae.epochs", "4", "--sae.eval_every", "2", "--naming.figures", "2",
           "--naming.top_n", "6", "--cav.top_n", "10", "--cav.n_negative", "20", "--select.k", "8",
           "--cbm.n_nonzero", "4", "--cbm.c_search_steps", "1", "--bootstrap", "20", "--no-progress",
           "--naming.min_auroc", "0.6"]  # a 1-epoch model: few latents reach the default naming floor


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return generate("synth-derm", n=80, out=tmp_path_factory.mktemp("synth") / "synth-derm", seed=0, size=32)


@pytest.fixture(scope="module")
def crl_run(synth_root, tmp_path_factory) -> Path:
    from crl.cli import main

    out = tmp_path_factory.mktemp("crl-runs")
    result = CliRunner().invoke(main, ["train", "--root", str(synth_root), "--out", str(out), *CRL_TINY])
    assert result.exit_code == 0, result.output
    return next(p for p in out.iterdir() if p.is_dir())


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy, symlinks=True)
    return copy


def _with_rule(formula: Any) -> Callable[[dict], dict]:
    """rules.json with one more rule of this formula (a tiny run may have learned none)."""
    def apply(d: dict) -> dict:
        rule = {"rule": "x", "layer": 0, "weights": {c: 0.5 for c in d["class_names"]}, "support": 0.5, "length": 1,
                "formula": formula}
        return {**d, "rules": [*d["rules"], rule]}
    return apply


def _rules_files(run: Path) -> list[Path]:
    return list(run.rglob("rules.json"))


#: (damage to a copy of the CRL run, the command after the run folder, what the output names) (U11-U13, U28)
CRL_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "explain-rules-var-99": (lambda run: [_edit_json(p, _with_rule(["var", 99])) for p in _rules_files(run)],
                             ["explain"], "a concept index in [0, 5]"),
    "explain-rules-formula-exec": (lambda run: [_edit_json(p, _with_rule(["exec", "import os"]))
                                                for p in _rules_files(run)], ["explain"], "kind one of const"),
    "explain-rules-of-another-model": (
        lambda run: [_edit_json(p, lambda d: {**d, "concept_names": list(reversed(d["concept_names"]))})
                     for p in _rules_files(run)], ["explain"], "expected the model's ['irregular_border'"),
    "rules-a-list": (lambda run: [_edit_json(p, "[1, 2, 3]") for p in _rules_files(run)], ["rules"],
                     "the file is [1, 2, 3]; expected a JSON object"),
    "rules-json-a-list": (lambda run: [_edit_json(p, "[1, 2, 3]") for p in _rules_files(run)], ["rules", "--json"],
                          "the file is [1, 2, 3]"),
    "explain-nan-weights": (lambda run: [_poison(p) for p in run.rglob("model.safetensors")], ["explain"],
                            "NaN or infinite value"),
    "explain-pickle-weights": (lambda run: [_write_pickle(p) for p in run.rglob("model.safetensors")], ["explain"],
                               "expected a safetensors file"),
    "explain-another-kind": (lambda run: [_edit_json(p, _set("kind", "cipl")) for p in
                                          run.glob("checkpoints/*/config.json")], ["explain"], "kind 'cipl'"),
    "explain-an-empty-folder": (lambda run: [shutil.rmtree(p) if p.is_dir() else p.unlink()
                                             for p in list(run.iterdir())], ["explain"], ""),
}


@pytest.mark.parametrize("case", sorted(CRL_CASES))
def test_crl_commands_on_a_damaged_run_fail_cleanly(tmp_path, crl_run, synth_root, case):
    from crl.cli import main

    damage, command, message = CRL_CASES[case]
    run = _copy(crl_run, tmp_path)
    damage(run)
    image = str(synth_root / "images" / "derm_00001.png")
    args = [*command, str(run), *([image] if command[0] == "explain" else [])]
    output = _clean(CliRunner().invoke(main, args))
    assert str(run) in output and message in output, output
    assert not (tmp_path / "PWNED").exists() and not any(run.rglob("PWNED"))


def test_crl_evaluate_on_classes_in_another_order_fails_cleanly(tmp_path, crl_run, synth_root):
    """U30: the check was right but ended in a traceback."""
    from crl.cli import main

    root = tmp_path / "classorder"
    shutil.copytree(synth_root, root)
    _edit_json(root / "dataset.json", _set("class_names", ["malignant", "benign"]))
    output = _clean(CliRunner().invoke(main, ["evaluate", str(crl_run), "--dataset", "csv", "--root", str(root),
                                              "--device", "cpu", "--no-progress"]))
    assert "csv classes ['malignant', 'benign'] differ from the model's ['benign', 'malignant']" in output


@pytest.fixture(scope="module")
def nc_pipeline(synth_root, tmp_path_factory) -> Path:
    from neuron_concepts.cli import main

    out = tmp_path_factory.mktemp("nc-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_HOME", str(out.parent / "nc-home"))
        result = CliRunner().invoke(main, ["run", "--root", str(synth_root), "--out", str(out), *NC_TINY])
    assert result.exit_code == 0, result.output
    return next(p for p in out.iterdir() if p.is_dir())


def _all(run: Path, name: str, damage: Callable[[Path], Any]) -> None:
    found = list(run.rglob(name))
    assert found, f"no {name} in {run}"
    for p in found:
        damage(p)


#: (damage to a copy of the pipeline, the stage folder explained, what the output names) (U15-U17, U28)
NC_EXPLAIN: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "cbm-latent-999999": (lambda run: _all(run, "cbm.json", lambda p: _edit_json(
        p, lambda d: {**d, "latents": [999999, *d["latents"][1:]]})), "cbm", "(the SAE's latents)"),
    "cbm-latent-a-word": (lambda run: _all(run, "cbm.json", lambda p: _edit_json(
        p, lambda d: {**d, "latents": ["abc", *d["latents"][1:]]})), "cbm", "'latents' is [\"abc\""),
    "cbm-one-class-name": (lambda run: _all(run, "cbm.json", lambda p: _edit_json(p, _set("class_names", ["benign"]))),
                           "cbm", "expected 2 class names"),
    "cbm-the-word-hello": (lambda run: _all(run, "cbm.json", lambda p: _edit_json(p, '"hello"')), "cbm",
                           "expected a JSON object"),
    "cbm-concept-names-cut-short": (lambda run: _all(run, "cbm.json", lambda p: _edit_json(
        p, lambda d: {**d, "concept_names": d["concept_names"][:2]})), "cbm", "'concept_names' is"),
    "cbm-pickle": (lambda run: _all(run, "cbm.safetensors", _write_pickle), "cbm", "expected a safetensors file"),
    "sae-nan": (lambda run: _all(run, "sae.safetensors", _poison), "cbm", "NaN or infinite"),
    "the-pipeline-folder": (lambda run: None, ".", ""),
}


@pytest.mark.parametrize("case", sorted(NC_EXPLAIN))
def test_neuron_concepts_explain_on_a_damaged_pipeline_fails_cleanly(tmp_path, nc_pipeline, synth_root, case):
    from neuron_concepts.cli import main

    damage, stage, message = NC_EXPLAIN[case]
    run = _copy(nc_pipeline, tmp_path)
    damage(run)
    result = CliRunner().invoke(main, ["explain", str(run / stage), str(synth_root / "images" / "derm_00001.png"),
                                       "--device", "cpu"])
    if case == "the-pipeline-folder" and result.exit_code == 0:  # a pipeline folder may stand for its checkpoint
        assert "prediction:" in result.output, result.output
        return
    output = _clean(result)
    assert message in output and str(run) in output, output
    assert not any(run.rglob("PWNED"))


#: (damage, the command on the copy, the stage folder that must not appear, what the output says) (U18, U19: no
#: half stage folders)
NC_STAGES: dict[str, tuple[Callable[[Path], None], list[str], str, str]] = {
    "cav-names-an-object": (lambda run: _edit_json(run / "name" / "names.json", '{"a": 1}'), ["cav", "name"],
                            "cav-2", "expected a list of records"),
    "cav-names-latent-1e9": (lambda run: _edit_json(run / "name" / "names.json", _entry(0, latent=10**9)),
                             ["cav", "name"], "cav-2", "the SAE has"),
    "cav-names-latent-negative": (lambda run: _edit_json(run / "name" / "names.json", _entry(0, latent=-5)),
                                  ["cav", "name"], "cav-2", "'latent' is -5"),
    "select-cavs-cut-to-three": (lambda run: _edit_json(run / "cav" / "cavs.json", lambda d: d[:3]),
                                 ["select", "cav"], "select-2", "3 entries; expected one per vector"),
    "cav-stage-parent-etc": (lambda run: _edit_json(run / "name" / "stage.json",
                                                    _set("parent", "../../../../../../../../etc")),
                             ["cav", "name"], "cav-2", "neither a neuron-concepts stage folder"),
    "cav-fails-after-its-folder-started": (lambda run: None, ["cav", "name", "--cav.min_positives", "100000"], "cav-2",
                                           "cav.min_positives 100000"),
}


@pytest.mark.parametrize("case", sorted(NC_STAGES))
def test_a_neuron_concepts_stage_that_fails_leaves_no_half_folder(tmp_path, nc_pipeline, case):
    from neuron_concepts.cli import main

    damage, (command, stage, *extra), absent, message = NC_STAGES[case]
    run = _copy(nc_pipeline, tmp_path)
    damage(run)
    before = sorted(p.name for p in run.iterdir())
    record = json.loads((run / "pipeline.json").read_text())
    output = _clean(CliRunner().invoke(main, [command, str(run / stage), *extra, "--no-progress"]))
    assert message in output, output
    assert not (run / absent).exists() and sorted(p.name for p in run.iterdir()) == before
    assert json.loads((run / "pipeline.json").read_text()) == record


def test_iis_score_with_refused_backbone_weights_leaves_no_folder(tmp_path, synth_root):
    """U5: the error was clean, but card.json, config.yaml and log.txt were left in a new run folder."""
    from iis.cli import main

    evil = tmp_path / "evil" / "torch_iis.pth"
    evil.parent.mkdir()
    marker = _write_pickle(evil)
    out = tmp_path / "runs"
    output = _clean(CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(synth_root),
                                              "--out", str(out), "--backbone", f"test_resnet:{evil}", "--device",
                                              "cpu", "--no-progress", "--data.image_size", "32"]))
    assert "refused" in output and str(evil) in output, output
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


#: (the command line's module, its explain command and options) given the CRL run (U28)
OTHER_METHODS = {
    "cipl-reason": ("cipl.cli", ["reason"], []),
    "cipl-evaluate": ("cipl.cli", ["evaluate"], []),
    "dae-cf-counterfactual": ("dae_counterfactual.cli", ["counterfactual"], ["--grades", "1"]),
    "iis-explain": ("iis.cli", ["explain"], []),
    "neuron-concepts-explain": ("neuron_concepts.cli", ["explain"], []),
}


@pytest.mark.parametrize("case", sorted(OTHER_METHODS))
def test_another_methods_run_is_named_not_a_traceback(tmp_path, crl_run, synth_root, case):
    """U28: `cipl reason <crl run>`, `dae-cf counterfactual <crl run>`, ...: the messages were good, as tracebacks."""
    import importlib

    module, command, options = OTHER_METHODS[case]
    main = importlib.import_module(module).main
    image = [] if command == ["evaluate"] else [str(synth_root / "images" / "derm_00001.png")]
    result = CliRunner().invoke(main, [*command, str(crl_run), *image, *options, "--device", "cpu"])
    output = _clean(result)
    assert str(crl_run) in output, output
    assert re.search(r"kind|not a|no scored|neither", output), output


#: a tiny DAE for 16 px images (as the package's tests train it), 1 epoch
DAE_TINY = ["--config", "synth-grade-cpu", "--device", "cpu", "--model.base_channels", "8", "--model.channel_mult",
            "[1, 2]", "--model.num_res_blocks", "1", "--model.attention_resolutions", "[8]", "--model.groups", "4",
            "--model.time_embed_dim", "null", "--model.z_dim", "16", "--model.encoder_channel_mult", "[1, 2]",
            "--model.encoder_num_res_blocks", "1", "--model.encoder_attention_resolutions", "[]", "--data.image_size",
            "16", "--train.epochs", "1", "--train.batch_size", "8", "--diffusion.encode_steps", "2",
            "--diffusion.render_steps", "2", "--recon_images", "2", "--bootstrap", "20", "--no-progress"]


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny DAE run with its boundary fitted, one of its images)."""
    from dae_counterfactual.cli import main

    tmp = tmp_path_factory.mktemp("dae")
    data = generate("synth-grade", n=60, out=tmp / "data", seed=0, size=32)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--root", str(data), "--out", str(tmp / "runs"), *DAE_TINY])
    assert result.exit_code == 0, result.output
    run = next((tmp / "runs").iterdir())
    for args in (["encode", str(run), "--no-progress"], ["fit-boundary", str(run), "--bootstrap", "20"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return run, next((data / "images").iterdir())


#: (damage to a copy of the DAE run's boundary.json, what the output says) (U21, U22)
DAE_BOUNDARY = {
    "coef-cut-short": (lambda d: {**d, "coef": d["coef"][:3]}, "'mean' is"),
    "wrong-format": (_set("format", "other"), "not a latent boundary file"),
    "coef-all-zero": (lambda d: {**d, "coef": [0.0] * len(d["coef"])}, "not all zeros"),
    "coef-one-nan": (lambda d: {**d, "coef": [*d["coef"][:-1], float("nan")]}, "is NaN; expected a finite number"),
    # every per-dimension vector of another model's boundary is longer (mean_difference too, since it is stored)
    "another-models-size": (lambda d: {**d, **{k: d[k] + d[k] for k in ("coef", "mean", "scale", "mean_difference")
                                               if d.get(k) is not None}},
                            "'coef' has 32 dimensions; expected the model's 16"),
}


@pytest.mark.parametrize("case", sorted(DAE_BOUNDARY))
def test_dae_counterfactual_with_a_damaged_boundary_blames_the_boundary(tmp_path, dae_run, case):
    from dae_counterfactual.cli import main

    run, image = dae_run
    edit, message = DAE_BOUNDARY[case]
    copy = _copy(run, tmp_path)
    _all(copy, "boundary.json", lambda p: _edit_json(p, edit))
    output = _clean(CliRunner().invoke(main, ["counterfactual", str(copy), str(image), "--grades", "1", "--device",
                                              "cpu", "--no-progress"]))
    assert "boundary.json" in output and message in output and "latents must be finite" not in output, output


def test_dae_fit_boundary_on_latents_holding_nan_names_the_file(tmp_path, dae_run):
    from dae_counterfactual.cli import main

    run, _ = dae_run
    copy = _copy(run, tmp_path)
    _all(copy, "train.safetensors", lambda p: _poison(p, "z"))
    output = _clean(CliRunner().invoke(main, ["fit-boundary", str(copy), "--bootstrap", "20"]))
    assert "train.safetensors: tensor 'z' holds 1 NaN" in output, output


def test_dae_counterfactual_reads_images_as_the_other_methods_do(tmp_path, dae_run):
    """E8: a text file named .png was a ValueError traceback in dae-cf only."""
    from dae_counterfactual.cli import main

    run, image = dae_run
    fake = tmp_path / "notimage.png"
    fake.write_text("not an image")
    out = tmp_path / "cf"
    output = _clean(CliRunner().invoke(main, ["counterfactual", str(run), str(image), str(fake), "--grades", "1",
                                              "--device", "cpu", "--no-progress", "--out", str(out)]))
    assert f"{fake}: not an image (expected PNG, JPEG, BMP or TIFF)" in output, output
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))  # nothing half-written


IIS_SMALL = ["--device", "cpu", "--no-progress", "--elements.images_per_class", "2", "--elements.slic_segments", "[10]",
             "--num-concepts", "12", "--sweep.ratios", "[0.0, 0.5]", "--sweep.lrs", "[0.1]", "--sweep.epochs", "2",
             "--sweep.batch_size", "32", "--bootstrap", "20", "--data.image_size", "32"]


@pytest.fixture(scope="module")
def iis_run(synth_root, tmp_path_factory) -> Path:
    """An IIS run scored from its own working directory with a relative weights path (U26's setting)."""
    import os

    from iis.cli import main
    from medimg_core.models import create_backbone

    work = tmp_path_factory.mktemp("iis-work")
    (work / "weights").mkdir()
    torch.manual_seed(7)
    save_file(create_backbone("test_resnet").model.state_dict(), str(work / "weights" / "other.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_HOME", str(work / "home"))
        mp.chdir(work)
        result = CliRunner().invoke(main, ["score", "--config", "synth-derm-cpu", "--root", str(synth_root), "--out",
                                           "runs", "--backbone", "test_resnet:weights/other.safetensors",
                                           *IIS_SMALL])
        assert result.exit_code == 0, result.output
        run = next((work / "runs").iterdir()).resolve()
    assert os.path.isabs(run)
    return run


def test_an_iis_run_scored_with_relative_weights_explains_from_another_directory(tmp_path, iis_run, synth_root,
                                                                                monkeypatch):
    """U26: backbone.json kept the relative weights path, and `iis explain` from elsewhere failed naming an option
    explain does not have; the run's heads checkpoint now holds the backbone's weights."""
    from iis.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(iis_run), str(synth_root / "images" / "derm_00001.png"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "prediction" in result.output.lower(), result.output


#: (damage to a copy of the IIS run, what the output names)
IIS_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "heads-nan": (lambda run: _all(run, "model.safetensors", _poison), "model.safetensors: tensor"),
    "library-nan": (lambda run: _all(run, "library.safetensors", _poison), "library.safetensors: tensor"),
    "library-json-no-kind": (lambda run: _all(run, "library.json", lambda p: _edit_json(p, _drop("kind"))),
                             "do not make a concept library (KeyError: 'kind')"),
    "backbone-json-a-list": (lambda run: _all(run, "backbone.json", lambda p: _edit_json(p, "[1]")),
                             "backbone.json: cannot read the backbone record (TypeError: expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(IIS_DAMAGE))
def test_iis_explain_on_a_damaged_run_names_the_file(tmp_path, iis_run, synth_root, case):
    from iis.cli import main

    damage, message = IIS_DAMAGE[case]
    run = _copy(iis_run, tmp_path)
    damage(run)
    output = _clean(CliRunner().invoke(main, ["explain", str(run), str(synth_root / "images" / "derm_00001.png"),
                                              "--device", "cpu"]))
    assert str(run) in output and message in output, output


CIPL_TINY = ["--config", "synth-cxr-cpu", "--device", "cpu", "--model.backbone", "test_resnet", "--model.output_stride",
             "8", "--data.image_size", "32", "--train.epochs", "2", "--train.batch_size", "8",
             "--model.prototypes_per_class", "2", "--model.prototype_dim", "16", "--model.reduce_dim", "16",
             "--schedule.warm_epochs", "1", "--schedule.push_epochs", "[1, 2]", "--schedule.last_layer_epochs", "1",
             "--bootstrap", "20", "--no-progress"]


@pytest.fixture(scope="module")
def cipl_run(tmp_path_factory) -> Path:
    from cipl.cli import main

    tmp = tmp_path_factory.mktemp("cipl")
    data = generate("synth-cxr", n=90, out=tmp / "data", seed=0, size=32)
    result = CliRunner().invoke(main, ["train", "--root", str(data), "--out", str(tmp / "runs"), *CIPL_TINY])
    assert result.exit_code == 0, result.output
    return next((tmp / "runs").iterdir())


def test_cipl_evaluate_on_a_dataset_of_other_classes_fails_cleanly(cipl_run, synth_root):
    """U30: `cipl evaluate` of a chest X-ray model on the skin data: the check was right, as a traceback."""
    from cipl.cli import main

    output = _clean(CliRunner().invoke(main, ["evaluate", str(cipl_run), "--dataset", "csv", "--root",
                                              str(synth_root), "--device", "cpu", "--no-progress"]))
    assert "csv classes ['benign', 'malignant'] differ from the model's" in output, output


@pytest.mark.parametrize("file, damage, message", [
    ("prototypes.json", lambda path: _edit_json(path, "[1]"), "expected a JSON object"),
    ("prototypes.json", lambda path: _edit_json(path, _drop("grid")), "missing ['grid']"),
    ("prototypes.safetensors", lambda path: _poison(path, "prototypes"), "NaN or infinite"),
    ("prototypes.safetensors", _write_pickle, "expected a safetensors file"),
], ids=["prototypes-json-a-list", "prototypes-json-no-grid", "prototypes-nan", "prototypes-pickle"])
def test_a_damaged_cipl_push_folder_names_the_file(tmp_path, cipl_run, file, damage, message):
    """A push folder read on its own (`load_push`; `PushIndex.from_folder` reads prototypes.json only); a
    checkpoint keeps its own copy of the push index."""
    from cipl.push import PushIndex, load_push

    run = _copy(cipl_run, tmp_path)
    folder = sorted((run / "prototypes").iterdir())[-1]
    damage(folder / file)
    for read in (load_push, PushIndex.from_folder) if file == "prototypes.json" else (load_push,):
        with pytest.raises(REFUSED) as info:
            read(folder)
        assert str(folder / file) in str(info.value) and message in str(info.value), str(info.value)
    assert not (folder / "PWNED").exists()
