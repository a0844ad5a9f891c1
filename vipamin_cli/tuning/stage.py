"""Run a stage: train its candidates group by group, save resume state after every epoch, show progress.

A stage (the sweep, or the final runs) is a list of candidates, the groups this process trains them
in, and its progress so far (:class:`~.resume.StageProgress`). Each group's models are built from
their init's prompts, restored from the resume state when the run stopped inside that group, and
trained together by :func:`~vipamin_cli.train.train_group`; each finished candidate's evaluation
weights are recorded under its candidate index.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import save_artifact
from ..errors import InputError, Interrupted
from ..train import RunState, build_model, config_dict, optimizer_tensors, train_group, trainable_state
from ..ui import progress_bar
from .inputs import TuneData, on_device
from .plan import GridPoint, SweepPlan, rank_groups
from .resume import ResumeState, StageProgress


@dataclass
class Runtime:
    """How training runs: the device, the resolved precision and compile choice, progress, the epoch hook."""

    device: torch.device
    precision: str  # bf16 | fp32, resolved
    compile_blocks: bool
    show_progress: bool = True
    on_epoch: Any = None  # on_epoch(first_index, state[, stage]) after each saved epoch

    def record(self) -> dict[str, Any]:
        """What the checkpoint and the resume signature record of the runtime."""
        return {"precision": self.precision, "compile": self.compile_blocks, "device": self.device.type}


@dataclass
class Stage:
    """One training stage: its candidates, their data, the groups this process trains, its progress."""

    name: str  # sweep | final
    points: list[GridPoint]
    prompts: list[torch.Tensor]  # per candidate: the init it starts from
    train_xy: tuple[torch.Tensor, ...]  # tokens, labels (, augmented views)
    val_xy: tuple[torch.Tensor, torch.Tensor] | None
    groups: list[list[int]]
    progress: StageProgress
    resume_meta: dict[str, Any]  # the resume state's metadata besides the progress
    tolerate: bool = False  # a diverging candidate is recorded (a sweep) instead of failing the run
    data_parallel: bool = False  # under torchrun: every rank trains the (single) group together
    stop: int | None = None  # a halving rung: train to this epoch (None: to the last)
    start: int = 0  # the epoch the stage's candidates start from (a rung: the previous rung's)
    label: str = ""  # shown beside the stage's name in the progress bar

    def pauses(self) -> bool:
        """Whether the stage ends at a rung before the last epoch (its runs are paused, not finished)."""
        return self.stop is not None and self.stop < self.points[0].config.epochs

    def finished(self) -> set[int]:
        """The candidates with nothing left to train in this stage: finished, or paused at its rung."""
        paused = {i for i, st in self.progress.paused.items() if self.stop is not None and st["epoch"] >= self.stop}
        return set(self.progress.index or []) | paused


class _StateFile:
    """Writes the stage's resume state: the finished runs plus, while a group trains, its state."""

    def __init__(self, stage: Stage, partial: Path) -> None:
        from .. import distributed

        self.stage, self.path, self.launched = stage, partial, distributed.launched()

    def save(self, current: dict[str, Any] | None = None, current_tensors: dict[str, torch.Tensor] | None = None,
             ) -> None:
        progress = self.stage.progress
        meta = self.stage.resume_meta | {"partial": True, "stage": self.stage.name, "done": progress.done,
                                         "current": current}
        meta |= {"done_index": progress.index} if self.launched or progress.halving is not None else {}
        if progress.halving is not None:
            meta |= {"halving": progress.halving, "paused": [[i, st] for i, st in sorted(progress.paused.items())]}
        save_artifact(self.path, dict(progress.tensors) | progress.paused_tensors | (current_tensors or {}),
                      "checkpoint", meta)


def sweep_runs(plan: SweepPlan, data: TuneData, state: ResumeState, resume_meta: dict[str, Any], runtime: Runtime,
               partial: Path) -> tuple[StageProgress, dict[int, Any]]:
    """The sweep stage: train every candidate (unless the run being resumed had finished the sweep);
    its runs, and the models trained in this call by candidate index."""
    if state.stage != "sweep":
        return StageProgress(done=state.sweep_done or []), {}
    groups, data_parallel = rank_groups(len(plan.points), plan.grid_batch)
    val = data.splits.val
    stage = Stage("sweep", plan.points, data.candidate_prompts(), on_device(data.splits.train, runtime.device),
                  (val["tokens"], val["labels"]) if val is not None else None, groups, state.progress, resume_meta,
                  tolerate=len(plan.points) > 1, data_parallel=data_parallel)
    models = run_stage(stage, data, runtime, partial)
    done = gather_stage(stage)
    data.slots.record(done.done, done.index or list(range(len(done.done))), data.sources)
    return done, models


