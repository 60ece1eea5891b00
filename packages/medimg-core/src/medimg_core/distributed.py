"""Devices, seeding and torch.distributed (launched by torchrun), in one place."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medimg_core.config import ConfigError

log = logging.getLogger("medimg")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICE_NAMES = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1 or mps"


class DeviceError(ConfigError, RuntimeError):
    """A device name that is not one, or a device this machine does not have; the message names it and says
    what to use. A ConfigError (the commands print it without a traceback) and, as before, a RuntimeError."""


def check_device_name(preference: object) -> None:
    """A DeviceError unless `preference` names a device (whether this machine has it is `select_device`'s)."""
    text = str(preference).strip().lower() if isinstance(preference, str) else ""
    if text == "auto":
        return
    try:
        device = torch.device(text) if text else None
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{preference!r} is not a device; expected {DEVICE_NAMES}")


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda (this process's GPU under torchrun), else mps, else cpu. Explicit names are checked: a
    malformed name or a device this machine lacks is a DeviceError saying what to use instead."""
    check_device_name(preference)
    pref = preference.strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {preference}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {preference}: MPS is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device.type == "cuda" and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise DeviceError(f"--device {preference}: this machine has {n} CUDA device(s): cuda:0 to cuda:{n - 1}")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; in deterministic mode also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
