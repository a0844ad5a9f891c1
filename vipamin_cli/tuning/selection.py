"""Selection on validation: the (init configuration, lr, weight decay) with the best mean last-epoch
validation top-1 over seeds, and the sweep record the checkpoint and ``<out>.sweep.json`` keep."""

from __future__ import annotations

import statistics
from typing import Any

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
    sign = 1.0 if tie_break == "larger-lr" else -1.0
    return max(groups, key=lambda k: (statistics.fmean(groups[k]), sign * k[1], -k[2], -k[0]))


def choose(plan: SweepPlan, runs: list[dict[str, Any]], validated: bool, tie_break: str) -> tuple[int, float, float]:
    """The selected configuration; without validation data (a single configuration) the first one."""
    if validated:
        return select(runs, tie_break)
    first = plan.points[0]
    return 0, first.config.lr, first.config.weight_decay


def sweep_record(chosen: tuple[int, float, float], sources: list[dict[str, Any]], runs: list[dict[str, Any]],
                 tie_break: str, chosen_source: dict[str, Any]) -> dict[str, Any]:
    """The sweep as the checkpoint records it: the criterion, the choice (``chosen_source``: the init
    that stands for the chosen init candidate), the inits (one per init slot) and every run."""
    criterion = (f"mean last-epoch val top-1 over seeds; ties to the {tie_break.split('-')[0]} lr, "
                 "then the smaller weight decay, then the earlier init config")
    return {"criterion": criterion,
            "chosen": {"init_index": chosen[0], "lr": chosen[1], "weight_decay": chosen[2],
                       "init": chosen_source["config"]},
            "inits": sources, "runs": runs}
