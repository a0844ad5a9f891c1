"""torch.distributed under torchrun: detection, init and small helpers; no-ops in a single process.

Failure protocol: every rank performs the same sequence of collectives, and every collective that
can meet a failing peer is an :func:`exchange` (an ``all_gather_object`` of ``(failure, payload)``).
A rank that fails takes part in its next collective with :func:`agree_failure` instead, which is
the same ``all_gather_object``; the healthy ranks then see the failure in what they gathered and
raise :class:`PeerFailure` with the lowest failing rank's message and exit code. So no rank waits
forever in a collective that a failed peer will never join, and every rank ends with the same
error. Raw collectives (``gather_to_main``, the data-parallel gradient all-reduce) only follow an
exchange, with nothing that can fail in between.

torch.distributed is imported only when launched, so a single process pays nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TypeVar

from .errors import VipaminError

T = TypeVar("T")

_STATE = {"agreed": False}


class PeerFailure(VipaminError):
    """Another rank failed: this rank stops with that rank's message and exit code (already agreed)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    _STATE["agreed"] = False
    return device


def shutdown() -> None:
    """Leave the process group (at the end of cli.main)."""
    if launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def end_process(code: int) -> None:
    """End this torchrun worker now with ``code``: flush stdout/stderr, then ``os._exit``.

    Every rank has already agreed on the exit code (the last collective), so nothing is in flight.
    Tearing the process group down in the destructors instead (``destroy_process_group``, then the
    interpreter's exit) races with the peers' own teardown: twice (once in CI, once locally, each in
    a full test-suite run) a gloo rank aborted there with SIGABRT ("terminate called without an
    active exception") after its work was written. Every file is written atomically before this
    point, so skipping the interpreter's exit loses nothing.
    """
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def shard(items: list[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's strided share of ``items`` (item i goes to rank i % world)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return items[r::w]


def block(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This rank's contiguous block [lo, hi) of ``n`` items (blocks in rank order, so order is kept)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (failure-aware: see :func:`exchange`)."""
    return exchange(obj)


def exchange(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order; raises :class:`PeerFailure` when a peer failed instead."""
    if not launched():
        return [obj]
    entries = _gather((None, obj))
    for failure, _ in entries:
        if failure is not None:
            _STATE["agreed"] = True
            raise PeerFailure(failure[0], failure[1])
    return [payload for _, payload in entries]


def sync() -> None:
    """An agreement point: returns when every rank got here healthy, else raises the peer's failure."""
    exchange(None)


barrier = sync


def agree_failure(message: str, code: int) -> tuple[str, int]:
    """Called by a failing rank in place of its next collective: the agreed (message, exit code).

    The lowest failing rank's failure wins, so every rank reports the same one. Without a process
    group (or if it broke), this rank's own failure is returned.
    """
    if not launched() or _STATE["agreed"]:
        return message, code
    _STATE["agreed"] = True
    try:
        import torch.distributed as dist

        if not dist.is_initialized():
            return message, code
        entries = _gather(((message, code), None))
    except Exception:  # the group is gone (a peer died): report our own failure
        return message, code
    for failure, _ in entries:
        if failure is not None:
            return failure[0], int(failure[1])
    return message, code


def agreed() -> bool:
    """True once a failure was agreed on (no further collectives may be started)."""
    return _STATE["agreed"]


def first_error(error: BaseException | None) -> tuple[str, int] | None:
    """Share each rank's failure; every rank gets the lowest failing rank's (message, exit code)."""
    if error is not None:
        return agree_failure(str(error), int(getattr(error, "exit_code", 1)))
    try:
        sync()
    except PeerFailure as exc:
        return str(exc), exc.exit_code
    return None


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 only (None elsewhere); for large payloads, after an exchange."""
    if not launched():
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (failure-aware)."""
    return exchange(obj if is_main() else None)[0]


def all_reduce_sum_(tensor: Any) -> None:
    """Sum ``tensor`` in place over ranks (the data-parallel gradient all-reduce)."""
    if launched():
        import torch.distributed as dist

        dist.all_reduce(tensor)
