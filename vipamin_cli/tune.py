"""`vipamin tune`: train prompts on a frozen backbone, sweep, select on validation, write the checkpoint.

:func:`tune` runs the engine's steps in order (each in its own module of :mod:`vipamin_cli.tuning`):
check the request and lock ``--out`` -> read the inputs (embeddings, backbone, initial prompts) ->
plan the sweep (candidates and grid-batch groups) -> find the resume state -> run the sweep stage
(a grid: every candidate to the end; ``--sweep halving``: rung by rung, pruning, :mod:`.tuning.rungs`) ->
select on validation -> run the final stage (or keep the selected sweep runs) -> write the checkpoint.

A checkpoint holds one or more runs (one per training seed of the selected configuration), each as
``run{j}.<parameter>`` tensors, and metadata with every option, per-epoch history, the best epoch,
the init's and embeddings' fingerprints and the backbone identity. While training, a
``<checkpoint>.partial.safetensors`` file holds finished runs and the current run's state after
every epoch; ``--resume`` continues from it and it is removed once the checkpoint is written.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import InputError
from .full import check_request as full_check_request
from .iosafety import command_scope
from .train import TuneConfig
from .tuning.checkpoint import checkpoint_meta, load_runs, render_sweep, write_checkpoint
from .tuning.final import CheckpointRuns, final_runs, selected_sweep_runs
from .tuning.halving import SweepRule
from .tuning.inputs import (
    TuneData,
    TuneInputs,
    check_compatible,
    check_init_k,
    init_configs,
    prepare,
    read_splits,
    resolve_recipe,
)
from .tuning.plan import GridPoint, grid_points, plan_sweep
from .tuning.request import check_sources, check_tune_request, check_vipamin_choices, output_lock
from .tuning.resume import has_resume_state, load_resume_state, partial_path, signature
from .tuning.rungs import annotate, halving_sweep
from .tuning.selection import choose, select, sweep_record
from .tuning.stage import Runtime, sweep_runs

__all__ = ["GridPoint", "SweepRule", "TuneInputs", "TuneOutcome", "check_compatible", "check_tune_request",
           "grid_points", "has_resume_state", "init_configs", "load_runs", "output_lock", "render_sweep", "select",
           "tune", "tune_plan"]


@dataclass
class TuneOutcome:
    checkpoint: Path
    sweep: dict[str, Any]
    models: list[Any]  # the checkpoint's runs trained in this call (not those restored by --resume)
    backbone: Any


@command_scope()
def tune(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
         out: str | os.PathLike, device: str = "auto", resume: bool = False, show_progress: bool = True,
         on_epoch: Any = None, grid_batch: int | None = None, precision: str = "auto",
         compile_mode: str = "auto", final_seeds: list[int] | None = None, recipe: Any = None,
         sweep: SweepRule | None = None) -> TuneOutcome:
    """Train every (init config, lr, weight decay, seed) point, select on validation, write the checkpoint.

    Points are trained ``grid_batch`` at a time in one loop over the frozen backbone (default: all
    at once; 1 = one after another). The init configurations are ``inputs.init_grid`` (or the single
    ``inputs.init``); each one's prompts are computed once. With ``inputs.final_split`` (or
    ``final_embeddings``) the selected point is then retrained on that split once per seed of
    ``final_seeds`` (default ``seeds``), its init recomputed from the final split's statistics, and
    those runs become the checkpoint (the sweep stays in its metadata). ``recipe`` (a
    ``recipes.TunePlan``) records the recipe and resolves backbone-dependent values (SPT's head
    weight decay). ``on_epoch(first_index, state, stage)`` is called after each saved epoch.
    ``sweep`` (default grid): ``SweepRule("halving", eta, min_epochs)`` trains the candidates by
    successive halving (:mod:`.tuning.halving`) and selects among those reaching the last epoch.
    """
    check_sources(inputs, final_seeds)
    full_check_request(base.arch, inputs.prompts)
    out, dev, precision_used, compile_blocks, _ = check_tune_request(
        inputs, base, lrs, weight_decays, seeds, out, device, grid_batch, precision, compile_mode, final_seeds)
    sweep = (sweep or SweepRule()).resolved(base.epochs, base.warmup_epochs)
    if sweep.mode == "halving" and sweep.min_epochs <= base.warmup_epochs:
        from .ui import info

        info(f"note: the first rung (--min-epochs {sweep.min_epochs}) ends inside the warm-up "
             f"(--warmup-epochs {base.warmup_epochs}): candidates are ranked before they trained at their lr")
    if resume:
        inputs = resume_backbone(inputs, out)
    from . import distributed

    runtime = Runtime(dev, precision_used, compile_blocks, show_progress, on_epoch)
    # Under torchrun rank 0 alone holds the lock: it writes the checkpoint; each rank has its own partial.
    with output_lock(out) if distributed.is_main() else contextlib.nullcontext():
        return _tune(inputs, base, (lrs, weight_decays, seeds), out, runtime, resume, (grid_batch, sweep),
                     final_seeds, recipe)


def resume_backbone(inputs: TuneInputs, out: Path) -> TuneInputs:
    """``--resume`` with --data: the backbone and weights the resume state records, unless --backbone /
    --weights are given (then checked against it), so the user need not repeat them."""
    from .artifacts import read_metadata
    from .backbones import load_backbone_from_identity, recorded_weights

    partial = partial_path(out)
    if inputs.embeddings is not None or inputs.data is None or not partial.exists():
        return inputs  # embeddings carry their backbone; "nothing to resume" is reported later
    identity = read_metadata(partial, own=True)["backbone"]  # the command's own state, not an input
    load_backbone_from_identity(identity, backbone=inputs.backbone, weights=inputs.weights,
                                what=f"the resume state {partial}")
    return replace(inputs, backbone=identity["name"],
                   weights=inputs.weights if inputs.weights is not None else recorded_weights(identity))


def _tune(inputs: TuneInputs, base: TuneConfig, grids: tuple[list[float], list[float], list[int]], out: Path,
          runtime: Runtime, resume: bool, how: tuple[int | None, SweepRule], final_seeds: list[int] | None,
          recipe: Any) -> TuneOutcome:
    """The steps, in order: inputs, plan, resume state, sweep, selection, final runs, checkpoint."""
    lrs, weight_decays, seeds = grids
    grid_batch, rule = how
    inits = init_configs(inputs)
    splits = read_splits(inputs)
    base = resolve_recipe(base, recipe, splits.identity)
    final = (list(final_seeds) if final_seeds is not None else list(seeds)) if splits.final is not None else None
    plan = plan_sweep(base, lrs, weight_decays, seeds, len(inits), grid_batch, final, rule)
    if plan.configurations > 1 and splits.val is None:
        raise InputError("a sweep over several init / lr / weight decay values needs validation data",
                         "pass --val SPLIT or --val-embeddings FILE")
    check_init_k(inputs, recipe, int(splits.identity["num_patches"]))
    data = prepare(inputs, splits, base, inits, out, runtime.device, plan.points)
    sig = signature(plan, data, runtime.record())
    partial = partial_path(out)
    state = load_resume_state(partial, sig, resume)
    meta = checkpoint_meta(data, base, runtime, recipe)
    run_sweep = halving_sweep if plan.halving else sweep_runs
    sweep_done, sweep_models = run_sweep(plan, data, state, meta | {"signature": sig}, runtime, partial)
    annotate(sweep_done.done, plan)  # a grid's runs: one rung, the last epoch (a halving sweep's have theirs)
    chosen = choose(plan, sweep_done.done, splits.val is not None, base.tie_break)
    sweep = sweep_record(chosen, data.sources, sweep_done.done, base.tie_break, data.candidate_source(chosen[0]),
                         plan)
    if splits.final is None:
        kept = selected_sweep_runs(sweep_done, sweep_models, chosen)
    else:
        kept = final_runs(plan, data, inputs, out, chosen, state.progress_of("final"),
                          meta | {"signature": sig, "sweep_done": sweep_done.done}, runtime, partial)
    return _finish(out, meta, kept, sweep, data, runtime, partial)


def _finish(out: Path, meta: dict[str, Any], kept: CheckpointRuns, sweep: dict[str, Any], data: TuneData,
            runtime: Runtime, partial: Path) -> TuneOutcome:
    """Write the checkpoint (its runs, the sweep, the selection), drop the resume state, show the sweep."""
    runs = sweep["runs"]
    meta = meta | kept.meta | {"runs": kept.runs, "selection": sweep["chosen"], "sweep_size": len(runs),
                               "sweep": sweep}
    write_checkpoint(out, kept.tensors, meta, sweep, partial)
    if len(runs) > 1 and runtime.show_progress:  # the benchmark runs many tunes quietly
        render_sweep(sweep)
    return TuneOutcome(checkpoint=out, sweep=sweep, models=kept.models, backbone=data.backbone)


def tune_plan(inputs: TuneInputs, plan: Any, out: str | os.PathLike, **kwargs: Any) -> TuneOutcome:
    """`tune` driven by a resolved recipe (``recipes.plan(...)``): its grids, init sweep and final seeds."""
    from .inits import InitConfig

    if inputs.init_grid is None:
        template = inputs.init or InitConfig(method=plan.init_method)
        template = replace(template, method=plan.init_method, prompt_length=template.prompt_length
                           or plan.prompt_length or None)  # None: --arch full (no prompts)
        candidates = [replace(template, **g) for g in plan.init_grid]
        if inputs.prompts is None:
            inputs = replace(inputs, init_grid=candidates)
        for init in candidates if inputs.prompts is not None else []:  # unused, but a wrong value is refused
            check_vipamin_choices(init)
    return tune(inputs, plan.base, plan.lrs, plan.weight_decays, plan.seeds, out,
                final_seeds=plan.final_seeds if inputs.has_final else None, recipe=plan, **kwargs)
