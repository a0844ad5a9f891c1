"""The sweep as an explicit plan: its candidates, the grid-batch groups they train in, the final seeds.

A candidate (:class:`GridPoint`) is one init configuration x lr x weight decay x seed; the list is
init-major, then lr, weight decay, seed, and a candidate's index in it names it everywhere (resume
state, the checkpoint's sweep record). Candidates train ``grid_batch`` at a time in one loop over the
frozen backbone; :func:`batch_groups` forms those groups from any subset of candidates, so a sweep
that drops candidates part-way can re-form its groups from the survivors. Under torchrun each rank
trains its share of the groups (:func:`rank_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError
from ..train import TuneConfig
from .halving import SweepRule


@dataclass
class GridPoint:
    """One configuration of the grid: which init configuration seeds it and how it trains.

    The grid is a plain list of these (init-major, then lr, weight decay, seed), so it can be
    split into shards that train independently.
    """

    init_index: int
    config: TuneConfig

    @property
    def key(self) -> tuple[int, float, float]:
        """What selection compares: the configuration without its seed."""
        return self.init_index, self.config.lr, self.config.weight_decay


@dataclass
class SweepPlan:
    """What a tune trains: the sweep's candidates, how many train together, and the final runs' seeds
    (None: no final stage; the selected configuration's sweep runs are the checkpoint)."""

    points: list[GridPoint]
    grid_batch: int
    final_seeds: list[int] | None
    configurations: int = 1  # init configurations x lrs x weight decays: more than one needs validation data
    rule: SweepRule = SweepRule()  # grid, or halving with its eta and first rung

    @property
    def rungs(self) -> list[int]:
        """The epochs the sweep's candidates are scored (and pruned) at; a grid's one rung is the last epoch.
        A single configuration has nothing to prune: it trains straight to the end."""
        epochs = self.points[0].config.epochs
        return self.rule.rungs(epochs) if self.configurations > 1 else [epochs]

    @property
    def halving(self) -> bool:
        """Whether the sweep stops candidates part-way (halving with more than one rung)."""
        return len(self.rungs) > 1

    def groups(self) -> list[list[int]]:
        """The sweep's groups as one process trains them."""
        return batch_groups(list(range(len(self.points))), self.grid_batch)

    def final_points(self, chosen: tuple[int, float, float]) -> list[GridPoint]:
        """The selected configuration once per final seed, seeded from the final split's prompts (index 0)."""
        config = next(pt.config for pt in self.points if pt.key == chosen)
        return [GridPoint(0, replace(config, seed=s)) for s in self.final_seeds or []]

    def final_batch(self) -> int:
        return max(1, min(self.grid_batch, len(self.final_seeds or [])))


def grid_points(base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
                num_inits: int = 1) -> list[GridPoint]:
    """The sweep as an explicit list: init configuration x lr x weight decay x seed."""
    for what, values in (("--lr", lrs), ("--weight-decay", weight_decays), ("--seeds", seeds)):
        if not values:
            raise InputError(f"{what} is empty", f"pass at least one value to {what}")
    return [GridPoint(i, replace(base, lr=lr, weight_decay=wd, seed=s))
            for i in range(num_inits) for lr in lrs for wd in weight_decays for s in seeds]


def plan_sweep(base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int], num_inits: int,
               grid_batch: int | None, final_seeds: list[int] | None, rule: SweepRule | None = None) -> SweepPlan:
    """The candidates (each checked), the group size (default: all at once), the final seeds
    (``final_seeds`` None with a final stage: the sweep's ``seeds``) and the sweep rule (default grid)."""
    points = grid_points(base, lrs, weight_decays, seeds, num_inits)
    for pt in points:
        pt.config.validate()
    group = 1 if base.arch == "full" else max(1, min(grid_batch or len(points), len(points)))  # own backbone copy
    return SweepPlan(points, group, final_seeds, num_inits * len(lrs) * len(weight_decays),
                     (rule or SweepRule()).resolved(base.epochs, base.warmup_epochs))


def batch_groups(candidates: list[int], grid_batch: int) -> list[list[int]]:
    """Consecutive runs of ``grid_batch`` candidates: the groups one process trains them in."""
    return [candidates[first: first + grid_batch] for first in range(0, len(candidates), grid_batch)]


def rank_groups(points: int, grid_batch: int) -> tuple[list[list[int]], bool]:
    """This process's groups of a stage of ``points`` candidates, and whether it trains them data-parallel.

    Under torchrun whole groups are dealt round-robin over the ranks (each candidate trains in the
    same group as in one process), or a lone candidate trains data-parallel on every rank.
    """
    from .. import distributed

    groups = batch_groups(list(range(points)), grid_batch)
    if not distributed.launched():
        return groups, False
    if points == 1:
        return [[0]], True
    return distributed.shard(groups), False
