"""How one benchmark cell trains: the preset's plain values (the default) or a named recipe's.

A :class:`CellProtocol` is everything a cell's sweep and final runs need besides the data: the base
TuneConfig (architecture, optimiser, schedule, batch, epochs, ...), the lr / weight-decay grids,
the sweep and final seeds, the init candidates and the prompt length. Without ``--recipe`` it is
built from the preset (runner.py, unchanged numbers); with ``--recipe NAME`` every cell resolves
that recipe (``recipes.plan``) for its method's architecture and init, ``--recipe own`` gives each
method its own paper's recipe, and the benchmark's tune options override the recipe in every cell.
``resolved`` keeps every value with its source (the recipe's reference, or ``option``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InputError

METHODS = ("random", "spt", "vipamin", "vapt", "linear", "full")
DEFAULT_METHODS = ("random", "spt", "vipamin", "vapt", "linear")  # full fine-tuning is asked for by name
# method -> (architecture, init of the static prompts); linear has neither, full (fine-tuning) no init.
METHOD_SETUP: dict[str, tuple[str | None, str | None]] = {
    "random": ("vpt-shallow", "random"), "spt": ("vpt-shallow", "spt"), "vipamin": ("vpt-shallow", "vipamin"),
    "vapt": ("vapt", "random"), "linear": (None, None), "full": ("full", None),
}
# --recipe own: each method its own paper's recipe; the linear probe trains on VIPAMIN's schedule.
OWN_RECIPES = {"random": "vpt", "spt": "spt", "vipamin": "vipamin", "vapt": "vapt", "linear": "vipamin",
               "full": "vpt-full"}
FULL_RECIPE = "vpt-full"  # the full cell's recipe under any --recipe: the papers' full fine-tuning row is VPT's
# benchmark overrides (Preset field names) -> recipes.plan arguments / TuneConfig fields
PLAN_OPTIONS = {"lrs": "lrs", "weight_decays": "weight_decays", "sweep_seeds": "seeds", "seeds": "final_seeds",
                "prompt_length": "prompt_length"}
CONFIG_OPTIONS = ("epochs", "warmup_epochs", "batch_size", "optimizer", "prompt_dropout")
PROMPT_ONLY = ("lrs", "prompt_length", "prompt_dropout")  # overrides the full cell does not take (--full-lr: lrs)
LINEAR_NOTE = ("the linear probe (benchmark/linear.py) takes the optimizer and its constants (betas, eps, "
               "momentum), batch size, lr scaling, schedule (per epoch or per iteration, floor), drop-last, epochs, "
               "warm-up, head init (kaiming, zeros or trunc-normal), the head weight decay, grids and seeds; it "
               "keeps no EMA")


def recipe_choices() -> tuple[str, ...]:
    from ..recipes import RECIPES

    return (*RECIPES, "own")


def _plain(obj: Any) -> Any:
    """JSON's view of ``obj`` (tuples become lists), so a signature read back compares equal."""
    return json.loads(json.dumps(obj))


