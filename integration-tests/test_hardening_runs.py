"""Hardening: trainings given bad numbers, bad devices, bad data or damaged run folders (issue 19's new-user probe).

Each case ends in a message that names the key, value, file or option and what was expected, with exit status
1 or 2 and never a traceback; and a training that fails before its first checkpoint leaves no folder behind
(the lifecycle's rule, `medimg_core.experiment.settle_failed_run`), while one that fails later keeps its folder
for `--resume`. `python tools/reliability.py` counts these cases into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import SafetensorError

from medimg_core import checkpoint as ckpt
from medimg_core.cli import main as medimg
from medimg_core.synthetic import generate
from medimg_core.testing import write_decompression_bomb


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synth-derm"
    generate("synth-derm", n=60, out=root, seed=0, size=32)
    return root


@pytest.fixture(scope="module")
def finished_run(synth_root, tmp_path_factory) -> Path:
    """A complete 2-epoch baseline run (checkpoints best and last), copied by the tests that damage one."""
    out = tmp_path_factory.mktemp("runs")
    result = _train(synth_root, out, "--epochs", "2")
    assert result.exit_code == 0, result.output
    return _runs(out)[0]


def _train(root: Path, out: Path, *extra: str):
    args = ["train-baseline", "--config", "baseline-synth-derm", "--root", str(root), "--out", str(out),
            "--backbone", "test_resnet", "--device", "cpu", "--image-size", "32", "--no-progress", *extra]
    if "--epochs" not in extra:
        args += ["--epochs", "1"]
    return CliRunner().invoke(medimg, args)


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


def _clean(result, code: int) -> str:
    """The output of a command that failed cleanly with `code`, whitespace folded."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return re.sub(r"\s+", " ", result.output)


# ---------------------------------------------------------------- numbers range-checked when the config loads

#: (options, the message): checked when the config is loaded, before any folder exists (C5-C12, C20-C23)
CONFIG_CASES = {
    "batch-size-negative": (["--batch-size", "-4"], r"train\.batch_size: expected an integer >= 1, got -4"),
    "batch-size-zero": (["--batch-size", "0"], r"train\.batch_size: expected an integer >= 1, got 0"),
    "epochs-zero": (["--epochs", "0"], r"train\.epochs: expected an integer >= 1, got 0; a run trains at least"),
    "epochs-negative": (["--epochs", "-1"], r"train\.epochs: expected an integer >= 1, got -1"),
    "image-size-zero": (["--image-size", "0"], r"data\.image_size: expected an integer >= 8, got 0"),
    "lr-zero": (["--lr", "0"], r"optim\.lr: expected a finite number > 0, got 0\.0"),
    "lr-negative": (["--lr", "-1"], r"optim\.lr: expected a finite number > 0, got -1\.0"),
    "lr-nan": (["--optim.lr", "nan"], r"optim\.lr: expected a finite number > 0, got nan"),
    "lr-infinite": (["--optim.lr", "inf"], r"optim\.lr: expected a finite number > 0, got inf"),
    "weight-decay-negative": (["--optim.weight_decay", "-0.1"], r"optim\.weight_decay: expected a finite number >= 0"),
    "betas-one": (["--optim.betas", "[0.9, 1.0]"], r"optim\.betas: expected two numbers >= 0 and < 1"),
    "grad-accum-zero": (["--train.grad_accum", "0"], r"train\.grad_accum: expected an integer >= 1, got 0"),
    "ema-decay-above-one": (["--train.ema_decay", "1.5"], r"train\.ema_decay: expected a finite number > 0 and < 1"),
    "patience-zero": (["--train.early_stopping_patience", "0"], r"train\.early_stopping_patience: expected an "
                                                                  r"integer >= 1 \(or null\), got 0"),
    "checkpoint-every-zero": (["--train.checkpoint_every", "0"], r"train\.checkpoint_every: expected an integer >= 1"),
    "eval-batch-zero": (["--train.eval_batch_size", "0"], r"train\.eval_batch_size: expected an integer >= 1"),
    "scale-min-zero": (["--data.scale_min", "0"], r"data\.scale_min: expected a finite number > 0 and <= 1"),
    "rotation-negative": (["--data.rotation", "-5"], r"data\.rotation: expected a finite number >= 0 and <= 180"),
    "channels-two": (["--data.channels", "2"], r"data\.channels: expected 1, 3 or null"),
    "drop-rate-one": (["--model.drop_rate", "1"], r"model\.drop_rate: expected a finite number >= 0 and < 1"),
    "bootstrap-negative": (["--bootstrap", "-1"], r"bootstrap: expected an integer >= 0, got -1"),
    "normalize-unknown": (["--data.normalize", "foo"], r"data\.normalize: expected one of imagenet, inception, none "
                                                        r"or null \(no normalisation\), got 'foo'"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_numbers_are_range_checked_before_any_folder_exists(tmp_path, synth_root, name):
    options, expect = CONFIG_CASES[name]
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, *options), 2)
    assert re.search(expect, text), text
    assert not out.exists()


