"""One convention for the common options of the six command lines (medimg, crl, cipl, iis, neuron-concepts,
dae-cf), checked command by command. medimg_core.cli_options defines each option once; every package uses it.

The rule. Each command is in one class (COMMANDS below; a new command must be classified here):

- **trains**: starts a run from a dataset and a config (`medimg train-baseline`, `crl train`, `cipl train`,
  `dae-cf train`, `iis score`, `neuron-concepts run` and `train-opaque`). It takes `--config`, `--device`,
  `--seed`, `--out`, `--progress/--no-progress` and `--resume`, each defaulting to None: the value comes
  from the config and the option overrides it. With `--resume` only `--progress/--no-progress` may be added.
- **stage**: a step with a config of its own that reads an earlier folder or the data (the neuron-concepts
  stages, `iis extract-concepts`): the same options but `--resume` (a stage reruns whole into a new folder;
  `neuron-concepts run --resume` continues an interrupted pipeline).
- **explains** (explains or evaluates a trained run): `--device`, default auto (resolved and checked before
  the command runs); `--seed` (default 0) where it draws random numbers (bootstrap intervals, sampling noise,
  which images); `--out` where it writes figures, reports or evaluation files (state that the method's later
  commands read from the run folder, such as latents, a boundary or a pushed checkpoint, stays there);
  `--progress/--no-progress` where it passes over a dataset split or samples a diffusion model.
- **other**: listing, information, data preparation, reading a file: no requirement.

Wherever one of these option names appears on a command of the first three classes it is the shared
definition (a `CommonOption`) with the class's default.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medimg_core.cli_options import PROGRESS_HELP, CommonOption

PROGRAMS = {"medimg": "medimg_core.cli", "crl": "crl.cli", "cipl": "cipl.cli", "iis": "iis.cli",
            "neuron-concepts": "neuron_concepts.cli", "dae-cf": "dae_counterfactual.cli"}

TRAINS = ("trains", {"--config", "--device", "--seed", "--out", "--progress", "--resume"})
STAGE = ("stage", {"--config", "--device", "--seed", "--out", "--progress"})
OTHER = ("other", set())


def explains(*extra: str) -> tuple[str, set[str]]:
    return ("explains", {"--device", *(f"--{name}" for name in extra)})


COMMANDS = {
    "medimg info": OTHER,
    "medimg datasets list": OTHER,
    "medimg datasets info": OTHER,
    "medimg datasets verify": OTHER,
    "medimg datasets preview": OTHER,
    "medimg datasets download": OTHER,
    "medimg synth": OTHER,
    "medimg train-baseline": TRAINS,
    "medimg weights list": OTHER,
    "medimg weights import": OTHER,
    "medimg weights verify": OTHER,
    "medimg report": OTHER,
    # medimg-benchmark's, added to `medimg` through the entry-point group medimg.commands; it trains its own
    # models from a generator and a preset (no --config, no --resume), seeds them with --seeds, and writes a run
    # folder under --out
    "medimg benchmark": explains("out", "progress"),
    "crl train": TRAINS,
    "crl evaluate": explains("seed", "out", "progress"),  # bootstrap; eval JSON; a whole split
    "crl intervene": explains("seed", "out", "progress"),  # random orders; JSON + figure; a whole split
    "crl rules": OTHER,
    "crl explain": explains("out"),  # one image, deterministic
    "crl split": OTHER,
    "cipl train": TRAINS,
    "cipl push": explains("progress"),  # deterministic; the pushed checkpoint stays in the run; the training split
    "cipl evaluate": explains("seed", "out", "progress"),
    "cipl reason": explains("out"),
    "cipl gallery": explains("out"),
    "iis score": TRAINS,
    "iis extract-concepts": STAGE,
    "iis explain": explains("out"),
    "neuron-concepts run": TRAINS,
    # reads what the name stage recorded and runs the opaque backbone and the SAE for the crops (no randomness);
    # writes gallery/ into the pipeline, whose names.csv a later `neuron-concepts name --names-file` reads, like
    # the stages' state (so no --out)
    "neuron-concepts gallery": explains(),
    "neuron-concepts train-opaque": TRAINS,
    "neuron-concepts encode": STAGE,
    "neuron-concepts train-sae": STAGE,
    "neuron-concepts name": STAGE,
    "neuron-concepts cav": STAGE,
    "neuron-concepts select": STAGE,
    "neuron-concepts train-cbm": STAGE,
    "neuron-concepts explain": explains("out"),
    "dae-cf train": TRAINS,
    "dae-cf encode": explains("progress"),  # deterministic; latents stay in the run; every split
    "dae-cf fit-boundary": explains("seed", "progress"),  # bootstrap; boundary stays in the run; encodes latents
    "dae-cf counterfactual": explains("seed", "out", "progress"),  # diffusion sampling
    "dae-cf evaluate": explains("seed", "out", "progress"),
}

COMMON = ("--config", "--device", "--seed", "--out", "--progress", "--resume")


def _main(program: str) -> click.Group:
    import importlib

    return importlib.import_module(PROGRAMS[program]).main


def _walk(command: click.Command, path: list[str]):
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, [*path, name])
    else:
        yield path, command


def _all_commands() -> dict[str, click.Command]:
    found = {" ".join([program, *path]): command for program in PROGRAMS for path, command in _walk(_main(program), [])}
    # plugin commands join `medimg` only when their package is installed (entry points); check them either way
    from medimg_benchmark.cli import benchmark

    found.setdefault("medimg benchmark", benchmark)
    return found


def _command(name: str) -> click.Command:
    return _all_commands()[name]


def _options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts if opt in COMMON}


def test_every_command_is_classified():
    found = set(_all_commands())
    assert found - set(COMMANDS) == set(), "classify the new command(s) in COMMANDS (see the module docstring)"
    assert set(COMMANDS) - found == set(), "commands listed here that no longer exist"


@pytest.mark.parametrize("name", [n for n, (kind, _) in COMMANDS.items() if kind != "other"])
def test_common_options(name):
    kind, required = COMMANDS[name]
    options = _options(_command(name))
    missing = required - set(options)
    assert not missing, f"`{name}` ({kind}) lacks {sorted(missing)}"
    from_config = kind in ("trains", "stage")
    for flag, option in options.items():
        assert isinstance(option, CommonOption), f"`{name} {flag}` is not the shared definition (medimg_core.cli_options)"
        if flag == "--device":
            assert option.default == (None if from_config else "auto"), name
        elif flag == "--seed":
            assert option.type == click.INT and option.default == (None if from_config else 0), name
        elif flag == "--progress":
            assert option.secondary_opts == ["--no-progress"] and option.default is None, name
            assert option.help == PROGRESS_HELP, name
        elif flag == "--config":
            assert option.name == "config_name" and option.default is None, name
        elif flag == "--resume":
            assert option.name == "resume_dir" and option.default is None, name
        else:
            assert option.default is None, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name):
    program, *path = name.split()
    group = _main(program)
    if name == "medimg benchmark" and "benchmark" not in group.commands:  # medimg-benchmark not installed
        group = click.Group("medimg", commands={"benchmark": _command(name)})
    result = CliRunner().invoke(group, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for flag in COMMANDS[name][1]:
        assert flag in result.output, f"{name} --help does not show {flag}"
    if "--progress" in COMMANDS[name][1]:
        assert "--progress / --no-progress" in result.output


# ------------------------------------------------------------------ the options reach what the command runs

#: (command, module and function the command calls, what the fake returns, the config key of the progress bars)
TRAINING_CALLS = {
    "medimg train-baseline": ("medimg_core.baseline", "train_baseline", "train.progress"),
    "crl train": ("crl.train", "train_crl", "train.progress"),
    "cipl train": ("cipl.train", "train_cipl", "train.progress"),
    "dae-cf train": ("dae_counterfactual.train", "train_dae", "train.progress"),
    "iis score": ("iis.pipeline", "run_score", "progress"),
    "neuron-concepts run": ("neuron_concepts.pipeline", "run_pipeline", "progress"),
    "neuron-concepts train-opaque": ("neuron_concepts.opaque", "train_opaque", "train.progress"),
}


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", sorted(TRAINING_CALLS))
def test_training_options_reach_the_config(name, tmp_path, monkeypatch):
    """--device, --seed, --out and --no-progress land in the resolved config of every training; with
    --resume, --no-progress is accepted and the other options are refused."""
    import importlib

    module, function, progress_key = TRAINING_CALLS[name]
    seen = []

    def fake(cfg, *args, **kwargs):
        seen.append(cfg)
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "table.md").write_text("| table |")
        (run / "metrics.json").write_text("{}")
        return run

    monkeypatch.setattr(importlib.import_module(module), function, fake)
    program, *path = name.split()
    args = [*path, "--root", str(tmp_path), "--device", "cpu", "--seed", "7", "--out", str(tmp_path / "runs"),
            "--no-progress"]
    result = CliRunner().invoke(_main(program), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cfg = seen[-1]
    assert (cfg.device, cfg.seed, cfg.out, _get(cfg, progress_key)) == ("cpu", 7, str(tmp_path / "runs"), False)

    from medimg_core.config import save_config

    saved = tmp_path / "saved-run"
    saved.mkdir()
    save_config(cfg, saved / "config.yaml")
    if name == "neuron-concepts train-opaque":  # resumes the baseline run folder it made
        monkeypatch.setattr(importlib.import_module(module), "resume_opaque", lambda folder, progress: fake(progress))
    result = CliRunner().invoke(_main(program), [*path, "--resume", str(saved), "--progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if name == "neuron-concepts train-opaque":
        assert seen[-1] is True
    else:
        assert _get(seen[-1], progress_key) is True and seen[-1].seed == 7
    result = CliRunner().invoke(_main(program), [*path, "--resume", str(saved), "--seed", "3"])
    assert result.exit_code == 2 and "only --progress/--no-progress may be given" in result.output


def test_a_bad_device_is_a_usage_error(tmp_path):
    for name, args in (("medimg train-baseline", ["--root", str(tmp_path), "--device", "tpu"]),
                       ("dae-cf encode", [str(tmp_path), "--device", "tpu"]),
                       ("crl explain", [str(tmp_path), __file__, "--device", "cuda:7"])):
        program, *path = name.split()
        result = CliRunner().invoke(_main(program), [*path, *args])
        assert result.exit_code == 2, (name, result.output)
        assert "Invalid value for '--device'" in result.output and "Traceback" not in result.output, name
        if "tpu" in args:
            assert "'tpu' is not a device; expected auto" in result.output


def test_explain_options_reach_the_function(tmp_path, monkeypatch):
    """--out, --seed, --progress/--no-progress and --device auto of commands that evaluate."""
    import crl.api
    import dae_counterfactual.stages

    calls = {}

    def fake_eval(run_dir, dataset, root, split, options, device, seed, progress):
        calls["crl"] = (device, seed, progress)
        return {"n": 3, "test": {"accuracy": 1.0, "accuracy_ci": [1.0, 1.0], "macro_f1": 1.0}}

    monkeypatch.setattr(crl.api, "evaluate_run", fake_eval)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(_main("crl"), ["evaluate", str(tmp_path), "--dataset", "csv", "--root", str(tmp_path),
                                               "--seed", "5", "--out", str(out), "--progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import torch

    auto = "cuda:0" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert calls["crl"] == (auto, 5, True) and json.loads(out.read_text())["n"] == 3

    def fake_encode(run_dir, splits, device, batch_size, root, progress):
        calls["dae"] = (device, progress)
        return {}

    monkeypatch.setattr(dae_counterfactual.stages, "encode_run", fake_encode)
    result = CliRunner().invoke(_main("dae-cf"), ["encode", str(tmp_path), "--device", "cpu", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls["dae"] == ("cpu", False)


def test_convention_is_written_down_where_it_is_defined():
    """The rule lives in medimg_core.cli_options (for people adding a command) and in this file."""
    import medimg_core.cli_options as options

    text = Path(options.__file__).read_text()
    for kind in ("**trains**", "**stage**", "**explains or evaluates**"):
        assert kind in text
