"""The tuned model as a classifier a user can run: images in, logits out.

``load_classifier`` rebuilds a checkpoint's runs on its recorded backbone (through
``tune.load_runs``, the same function `eval` uses, so an architecture added there is covered here,
by `predict` and by `export`) and wraps them in one ``nn.Module`` whose forward takes a
preprocessed image batch. ``transform`` is the exact preprocessing `embed` applied.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from .errors import InputError


class TunedClassifier(nn.Module):
    """Frozen backbone + each run's prompts and head; forward(images (N, 3, H, W)) -> logits (N, C).

    With one run (or ``run`` chosen) the logits are that run's, exactly what `eval` scores. With
    several runs the output is the log of the runs' averaged softmax probabilities: its softmax is
    the seed ensemble's prediction, and its argmax the ensemble's top-1.
    """

    def __init__(self, runs: list[nn.Module], class_names: list[str], transform: Any,
                 config: dict[str, Any]) -> None:
        super().__init__()
        if not runs:
            raise ValueError("a classifier needs at least one run")
        self.runs = nn.ModuleList(runs)
        # per run, the first run with the same backbone object (decided here: tracing wraps modules)
        self.token_source = [next(i for i, r in enumerate(runs) if r.vit is m.vit) for m in runs]
        self.class_names = list(class_names)
        self.transform = transform
        self.config = config
        self.eval()

    @property
    def backbone(self) -> nn.Module:
        return self.runs[0].vit

    @property
    def img_size(self) -> int:
        return int(self.config["preprocessing"]["img_size"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from .embed import block0_tokens

        tokens: dict[int, torch.Tensor] = {}  # runs that share a frozen backbone share its block-0 tokens
        logits = []
        for m, first in zip(self.runs, self.token_source, strict=True):
            if first not in tokens:
                tokens[first] = block0_tokens(m.vit, images)
            logits.append(m(tokens[first]))
        if len(logits) == 1:
            return logits[0]
        log_probs = torch.stack([lg.float().log_softmax(-1) for lg in logits])
        return torch.logsumexp(log_probs, 0) - math.log(len(logits))


def tuned_runs(checkpoint: Any, backbone: nn.Module, run: int | None = None) -> list[nn.Module]:
    """The checkpoint's run models on ``backbone`` (all, or the one of index ``run``), in eval mode."""
    from .tune import load_runs

    count = len(checkpoint.meta["runs"])
    if run is not None and (isinstance(run, bool) or not isinstance(run, int) or not 0 <= run < count):
        seeds = ", ".join(f"{j}: seed {r['config']['seed']}" for j, r in enumerate(checkpoint.meta["runs"]))
        raise InputError(f"--run {run} is not a run of {checkpoint.path} ({count} run{'s' if count > 1 else ''}: "
                         f"{seeds})", f"pass --run between 0 and {count - 1}, or drop it to average them")
    models = load_runs(checkpoint, backbone)
    chosen = models if run is None else [models[run]]
    for m in chosen:
        m.eval()
    return chosen


def load_checkpoint(checkpoint: str | os.PathLike) -> Any:
    """A finished checkpoint (not an embeddings / prompts file, not a resume state)."""
    from .artifacts import load_artifact

    ckpt = load_artifact(checkpoint, "checkpoint", what="--checkpoint")
    if ckpt.meta.get("partial"):
        raise InputError(f"{checkpoint} is an unfinished run's resume state", "finish it with `vipamin tune --resume`")
    if not ckpt.meta.get("runs"):
        raise InputError(f"{checkpoint} holds no trained run", "pass a checkpoint written by `vipamin tune`")
    return ckpt


def transform_of(meta: dict[str, Any]) -> Any:
    """The PIL -> normalised tensor transform `embed` used for this artifact (from its metadata)."""
    from .data import make_transform

    p = meta["preprocessing"]
    return make_transform(p["resize"], int(p["img_size"]), tuple(p["mean"]), tuple(p["std"]), p["interpolation"])


def load_classifier(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", run: int | None = None,
                    backbone: str | None = None, weights: str | os.PathLike | None = None) -> TunedClassifier:
    """A checkpoint as an ``nn.Module``: ``model(model.transform(img)[None])`` gives the logits of a PIL image.

    ``run`` picks one run (index, as `vipamin info` lists them); None averages every run's
    probabilities. The backbone and weights are the ones the checkpoint records unless
    ``backbone`` / ``weights`` are given. Attributes: ``class_names``, ``transform``, ``config``
    (the checkpoint's metadata).
    """
    from .backbones import load_backbone_from_identity
    from .embed import resolve_device

    dev = resolve_device(str(device))
    ckpt = load_checkpoint(checkpoint)
    bb = load_backbone_from_identity(ckpt.meta["backbone"], backbone=backbone, weights=weights,
                                     what=f"--checkpoint {checkpoint}")
    runs = tuned_runs(ckpt, bb.model, run)
    model = TunedClassifier(runs, ckpt.meta["data"]["class_names"], transform_of(ckpt.meta), ckpt.meta)
    return model.to(dev)