@pytest.mark.parametrize("device,code,expect", [
    ("tpu", 2, r"device: expected auto \(CUDA, else MPS, else CPU\), cpu, cuda, cuda:1 or mps, got 'tpu'"),
    ("''", 2, r"device: expected auto .* got ''"),
    ("cuda:5", 1, r"--device cuda:5: (CUDA is not available on this machine|this machine has \d CUDA device)"),
    ("mps", 1, r"--device mps: MPS is not available on this machine \(use --device cpu\)"),
], ids=["tpu", "empty", "cuda-5", "mps"])
def test_a_device_this_machine_lacks_named_in_a_config_file(tmp_path, synth_root, device, code, expect):
    """The device of a config file (not the checked --device option) is refused by name before any folder
    exists (C20-C23): a malformed one when the config loads (2), a missing one before training (1)."""
    if device == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"device: {device}\n")
    out = tmp_path / "runs"
    result = CliRunner().invoke(medimg, ["train-baseline", "--config", str(cfg), "--root", str(synth_root),
                                         "--out", str(out), "--backbone", "test_resnet", "--epochs", "1"])
    text = _clean(result, code)
    assert re.search(expect, text), text
    assert not _runs(out)


def test_a_device_this_machine_lacks_for_the_precision(tmp_path, synth_root):
    """fp16 needs CUDA's gradient scaler: a ValueError traceback from inside the Trainer, after the run folder
    was made; now a ConfigError naming train.precision before any folder exists."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, "--train.precision", "fp16"), 1)
    assert re.search(r"train\.precision: fp16 needs a CUDA device, and this run trains on cpu; use bf16 or fp32",
                     text), text
    assert not _runs(out)


def test_a_misspelt_monitor_is_named_when_the_training_ends(tmp_path, synth_root):
    """train.monitor naming no metric (val/acc for val/accuracy) silently made the last epoch the best; the
    metric exists only once a validation ran (some methods log theirs only on some epochs), so the end of the
    training names it, with the metrics seen and the nearest one."""
    out = tmp_path / "runs"
    result = _train(synth_root, out, "--train.monitor", "val/acc")
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output)
    assert re.search(r"train\.monitor 'val/acc' was never among the metrics of this run \(val/accuracy, .*; did "
                     r"you mean 'val/accuracy'\?\): no epoch counted as an improvement", text), text
    result = _train(synth_root, out)  # the default monitor, val/accuracy: no warning
    assert result.exit_code == 0 and "was never among the metrics" not in result.output, result.output


@pytest.mark.parametrize("option,value,expect", [
    ("--data.dataset", "nosuch", r"unknown dataset 'nosuch' Known: bloodmnist, .*csv"),
    ("--data.val_split", "holdout", r"csv: unknown split 'holdout'; expected one of \['train', 'val', 'test'\]"),
], ids=["dataset", "split"])
def test_training_refuses_bad_data_names_an_unknown_dataset_or_split(tmp_path, synth_root, option, value, expect):
    """A KeyError and a ValueError traceback before; now a DatasetError, exit status 1, no folder."""
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, option, value), 1)
    assert re.search(expect, text), text
    assert not _runs(out)


def test_a_batch_larger_than_the_training_set_is_refused_before_any_folder(tmp_path, synth_root):
    """A YAML without a batch size takes the default 64, more than the 42 training images (C13)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "csv", "image_size": 32}, "train": {"epochs": 1}}))
    out = tmp_path / "runs"
    result = CliRunner().invoke(medimg, ["train-baseline", "--config", str(cfg), "--root", str(synth_root),
                                         "--out", str(out), "--backbone", "test_resnet", "--device", "cpu"])
    text = _clean(result, 1)
    assert re.search(r"train\.batch_size: the training set \(42 samples over 1 process\(es\)\) is smaller than one "
                     r"batch of 64; lower the batch size to at most 42", text), text
    assert not _runs(out)


