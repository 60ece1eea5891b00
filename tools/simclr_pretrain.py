"""Self-supervised (SimCLR) pretraining of a backbone on a dataset's unlabeled training images: a local stand-in
for hub weights when none can be downloaded. Writes the backbone's timm state dict as safetensors, which every
`--model.pretrained PATH` option takes.

    python tools/simclr_pretrain.py --dataset csv --root DATA --out simclr.safetensors [--epochs 40]

An experiment tool, not part of a method package: the neuron-concepts README reports what an opaque model
fine-tuned from these weights gives on synth-derm.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2

from medimg_core.data import load_dataset
from medimg_core.data.transforms import TransformConfig, eval_transform
from medimg_core.models import create_backbone


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for projections z (2B, d) of two views, rows i and i + B of the same image."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z.shape[0] // 2
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="csv")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    tf = eval_transform(TransformConfig(size=args.image_size, channels=3, normalize="imagenet"))
    train = load_dataset(args.dataset, args.root, "train", transform=tf)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # (N, 3, S, S), labels unused
    augment = v2.Compose([
        v2.RandomResizedCrop(args.image_size, scale=(0.4, 1.0), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(5, (0.1, 1.0))], p=0.3),
    ])
    backbone = create_backbone(args.backbone)
    width = backbone.num_features
    head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 128))
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(images) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"{args.root}: {len(images)} training images, fewer than one batch of {args.batch_size}")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(args.epochs):
        order, total = torch.randperm(len(images)), 0.0
        for step in range(steps_per_epoch):
            batch = images[order[step * args.batch_size:(step + 1) * args.batch_size]]
            views = torch.cat([torch.stack([augment(x) for x in batch]), torch.stack([augment(x) for x in batch])])
            loss = nt_xent(head(backbone(views)), args.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / steps_per_epoch:.3f} ({time.time() - start:.0f} s)",
              flush=True)
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
