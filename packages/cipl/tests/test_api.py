"""CIPLClassifier beyond the conformance suite: self-contained checkpoints (the push index), runs written before
them (the old layout still loads), the Reasoning protocol, and the last-layer phase on Trainer.run_phase giving
the numbers of the loop it replaced."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cipl import CIPLClassifier, Reasoning
from cipl.api import evaluate_run
from cipl.cli import main
from cipl.push import PUSH_INDEX_FILE, PicturesUnavailable, prototype_file, read_png
from cipl.train import CIPLRecipe
from medimg_core.data import load_dataset
from medimg_core.distributed import DistInfo
from medimg_core.estimator import with_transform
from medimg_core.explain import Explanation
from medimg_core.pretrained import load_pretrained
from medimg_core.synthetic import generate
from medimg_core.training import Trainer, move_to


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """synth-cxr on disk (so that a checkpoint can draw its prototypes from the training images)."""
    root = generate("synth-cxr", n=60, out=tmp_path_factory.mktemp("data") / "synth-cxr", seed=0, size=32)
    return {split: load_dataset("csv", str(root), split) for split in ("train", "val", "test")} | {"root": root}


@pytest.fixture(scope="module")
def fitted(data, tiny_settings, tmp_path_factory):
    """Pushed after epoch 1 only: the best checkpoint is that pushed state, the last one (epoch 2) is not."""
    settings = {**tiny_settings, "schedule__push_epochs": [1]}
    model = CIPLClassifier("synth-cxr-cpu", out=str(tmp_path_factory.mktemp("runs")), data__root=str(data["root"]),
                           **settings)
    return model.fit(data["train"], data["val"])


@pytest.fixture(scope="module")
def image(data, fitted):
    """A test image as the model's input (C, H, W)."""
    return with_transform(data["test"], fitted.preprocess_.eval_transform())[0]["image"]


def test_checkpoints_carry_the_push_index_while_their_prototypes_are_pushed(fitted):
    run = fitted.run_
    best, last = run.checkpoint("best"), run.checkpoint("last")
    assert fitted.checkpoint_ == best and run.metrics()["best_epoch"] == 1
    index = json.loads((best / PUSH_INDEX_FILE).read_text())
    assert index["directory"] == "prototypes/epoch-001" and index["epoch"] == 1
    pushed = json.loads((run / "prototypes" / "epoch-001" / "prototypes.json").read_text())
    assert index["prototypes"] == pushed["prototypes"] and index["grid"] == pushed["grid"]
    assert run.metrics()["prototypes"] == "prototypes/epoch-001"
    # epoch 2 trained the prototypes on: its checkpoint names no push
    assert not (last / PUSH_INDEX_FILE).exists()
    assert CIPLClassifier.from_pretrained(last).push_index_ is None
    config = json.loads((best / "config.json").read_text())
    assert config["kind"] == "cipl" and config["preprocess"]["image_size"] == 32 and config["in_chans"] == 1


def test_a_checkpoint_alone_names_and_draws_its_prototypes(fitted, image, tmp_path):
    saved = fitted.save_pretrained(tmp_path / "model")
    assert (saved / PUSH_INDEX_FILE).is_file() and not (saved / "state.safetensors").exists()
    alone = CIPLClassifier.from_pretrained(saved)
    assert alone.run_ is None and alone.push_index_.folder is None
    assert alone.explain(image).to_text() == fitted.explain(image).to_text()
    # no push folder: the pictures are drawn again from the training images, as the push drew them
    pictures = alone.pictures()
    for j in (0, alone.model_.num_prototypes - 1):
        drawn = pictures.get(j, "contour")
        written = read_png(prototype_file(fitted.run_ / "prototypes" / "epoch-001", j, "contour"))
        assert drawn.shape == written.shape and np.abs(drawn - written).max() <= 1.5 / 255
        assert pictures.get(j, "patch").shape == read_png(prototype_file(fitted.run_ / "prototypes" / "epoch-001", j,
                                                                          "patch")).shape
    paths = alone.gallery(tmp_path / "gallery")
    assert len(paths) == alone.labels_.num_classes + 1 and all(p.is_file() for p in paths)
    # without the training images either, the text still names the sources; the gallery says what is missing
    moved = CIPLClassifier.from_pretrained(saved, data__root=str(tmp_path / "gone"))
    assert "(from " in moved.explain(image).to_text()
    with pytest.raises(PicturesUnavailable, match="training images cannot be read"):
        moved.gallery(tmp_path / "gallery-2")


def _to_old_layout(run) -> None:
    """Rewrite a run's checkpoints as the code before push indexes wrote them: config.json with kind, config, card,
    labels and in_chans only (no format, versions or preprocess), and no push_index.json."""
    for folder in (run / "checkpoints").iterdir():
        (folder / PUSH_INDEX_FILE).unlink(missing_ok=True)
        config = json.loads((folder / "config.json").read_text())
        old = {k: config[k] for k in ("kind", "config", "card", "labels", "in_chans", "medimg_core_version",
                                      "torch_version")}
        (folder / "config.json").write_text(json.dumps(old))


