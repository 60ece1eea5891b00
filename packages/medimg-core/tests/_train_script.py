"""Run by test_training.py in a subprocess (so it can be SIGKILLed or launched by torchrun).

usage: _train_script.py RUN_DIR [--resume] [--kill-at-step N] [--epochs E] [--batch B]
"""

import argparse
import os
import signal
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from medimg_core.data import DatasetCard, MedicalImageDataset, SampleTable
from medimg_core.distributed import cleanup_distributed, init_distributed, seed_everything
from medimg_core.training import Hook, OptimConfig, TrainConfig, Trainer


class TinyNet(nn.Module):
    """No batch norm: per-rank batch statistics would make DDP differ from one process."""

    def __init__(self, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3))))


def dataset(n=64):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    targets = (images.reshape(n, -1).mean(1) > 127).astype(np.int64)
    card = DatasetCard(name="toy", title="toy", task="binary", class_names=("lo", "hi"), channels=1)
    table = SampleTable(ids=[str(i) for i in range(n)], targets=targets, concepts=np.zeros((n, 0), np.float32),
                        images=images)
    return MedicalImageDataset(table, card)


class Killer(Hook):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sgd", action="store_true")
    args = p.parse_args()
    dist_info = init_distributed(torch.device("cpu"))
    seed_everything(0, deterministic=True)
    torch.set_num_threads(1)
    model = TinyNet(0.0 if args.sgd else 0.2)  # per-sample dropout masks cannot match across ranks
    data = dataset()
    optim = OptimConfig(optimizer="sgd" if args.sgd else "adamw", lr=0.05, scheduler="cosine", grad_clip=1.0)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch // dist_info.world_size, monitor="val/acc",
                        progress=False, num_workers=0, ema_decay=None if args.sgd else 0.9)

    def step_fn(m, batch):
        return nn.functional.cross_entropy(m(batch["image"]), batch["target"]), {}

    def predict_fn(m, batch):
        return {"pred": m(batch["image"]).argmax(1), "target": batch["target"]}

    def metrics_fn(out):
        return {"acc": float((out["pred"] == out["target"]).mean())}

    hooks = [Killer(args.kill_at_step)] if args.kill_at_step else []
    os.makedirs(args.run_dir, exist_ok=True)
    trainer = Trainer(model, data, data, step_fn, predict_fn, metrics_fn, train=train, optim=optim,
                      run_dir=args.run_dir, model_config={"kind": "tiny"}, device="cpu", seed=0,
                      dist_info=dist_info, hooks=hooks)
    trainer.fit(resume=args.resume)
    if dist_info.is_main:
        state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(args.run_dir, "final.safetensors"))
        trainer.write_final_metrics({"history": trainer.history, "steps": trainer.global_step})
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
