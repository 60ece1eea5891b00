"""Speed of CRL's logical layers: the published per-element formulas against medimg's matrix products.

The logic stack (binarize, two union layers of 256 AND + 256 OR nodes, skip, linear layer; 24 concepts,
5 classes, batch 64) forward + backward, and its share of a full CRL training step against the plain
backbone classifier (resnet18 at 64 px) on the same batch.

    python tools/bench/crl_logic_speed.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result

from crl.model import CRL
from medimg_core.models import create_backbone


def set_fast(model: CRL, fast: bool) -> None:
    for layer in model.logic:
        layer.conj.fast = layer.disj.fast = fast


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--concepts", type=int, default=24)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    logic = CRL(args.concepts, args.classes, in_features=args.concepts, logic_layers=(256, 256))
    z = torch.randn(args.batch, args.concepts, requires_grad=True)
    y = torch.randint(0, args.classes, (args.batch,))

    def logic_step():
        logic.zero_grad(set_to_none=True)
        out = logic.reason(torch.cat([(z > 0).float() + z - z.detach(), 1 - ((z > 0).float() + z - z.detach())], 1))
        nn.functional.cross_entropy(out[0], y).backward()

    set_fast(logic, False)
    published = time_it(logic_step, max(3, args.repeats // 4))
    set_fast(logic, True)
    fast = time_it(logic_step, args.repeats)

    x = torch.randn(args.batch, 3, args.size, args.size)
    backbone = create_backbone("resnet18", in_chans=3)
    plain = nn.Sequential(backbone, nn.Linear(backbone.num_features, args.classes))
    crl = CRL(args.concepts, args.classes, backbone.num_features, backbone=create_backbone("resnet18"),
              logic_layers=(256, 256))

    def plain_step():
        plain.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(plain(x), y).backward()

    def crl_step():
        crl.zero_grad(set_to_none=True)
        out = crl(x)
        loss = nn.functional.cross_entropy(out["scaled_logits"], y) + 5e-6 * crl.l2()
        loss.backward()

    plain_s = time_it(plain_step, max(3, args.repeats // 4))
    crl_s = time_it(crl_step, max(3, args.repeats // 4))
    print(f"logic stack fwd+bwd: published formulas {published * 1000:.1f} ms, matrix products {fast * 1000:.1f} ms "
          f"({published / fast:.1f}x)")
    print(f"resnet18 {args.size} px step: plain classifier {plain_s:.3f} s, CRL {crl_s:.3f} s "
          f"({100 * (crl_s / plain_s - 1):+.1f}%)")
    write_result("crl_logic_speed", {
        "command": command_line(), "batch": args.batch, "concepts": args.concepts, "classes": args.classes,
        "nodes_per_layer": "256 AND + 256 OR, 2 layers", "logic_published_s": published, "logic_fast_s": fast,
        "speedup": published / fast, "image_size": args.size, "plain_step_s": plain_s, "crl_step_s": crl_s,
        "crl_extra_percent": 100 * (crl_s / plain_s - 1),
    })


if __name__ == "__main__":
    main()
