"""Hardening: faults and untrusted files. An unwritable or full run folder is reported before training
starts and leaves nothing behind; a checkpoint write that fails keeps the previous checkpoint and leaves
no half-written folder; tampered checkpoints and feature caches are refused or re-extracted, never
unpickled. (Resuming after a SIGKILL mid-epoch is tested in medimg-core's test_training.py.)
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections import namedtuple

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from medimg_core import checkpoint as ckpt
from medimg_core.cli import main as medimg
from medimg_core.features import FeatureCache
from medimg_core.models import create_backbone
from medimg_core.synthetic import generate, make


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "synth-derm"
    generate("synth-derm", n=60, out=root, seed=0, size=32)
    return root


def _train(synth_root, out, *extra):
    return CliRunner().invoke(medimg, ["train-baseline", "--config", "baseline-synth-derm", "--root", str(synth_root),
                                       "--out", str(out), "--backbone", "test_resnet", "--epochs", "1",
                                       "--device", "cpu", "--image-size", "32", *extra])


def test_out_is_a_file(tmp_path, synth_root):
    (tmp_path / "afile").write_text("x")
    result = _train(synth_root, tmp_path / "afile")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "afile: cannot create the folder for runs" in result.output
    result = _train(synth_root, tmp_path / "afile" / "sub")
    assert result.exit_code == 1 and "Not a directory" in result.output


def test_full_disk_is_reported_before_training_and_leaves_nothing(tmp_path, synth_root, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 50 * 2**20, 50 * 2**20))
    out = tmp_path / "runs"
    result = _train(synth_root, out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "only 50 MB free on this disk" in result.output
    assert list(out.iterdir()) == []


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ckpt.save_checkpoint(tmp_path / "last", model, {"epoch": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1)
    calls = {"n": 0}
    real = ckpt.save_file

    def failing(tensors, path, *args, **kwargs):
        calls["n"] += 1
        with open(path, "wb") as fh:  # half a file, then the disk is full
            fh.write(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*previous one is kept"):
        ckpt.save_checkpoint(tmp_path / "last", model, {"epoch": 2})
    monkeypatch.setattr(ckpt, "save_file", real)
    assert calls["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .last.tmp-* left behind
    restored = ckpt.load_weights(nn.Linear(3, 2), tmp_path / "last")
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in before.items())
    assert ckpt.load_config_json(tmp_path / "last")["epoch"] == 1


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["model.safetensors", "state.safetensors"])
def test_a_pickle_in_place_of_a_checkpoint_is_refused_without_running_it(tmp_path, target):
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    ckpt.save_checkpoint(tmp_path / "ck", model, {"epoch": 1}, optimizer=opt, training_state={"epoch": 1})
    marker = tmp_path / "marker"
    (tmp_path / "ck" / target).write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    with pytest.raises(ckpt.CheckpointError, match=f"{target}|training state"):
        if target == "model.safetensors":
            ckpt.load_weights(nn.Linear(3, 2), tmp_path / "ck")
        else:
            ckpt.load_training_state(tmp_path / "ck", optimizer=opt)
    assert not marker.exists()


def test_tampered_feature_cache_is_extracted_again_not_unpickled(tmp_path):
    data = make("synth-derm", n=24, seed=0, size=32)
    ds = data.dataset("train")
    backbone = create_backbone("test_resnet")
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_extract(backbone, ds, split="train", device="cpu", progress=False)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert files
    marker = tmp_path / "marker"
    for f in files:
        f.write_bytes(pickle.dumps(_Payload(marker)))
    again = cache.get_or_extract(backbone, ds, split="train", device="cpu", progress=False)
    assert again["cached"] is False and torch.allclose(again["features"], first["features"])
    assert not marker.exists()
