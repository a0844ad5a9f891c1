"""Successive halving as pure functions: the rung schedule, who survives a rung, and a replay on curves.

A halving sweep trains every configuration with the full schedule (warm-up + cosine over --epochs)
up to the first rung, scores each configuration on validation, keeps the best ceil(n / eta) (at
least one), trains those on to the next rung, and so on until the survivors reach --epochs, where
selection picks one exactly as a grid sweep does. Rungs sit at R, R*eta, R*eta^2, ... (below
--epochs), then --epochs; R (--min-epochs) defaults to ceil(epochs / eta^2), so that there are at
most three rungs (R, R*eta and --epochs), but at least --warmup-epochs + 1: the warm-up's first
epoch trains at lr 0, and a rung inside the warm-up would rank barely trained candidates.

The score of a configuration (init configuration, lr, weight decay) at a rung of epoch e is the
mean over its seeds of each run's validation top-1 after epoch e, the quantity selection reads at
the last epoch; a diverged run scores 0. Ranking and ties follow selection: the higher score, then
the smaller lr (``larger-lr``: the larger), the smaller weight decay, the earlier init configuration.

The real sweep (:mod:`.rungs`) and :func:`replay` (the rule applied to a grid sweep's recorded
per-epoch validation curves) decide with these same functions, so they agree run for run.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

SWEEPS = ("grid", "halving")
DEFAULT_ETA = 3
Key = tuple[int, float, float]  # (init index, lr, weight decay): a configuration without its seed


def default_min_epochs(epochs: int, eta: int, warmup_epochs: int = 0) -> int:
    """The first rung by default: epochs / eta^2 rounded up, and past the warm-up (its first epoch
    trains at lr 0, so a rung inside it would rank untrained candidates); at most ``epochs``."""
    return min(epochs, max(1, -(-epochs // (eta * eta)), warmup_epochs + 1))


def halving_schedule(epochs: int, eta: int, min_epochs: int) -> list[int]:
    """The rung epochs: ``min_epochs * eta^k`` while below ``epochs``, then ``epochs``."""
    rungs, at = [], min_epochs
    while at < epochs:
        rungs.append(at)
        at *= eta
    return rungs + [epochs]


def keep_count(n: int, eta: int) -> int:
    """How many of ``n`` configurations go on to the next rung: ceil(n / eta), at least one."""
    return max(1, -(-n // eta))


def preference(key: Key, score: float, tie_break: str = "smaller-lr") -> tuple[float, float, float, int]:
    """What ranks configurations (larger is better): the score, then the tie-breaks of selection."""
    sign = 1.0 if tie_break == "larger-lr" else -1.0
    return score, sign * key[1], -key[2], -key[0]


def best(scores: Mapping[Key, float], tie_break: str = "smaller-lr") -> Key:
    """The configuration selection picks among ``scores``."""
    return max(scores, key=lambda k: preference(k, scores[k], tie_break))


def survivors(scores: Mapping[Key, float], eta: int, tie_break: str = "smaller-lr") -> list[Key]:
    """The configurations that continue past a rung: the best ceil(n / eta), best first."""
    ranked = sorted(scores, key=lambda k: preference(k, scores[k], tie_break), reverse=True)
    return ranked[:keep_count(len(scores), eta)]


def score_at(history: Sequence[Mapping[str, Any]], epoch: int) -> float:
    """A run's validation top-1 after ``epoch`` (1-based); a run that diverged and stopped earlier: 0."""
    if len(history) < epoch:
        if history and history[-1].get("diverged"):
            return 0.0
        raise ValueError(f"the run has {len(history)} epochs, not {epoch}")
    value = history[epoch - 1].get("val_top1")
    if value is None:
        raise ValueError(f"epoch {epoch} of the run was not validated (validate every epoch: --val-every 1)")
    return float(value)


def config_score(histories: Sequence[Sequence[Mapping[str, Any]]], epoch: int) -> float:
    """A configuration's score at ``epoch``: the mean over its seeds' runs."""
    return statistics.fmean(score_at(h, epoch) for h in histories)


def rung_sizes(configurations: int, eta: int, rungs: Sequence[int]) -> list[int]:
    """How many configurations train in each rung (none diverging): n, ceil(n / eta), ..."""
    sizes = [configurations]
    for _ in rungs[1:]:
        sizes.append(keep_count(sizes[-1], eta))
    return sizes


