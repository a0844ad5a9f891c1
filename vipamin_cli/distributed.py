"""torch.distributed under torchrun: detection, init and small helpers; no-ops in a single process."""

from __future__ import annotations

import os
from typing import Any, TypeVar

T = TypeVar("T")


def launched() -> bool:
    """True when torchrun set RANK/WORLD_SIZE with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    return rank() == 0


def init() -> str | None:
    """Join the process group (gloo on CPU, nccl on CUDA with device cuda:LOCAL_RANK); the device or None."""
    if not launched():
        return None
    import torch
    import torch.distributed as dist

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device != "cpu" else "gloo")
    return device


def shard(items: list[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's strided share of ``items`` (item i goes to rank i % world)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return items[r::w]


def all_gather_object(obj: Any) -> list[Any]:
    if not launched():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if launched():
        import torch.distributed as dist

        dist.barrier()


def first_error(error: BaseException | None) -> tuple[str, int] | None:
    """Share each rank's failure; every rank gets the lowest failing rank's (message, exit code)."""
    mine = None if error is None else (str(error), int(getattr(error, "exit_code", 1)))
    for entry in all_gather_object(mine):
        if entry is not None:
            return entry
    return None
