"""`vipamin export`: the tuned classifier as a ``torch.export`` program that runs without vipamin or timm.

The program is :class:`~vipamin_cli.classifier.TunedClassifier` traced with a dynamic batch
dimension at the checkpoint's input resolution: frozen backbone, prompts (VAPT's generator too)
and head. The class names and the preprocessing go into the ``.pt2`` file (extra file
``vipamin.json``) and beside it (``<out>.json``), so a deployment needs only torch and this file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, RuntimeFailure
from .iosafety import command_scope

EXTRA_FILE = "vipamin.json"
EXPORT_FORMAT = "vipamin-export"
EXPORT_VERSION = 1
TOLERANCE = 1e-4  # the exported program's logits against the eager model's, checked before writing


@dataclass
class ExportResult:
    out: Path
    sidecar: Path
    meta: dict[str, Any]
    max_abs_diff: float


def sidecar_path(out: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(out)}.json")


def check_export_request(checkpoint: str | os.PathLike, out: str | os.PathLike,
                         weights: str | os.PathLike | None = None) -> Path:
    """Both output paths (the program and ``<out>.json``), checked before the model is built: never one of
    the inputs, a link, a FIFO or a folder (iosafety)."""
    from .iosafety import declare_output

    if Path(out).suffix.lower() != ".pt2":
        raise InputError(f"--out {out} must end in .pt2 (a torch.export archive)", "pass e.g. --out model.pt2")
    inputs = [("--checkpoint", checkpoint), ("--weights", weights)]
    dest = declare_output(out, "--out", inputs=inputs)
    declare_output(sidecar_path(out), "--out", role="the metadata file", inputs=inputs,
                   source="written beside --out as <out>.json")
    return dest


def export_meta(model: Any, checkpoint: str | os.PathLike, run: int | None) -> dict[str, Any]:
    """What a user of the exported program needs: classes, preprocessing, input and output."""
    meta = model.config
    indices = list(range(len(meta["runs"]))) if run is None else [run]
    several = len(indices) > 1
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "class_names": model.class_names,
        "preprocessing": meta["preprocessing"],
        "input": {"shape": ["batch", 3, model.img_size, model.img_size], "dtype": "float32",
                  "layout": "RGB, resized and normalised as 'preprocessing' says"},
        "output": {"shape": ["batch", len(model.class_names)],
                   "meaning": "log of the runs' averaged softmax probabilities (softmax gives the ensemble's)"
                   if several else "logits"},
        "runs": [{"index": j, "seed": meta["runs"][j]["config"]["seed"]} for j in indices],
        "arch": meta.get("arch"), "pool": meta.get("pool"), "backbone": meta["backbone"],
        "checkpoint": {"path": str(checkpoint), "digest": meta.get("digest")},
        "torch_version": torch.__version__,
    }


def trace(model: torch.nn.Module, img_size: int) -> Any:
    """``torch.export`` with a dynamic batch dimension; a failure names the architecture and why."""
    arch = model.config.get("arch", "?")
    example = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=2**20)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)
    except Exception as exc:  # torch.export raises many kinds; the user needs the arch and the first line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RuntimeFailure(f"cannot export architecture '{arch}' (backbone {model.config['backbone']['name']}) "
                             f"with torch.export: {type(exc).__name__}: {reason}",
                             "use vipamin_cli.load_classifier in Python instead") from None


def check_program(program: Any, model: torch.nn.Module, img_size: int) -> float:
    """The exported program's logits against the eager model's on a batch size it was not traced with."""
    images = torch.randn(3, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = float((program.module()(images) - model(images)).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeFailure(f"the exported program's logits differ from the model's by {diff:.3g} "
                             f"(more than {TOLERANCE:g})", "report this; use vipamin_cli.load_classifier meanwhile")
    return diff


class _KeepFirstError(io.RawIOBase):
    """A binary file for torch's archive writer that keeps the first write error instead of raising it in
    the writer: torch's zip writer aborts the whole process (``terminate called``) when a write fails and
    it then finishes the archive in its destructor. The error is raised once the writer is done."""

    def __init__(self, fh: Any) -> None:
        super().__init__()
        self._fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _keep(self, call: Any, *args: Any) -> Any:
        if self.error is None:
            try:
                return call(*args)
            except OSError as exc:
                self.error = exc
        return None

    def write(self, data: Any) -> int:
        self._keep(self._fh.write, data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._keep(self._fh.seek, offset, whence) or 0

    def tell(self) -> int:
        return self._keep(self._fh.tell) or 0

    def flush(self) -> None:
        self._keep(self._fh.flush)

    def raise_error(self) -> None:
        self.flush()
        if self.error is not None:
            raise self.error


@command_scope()
def export_classifier(checkpoint: str | os.PathLike, out: str | os.PathLike, run: int | None = None,
                      backbone: str | None = None, weights: str | os.PathLike | None = None) -> ExportResult:
    """The library form of `vipamin export`: write ``out`` (.pt2) and ``<out>.json`` atomically.

    Both temporary files are made before the trace, so an unwritable folder fails before the slow part;
    the program is renamed into place first, then its metadata file.
    """
    from .artifacts import atomic_path
    from .classifier import load_classifier

    dest = check_export_request(checkpoint, out, weights)
    side = sidecar_path(dest)
    model = load_classifier(checkpoint, device="cpu", run=run, backbone=backbone, weights=weights)
    model.requires_grad_(False)
    with atomic_path(side, "--out") as side_tmp, atomic_path(dest) as tmp:
        program = trace(model, model.img_size)
        diff = check_program(program, model, model.img_size)
        meta = export_meta(model, checkpoint, run)
        text = json.dumps(meta, indent=2)
        with open(tmp, "wb") as fh:  # a file object: torch wants .pt2 names otherwise
            sink = _KeepFirstError(fh)
            torch.export.save(program, sink, extra_files={EXTRA_FILE: text})
            sink.raise_error()  # a full disk: one line naming --out (atomic_path), the temporary file removed
        side_tmp.write_text(text + "\n")
    return ExportResult(out=dest, sidecar=side, meta=meta, max_abs_diff=diff)