@dataclass(frozen=True)
class CellProtocol:
    """One cell's protocol. ``base`` carries the grids' first lr / weight decay / final seed (as the
    preset's cells always did); ``init_grid`` lists the init candidates as InitConfig fields ({} = the
    method's init with its defaults)."""

    method: str
    base: Any  # TuneConfig
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    sweep_seeds: tuple[int, ...]
    seeds: tuple[int, ...]  # final runs
    init_grid: tuple[dict[str, Any], ...] = ({},)
    prompt_length: int | None = None  # None: the architecture's default
    recipe: str | None = None  # the named recipe the values came from (None: a preset)
    resolved: dict[str, Any] | None = None  # with a recipe: every value and its source

    @property
    def init_method(self) -> str | None:
        return METHOD_SETUP[self.method][1]

    def init_configs(self, device: str) -> list[Any]:
        """The init candidates as InitConfigs; ``[None]`` for full fine-tuning (no prompts, no init)."""
        from ..inits import InitConfig

        if self.init_method is None:
            return [None]
        return [InitConfig(method=self.init_method, prompt_length=self.prompt_length, device=device, **c)
                for c in self.init_grid]

    def units(self, grid_batch: int | None, sweep: Any = None) -> int:
        """Progress units of the cell: one per training-loop epoch (a grid-batched group counts once);
        a halving ``sweep`` (one tune over every init candidate): its rungs' groups, none diverging."""
        epochs = self.base.epochs
        runs = len(self.lrs) * len(self.weight_decays) * len(self.sweep_seeds)
        if self.method == "linear":
            return (runs + len(self.seeds)) * epochs
        gb = 1 if self.method == "full" else grid_batch or 10**9  # full fine-tuning: one configuration at a time
        final = -(-len(self.seeds) // min(gb, len(self.seeds))) * epochs
        if sweep is None or sweep.mode != "halving":
            return len(self.init_grid) * -(-runs // min(gb, runs)) * epochs + final
        return self._halving_units(gb, sweep) + final

    def _halving_units(self, gb: int, sweep: Any) -> int:
        from ..tuning.halving import rung_sizes

        configs = len(self.init_grid) * len(self.lrs) * len(self.weight_decays)
        rule = sweep.resolved(self.base.epochs, self.base.warmup_epochs)
        rungs = rule.rungs(self.base.epochs) if configs > 1 else [self.base.epochs]
        seeds, units, previous = len(self.sweep_seeds), 0, 0
        for size, epoch in zip(rung_sizes(configs, rule.eta or 1, rungs), rungs, strict=True):
            units += -(-size * seeds // min(gb, size * seeds)) * (epoch - previous)
            previous = epoch
        return units

    def describe(self) -> dict[str, Any]:
        """The resolved protocol as plain JSON (a recipe cell's signature holds it)."""
        return _plain({"config": asdict(self.base), "lrs": self.lrs, "weight_decays": self.weight_decays,
                       "sweep_seeds": self.sweep_seeds, "seeds": self.seeds, "init_method": self.init_method,
                       "init_grid": self.init_grid, "prompt_length": self.prompt_length})

    def validate(self) -> None:
        from .. import validate as v
        from ..parsing import distinct

        for lr in self.lrs:  # every lr: the --lr-floor check depends on it
            replace(self.base, lr=lr, weight_decay=self.weight_decays[0], seed=self.seeds[0]).validate()
        for s in (*self.seeds, *self.sweep_seeds):
            v.seed(s, "--seeds")
        for option, values in (("--lr", self.lrs), ("--weight-decay", self.weight_decays), ("--seeds", self.seeds),
                               ("the sweep seeds", self.sweep_seeds)):
            distinct(values, option)
        v.integer(self.prompt_length, "--prompt-length", minimum=1, example=10, optional=True)


def check_recipe(recipe: str) -> None:
    if recipe not in recipe_choices():
        raise InputError(f"unknown --recipe '{recipe}'", f"use one of {', '.join(recipe_choices())}")


def cell_recipe(recipe: str, method: str) -> str:
    """The named recipe a cell of ``method`` trains with under ``--recipe recipe``: the full cell
    always VPT's full fine-tuning (every paper's full fine-tuning row is VPT's end2end protocol)."""
    if method == "full":
        return FULL_RECIPE
    return OWN_RECIPES[method] if recipe == "own" else recipe


def cell_overrides(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The benchmark overrides (Preset field names, None dropped) that reach a cell of ``method``: the
    full cell takes ``full_lrs`` (--full-lr) as its lr grid and ignores the prompt options; the others
    ignore ``full_lrs``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    full_lrs = given.pop("full_lrs", None)
    if method == "linear":  # no prompts (under --recipe vpt-full its plan's architecture is full)
        given.pop("prompt_length", None)
    if method == "full":
        given = {k: v for k, v in given.items() if k not in PROMPT_ONLY}
        if full_lrs is not None:
            given["lrs"] = full_lrs
    return given


def recipe_protocol(method: str, recipe: str, overrides: dict[str, Any] | None = None,
                    init_grid: dict[str, list[Any]] | None = None, family: str = "") -> CellProtocol:
    """A cell's protocol under ``--recipe recipe`` (a name of `vipamin recipes`, or ``own``).

    The cell keeps its method's architecture and init; the prompt length is the recipe's for that
    architecture; the recipe's init grid applies when its init method is the cell's (VIPAMIN's
    (K, lambda) grid to the vipamin cell). ``overrides`` (Preset field names, None = not given)
    replace recipe values; ``init_grid`` (VIPAMIN's {"k": [...], "lam": [...]}) replaces the recipe's
    grid of a vipamin cell. ``family`` (the backbone's) resolves SPT's head weight decay and pool.
    """
    from ..recipes import for_backbone, get_recipe, plan

    check_recipe(recipe)
    name = cell_recipe(recipe, method)
    r = get_recipe(name)
    given = cell_overrides(method, overrides or {})
    bad = sorted(set(given) - set(PLAN_OPTIONS) - set(CONFIG_OPTIONS))
    if bad:
        raise ValueError(f"unknown recipe fields {bad}")
    arch, init_method = METHOD_SETUP[method]
    config = {k: given[k] for k in CONFIG_OPTIONS if k in given}
    epochs = config.get("epochs", r.config["epochs"].value)
    capped = "warmup_epochs" not in config and r.config["warmup_epochs"].value >= epochs
    if capped:  # as a preset does: a recipe's warm-up must stay below shortened epochs
        config["warmup_epochs"] = epochs // 10
    own_init = init_method if init_method not in (None, r.init_method.value) else None
    grid = {k: list(v) for k, v in (init_grid or {}).items() if v} if init_method == "vipamin" else {}
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else None
    p = plan(name, init_method=own_init, init_grid=combos, arch=arch, **config,
             **{PLAN_OPTIONS[k]: list(v) if isinstance(v, (list, tuple)) else v
                for k, v in given.items() if k in PLAN_OPTIONS})
    resolved = dict(p.resolved)
    here = f"benchmark --methods {method}"
    if arch is not None:
        resolved["arch"] = {"value": arch, "source": f"{here} (the method's architecture)"}
    if own_init is not None:
        resolved["init_method"] = {"value": own_init, "source": f"{here} (the method's init)"}
        if combos is None:
            resolved["init_grid"] = {"value": [{}], "source": f"one init: the recipe's grid is for its own init "
                                                            f"({r.init_method.value})"}
    if capped:
        resolved["warmup_epochs"] = {"value": config["warmup_epochs"], "source": r.config["warmup_epochs"].source
                                     + ", capped to epochs // 10 (the warm-up must be shorter than the epochs)"}
    base = for_backbone(p, family)
    if p.head_weight_decay_by_family:
        resolved["head_weight_decay"] = {"value": base.head_weight_decay, "source": resolved["head_weight_decay"]
                                         ["source"] + f" (backbone family '{family}')"}
    if p.pool_by_family:
        resolved["pool"] = {"value": base.pool, "source": resolved["pool"]["source"] +
                            f" (backbone family '{family}'; None: the backbone's own pooling)"}
    if method == "linear":
        for key in ("arch", "prompt_length", "prompt_dropout", "init_method", "init_grid"):
            resolved.pop(key, None)
        resolved["linear_probe"] = {"value": None, "source": LINEAR_NOTE}
    base = replace(base, lr=p.lrs[0], weight_decay=p.weight_decays[0], seed=p.final_seeds[0])
    return CellProtocol(method=method, base=base, lrs=tuple(p.lrs), weight_decays=tuple(p.weight_decays),
                        sweep_seeds=tuple(p.seeds), seeds=tuple(p.final_seeds),
                        init_grid=tuple(p.init_grid) if method != "linear" else ({},),
                        prompt_length=p.prompt_length if method not in ("linear", "full") else None, recipe=name,
                        resolved=_plain(resolved))