def run_stage(stage: Stage, data: TuneData, runtime: Runtime, partial: Path) -> dict[int, Any]:
    """Train the stage's unfinished groups; the models trained here, by candidate index."""
    from ..train import epoch_steps

    if stage.progress.index is None:
        stage.progress.index = list(range(len(stage.progress.done)))
    base = stage.points[0].config
    per_group = ((stage.stop or base.epochs) - stage.start) * epoch_steps(stage.train_xy[0].shape[0], base)
    finished = stage.finished()
    state_file = _StateFile(stage, partial)
    models: dict[int, Any] = {}
    title = f"tune ({stage.name}{', ' + stage.label if stage.label else ''})"
    with progress_bar(title, len(stage.groups) * per_group, runtime.show_progress) as bar:
        bar.advance(sum(set(g) <= finished for g in stage.groups) * per_group)
        for indices in stage.groups:
            if not set(indices) <= finished:
                models.update(_run_group(stage, indices, data, runtime, state_file, bar))
    return models


def _run_group(stage: Stage, indices: list[int], data: TuneData, runtime: Runtime, state_file: _StateFile,
               bar: Any) -> dict[int, Any]:
    """Train one group to the end (from its saved state when the run stopped in it) and record it."""
    from ..train import epoch_steps

    configs = [stage.points[i].config for i in indices]
    group = [build_model(data.backbone.model, stage.prompts[i], data.num_classes, c,
                         data.pool, data.grid) for i, c in zip(indices, configs, strict=True)]
    if stage.data_parallel:
        _check_same_start(stage)
    states, opt_states, ema_states, saved = _restore(stage.progress, indices, group)
    if states is not None:
        bar.advance((states[0].epoch - stage.start) * epoch_steps(stage.train_xy[0].shape[0], configs[0]))
    hooks = _GroupHooks(stage, indices, state_file, bar, runtime, saved)
    try:
        states = train_group(group, stage.train_xy, stage.val_xy, configs, runtime.device, states=states,
                             optimizer_states=opt_states, on_epoch=hooks.epoch,
                             on_step=hooks.step if runtime.show_progress else None, tolerate_divergence=stage.tolerate,
                             precision=runtime.precision, compile_blocks=runtime.compile_blocks, ema_states=ema_states,
                             data_parallel=stage.data_parallel, stop_epoch=stage.stop)
    except KeyboardInterrupt:
        raise _interrupted(stage, indices, state_file.path) from None
    if runtime.show_progress:
        bar.advance(hooks.steps % 10)
    if stage.pauses():
        _pause(stage.progress, indices, states, hooks.tensors)
    models = {} if stage.pauses() else _record(stage, indices, group, states)
    stage.progress.current = None
    if state_file.launched or stage.pauses():  # this rank's finished groups must survive a peer's interruption
        state_file.save()
    return models


def _check_same_start(stage: Stage) -> None:
    """Data-parallel training: every rank must continue from the same epoch."""
    from .. import distributed

    current = stage.progress.current
    starts = distributed.exchange(current["states"][0]["epoch"] if current is not None else 0)
    if len(set(starts)) > 1:
        raise InputError(f"the ranks' resume states of {stage.name} stop at different epochs {starts}",
                         "delete the <out>.rank*.partial.safetensors files and run again")