# ---------------------------------------------------------------- failures during a training: no half folders


def _with_bad_image(synth_root: Path, tmp_path: Path, write) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    first_train = next(line.split(",")[1] for line in (root / "labels.csv").read_text().splitlines()[1:]
                       if ",train," in line)
    write(root / first_train)
    return root


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


FAILURE_CASES = {
    # a training set image that is not an image, found in epoch 1 (D68)
    "not-an-image": (lambda p, t: p.write_bytes(b"not an image"), r"derm_\d+\.png: not an image"),
    # a decompression bomb in the training set, found mid-epoch (D69)
    "decompression-bomb": (lambda p, t: write_decompression_bomb(p), r"derm_\d+\.png: image too large to decode "
                                                                      r"safely"),
}


@pytest.mark.parametrize("name", sorted(FAILURE_CASES))
def test_a_training_failing_before_its_first_checkpoint_leaves_nothing(tmp_path, synth_root, name):
    write, expect = FAILURE_CASES[name]
    root = _with_bad_image(synth_root, tmp_path, lambda p: write(p, tmp_path))
    out = tmp_path / "runs"
    text = _clean(_train(root, out), 1)
    assert re.search(expect, text), text
    assert re.search(r"the run failed before its first checkpoint; its folder \S+ was removed", text), text
    assert out.is_dir() and not _runs(out)


def test_a_training_that_diverges_before_its_first_checkpoint(tmp_path, synth_root):
    """A learning rate of 1e30 passes the range check but turns the outputs NaN in epoch 1; the validation metrics
    failed with a raw ValueError traceback (C9's class): now a clean error saying the training diverged."""
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, "--lr", "1e30"), 1)
    assert re.search(r"the val metrics failed in epoch 1 \(.*\); the outputs \['scores'\] hold NaN or infinite "
                     r"values: a model whose outputs turn NaN has diverged; lower the learning rate", text), text
    assert not _runs(out)


@pytest.mark.parametrize("kind", ["torch-save-zip", "raw-pickle"])
def test_a_refused_pretrained_file_fails_before_the_run_folder(tmp_path, synth_root, kind):
    """`--pretrained` given a pickle: refused without running it, before a run folder exists (U4)."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    if kind == "torch-save-zip":
        torch.save({"conv1.weight": _Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}))
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, "--backbone", "resnet18", "--pretrained", str(evil)), 1)
    assert "refused" in text and "evil.pth" in text, text
    assert not marker.exists()
    assert not _runs(out)


@pytest.mark.parametrize("content", [b"not a checkpoint", b"\x89PNG\r\n\x1a\n" + bytes(64)], ids=["text", "png"])
def test_a_refused_pretrained_file_that_is_no_pickle_says_so(tmp_path, synth_root, content):
    """A text file or an image named .pth was 'refused' as holding pickled Python objects (torch reports an
    unsupported operand for both); it is no weights file at all, and the message says that."""
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out, "--backbone", "resnet18", "--pretrained", str(bad)), 1)
    assert re.search(r"weights\.pth: not a PyTorch weights file \(neither a zip archive nor a pickle: it starts "
                     r"with b.{4}", text), text
    assert "pickled Python objects" not in text
    assert not _runs(out)


def test_a_checkpoint_write_failing_on_a_full_disk(tmp_path, synth_root, monkeypatch):
    """safetensors raises its own error type on a full disk (C27): a CheckpointError naming the file, with a
    disk-space hint; the run had no checkpoint yet, so its folder goes."""
    def full(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 16)
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(ckpt, "save_file", full)
    out = tmp_path / "runs"
    text = _clean(_train(synth_root, out), 1)
    assert re.search(r"checkpoints/best/model\.safetensors: cannot write the checkpoint \(Error while serializing: "
                     r"I/O error: File too large \(os error 27\)\)\. The disk looks full \(or a file-size or quota "
                     r"limit was reached\): free some space", text), text
    assert not _runs(out)


def test_a_training_failing_after_a_checkpoint_keeps_its_folder_for_resume(tmp_path, synth_root):
    """A failure once a checkpoint exists keeps the folder (it can be resumed) and logs the error there."""
    from medimg_core.baseline import BaselineConfig, BaselineRecipe
    from medimg_core.cli_options import resolve_config_path
    from medimg_core.config import load_config
    from medimg_core.experiment import fit_run

    class Failing(BaselineRecipe):
        def report(self, ctx):
            raise RuntimeError("the report broke")

    out = tmp_path / "runs"
    cfg = load_config(BaselineConfig, resolve_config_path("baseline-synth-derm"), {
        "data.root": str(synth_root), "out": str(out), "device": "cpu", "model.backbone": "test_resnet",
        "data.image_size": 32, "train.epochs": 1, "train.progress": False})
    with pytest.raises(RuntimeError, match="the report broke"):
        fit_run(Failing(), cfg)
    (run,) = _runs(out)
    assert (run / "checkpoints/last/model.safetensors").is_file()
    assert re.search(r"the run failed \(RuntimeError: the report broke\); its folder \S+ is kept and can be "
                     r"continued with --resume", (run / "log.txt").read_text())


def test_weights_are_as_readable_as_the_other_files(finished_run):
    """safetensors writes 0600; a run's weights get the permissions of its config (probe side note)."""
    folder = finished_run / "checkpoints" / "last"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes
    assert modes["model.safetensors"] == stat.S_IMODE((folder / "config.json").stat().st_mode)


