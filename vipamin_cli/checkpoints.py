"""Reading a --weights file: what it is, and its tensors, without ever unpickling arbitrary objects.

A file is recognised by its content, not its name: safetensors, a PyTorch checkpoint (zip or legacy
pickle, read with ``torch.load(weights_only=True)``), or a JAX/Flax ``.npz`` in the layout of
Google's ViT releases (VPT's ``imagenet21k_ViT-B_16.npz``). Anything else is refused with what the
file is ("a text file", "a truncated or damaged zip archive", "an npz of 3 arrays ...") instead of a
torch reason cut mid-sentence. Training checkpoints are unwrapped here: DINO's full checkpoint (a
``teacher`` and a ``student`` plus an ``argparse.Namespace`` of its arguments, allowlisted for the
unpickler) gives its ``teacher``; MAE / MoCo-v3 / timm files give ``model`` / ``state_dict``.
Turning the tensors into the backbone's layout is :func:`backbones.adapt_state_dict`'s job.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import torch

FIX = "pass a .safetensors, .pth / .pth.tar state dict, or a JAX ViT .npz"
JAX_KERNELS = ("embedding/kernel", "opt/target/embedding/kernel", "params/embedding/kernel",
               "params/img/embedding/kernel")  # the layouts timm's npz loader reads
_WRAPPERS = ("state_dict", "model", "module")


@dataclass
class Checkpoint:
    """A weights file's content: ``state_dict`` tensors, or ``jax-npz`` (read later by timm's npz
    loader); ``note`` says what was taken from a training checkpoint."""

    path: Path
    kind: str  # state_dict | jax-npz
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    note: str | None = None
    npz_files: list[str] = field(default_factory=list)


def describe_file(path: str | os.PathLike) -> str:
    """What a file is, in words a user recognises (from its first bytes)."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(512)
    if size == 0:
        return "an empty file"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _describe_zip(p)
    if head.startswith(b"\x93NUMPY"):
        return "a single NumPy array (.npy), not a set of named weights"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file (legacy PyTorch format)"
    if _looks_like_safetensors(head, size):
        return "a safetensors file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (Keras / TensorFlow weights?)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (decompress it first)"
    return _describe_text(head)


def _describe_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "a truncated or damaged zip archive (PyTorch checkpoints and .npz files are zip archives)"
    if names and all(n.endswith(".npy") for n in names):
        shown = ", ".join(n[:-4] for n in names[:3]) + (", ..." if len(names) > 3 else "")
        return f"an npz of {len(names)} array{'s' if len(names) != 1 else ''} ({shown})"
    if any(n.endswith("data.pkl") for n in names):
        return "a PyTorch zip checkpoint"
    return f"a zip archive of {len(names)} files, not a checkpoint"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _describe_text(head: bytes) -> str:
    text = None
    for cut in range(4):  # a multi-byte character may be split at the 512-byte boundary
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is None or any(not (c.isprintable() or c in "\t\r\n") for c in text):
        return "a binary file of unknown format"
    low = text.lstrip().lower()
    if low.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if low.startswith(("<!doctype html", "<html")):
        return "an HTML page (a failed download?)"
    return "a text file"


def _kind(p: Path) -> str:
    with open(p, "rb") as fh:
        head = fh.read(16)
    size = p.stat().st_size
    if _looks_like_safetensors(head, size) or (p.suffix == ".safetensors" and not head.startswith(b"PK")):
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unreadable"
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"
    return "unreadable"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The file's weights (or, for a JAX .npz, its layout checked); refuses anything else in one line."""
    from .validate import regular_input

    p = Path(path)
    if not p.exists():
        raise InputError(f"weights file not found: {p}", "check the --weights path")
    regular_input(p, "weights file", "pass a checkpoint file to --weights")
    kind = _kind(p)
    if kind == "safetensors":
        return Checkpoint(p, "state_dict", _read_safetensors(p))
    if kind == "npz":
        return _read_npz(p)
    if kind == "torch":
        obj = _torch_load(p)
        tensors, note = _unwrap(obj, p)
        return Checkpoint(p, "state_dict", tensors, note)
    raise InputError(f"weights file {p} is {describe_file(p)}, not a checkpoint", FIX)


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        what = describe_file(p)
        detail = "" if what != "a safetensors file" else f": {first_sentence(str(exc))}"
        raise InputError(f"weights file {p} is {'a damaged safetensors file' if detail else what}{detail}, not a "
                         "readable safetensors file", "re-download or re-export the checkpoint") from None


def _read_npz(p: Path) -> Checkpoint:
    import numpy as np

    try:
        with np.load(p, allow_pickle=False) as npz:
            files = list(npz.files)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"weights file {p} is a damaged npz ({first_sentence(str(exc))})",
                         "re-download the checkpoint") from None
    if not any(k in files for k in JAX_KERNELS):
        raise InputError(f"weights file {p} is {describe_file(p)} without the JAX ViT layout (no "
                         "'embedding/kernel')", FIX)
    return Checkpoint(p, "jax-npz", npz_files=files)


def _torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, plus ``argparse.Namespace``
    (DINO and MAE store their arguments as one); any other pickled object is refused, never built."""
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoints; all mean the same to the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's messages carry terminal colour codes
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            raise InputError(f"weights file {p} pickles the Python object {unsafe.group(1)}, which vipamin "
                             "never unpickles (only tensors, plain containers and argparse.Namespace)",
                             "re-save just the weights: torch.save(model.state_dict(), 'weights.pth')") from None
        raise InputError(f"weights file {p} is {describe_file(p)} that torch cannot read "
                         f"({first_sentence(text) or type(exc).__name__})", FIX) from None


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an error text, whole, or cut at a word with an ellipsis."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    if len(sentence) <= limit:
        return sentence.rstrip(".")
    return sentence[:limit].rsplit(" ", 1)[0] + " ..."


def _unwrap(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a training checkpoint, and a note when the choice is worth saying."""
    note = None
    if isinstance(obj, dict) and isinstance(obj.get("teacher"), dict):
        obj = obj["teacher"]
        note = (f"weights file {p} is a DINO training checkpoint: using its 'teacher' weights (as DINO's own "
                "evaluation does; the student, optimizer and arguments are ignored)")
    else:
        for key in _WRAPPERS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(hasattr(v, "shape") for v in obj.values()):
        raise InputError(f"weights file {p} holds no tensors (a PyTorch file of other data)",
                         "pass a state dict checkpoint")
    return {k: v for k, v in obj.items() if hasattr(v, "shape")}, note
