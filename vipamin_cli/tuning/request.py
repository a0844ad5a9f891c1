"""Before any work: every check that needs no data, and the lock that keeps one tune per ``--out``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..train import TuneConfig
from .checkpoint import sweep_json_path
from .inputs import TuneInputs
from .resume import partial_path


def check_sources(inputs: TuneInputs, final_seeds: list[int] | None) -> None:
    """Options that exclude each other or are empty."""
    if inputs.prompts is not None and inputs.init_grid is not None and len(inputs.init_grid) > 1:
        raise InputError("--prompts and an init grid exclude each other", "drop --prompts or pass one init value")
    if final_seeds is not None and not final_seeds:
        raise InputError("--seeds for the final runs is empty", "pass e.g. --seeds 42,44,82")


def check_tune_request(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float],
                       seeds: list[int], out: str | os.PathLike, device: str, grid_batch: int | None,
                       precision: str, compile_mode: str, final_seeds: list[int] | None = None,
                       ) -> tuple[Path, torch.device, str, bool, list[TuneConfig]]:
    """Every check that needs no data, before any work: options, the output path, the runtime settings."""
    from .. import validate as v
    from ..embed import resolve_device
    from ..train import PRECISIONS

    if not lrs or not weight_decays or not seeds:
        raise InputError("--lr, --weight-decay and --seeds each need at least one value", "pass e.g. --lr 0.1")
    from ..parsing import distinct

    for option, values in (("--lr", lrs), ("--weight-decay", weight_decays), ("--seeds", seeds),
                           ("--seeds", final_seeds or [])):
        distinct(values, option)
    for lr in lrs:
        v.number(lr, "--lr", minimum=0, min_open=True, example=0.1)
    for wd in weight_decays:
        v.number(wd, "--weight-decay", minimum=0, example=0.01)
    for s in seeds:
        v.seed(s, "--seeds" if len(seeds) > 1 else "--seed")
    base.validate()
    configs = [replace(base, lr=lr, weight_decay=wd, seed=s) for lr in lrs for wd in weight_decays for s in seeds]
    for c in configs:
        c.validate()
    v.integer(grid_batch, "--grid-batch", minimum=1, example=4, optional=True)
    for init in ([inputs.init] if inputs.init is not None else []) + list(inputs.init_grid or []):
        init.validate({"seed": "--init-seed"})
        check_vipamin_choices(init)
    for s in final_seeds or []:
        v.seed(s, "--seeds")
    if inputs.embed_config is not None:
        inputs.embed_config.validate({"seed": "--data-seed", "batch_size": "--embed-batch-size"})
    if inputs.shots is not None:
        v.integer(inputs.shots, "--shots", minimum=1, example=16)
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if compile_mode not in ("auto", "on", "off"):
        raise InputError(f"unknown --compile '{compile_mode}'", "use auto, on or off")
    dev = resolve_device(device)
    out = v.output_path(out, "--out", [("--embeddings", inputs.embeddings), ("--val-embeddings", inputs.val_embeddings),
                                       ("--prompts", inputs.prompts),
                                       ("--final-embeddings", inputs.final_embeddings)])
    for extra, role in ((partial_path(out), "the resume state"), (out.with_name(out.name + ".lock"), "the lock file"),
                        (sweep_json_path(out), "the sweep record")):
        v.output_path(extra, "--out", [("--embeddings", inputs.embeddings), ("--val-embeddings", inputs.val_embeddings),
                                       ("--prompts", inputs.prompts)], role=role)
    # Resolved now, so the resume signature and the checkpoint record what actually ran.
    precision_used = "bf16" if precision == "bf16" or (precision == "auto" and dev.type == "cuda") else "fp32"
    compile_blocks = compile_mode == "on" or (compile_mode == "auto" and dev.type == "cuda")
    return out, dev, precision_used, compile_blocks, configs


def check_vipamin_choices(init: Any) -> None:
    """VIPAMIN's lambda range, orthogonal mode, scale, cutoff and span-tolerance names, before any data is read."""
    from ..inits.vipamin import check_choices, resolve_rcond

    if init.method == "vipamin":
        check_choices(init.lam, init.orth, init.orth_scale, init.orth_span_tol)
        resolve_rcond(init.orth_rcond, 1)  # its form (none, reference, a number in (0, 1)); the width comes later


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Only one tune writes a given --out (and its resume state) at a time: ``<out>.lock`` is held with
    ``flock`` and names the holder's pid; it is removed when the run ends."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    from .. import iosafety

    lock = out.with_name(out.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {lock.parent}: {exc.strerror}",
                         "choose a writable --out location") from None
    record = iosafety.output_for(lock, "--out")
    while True:
        fd = iosafety.open_lock(lock, record, pid_file=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise InputError(f"another vipamin tune (pid {holder}) is writing {out} (lock {lock})",
                             "wait for it to finish, or choose another --out") from None
        try:  # the holder before us may have removed the file after we opened it: then retry
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with iosafety.writing(record):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        iosafety.remove_own_lock(lock, fd)
        os.close(fd)