# ---------------------------------------------------------------- resuming damaged or foreign runs


def _truncate(rel: str, size: int):
    def damage(run: Path) -> None:
        path = run / rel
        path.write_bytes(path.read_bytes()[:size])
    return damage


#: (damage, the file named): a last checkpoint that cannot be read (F5-F8)
RESUME_CASES = {
    "weights-truncated": (_truncate("checkpoints/last/model.safetensors", 1000), "last/model.safetensors"),
    "weights-zero-bytes": (_truncate("checkpoints/last/model.safetensors", 0), "last/model.safetensors"),
    "state-json-cut": (_truncate("checkpoints/last/state.json", 200), "last/state.json"),
    "state-tensors-truncated": (_truncate("checkpoints/last/state.safetensors", 100), "last/state.safetensors"),
    "config-json-cut": (_truncate("checkpoints/last/config.json", 20), "last/config.json"),
    "config-json-not-an-object": (lambda run: (run / "checkpoints/last/config.json").write_text("[1]"),
                                  "last/config.json"),
    "state-json-not-an-object": (lambda run: (run / "checkpoints/last/state.json").write_text("[1, 2]"),
                                 "last/state.json"),
    "state-json-missing-epoch": (lambda run: (run / "checkpoints/last/state.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "checkpoints/last/state.json").read_text()).items() if k != "epoch"})),
        "last/state.json"),
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resuming_a_damaged_last_checkpoint_names_the_file_and_how_to_go_on(tmp_path, finished_run, name):
    damage, named = RESUME_CASES[name]
    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    damage(run)
    history = (run / "metrics.jsonl").read_text()
    text = _clean(CliRunner().invoke(medimg, ["train-baseline", "--resume", str(run), "--no-progress"]), 1)
    assert f"{named}" in text and "cannot resume from the last checkpoint" in text, text
    assert re.search(r"To go on from the best checkpoint \(epoch \d\) instead, replace it by a copy of best", text)
    assert (run / "metrics.jsonl").read_text() == history  # nothing appended, nothing truncated
    assert (run / "checkpoints/best/model.safetensors").is_file()


def test_resuming_without_a_last_checkpoint_is_refused(tmp_path, finished_run):
    """F4 through the command, and the Trainer's own resume() for methods that call it directly (F3)."""
    from medimg_core.checkpoint import CheckpointError
    from medimg_core.training import OptimConfig, TrainConfig, Trainer

    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints/last")
    text = _clean(CliRunner().invoke(medimg, ["train-baseline", "--resume", str(run)]), 1)
    assert "no last checkpoint to resume from" in text
    model = torch.nn.Linear(2, 2)
    data = [{"x": torch.zeros(2)}] * 4
    trainer = Trainer(model, data, None, lambda m, b: (m(b["x"]).sum(), {}), lambda m, b: {}, lambda o: {},
                      train=TrainConfig(epochs=1, batch_size=2, progress=False), optim=OptimConfig(),
                      run_dir=run, model_config={"kind": "tiny"}, device="cpu")
    with pytest.raises(CheckpointError, match=r"checkpoints/last: no last checkpoint to resume from"):
        trainer.resume()
    with pytest.raises(CheckpointError):
        trainer.fit(resume=True)
    assert not (run / "checkpoints/last").exists()


def test_resuming_a_folder_that_is_not_a_run(tmp_path, synth_root, finished_run):
    """A dataset folder given to --resume said 'config.yaml: config file not found'; a damaged config.yaml of
    the run's own method is named as such, not blamed on another method."""
    text = _clean(CliRunner().invoke(medimg, ["train-baseline", "--resume", str(synth_root)]), 2)
    assert re.search(rf"{re.escape(str(synth_root))}: not a run folder \(no config.yaml, which every training "
                     r"writes\); --resume takes the folder of a run", text), text
    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    (run / "config.yaml").write_text("train: {epochs: 1\n")
    text = _clean(CliRunner().invoke(medimg, ["train-baseline", "--resume", str(run)]), 2)
    assert re.search(r"config.yaml: not valid YAML", text) and "trained by" not in text, text


@pytest.mark.parametrize("fits", [False, True], ids=["config-does-not-load", "config-loads"])
def test_resuming_another_methods_run_says_whose_run_it_is(tmp_path, finished_run, fits):
    """C33: the run of another method is named as such, whether or not its config happens to load."""
    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    for folder in ("last", "best"):
        path = run / "checkpoints" / folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "kind": "crl"}))
    if not fits:
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["logic_layers"] = [8]
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(medimg, ["train-baseline", "--resume", str(run)])
    text = _clean(result, 2 if not fits else 1)
    if fits:
        assert re.search(r"a run of 'crl' \(checkpoints/last/config.json\), not of 'medimg-baseline'; resume it "
                         r"with the command of the method that trained it", text), text
    else:
        assert re.search(r"this run was trained by 'crl' \(checkpoints/last/config.json\), and its config.yaml does "
                         r"not fit this command \(\S+config.yaml: unknown config key 'model.logic_layers'", text), text


