"""Resume state: ``<out>.partial.safetensors`` holds a stage's finished runs and the group in training.

After every epoch the stage writes its finished runs (``done{i}.*``: candidate i's weights) and the
current group's weights, optimizer and EMA state (``cur{g}.*``), with metadata naming the stage,
the finished runs' records and the current group's run states. ``--resume`` continues from it when
its signature (every option and input digest that changes what is trained) matches; it is removed
once the checkpoint is written. Under torchrun each rank keeps its own file (``.rank{r}``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import load_artifact
from ..errors import InputError
from ..train import config_dict
from ..ui import info
from .inputs import TuneData
from .plan import SweepPlan


@dataclass
class StageProgress:
    """A stage's finished runs and the group it was training: what the resume state holds."""

    done: list[dict[str, Any]] = field(default_factory=list)  # finished runs' records
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # their weights, ``done{i}.<name>``
    index: list[int] | None = None  # the candidate index of each ``done`` entry (default: 0, 1, ...)
    current: dict[str, Any] | None = None  # the group in training: its ``indices`` and run ``states``
    current_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # its state, ``cur{g}.<name>``
    # halving: runs paused at a rung (their run states), their whole training state (``paused{i}.<name>``),
    # and the rung in training with who was pruned where and every rung's scores (see rungs.py)
    paused: dict[int, dict[str, Any]] = field(default_factory=dict)
    paused_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    halving: dict[str, Any] | None = None


@dataclass
class ResumeState:
    """Where an interrupted tune stopped: the stage, the sweep's records once it is done, its progress."""

    stage: str = "sweep"
    sweep_done: list[dict[str, Any]] | None = None
    progress: StageProgress = field(default_factory=StageProgress)

    def progress_of(self, stage: str) -> StageProgress:
        """The progress ``stage`` continues from: the saved one if the run stopped in it, else a fresh one."""
        return self.progress if self.stage == stage else StageProgress()


def partial_path(out: Path) -> Path:
    """The resume state beside ``out``; under torchrun one per rank (``<out>.rank{r}.partial.safetensors``)."""
    from .. import distributed

    tag = f".rank{distributed.rank()}" if distributed.launched() else ""
    return out.with_name(out.name.removesuffix(".safetensors") + f"{tag}.partial.safetensors")


def has_resume_state(out: str | os.PathLike) -> bool:
    """Whether ``--resume`` has something to continue (under torchrun: on any rank)."""
    from .. import distributed

    return any(distributed.exchange(partial_path(Path(out)).exists()))


def _plain(obj: Any) -> Any:
    """What a value looks like after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def signature(plan: SweepPlan, data: TuneData, runtime: dict[str, Any]) -> dict[str, Any]:
    """What a resume state must match: every candidate's configuration, the inputs' digests, the
    head's input, the group size, the final runs and the runtime (precision, compile, device)."""
    from .. import distributed

    splits = data.splits
    sig = _plain({"configs": [config_dict(pt.config) for pt in plan.points],
                  "init_index": [pt.init_index for pt in plan.points], "train": splits.train.meta["digest"],
                  "val": splits.val.meta["digest"] if splits.val is not None else None,
                  "init": [s["digest"] for s in data.sources], "pool": data.pool, "grid_batch": plan.grid_batch,
                  "final": splits.final.meta["digest"] if splits.final is not None else None,
                  "final_seeds": plan.final_seeds, "runtime": runtime})
    if distributed.launched():  # another world size shards the groups differently: no resume across it
        sig["world_size"] = distributed.world_size()
    if plan.halving:
        sig["sweep"] = plan.rule.record(plan.points[0].config.epochs)
    return sig


def load_resume_state(partial: Path, sig: dict[str, Any], resume: bool) -> ResumeState:
    """The state ``--resume`` continues from (a fresh one without ``resume``); refused when it belongs
    to another command. Under torchrun the ranks agree on the stage."""
    from .. import distributed

    if not resume:
        return ResumeState()
    if not any(distributed.exchange(partial.exists())):
        raise InputError(f"nothing to resume: {partial} does not exist", "run without --resume")
    state = _read(partial, sig) if partial.exists() else ResumeState()
    if distributed.launched():
        state = _agree_on_stage(state)
    current = state.progress.current
    info(f"resuming the {state.stage}: {len(state.progress.done)} runs done, current group at epoch "
         f"{current['states'][0]['epoch'] if current else 0}")
    return state


def _read(partial: Path, sig: dict[str, Any]) -> ResumeState:
    part = load_artifact(partial, "checkpoint", what="--resume state", own=True)
    if part.meta.get("signature") != sig:
        raise InputError(f"{partial} belongs to a run with other options or inputs",
                         "repeat the original command with --resume, or delete the file to start over")
    progress = StageProgress(done=part.meta["done"],
                             tensors={k: v for k, v in part.tensors.items() if k.startswith("done")},
                             index=part.meta.get("done_index"), current=part.meta.get("current"),
                             current_tensors={k: v for k, v in part.tensors.items() if k.startswith("cur")},
                             paused={int(i): st for i, st in part.meta.get("paused", [])},
                             paused_tensors={k: v for k, v in part.tensors.items() if k.startswith("paused")},
                             halving=part.meta.get("halving"))
    return ResumeState(part.meta.get("stage", "sweep"), part.meta.get("sweep_done"), progress)


def _agree_on_stage(state: ResumeState) -> ResumeState:
    """One rank already in the final stage: the sweep is done everywhere (its records came with it)."""
    from .. import distributed

    stages = distributed.exchange((state.stage, state.sweep_done))
    final_stage = next((st for st in stages if st[0] == "final"), None)
    if final_stage is not None and state.stage != "final":
        return ResumeState(final_stage[0], final_stage[1])
    return state
