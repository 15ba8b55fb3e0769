"""DistributedDataParallel helpers; every function is a no-op in a single process.

`torchrun --nproc_per_node N -m captcha train ...` sets RANK / WORLD_SIZE; `init()` then joins
the process group (NCCL on GPUs, gloo on CPU). Each rank trains on its own shard of every
epoch's shuffled order; metrics are summed across ranks; only rank 0 writes files and logs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td
import torch.nn as nn


def init() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend)


def enabled() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if enabled() else 0


def world_size() -> int:
    return td.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if enabled():
        td.barrier()


def shard(order: torch.Tensor, n: int) -> torch.Tensor:
    """This rank's share of a shuffled order, padded by wrapping so every rank has equal work."""
    world = world_size()
    if world == 1:
        return order
    per_rank = -(-n // world)
    padded = torch.cat([order, order[: per_rank * world - n]])
    return padded[rank() :: world]


def all_reduce_sum(values: list[float]) -> list[float]:
    if not enabled():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if td.get_backend() == "nccl":
        t = t.cuda()
    td.all_reduce(t)
    return t.cpu().tolist()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    if not enabled():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def cleanup() -> None:
    if enabled():
        td.destroy_process_group()