# ---------------------------------------------------------------- other commands given the wrong folder or file


@pytest.mark.parametrize("compare", [False, True], ids=["report", "report-compare"])
def test_a_report_of_a_folder_that_is_not_a_run(tmp_path, synth_root, finished_run, compare):
    """`medimg report` on a dataset folder wrote report.html into it (C39); `--compare` took it (C40)."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    args = ["report", str(finished_run), "--compare", str(data), "--out", str(tmp_path / "r.html")] if compare else [
        "report", str(data)]
    text = _clean(CliRunner().invoke(medimg, args), 1)
    given = r" \(given to --compare\)" if compare else ""
    assert re.search(rf"{re.escape(str(data))}: not a run folder{given} \(expected the metrics.json or config.yaml",
                     text), text
    assert not (data / "report.html").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("out,expect", [
    ("adir", r"'\S*adir' is a folder; expected a file name such as \S*adir/preview.png"),
    ("p.txt", r"'\S*p.txt' does not end in .png, .jpg, .jpeg, .pdf, .svg"),
], ids=["a-folder", "txt"])
def test_preview_out_must_be_an_image_file(tmp_path, synth_root, out, expect):
    """C36, C37: matplotlib's 'Format is not supported' traceback before."""
    (tmp_path / "adir").mkdir()
    result = CliRunner().invoke(medimg, ["datasets", "preview", str(synth_root), "--format", "csv",
                                         "--out", str(tmp_path / out)])
    text = _clean(result, 2)
    assert "Invalid value for '--out'" in text and re.search(expect, text), text


def test_verify_options_for_other_loaders_name_the_option(tmp_path):
    """D61 for a loader with its own options: an unknown -o is a clean error naming it and the valid ones."""
    from medimg_core.testing import write_wbcatt_fixture

    root = write_wbcatt_fixture(tmp_path / "wbcatt")
    text = _clean(CliRunner().invoke(medimg, ["datasets", "verify", str(root), "--format", "wbcatt",
                                              "-o", "foo=bar"]), 1)
    assert re.search(r"wbcatt: unknown option\(s\) \['foo'\]; it takes no options", text), text