def test_a_run_written_before_push_indexes_still_loads(fitted, image, data, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(fitted.run_, run)
    _to_old_layout(run)
    old = CIPLClassifier.from_pretrained(run)
    assert old.push_index_ is not None and old.push_index_.folder == run / "prototypes" / "epoch-001"
    assert old.preprocess_ == fitted.preprocess_  # rebuilt from the saved config
    test = data["test"]
    np.testing.assert_array_equal(old.predict_proba(test), fitted.predict_proba(test))
    assert old.explain(image).to_text() == fitted.explain(image).to_text()
    assert isinstance(load_pretrained(run), CIPLClassifier)
    assert evaluate_run(run, n_boot=20)["prototype_placement"] == fitted.run_.metrics()["prototype_placement"]
    runner = CliRunner()
    result = runner.invoke(main, ["gallery", str(run), "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert f"prototypes from {run / 'prototypes' / 'epoch-001'}" in result.output
    # the last checkpoint's prototypes match no push folder: the gallery says how to get one
    result = runner.invoke(main, ["gallery", str(run), "--checkpoint", "last"])
    assert result.exit_code != 0 and "cipl push" in result.output


def test_reasoning_is_an_explanation(fitted, image, tmp_path):
    reasoning = fitted.explain(image, top_k=1)
    assert isinstance(reasoning, Reasoning) and isinstance(reasoning, Explanation)
    probabilities = fitted.predict_proba(image)[0]
    assert reasoning.target is None and reasoning.predicted == int(np.argmax(probabilities))
    assert all(len(c.evidence) == 1 for c in reasoning.classes)
    assert reasoning.to_text().count("  prototype ") == len(reasoning.classes)
    full = fitted.explain(image)  # top_k 5, capped by the 2 prototypes per class
    assert all(len(c.evidence) == 2 for c in full.classes)
    assert full.to_text().count("  prototype ") == 2 * len(full.classes)
    assert full.to_text(top_k=1) == reasoning.to_text()
    with pytest.raises(ValueError, match="top_k"):
        reasoning.to_text(top_k=0)
    figure = full.figure(tmp_path / "one" / "reason.png", top_k=1)
    assert figure.is_file() and list((tmp_path / "one").iterdir()) == [figure]
    assert len(reasoning.figures(tmp_path / "per-class")) == len(reasoning.classes)
    data = json.loads(json.dumps(reasoning.to_dict()))
    assert data["probabilities"] == pytest.approx(dict(zip(fitted.classes_, probabilities.tolist(), strict=True)))
    assert [e["source_id"] for e in data["classes"][0]["evidence"]] == \
        [e.source_id for e in reasoning.classes[0].evidence]
    # a target explains that output alone, by index or by name
    by_name = fitted.explain(image, target="effusion")
    assert by_name.target == fitted.classes_.index("effusion") and [c.name for c in by_name.classes] == ["effusion"]
    with pytest.raises(ValueError, match="out of range"):
        fitted.explain(image, target=len(fitted.classes_))


def _reference_last_layer(trainer: Trainer, schedule, done: int) -> None:
    """The last-layer loop as it was before Trainer.run_phase (cipl/train.py, CIPLSchedule.train_last_layer)."""
    module = trainer.model
    layer = module.student.last_layer
    layer.weight.requires_grad_(True)
    layer.weight.grad = None
    optimizer = torch.optim.Adam([layer.weight], lr=schedule.cfg.schedule.lr_last_layer)
    was_mode = schedule.pairs.mode
    schedule.pairs.mode = "pair"
    module.train()
    module.student.eval()
    for e in range(schedule.cfg.schedule.last_layer_epochs):
        for batch in trainer.train_loader(100_000 + 100 * done + e):
            batch = move_to(batch, trainer.device)
            if not bool(module.teacher_ready):
                module.init_teacher()
            with trainer.autocast():
                out = module(torch.cat([batch["image_a"], batch["image_b"]]),
                             torch.cat([batch["view_a"], batch["view_b"]]), pairs=True, frozen=True)
                loss, _ = schedule.loss_fn(out, batch, pairs=True)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            module.student.project_last_layer()
            module.update_teacher()
    layer.weight.requires_grad_(False)
    module.train()
    schedule.pairs.mode = was_mode


def test_last_layer_phase_gives_the_numbers_of_the_loop_it_replaced(data, tiny_settings, tmp_path):
    cfg = CIPLClassifier("synth-cxr-cpu", **{**tiny_settings, "schedule__last_layer_epochs": 2}).resolved_config()
    recipe = CIPLRecipe()
    splits = recipe.splits_of(cfg, data["train"], data["val"])
    torch.manual_seed(0)
    built = recipe.build(cfg, splits, torch.device("cpu"), DistInfo())
    trainer = Trainer(built.model, built.train_set, None, built.task.step, built.task.predict, built.task.metrics,
                      train=cfg.train, optim=cfg.optim, run_dir=tmp_path, model_config=built.model_config,
                      param_groups=built.param_groups, hooks=built.hooks, device="cpu", seed=cfg.seed)
    schedule = built.hooks[0]
    start = copy.deepcopy(trainer.model.state_dict())
    torch.manual_seed(1)
    history = schedule.train_last_layer(trainer, done=1)
    after, rng_after = copy.deepcopy(trainer.model.state_dict()), torch.get_rng_state()
    assert len(history) == 2 and {"last_layer/loss", "last_layer/ce", "last_layer/cross"} <= set(history[0])
    trainer.model.load_state_dict(start)
    torch.manual_seed(1)
    _reference_last_layer(trainer, schedule, done=1)
    reference = trainer.model.state_dict()
    assert not torch.equal(after["student.last_layer.weight"], start["student.last_layer.weight"])
    for name, value in reference.items():
        assert torch.equal(after[name], value), name
    assert torch.equal(rng_after, torch.get_rng_state())  # the same partner draws: the same pairs
