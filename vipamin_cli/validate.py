"""One place for option checks, shared by the CLI and the library functions.

Every value a user can give enters through one of these checks, at the boundary (the config
dataclasses' ``validate`` and the library entry points), so a bad value is refused with one line
naming the option and the fix before any work starts, instead of failing deep inside torch.
Paths that a command writes are checked here too: an output that is one of the command's own
inputs, or an existing target that is not a regular file, is refused before anything is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError

INT64_MAX = 2**63 - 1
SEED_MAX = 2**63 - 1  # every RNG we seed (torch, numpy) takes a non-negative 63-bit seed

# Comma-separated list options: command -> option -> element type. The generated hostile-input
# test cross-checks this registry against the options whose help mentions a comma list.
LIST_OPTIONS: dict[str, dict[str, type]] = {
    "tune": {"--lr": float, "--weight-decay": float, "--seeds": int, "--k": int, "--lambda": float,
             "--orth": str, "--orth-scale": str, "--orth-rcond": str, "--sample": str, "--init-seed": int},
    "benchmark": {"--methods": str, "--tasks": str, "--lr": float, "--full-lr": float, "--weight-decay": float,
                  "--seeds": int, "--k": int, "--lambda": float, "--orth": str, "--orth-scale": str,
                  "--orth-rcond": str},
    "data make-testbed": {"--tasks": str},
    "data check": {"--tasks": str},
    "data get": {"--tasks": str},
}


def _fix(option: str, example: Any) -> str:
    return f"pass e.g. {option} {example}"


def integer(value: Any, option: str, *, minimum: int | None = None, maximum: int = INT64_MAX,
            example: Any = None, optional: bool = False) -> int | None:
    """An integer within [minimum, maximum] (and a 64-bit one always), else an InputError."""
    if value is None and optional:
        return None
    example = example if example is not None else (minimum if minimum is not None else 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{option} {value!r} is not an integer", _fix(option, example))
    if minimum is not None and value < minimum:
        raise InputError(f"{option} {value} must be at least {minimum}", _fix(option, example))
    if value > maximum:
        raise InputError(f"{option} {value} is too large (at most {maximum:,})", _fix(option, example))
    return value


def number(value: Any, option: str, *, minimum: float | None = None, maximum: float | None = None,
           min_open: bool = False, max_open: bool = False, example: Any = None) -> float:
    """A finite float within the bounds (open or closed), else an InputError; NaN and inf never pass."""
    example = example if example is not None else (minimum if minimum is not None else 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{option} {value!r} is not a number", _fix(option, example))
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{option} {value} is not a finite number", _fix(option, example))
    lo = "(" if min_open else "["
    hi = ")" if max_open else "]"
    span = f"{lo}{'-inf' if minimum is None else f'{minimum:g}'}, {'inf' if maximum is None else f'{maximum:g}'}{hi}"
    if minimum is not None and (value < minimum or (min_open and value == minimum)):
        raise InputError(f"{option} {value:g} is outside {span}", _fix(option, example))
    if maximum is not None and (value > maximum or (max_open and value == maximum)):
        raise InputError(f"{option} {value:g} is outside {span}", _fix(option, example))
    return value


def seed(value: Any, option: str = "--seed") -> int:
    """A seed every RNG accepts: an integer in [0, 2**63 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise InputError(f"{option} {value} is outside the seed range [0, 2**63 - 1]", _fix(option, 42))
    return value


def number_list(text: str | None, option: str, kind: type = float) -> list:
    """Parse a comma-separated list option; kept here for callers of the old name (see parsing.py)."""
    from .parsing import number_list as strict_list

    return strict_list(text, option, kind)


# ----------------------------------------------------------------------------------------------------------
# Geometry- and memory-dependent checks (need the backbone's shape)


def vapt_geometry(kernel: int, first_block: int, depth: int, grid: tuple[int, int]) -> None:
    """VAPT's kernel must fit the patch grid and its first adaptive block must exist."""
    if not 1 <= first_block < depth:
        raise InputError(f"--vapt-first-block {first_block} is outside [1, {depth - 1}] (the backbone has "
                         f"{depth} blocks)", f"pass --vapt-first-block between 1 and {depth - 1}")
    side = min(grid)
    if not 1 <= kernel <= side:
        raise InputError(f"--vapt-kernel {kernel} does not fit the {grid[0]}x{grid[1]} patch grid",
                         f"pass --vapt-kernel between 1 and {side}")


def available_memory(device: Any = None) -> int | None:
    """Bytes that can still be allocated on ``device`` (host RAM for CPU); None when unknown."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


def memory_fits(need: float, option: str, value: Any, device: Any = None, fix: str | None = None) -> None:
    """Refuse a setting whose estimated memory ``need`` exceeds what is available, before allocating."""
    have = available_memory(device)
    if have is not None and need > have:
        where = "GPU" if device is not None and getattr(device, "type", "") == "cuda" else "RAM"
        raise InputError(f"{option} {value} needs about {_gib(need)} of memory but {_gib(have)} of {where} is "
                         "available", fix or f"pass a smaller {option}")


def prompt_memory(prompt_length: int, dim: int, blocks: int = 1, tokens: int = 0, batch: int = 1,
                  heads: int = 1, depth: int = 1) -> float:
    """Bytes a prompt length costs: the prompts (with optimiser state) and, when training, the
    activations kept for the backward pass (tokens and attention maps of every block)."""
    params = 4.0 * prompt_length * dim * blocks * 4  # value, gradient, two AdamW moments
    if not tokens:
        return params
    seq = tokens + prompt_length
    acts = 4.0 * batch * depth * (12 * seq * dim + 2 * heads * seq * seq)
    return params + acts


def training_memory_fits(prompt_length: int, dim: int, blocks: int, tokens: int, batch: int, images: int,
                         heads: int, depth: int, device: Any = None) -> None:
    """Refuse a training step that cannot fit, blaming the option that makes it too big: --batch-size
    when one image per step would fit, else --prompt-length. A batch larger than the data set trains
    on the whole set at once, so it costs no more than the set."""
    used = max(1, min(batch, images))
    need = prompt_memory(prompt_length, dim, blocks, tokens, used, heads, depth)
    have = available_memory(device)
    if have is None or need <= have:
        return
    if prompt_memory(prompt_length, dim, blocks, tokens, 1, heads, depth) <= have:
        memory_fits(need, "--batch-size", batch, device, f"pass a smaller --batch-size (with --prompt-length "
                    f"{prompt_length})")
    memory_fits(need, "--prompt-length", prompt_length, device, "pass a smaller --prompt-length")


# ----------------------------------------------------------------------------------------------------------
# Paths


def regular_input(path: str | os.PathLike, what: str, fix: str = "pass a regular file", *,
                  own: bool = False) -> os.stat_result:
    """Refuse a FIFO, device or socket before opening it (opening a FIFO blocks until a writer comes);
    the one gate is :func:`iosafety.check_input`, which also records the file as the command's input."""
    from .iosafety import check_input

    return check_input(path, what, fix, own=own)


def output_path(out: str | os.PathLike, option: str = "--out",
                inputs: Iterable[tuple[str, str | os.PathLike | None]] = (), role: str | None = None) -> Path:
    """Check an output path before any work: not a directory, not an existing FIFO/device/symlink, a name
    the file system allows, and not the same file (hard links and symlinks included) as any of the
    command's inputs or another option's output (see :func:`iosafety.declare_output`)."""
    from .iosafety import declare_output

    return declare_output(out, option, role, inputs)


def cache_dir(root: Path, option: str) -> Path:
    """The cache root must be (or become) a writable directory."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if root.exists() and not root.is_dir():
        raise InputError(f"{option} {root} is not a directory", f"point {option} at a directory")
    if not root.exists():
        if not probe.is_dir():
            raise InputError(f"{option} {root} cannot be created: {probe} is not a directory",
                             f"point {option} at a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{option} {root} cannot be created: {exc.strerror}",
                             f"point {option} at a writable directory") from None
    return root
