"""The training loop: configs, checkpoints, resume after SIGKILL, and DDP on CPU with gloo."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medimg_core.checkpoint import CheckpointError, load_training_state, load_weights, save_checkpoint
from medimg_core.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)
from medimg_core.runs import create_run_dir
from medimg_core.training import OptimConfig, build_optimizer, build_scheduler

SCRIPT = Path(__file__).with_name("_train_script.py")


@dataclass
class Section:
    lr: float = 0.1
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    flag: bool = False
    maybe: int | None = None


@dataclass
class Root:
    sec: Section = field(default_factory=Section)
    options: dict = field(default_factory=dict)
    seed: int = 0


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sec:\n  lr: 0.5\n  sizes: [3, 4]\nseed: 2\n")
    cfg = load_config(Root, path, ["--sec.lr", "1e-4", "--sec.flag=true", "--sec.maybe", "none",
                                   "--options.fold", "3"])
    assert cfg.sec.lr == 1e-4 and cfg.sec.sizes == (3, 4) and cfg.sec.flag is True and cfg.seed == 2
    assert cfg.sec.maybe is None and cfg.options == {"fold": 3}
    with pytest.raises(ConfigError, match="unknown config key 'sec.lrr'; did you mean 'sec.lr'"):
        load_config(Root, None, ["--sec.lrr", "1"])
    with pytest.raises(ConfigError, match="seed: expected an integer, got 'abc'"):
        load_config(Root, None, {"seed": "abc"})
    (tmp_path / "bad.yaml").write_text("sec:\n  colour: red\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config key 'sec.colour'"):
        load_config(Root, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--seed"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Root, tmp_path / "out.yaml") == cfg
    # a checkpoint's saved config (nested dict, free-form mappings kept whole) builds the same config
    assert config_from_dict(Root, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'sec.colour'"):
        config_from_dict(Root, {"sec": {"colour": "red"}})


def test_run_dirs_never_collide(tmp_path):
    a, b = create_run_dir(tmp_path, "exp"), create_run_dir(tmp_path, "exp")
    assert a != b and a.is_dir() and b.is_dir() and (a / "figures").is_dir()


def test_checkpoint_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer([{"params": model.parameters()}], OptimConfig(lr=0.1))
    sched = build_scheduler(opt, OptimConfig(), total_steps=10, steps_per_epoch=5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    save_checkpoint(tmp_path / "ck", model, {"kind": "linear"}, optimizer=opt, scheduler=sched,
                    training_state={"epoch": 3}, with_rng=True)
    expected_next = torch.rand(3)
    model2 = torch.nn.Linear(3, 2)
    opt2 = build_optimizer([{"params": model2.parameters()}], OptimConfig(lr=0.1))
    sched2 = build_scheduler(opt2, OptimConfig(), total_steps=10, steps_per_epoch=5)
    load_weights(model2, tmp_path / "ck")
    state = load_training_state(tmp_path / "ck", opt2, sched2)
    assert state["epoch"] == 3 and torch.equal(torch.rand(3), expected_next)
    assert torch.equal(model.weight, model2.weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert sched2.last_epoch == sched.last_epoch
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_weights(model2, tmp_path / "nothing")


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = _run([str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = _run([str(tmp_path / "cut"), "--kill-at-step", "21"])  # 8 steps per epoch: mid-epoch 3
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "cut/checkpoints/last/state.json").read_text())
    assert state["epoch"] == 2
    resumed = _run([str(tmp_path / "cut"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(tmp_path / "full/final.safetensors")), load_file(str(tmp_path / "cut/final.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    ma = json.loads((tmp_path / "full/metrics.json").read_text())
    mb = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert [h["val/acc"] for h in ma["history"]] == [h["val/acc"] for h in mb["history"]]
    assert ma["steps"] == mb["steps"] == 32
    lines = (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


def test_ddp_two_processes_match_single_process(tmp_path):
    single = _run([str(tmp_path / "one"), "--sgd", "--epochs", "2"])
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
         str(tmp_path / "two"), "--sgd", "--epochs", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one/final.safetensors")), load_file(str(tmp_path / "two/final.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    one = json.loads((tmp_path / "one/metrics.json").read_text())
    two = json.loads((tmp_path / "two/metrics.json").read_text())
    assert one["steps"] == two["steps"] == 16
    assert one["history"][-1]["val/acc"] == two["history"][-1]["val/acc"]


def _toy_trainer(tmp_path, **train_kw):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_train_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from medimg_core.training import TrainConfig, Trainer

    torch.manual_seed(0)
    model = script.TinyNet(0.0)
    data = script.dataset(32)

    def step_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b["image"]), b["target"]), {"extra": 1.0}

    def predict_fn(m, b):
        return {"pred": m(b["image"]).argmax(1), "target": b["target"]}

    metrics = iter([0.5, 0.6, 0.55, 0.55, 0.55, 0.9, 0.9, 0.9])

    def metrics_fn(out):
        return {"score": next(metrics)}

    cfg = TrainConfig(**{"epochs": 8, "batch_size": 8, "monitor": "val/score", "progress": False, **train_kw})
    return Trainer(model, data, data, step_fn, predict_fn, metrics_fn, train=cfg,
                   optim=OptimConfig(optimizer="sgd", lr=0.1, scheduler="none"), run_dir=tmp_path,
                   model_config={"kind": "tiny"}, device="cpu")


def test_early_stopping_and_best_checkpoint(tmp_path):
    trainer = _toy_trainer(tmp_path, early_stopping_patience=3)
    result = trainer.fit()
    assert result.stopped_early and len(result.history) == 5  # best at epoch 2, then 3 epochs without gain
    assert result.best_epoch == 2 and result.best_metric == 0.6
    assert json.loads((tmp_path / "checkpoints/best/state.json").read_text())["epoch"] == 2
    assert result.history[0]["train/extra"] == 1.0


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    big = _toy_trainer(tmp_path / "a", epochs=1)
    big.train_epoch(0)
    small = _toy_trainer(tmp_path / "b", epochs=1, batch_size=4, grad_accum=2)
    small.train_epoch(0)
    assert big.global_step == small.global_step == 4
    for p, q in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_channels_last_trains_like_contiguous_weights_and_saves_plain_checkpoints(tmp_path):
    plain = _toy_trainer(tmp_path / "a", epochs=1)
    plain.train_epoch(0)
    last = _toy_trainer(tmp_path / "b", epochs=1, channels_last=True)
    convs = [p for p in last.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    last.train_epoch(0)
    for p, q in zip(plain.model.parameters(), last.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # the same training up to float rounding
    (tmp_path / "c").mkdir()
    _toy_trainer(tmp_path / "c", epochs=2, channels_last=True).fit()
    state = load_file(str(tmp_path / "c" / "checkpoints" / "best" / "model.safetensors"))
    assert all(v.is_contiguous() for v in state.values())


def test_bf16_autocast_on_cpu_trains_and_fp16_is_refused(tmp_path):
    trainer = _toy_trainer(tmp_path / "a", epochs=1, precision="bf16")
    logs = trainer.train_epoch(0)
    assert np.isfinite(logs["train/loss"])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _toy_trainer(tmp_path / "b", precision="fp16")


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="smaller than one batch of 64"):
        _toy_trainer(tmp_path, batch_size=64)


def test_a_budget_in_steps_sets_the_epochs(tmp_path):
    # 32 samples in batches of 8 (drop_last): 4 steps an epoch; 10 steps need 3 epochs whatever `epochs` says
    trainer = _toy_trainer(tmp_path, epochs=1, steps=10)
    assert trainer.steps_per_epoch == 4 and trainer.cfg.epochs == 3
    result = trainer.fit()
    assert len(result.history) == 3 and trainer.global_step == 12
    from medimg_core.config import FieldError
    from medimg_core.training import TrainConfig

    with pytest.raises(FieldError, match="steps"):
        TrainConfig(steps=0)
