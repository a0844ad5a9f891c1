"""Selection on validation: the (init configuration, lr, weight decay) with the best mean last-epoch
validation top-1 over seeds (a halving sweep: among the configurations that reached the last rung),
and the sweep record the checkpoint and ``<out>.sweep.json`` keep."""

from __future__ import annotations

import statistics
from typing import Any

from .halving import best
from .plan import SweepPlan


def run_key(run: dict[str, Any]) -> tuple[int, float, float]:
    """A finished run's configuration without its seed: (init index, lr, weight decay)."""
    return int(run.get("init_index", 0)), run["config"]["lr"], run["config"]["weight_decay"]


def select(runs: list[dict[str, Any]], tie_break: str = "smaller-lr") -> tuple[int, float, float]:
    """The (init config, lr, wd) with the best mean last-epoch val top-1 over seeds.

    Ties go to the smaller lr (``larger-lr``: the larger, as VAPT), then the smaller weight decay,
    then the earlier init configuration.
    """
    groups: dict[tuple[int, float, float], list[float]] = {}
    for r in runs:
        groups.setdefault(run_key(r), []).append(r["final_val_top1"])
    return best({k: statistics.fmean(v) for k, v in groups.items()}, tie_break)


def choose(plan: SweepPlan, runs: list[dict[str, Any]], validated: bool, tie_break: str) -> tuple[int, float, float]:
    """The selected configuration among those not pruned; without validation data (a single
    configuration) the first one."""
    if validated:
        return select([r for r in runs if r.get("pruned_at_rung") is None], tie_break)
    first = plan.points[0]
    return 0, first.config.lr, first.config.weight_decay


def sweep_record(chosen: tuple[int, float, float], sources: list[dict[str, Any]], runs: list[dict[str, Any]],
                 tie_break: str, chosen_source: dict[str, Any], plan: SweepPlan) -> dict[str, Any]:
    """The sweep as the checkpoint records it: the criterion, the choice (``chosen_source``: the init
    that stands for the chosen init candidate), the inits (one per init slot), every run, how it swept
    (``mode``, its rungs) and its compute: epochs trained summed over runs, beside what the full grid
    would have trained."""
    criterion = (f"mean last-epoch val top-1 over seeds; ties to the {tie_break.split('-')[0]} lr, "
                 "then the smaller weight decay, then the earlier init config")
    if plan.rule.mode == "halving":
        criterion = (f"successive halving (eta {plan.rule.eta}, rungs at epochs {plan.rungs}): after each rung "
                     f"the best ceil(n/{plan.rule.eta}) configurations by mean val top-1 over seeds at that "
                     f"epoch go on; among those reaching the last, the {criterion}")
    return {"criterion": criterion,
            "chosen": {"init_index": chosen[0], "lr": chosen[1], "weight_decay": chosen[2],
                       "init": chosen_source["config"]},
            "inits": sources, "runs": runs, **sweep_cost(plan, runs)}


def sweep_cost(plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How the sweep ran and what it spent (candidate-epochs: epochs trained, summed over its runs)."""
    epochs = plan.points[0].config.epochs
    rule = {"mode": plan.rule.mode, "rungs": plan.rungs}
    if plan.rule.mode == "halving":
        rule |= {"eta": plan.rule.eta, "min_epochs": plan.rule.min_epochs}
    return rule | {"candidate_epochs": sum(r.get("epochs_trained", len(r["history"])) for r in runs),
                   "grid_candidate_epochs": epochs * len(runs)}