def _saved_state(progress: StageProgress, indices: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The group's saved run states and tensors (as ``cur{g}.<name>``): the group in training when the
    run stopped, or (halving) its runs paused at the last rung; None: a fresh start."""
    current = progress.current
    if current is not None and current["indices"] == indices:
        return current["states"], progress.current_tensors
    if not indices or not all(i in progress.paused for i in indices):
        return None
    tensors: dict[str, torch.Tensor] = {}
    for g, i in enumerate(indices):
        tensors.update({f"cur{g}.{k[len(f'paused{i}.'):]}": v for k, v in progress.paused_tensors.items()
                        if k.startswith(f"paused{i}.")})
    return [progress.paused[i] for i in indices], tensors


def _restore(progress: StageProgress, indices: list[int], group: list[Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Load the group's saved weights into its models; its run, optimizer and EMA states (None: a fresh
    start) and the saved tensors."""
    saved = _saved_state(progress, indices)
    if saved is None:
        return None, None, None, {}
    run_states, tensors = saved
    states, opt_states, ema_states = [], [], []
    for g, m in enumerate(group):
        mine = {k[len(f"cur{g}."):]: v for k, v in tensors.items() if k.startswith(f"cur{g}.")}
        m.load_state_dict({k: v for k, v in mine.items() if not k.startswith(("optim.", "ema."))}, strict=False)
        opt_states.append({k[len("optim."):]: v for k, v in mine.items() if k.startswith("optim.")})
        ema_states.append({k[len("ema."):]: v for k, v in mine.items() if k.startswith("ema.")})
        states.append(RunState(**copy.deepcopy(run_states[g])))
    return states, opt_states, ema_states, tensors


def _pause(progress: StageProgress, indices: list[int], states: list[RunState], tensors: dict[str, Any]) -> None:
    """Keep the group's runs at the rung they reached: each one's run state and whole training state
    (weights, optimizer, EMA: the group's last saved epoch), so it can continue bit for bit."""
    for g, (i, st) in enumerate(zip(indices, states, strict=True)):
        progress.paused[i] = copy.deepcopy(vars(st))
        mine = f"paused{i}."
        progress.paused_tensors = {k: v for k, v in progress.paused_tensors.items() if not k.startswith(mine)}
        progress.paused_tensors.update({mine + k[len(f"cur{g}."):]: v for k, v in tensors.items()
                                        if k.startswith(f"cur{g}.")})


class _GroupHooks:
    """One group's callbacks: after each epoch save its state and call the caller's hook; every 10
    steps advance the progress bar (reading the loss syncs the device, so only now and then)."""

    def __init__(self, stage: Stage, indices: list[int], state_file: _StateFile, bar: Any, runtime: Runtime,
                 saved: dict[str, torch.Tensor]):
        self.stage, self.indices, self.state_file, self.bar = stage, indices, state_file, bar
        self.tensors = saved  # the group's state as last saved (``cur{g}.<name>``)
        self.on_epoch = runtime.on_epoch
        self.with_stage = self.on_epoch is not None and len(inspect.signature(self.on_epoch).parameters) >= 3
        self.live: dict[str, str] = {}
        self.steps = 0

    def epoch(self, models: list[Any], opts: list[Any], states: list[RunState]) -> None:
        last = states[0].history[-1]
        self.live["lr"] = f"{last['lr']:.2e}"
        if "val_top1" in last:
            self.live["val"] = f"{max(st.history[-1].get('val_top1', 0.0) for st in states):.1f}%"
        tensors: dict[str, torch.Tensor] = {}
        for g, (m, opt) in enumerate(zip(models, opts, strict=True)):
            tensors.update({f"cur{g}.{k}": v for k, v in trainable_state(m).items()})
            tensors.update({f"cur{g}.optim.{k}": v for k, v in optimizer_tensors(opt).items()})
            if m.ema is not None:
                tensors.update({f"cur{g}.ema.{k}": v for k, v in m.ema.state().items()})
        self.state_file.save({"indices": self.indices, "states": [vars(st) for st in states]}, tensors)
        self.tensors = tensors
        if self.on_epoch is not None:
            self.on_epoch(self.indices[0], states[0], *([self.stage.name] if self.with_stage else []))

    def step(self, n: int, losses: torch.Tensor) -> None:
        self.steps += 1
        if self.steps % 10 == 0:
            cfgs = [self.stage.points[i].config for i in self.indices]
            label = (f"lr={cfgs[0].lr:g} wd={cfgs[0].weight_decay:g} seed={cfgs[0].seed}" if len(cfgs) == 1
                     else f"{len(cfgs)} configs")
            self.bar.advance(10, run=label, loss=f"{float(losses.float().mean()):.3f}", **self.live)


def _interrupted(stage: Stage, indices: list[int], partial: Path) -> Interrupted:
    runs = f"run {indices[0] + 1}" if len(indices) == 1 else f"runs {indices[0] + 1}-{indices[-1] + 1}"
    kept = (f"{partial} keeps {runs} of {len(stage.points)} ({stage.name}) at the last completed epoch"
            if partial.exists() else "no epoch had completed, nothing was kept")
    return Interrupted(f"tune interrupted; {kept}", "run the same command with --resume")


def _record(stage: Stage, indices: list[int], group: list[Any], states: list[RunState]) -> dict[int, Any]:
    """Add the group's finished runs to the stage's progress (records, evaluation weights); their models."""
    from .. import distributed
    from ..train import evaluation_state

    who: dict[str, Any] = {}
    if distributed.launched():
        who = {"rank": "all" if stage.data_parallel else distributed.rank()}
    progress, models = stage.progress, {}
    for i, m, st in zip(indices, group, states, strict=True):
        progress.done.append(run_record(stage.points[i], st) | who)
        progress.index.append(i)
        final_state = evaluation_state(m)  # the EMA weights when the recipe keeps an EMA
        progress.tensors.update({f"done{i}.{k}": v for k, v in final_state.items()})
        m.load_state_dict(final_state, strict=False)
        models[i] = m.cpu()
    return models


def run_record(point: GridPoint, st: RunState) -> dict[str, Any]:
    """A finished (or pruned) run as the sweep records it: its configuration, history and last scores."""
    return {"config": config_dict(point.config), "init_index": point.init_index, "history": st.history,
            "best": st.best, "final_val_top1": st.history[-1].get("val_top1") if st.history else None,
            "final_train_loss": st.history[-1]["loss"],
            "diverged": bool(st.history and st.history[-1].get("diverged"))}


def gather_stage(stage: Stage) -> StageProgress:
    """Under torchrun, every rank's finished runs: the records (on every rank, in candidate order) and
    the tensors (on rank 0; a data-parallel run, the same on every rank, is taken from rank 0)."""
    from .. import distributed

    progress = stage.progress
    if not distributed.launched():
        return progress
    shared = distributed.exchange([(i, r) for i, r in zip(progress.index or [], progress.done, strict=True)])
    records: dict[int, dict[str, Any]] = {}
    for entries in shared:
        for i, r in entries:
            records.setdefault(i, r)
    tensors: dict[str, torch.Tensor] = {}
    for part in distributed.gather_to_main(progress.tensors) or []:
        for k, v in part.items():
            tensors.setdefault(k, v)
    stage.progress = StageProgress(done=[records[i] for i in sorted(records)], tensors=tensors, index=sorted(records))
    return stage.progress
