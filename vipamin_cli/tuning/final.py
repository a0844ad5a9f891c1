"""The checkpoint's runs: the selected configuration's sweep runs, or its final runs.

Without a final split the selected configuration's sweep runs (one per seed) are the checkpoint.
With one (``--final-split`` / ``--final-embeddings``), the selected configuration is retrained on
that split once per final seed, its init recomputed from the final split's statistics, and those
runs are the checkpoint; the sweep stays in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import as_runs
from .inputs import TuneData, TuneInputs, on_device, shared_prompts
from .plan import SweepPlan, rank_groups
from .resume import StageProgress
from .selection import run_key
from .stage import Runtime, Stage, gather_stage, run_stage


@dataclass
class CheckpointRuns:
    """The runs a checkpoint holds, their weights, the models trained in this call, and what the
    final stage adds to the checkpoint's metadata."""

    runs: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    models: list[Any]
    meta: dict[str, Any] = field(default_factory=dict)


def selected_sweep_runs(sweep: StageProgress, models: dict[int, Any],
                        chosen: tuple[int, float, float]) -> CheckpointRuns:
    """No final split: the selected configuration's sweep runs, one per seed."""
    selected = [i for i, r in enumerate(sweep.done) if run_key(r) == chosen]
    runs, tensors = as_runs(sweep.done, sweep.tensors, selected)
    return CheckpointRuns(runs, tensors, [models[i] for i in selected if i in models])


def final_runs(plan: SweepPlan, data: TuneData, inputs: TuneInputs, out: Path, chosen: tuple[int, float, float],
               progress: StageProgress, resume_meta: dict[str, Any], runtime: Runtime,
               partial: Path) -> CheckpointRuns:
    """Retrain the selected configuration on the final split once per final seed (continuing
    ``progress`` when the run stopped in this stage); its init recomputed from the final split (one
    draw per final seed when the init seed follows the training seed)."""
    from ..inits.seeding import init_slots

    final = data.splits.final
    assert final is not None
    arch = plan.points[0].config.arch
    points = plan.final_points(chosen)
    slots = init_slots([data.inits[chosen[0]]], [0] * len(points), [pt.config.seed for pt in points], data.follow,
                       "-final")
    made = [shared_prompts(inputs, final, arch, out, c, s) for c, s in slots.named()]
    source = made[0][1]
    groups, data_parallel = rank_groups(len(points), plan.final_batch())
    stage = Stage("final", points, [made[j][0] for j in slots.of_point], on_device(final, runtime.device), None,
                  groups, progress, resume_meta, tolerate=False, data_parallel=data_parallel)
    models = run_stage(stage, data, runtime, partial)
    done = gather_stage(stage)
    indices = list(range(len(done.done)))
    slots.record(done.done, done.index or indices, [m[1] for m in made])
    runs, tensors = as_runs(done.done, done.tensors, indices)
    meta = {"final": {"split": final.meta["data"]["split"], "embeddings": final.meta["digest"],
                      "num_images": int(final["labels"].numel()), "seeds": plan.final_seeds, "init": source},
            "init": source}
    return CheckpointRuns(runs, tensors, [models[j] for j in indices if j in models], meta)