@dataclass(frozen=True)
class SweepRule:
    """How a tune sweeps: ``grid`` (every candidate to the end) or ``halving`` with ``eta`` and the
    first rung ``min_epochs`` (None: the defaults, resolved by :meth:`resolved`)."""

    mode: str = "grid"
    eta: int | None = None
    min_epochs: int | None = None

    def resolved(self, epochs: int, warmup_epochs: int = 0) -> SweepRule:
        """The rule checked against ``epochs``, defaults filled in; bad values are refused."""
        from .. import validate as v

        if self.mode not in SWEEPS:
            raise InputError(f"unknown --sweep '{self.mode}'", "use --sweep grid or --sweep halving")
        if self.mode == "grid":
            for option, value in (("--eta", self.eta), ("--min-epochs", self.min_epochs)):
                if value is not None:
                    raise InputError(f"{option} {value} applies to --sweep halving only (this sweep is a grid)",
                                     f"drop {option}, or pass --sweep halving")
            return self
        eta = v.integer(self.eta if self.eta is not None else DEFAULT_ETA, "--eta", minimum=2, example=3)
        default = default_min_epochs(epochs, eta, warmup_epochs)
        first = self.min_epochs if self.min_epochs is not None else default
        v.integer(first, "--min-epochs", minimum=1, example=default)
        if first > epochs:
            raise InputError(f"--min-epochs {first} is above --epochs {epochs}",
                             f"pass --min-epochs from 1 to {epochs} (default {default})")
        return SweepRule("halving", eta, first)

    def rungs(self, epochs: int) -> list[int]:
        """The rung epochs (a grid: one rung, the last epoch)."""
        return halving_schedule(epochs, self.eta, self.min_epochs) if self.mode == "halving" else [epochs]

    def record(self, epochs: int) -> dict[str, Any]:
        rule = {"mode": self.mode, "rungs": self.rungs(epochs)}
        return rule | ({"eta": self.eta, "min_epochs": self.min_epochs} if self.mode == "halving" else {})


@dataclass
class Replay:
    """What the halving rule does on recorded curves: the selection, who was pruned at which rung,
    each configuration's score at every rung it reached, and the compute it spends."""

    rungs: list[int]
    selected: Key
    pruned_at: dict[Key, int] = field(default_factory=dict)
    scores: dict[Key, list[float]] = field(default_factory=dict)
    candidate_epochs: int = 0  # epochs trained, summed over runs (every seed counts)
    grid_candidate_epochs: int = 0


def replay(curves: Mapping[Key, Sequence[Sequence[Mapping[str, Any]]]], epochs: int, eta: int, min_epochs: int,
           tie_break: str = "smaller-lr") -> Replay:
    """The halving rule applied to a grid sweep: ``curves`` maps each configuration to its seeds'
    per-epoch histories (records with ``val_top1``, as a sweep records them)."""
    rungs = halving_schedule(epochs, eta, min_epochs)
    alive = list(curves)
    out = Replay(rungs, alive[0], scores={k: [] for k in curves},
                 grid_candidate_epochs=epochs * sum(len(v) for v in curves.values()))
    previous = 0
    for r, epoch in enumerate(rungs):
        scores = {k: config_score(curves[k], epoch) for k in alive}
        out.candidate_epochs += (epoch - previous) * sum(len(curves[k]) for k in alive)
        for k in alive:
            out.scores[k].append(scores[k])
        if r == len(rungs) - 1:
            out.selected = best(scores, tie_break)
        else:
            kept = set(survivors(scores, eta, tie_break))
            out.pruned_at.update({k: r for k in alive if k not in kept})
            alive = [k for k in alive if k in kept]
        previous = epoch
    return out


def rung_history(run: Mapping[str, Any]) -> tuple[str, str, str]:
    """A run's rung history as table cells: epochs trained, where it was pruned ("-": it reached the
    last rung), and its configuration's score at each rung it reached ("epoch:score", "-" if none)."""
    pruned = run.get("pruned_at_rung")
    scores = run.get("rung_scores") or []
    at = next((s["epoch"] for s in scores if s["rung"] == pruned), None) if pruned is not None else None
    where = "-" if pruned is None else f"rung {pruned + 1}" + (f" (epoch {at})" if at is not None else "")
    shown = " ".join(f"{s['epoch']}:{s['score']:.1f}" for s in scores) or "-"
    return str(run.get("epochs_trained", len(run.get("history", [])))), where, shown


def sweep_headline(sweep: Mapping[str, Any]) -> str:
    """One line on how a sweep ran and what it spent: its mode, rungs and candidate-epochs."""
    mode = sweep.get("mode", "grid")
    spent = (f"{sweep['candidate_epochs']} of {sweep['grid_candidate_epochs']} candidate-epochs"
             if "candidate_epochs" in sweep else "")
    head = "grid sweep"
    if mode == "halving":
        head = f"halving sweep (eta {sweep.get('eta')}, rungs at epochs {sweep.get('rungs')})"
    return head + (f": {spent}" if spent else "")
