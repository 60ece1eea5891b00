"""How much wall time the medimg Trainer adds over a bare PyTorch loop on the same model and data.

Same timm model, same in-memory data, same DataLoader settings, same optimizer and schedule; each
loop runs `--epochs` epochs, alternating bare/Trainer `--repeats` times; the ratio of medians is
reported. Goal: under 5% overhead.

    python tools/bench/loop_overhead.py [--model resnet18] [--size 64] [--n 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result

from medimg_core.data import DatasetCard, MedicalImageDataset, SampleTable
from medimg_core.training import OptimConfig, TrainConfig, Trainer, build_optimizer, build_scheduler


def make_data(n: int, size: int) -> MedicalImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    targets = rng.integers(0, 5, n)
    card = DatasetCard(name="bench", title="bench", task="multiclass", class_names=tuple("abcde"))
    return MedicalImageDataset(SampleTable([str(i) for i in range(n)], targets, np.zeros((n, 0), np.float32),
                                           images=images), card)


def bare_loop(model: nn.Module, data, epochs: int, batch: int) -> float:
    optim_cfg = OptimConfig(lr=1e-3, scheduler="cosine")
    opt = build_optimizer([{"params": model.parameters()}], optim_cfg)
    steps = len(data) // batch
    sched = build_scheduler(opt, optim_cfg, steps * epochs, steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(epoch))
        for b in loader:
            loss = nn.functional.cross_entropy(model(b["image"]), b["target"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    return time.perf_counter() - start


def trainer_loop(model: nn.Module, data, epochs: int, batch: int) -> float:
    def step_fn(m, b):
        return nn.functional.cross_entropy(m(b["image"]), b["target"]), {}

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data, None, step_fn, lambda m, b: {}, lambda o: {},
                          train=TrainConfig(epochs=epochs, batch_size=batch, progress=False, num_workers=0,
                                            checkpoint_every=10**6),
                          optim=OptimConfig(lr=1e-3, scheduler="cosine"), run_dir=tmp, model_config={},
                          device="cpu")
        start = time.perf_counter()
        for epoch in range(epochs):
            trainer.train_epoch(epoch)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data = make_data(args.n, args.size)
    bare_loop(timm.create_model(args.model, num_classes=5), make_data(4 * args.batch, args.size), 1, args.batch)  # warm-up
    bare, ours = [], []
    for r in range(args.repeats):
        torch.manual_seed(r)
        bare.append(bare_loop(timm.create_model(args.model, num_classes=5), data, args.epochs, args.batch))
        torch.manual_seed(r)
        ours.append(trainer_loop(timm.create_model(args.model, num_classes=5), data, args.epochs, args.batch))
        print(f"repeat {r}: bare {bare[-1]:.2f} s, Trainer {ours[-1]:.2f} s")
    ratio = statistics.median(ours) / statistics.median(bare)
    steps = args.epochs * (args.n // args.batch)
    print(f"overhead: {100 * (ratio - 1):+.1f}% (median Trainer / median bare = {ratio:.3f})")
    write_result("loop_overhead", {
        "command": command_line(), "model": args.model, "image_size": args.size, "batch": args.batch,
        "steps_per_run": steps, "repeats": args.repeats, "bare_s": bare, "trainer_s": ours,
        "ratio": ratio, "overhead_percent": 100 * (ratio - 1),
    })


if __name__ == "__main__":
    main()
