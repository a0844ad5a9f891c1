"""The halving sweep: train the candidates rung by rung, prune after each rung, finish the survivors.

Each rung is a stage (:mod:`.stage`) over the runs still in the race, grouped as a grid groups them
(:func:`.plan.batch_groups`, so the groups re-form as candidates drop out) and, under torchrun, dealt
round-robin over the ranks. A rung trains each run from where it paused to the rung's epoch on the
full schedule over --epochs and pauses it: its weights, optimizer and EMA state and its run state
stay in the resume state (``paused{i}.*``), so it continues later exactly as if it had never
stopped. After the rung every configuration still in the race is scored and the best ceil(n / eta)
go on (:mod:`.halving`: the same rule :func:`.halving.replay` applies to a grid's curves). A pruned
run keeps its record (history to the rung) but no weights; a run that diverged stops there (it
would only add zero scores) and keeps its weights, as a grid keeps a diverged run's. The last rung
trains the survivors to --epochs and records them as a grid sweep does; selection reads only those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..train import RunState
from .halving import config_score, score_at, survivors
from .inputs import TuneData, on_device
from .plan import SweepPlan, batch_groups
from .resume import ResumeState, StageProgress
from .selection import run_key
from .stage import Runtime, Stage, _StateFile, gather_stage, run_record, run_stage


def halving_sweep(plan: SweepPlan, data: TuneData, state: ResumeState, resume_meta: dict[str, Any],
                  runtime: Runtime, partial: Path) -> tuple[StageProgress, dict[int, Any]]:
    """The sweep stage of ``--sweep halving``: its runs (every candidate, in candidate order, each with
    its rung history) and the models trained to the end in this call, by candidate index."""
    if state.stage != "sweep":
        return StageProgress(done=state.sweep_done or []), {}
    progress = state.progress
    progress.index = progress.index if progress.index is not None else list(range(len(progress.done)))
    progress.halving = progress.halving or {"rung": 0, "pruned": {}, "scores": {}}
    train_xy = on_device(data.splits.train, runtime.device)
    val = data.splits.val
    assert val is not None  # several configurations: checked before (a sweep needs validation data)
    rungs, models = plan.rungs, {}
    for r in range(progress.halving["rung"], len(rungs)):
        stage = Stage("sweep", plan.points, data.candidate_prompts(), train_xy, (val["tokens"], val["labels"]),
                      _rung_groups(plan, progress), progress, resume_meta, tolerate=True, stop=rungs[r],
                      start=rungs[r - 1] if r else 0, label=f"rung {r + 1} of {len(rungs)}: to epoch {rungs[r]}")
        models.update(run_stage(stage, data, runtime, partial))
        if r + 1 < len(rungs):
            _close_rung(stage, plan, r, partial)
    book = progress.halving
    done = _in_candidate_order(gather_stage(stage))
    data.slots.record(done.done, done.index or list(range(len(done.done))), data.sources)
    annotate(done.done, plan, book)
    return done, models


def _active(plan: SweepPlan, progress: StageProgress) -> list[int]:
    """The runs still in the race: neither pruned nor stopped (both are recorded as done)."""
    done = set(progress.index or [])
    return [i for i in range(len(plan.points)) if i not in done]


def _rung_groups(plan: SweepPlan, progress: StageProgress) -> list[list[int]]:
    """This process's groups of the rung: the runs in the race in grid-batch groups, under torchrun
    dealt round-robin (group g to rank g % world, as a grid's groups are)."""
    from .. import distributed

    groups = batch_groups(_active(plan, progress), plan.grid_batch)
    return distributed.shard(groups) if distributed.launched() else groups


def _history(progress: StageProgress, i: int) -> list[dict[str, Any]]:
    if i in progress.paused:
        return progress.paused[i]["history"]
    return progress.done[progress.index.index(i)]["history"]


def _close_rung(stage: Stage, plan: SweepPlan, r: int, partial: Path) -> None:
    """After rung ``r``: score every configuration in the race, keep the best ceil(n / eta), record
    the pruned (and diverged) runs, hand the survivors to the ranks that train them next, save."""
    progress = stage.progress
    book = progress.halving
    _share_paused(progress)
    epoch = plan.rungs[r]
    members: dict[tuple[int, float, float], list[int]] = {}
    for i, pt in enumerate(plan.points):
        if str(i) not in book["pruned"]:
            members.setdefault(pt.key, []).append(i)
    scores = {k: config_score([_history(progress, i) for i in idx], epoch) for k, idx in members.items()}
    kept = set(survivors(scores, plan.rule.eta, plan.points[0].config.tie_break))
    for key, idx in members.items():
        for i in idx:
            book["scores"].setdefault(str(i), []).append(
                {"rung": r, "epoch": epoch, "val_top1": score_at(_history(progress, i), epoch), "score": scores[key]})
            if key not in kept:
                book["pruned"][str(i)] = r
            if i in progress.paused and (key not in kept or progress.paused[i]["history"][-1].get("diverged")):
                _retire(stage, i, keep_weights=key in kept)
    book["rung"] = r + 1
    _hand_over(plan, progress)
    _StateFile(stage, partial).save()


def _retire(stage: Stage, i: int, keep_weights: bool) -> None:
    """A paused run leaves the race: its record joins the finished runs; its weights only when its
    configuration is still in the race (a diverged run of a surviving configuration, kept as a grid
    keeps one: its evaluation weights)."""
    progress = stage.progress
    progress.done.append(run_record(stage.points[i], RunState(**progress.paused.pop(i))))
    progress.index.append(i)
    prefix = f"paused{i}."
    mine = {k[len(prefix):]: v for k, v in progress.paused_tensors.items() if k.startswith(prefix)}
    progress.paused_tensors = {k: v for k, v in progress.paused_tensors.items() if not k.startswith(prefix)}
    if keep_weights and mine:
        weights = {k: v for k, v in mine.items() if not k.startswith(("optim.", "ema."))}
        weights |= {k[len("ema."):]: v for k, v in mine.items() if k.startswith("ema.")}
        progress.tensors.update({f"done{i}.{k}": v for k, v in weights.items()})


def _share_paused(progress: StageProgress) -> None:
    """Under torchrun, every rank's paused run states on every rank (the scores need them all)."""
    from .. import distributed

    if not distributed.launched():
        return
    for part in distributed.exchange(progress.paused):
        for i, st in part.items():
            if i not in progress.paused or st["epoch"] > progress.paused[i]["epoch"]:
                progress.paused[i] = st


def _hand_over(plan: SweepPlan, progress: StageProgress) -> None:
    """Under torchrun, move each survivor's training state to the rank that trains it at the next rung."""
    from .. import distributed

    if not distributed.launched():
        return
    me, world = distributed.rank(), distributed.world_size()
    owner = {i: g % world for g, group in enumerate(batch_groups(_active(plan, progress), plan.grid_batch))
             for i in group}
    held: dict[int, dict[str, Any]] = {}
    for k, v in progress.paused_tensors.items():
        held.setdefault(int(k.split(".", 1)[0][len("paused"):]), {})[k] = v
    outgoing = {i: t for i, t in held.items() if owner.get(i, me) != me}
    progress.paused_tensors = {k: v for i, t in held.items() if i not in outgoing for k, v in t.items()}
    for part in distributed.exchange(outgoing):
        for i, tensors in part.items():
            if owner[i] == me:
                progress.paused_tensors.update(tensors)


def _in_candidate_order(progress: StageProgress) -> StageProgress:
    """The finished runs sorted by candidate index (so position i is candidate i, as a grid's are)."""
    order = sorted(range(len(progress.done)), key=lambda j: progress.index[j])
    return StageProgress(done=[progress.done[j] for j in order], tensors=progress.tensors,
                         index=[progress.index[j] for j in order])


def annotate(runs: list[dict[str, Any]], plan: SweepPlan, book: dict[str, Any] | None = None) -> None:
    """Add each run's rung history to its record (``runs`` in candidate order): ``epochs_trained``,
    ``rung_scores`` (per rung it reached: the rung, its epoch, the run's val top-1 and its
    configuration's score) and ``pruned_at_rung`` (None: it reached the last rung). A grid has one
    rung, the last epoch. Records that have it already (a run resumed after the sweep) are kept."""
    if all("epochs_trained" in run for run in runs):
        return
    book = book or {"scores": {}, "pruned": {}}
    last, epoch = len(plan.rungs) - 1, plan.rungs[-1]
    validated = all(run["final_val_top1"] is not None for run in runs)
    alive: dict[tuple[int, float, float], list[Any]] = {}
    for i, run in enumerate(runs):
        if str(i) not in book["pruned"]:
            alive.setdefault(run_key(run), []).append(run["history"])
    scores = {k: config_score(h, epoch) for k, h in alive.items()} if validated else {}
    for i, run in enumerate(runs):
        pruned = book["pruned"].get(str(i))
        final = [] if pruned is not None or not validated else [
            {"rung": last, "epoch": epoch, "val_top1": score_at(run["history"], epoch), "score": scores[run_key(run)]}]
        run.update(epochs_trained=len(run["history"]), rung_scores=book["scores"].get(str(i), []) + final,
                   pruned_at_rung=pruned)
