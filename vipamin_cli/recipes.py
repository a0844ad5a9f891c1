"""Named training recipes: each paper's protocol as one registry entry (timm-style named configs).

A recipe fixes every training default of one paper's code (optimiser, schedule, batch, epochs,
prompt length, weight-decay groups, EMA, head init, the lr / weight-decay grids, the init sweep,
the final seeds and the tie-break), each value with where it comes from: a section of
docs/methods.md (which says what each paper and its code do) and the paper. Explicit
options override a recipe value; selection is always on validation, never on test, whatever the
reference code did. Without a recipe, vipamin's defaults are the VIPAMIN recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InputError
from .train import TuneConfig


@dataclass(frozen=True)
class Value:
    """One recipe value and its source."""

    value: Any
    source: str


@dataclass(frozen=True)
class Recipe:
    """A paper's protocol. ``config`` holds TuneConfig fields; the rest drive the sweep and final runs.

    ``init_grid`` lists the init hyperparameter sets swept (each a dict of InitConfig fields);
    ``prompt_length`` maps an architecture to its prompt count; ``head_weight_decay_by_family``
    resolves SPT's backbone-dependent head weight decay once the backbone is known.
    """

    name: str
    description: str
    config: dict[str, Value]
    lrs: Value
    weight_decays: Value
    seeds: Value  # the seeds of the sweep
    final_seeds: Value  # the seeds of the final runs on the final split
    init_method: Value
    init_grid: Value
    prompt_length: Value
    head_weight_decay_by_family: Value | None = None
    pool_by_family: Value | None = None  # the head input per backbone family (SPT's MAE head)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def values(self) -> dict[str, Value]:
        """Every value of the recipe by name (for listing and checkpoint metadata)."""
        out = dict(self.config)
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Value):
                out[f.name] = v
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "values": {k: {"value": _plain(v.value), "source": v.source} for k, v in self.values().items()},
                "notes": list(self.notes)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Sources: docs/methods.md sections (§7: the named recipes table; §5: where the authors' code and the paper
# differ) and the papers. Users have both; the project's internal notes are not cited.
M6 = "docs/methods.md §7 (vipamin recipe: VIPAMIN's code, from VPT; Park & Chung, NeurIPS 2025)"
M6V = "docs/methods.md §7 (vpt recipe: VPT's own protocol, also VAPT's; Jia et al., ECCV 2022)"
M7V = "docs/methods.md §5 and §7 (vapt recipe: the authors' code; Le et al., ICLR 2026)"
M7S = "docs/methods.md §5 and §7 (spt recipe: the authors' code; Wang et al., ICML 2024)"
M3S = "docs/methods.md §7 (spt recipe: Wang et al., ICML 2024)"
M7P = "docs/methods.md §5 and §7 (VIPAMIN sweep: (K, lambda) x lr, as the authors' code)"
DEFAULT = "vipamin default (no paper or reference code states it; docs/methods.md §7)"
SPT_HEAD_WD = M7S + ": head weight decay 0.5 MAE, 3.0 MoCo/supervised (resolved from the backbone family)"
VIPAMIN_LRS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
VPT_LRS = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
VPT_WDS = (0.01, 0.001, 0.0001, 0.0)
VIPAMIN_INIT_GRID = tuple({"k": k, "lam": lam} for k in (2, 8, 32, 128) for lam in (0.0, 0.5)) + (
    {"k": 2, "lam": 1.0},)
PROMPTS = {"vpt-shallow": 100, "vpt-deep": 20, "vapt": 10}


def _common(source: str, **over: Value) -> dict[str, Value]:
    base = {
        "epochs": Value(100, source), "warmup_epochs": Value(10, source),
        "schedule_step": Value("epoch", source), "lr_floor": Value(0.0, source),
        "lr_scaling": Value("batch256", source), "drop_last": Value(False, DEFAULT),
        "ema": Value(0.0, DEFAULT), "head_weight_decay": Value(None, DEFAULT),
        "head_init": Value("kaiming", "docs/methods.md §5 (head init: kaiming-normal fan_out, bias 0)"),
        "betas": Value((0.9, 0.999), source), "eps": Value(1e-6, source), "momentum": Value(0.9, source),
    }
    return base | over


RECIPES: dict[str, Recipe] = {
    "vipamin": Recipe(
        name="vipamin",
        description="VIPAMIN (Park & Chung, NeurIPS 2025): AdamW on VPT's schedule, 63-run (K, lambda) x lr sweep",
        config=_common(M6, arch=Value("vpt-shallow", "docs/methods.md §3 and §4 (shallow; deep repeats per block)"),
                       optimizer=Value("adamw", M6), batch_size=Value(32, M6),
                       prompt_dropout=Value(0.0, "docs/methods.md §7 (0 in the VIPAMIN recipe)"),
                       decay_groups=Value("matrices", M6 + ": prompts and head weight, none on biases"),
                       tie_break=Value("smaller-lr", DEFAULT)),
        lrs=Value(VIPAMIN_LRS, M6), weight_decays=Value((0.01,), M6), seeds=Value((42,), DEFAULT),
        final_seeds=Value((42, 44, 82), M6),
        init_method=Value("vipamin", "docs/methods.md §3 (Park & Chung, NeurIPS 2025)"),
        init_grid=Value(VIPAMIN_INIT_GRID, M7P + "; the mix: §3 C"),
        prompt_length=Value({"vpt-shallow": 100, "vpt-deep": 20, "vapt": 10},
                            "docs/methods.md §4 and §7 (P = 100 shallow, 20 deep, VAPT 10)"),
        notes=("calibration: vipamin uses its seeded --calib-size subset (the authors: first shuffled batch of 256, "
               "unseeded; docs/methods.md §5)",)),
    "vpt": Recipe(
        name="vpt",
        description="VPT (Jia et al., ECCV 2022): SGD momentum 0.9 over a 10 x 4 lr / weight-decay grid",
        config=_common(M6V, arch=Value("vpt-shallow", "docs/methods.md §4 (Jia et al., ECCV 2022)"),
                       optimizer=Value("sgd", M6V),
                       batch_size=Value(64, M6V + " (batch 64, given for VAPT)"),
                       prompt_dropout=Value(0.1, "docs/methods.md §7 (0.1 in VPT)"),
                       decay_groups=Value("all-but-head-bias",
                                          "assumed as VAPT's VPT-derived code, docs/methods.md §5"),
                       tie_break=Value("larger-lr", "assumed as VAPT's VPT-derived code, docs/methods.md §5")),
        lrs=Value(VPT_LRS, M6V), weight_decays=Value(VPT_WDS, M6V), seeds=Value((42,), DEFAULT),
        final_seeds=Value((42, 44, 82, 100, 800), M6V + " (5 seeds; values as VAPT's, §7)"),
        init_method=Value("random", "docs/methods.md §1 (uniform xavier bound)"), init_grid=Value(({},), DEFAULT),
        prompt_length=Value(dict(PROMPTS),
                            "docs/methods.md §4 and §7 (P = 100 shallow, 20 deep as the VIPAMIN runs of VPT)"),
        notes=("the reference head bias init -log(99) (docs/methods.md §5) is not reproduced: bias 0",
               "VPT's AdamW hard-codes weight decay 0.01 and switches to SGD at weight decay 0 (docs/methods.md §5): "
               "not reproduced, the recipe is SGD throughout")),
    "spt": Recipe(
        name="spt",
        description="SPT (Wang et al., ICML 2024): AdamW, per-iteration cosine, separate head weight decay, EMA",
        config=_common(M3S, arch=Value("vpt-shallow", "docs/methods.md §2 and §4"), optimizer=Value("adamw", M3S),
                       batch_size=Value(32, M3S), prompt_dropout=Value(0.0, M3S),
                       eps=Value(1e-8, M7S), lr_scaling=Value("none", M7S + ": no batch/256 lr scaling"),
                       schedule_step=Value("iteration", M7S + ": cosine stepped per iteration"),
                       lr_floor=Value(1e-8, M7S + ": 1e-8 floor"), ema=Value(0.9999, M7S),
                       head_weight_decay=Value(None, SPT_HEAD_WD),
                       drop_last=Value(True, M7S + ": last partial batch dropped"),
                       head_init=Value("trunc-normal", M7S + ": head init truncated normal 0.02"),
                       decay_groups=Value("matrices", DEFAULT), tie_break=Value("smaller-lr", DEFAULT)),
        lrs=Value(VIPAMIN_LRS, DEFAULT + ": VIPAMIN's grid, unscaled"), weight_decays=Value((0.01,), DEFAULT),
        seeds=Value((42,), DEFAULT), final_seeds=Value((42, 44, 82), DEFAULT + ": VIPAMIN's final seeds"),
        init_method=Value("spt", "docs/methods.md §2 (Wang et al., ICML 2024)"), init_grid=Value(({},), DEFAULT),
        prompt_length=Value(dict(PROMPTS), "docs/methods.md §7 (P = 100 shallow, 20 deep)"),
        head_weight_decay_by_family=Value({"mae": 0.5, "default": 3.0}, SPT_HEAD_WD),
        pool_by_family=Value({"mae": "mean-all-norm"}, M7S + ": SPT's MAE head is the mean over prompts and "
                             "patches, then the pretrained final norm with its affine; other families: the "
                             "backbone's own pooling"),
        notes=("the reference selects the best epoch on the test set (docs/methods.md §5): vipamin selects the last "
               "epoch on validation",)),
    "vapt": Recipe(
        name="vapt",
        description="VAPT (Le et al., ICLR 2026): adaptive deep prompts, SGD over a 10 x 4 grid, five seeds",
        config=_common(M6V, arch=Value("vapt", "docs/methods.md §4 (Le et al., ICLR 2026)"),
                       optimizer=Value("sgd", M7V),
                       momentum=Value(0.9, M7V), batch_size=Value(64, M7V),
                       prompt_dropout=Value(0.1, M7V),
                       decay_groups=Value("all-but-head-bias", M7V + ": every trainable tensor except the head bias"),
                       tie_break=Value("larger-lr", M7V + ": ties to the larger lr")),
        lrs=Value(VPT_LRS, M7V + " (base lr, x batch/256)"), weight_decays=Value(VPT_WDS, M7V),
        seeds=Value((42,), DEFAULT), final_seeds=Value((42, 44, 82, 100, 800), M7V),
        init_method=Value("random", "docs/methods.md §4 (block 0: VPT shallow, random init)"),
        init_grid=Value(({},), DEFAULT),
        prompt_length=Value(dict(PROMPTS), "docs/methods.md §4 and §7 (P = 10)")),
}


# VPT's full fine-tuning: the `end2end` transfer type of the VPT code, the papers' reference row.
M8 = "docs/methods.md §8 (VPT end2end)"
VPT_CODE = "VPT code, KMnP/vpt"
VPT_FULL_LRS = (0.005, 0.001, 0.0005, 0.0001)
RECIPES["vpt-full"] = Recipe(
    name="vpt-full",
    description="VPT's full fine-tuning (its end2end transfer type): every weight after block 0, AdamW, "
                "4 x 4 lr / weight-decay grid, five seeds",
    config=_common(M8, arch=Value("full", M8 + ": every backbone weight after the cached block-0 tokens"),
                   optimizer=Value("adamw", f"{M8}; {VPT_CODE} configs/base-finetune.yaml (OPTIMIZER adamw)"),
                   betas=Value((0.9, 0.999), f"{M8}; {VPT_CODE} src/solver/optimizer.py (AdamW defaults)"),
                   eps=Value(1e-6, f"{M8}; {VPT_CODE} src/solver/optimizer.py (AdamW defaults)"),
                   batch_size=Value(384, f"{M8}; {VPT_CODE} configs/base-finetune.yaml (BATCH_SIZE 384)"),
                   epochs=Value(100, f"{M8}; {VPT_CODE} configs/base-finetune.yaml (TOTAL_EPOCH 100)"),
                   warmup_epochs=Value(5, f"{M8}; {VPT_CODE} configs/base-finetune.yaml (WARMUP_EPOCH 5)"),
                   schedule_step=Value("epoch", f"{M8}; {VPT_CODE} src/engine/trainer.py (cosine stepped per "
                                       "epoch)"),
                   lr_scaling=Value("batch256", f"{M8}; {VPT_CODE} tune_vtab.py (lr / 256 x batch size)"),
                   prompt_dropout=Value(0.0, M8 + ": no prompts"),
                   drop_last=Value(False, f"{M8}; {VPT_CODE} src/data/loader.py (drop_last only with several GPUs)"),
                   ema=Value(0.0, f"{M8}; {VPT_CODE} src/engine/trainer.py (no weight EMA)"),
                   decay_groups=Value("matrices", M8 + ": the code exempts biases by name; it also decays "
                                      "LayerNorm weights, which vipamin does not"),
                   head_init=Value("kaiming", f"{M8}; {VPT_CODE} src/models/mlp.py (kaiming-normal fan_out)"),
                   tie_break=Value("smaller-lr", f"{M8}; {VPT_CODE} tune_vtab.py find_best_lrwd (ties to the "
                                   "smaller lr)")),
    lrs=Value(VPT_FULL_LRS, f"{M8}; {VPT_CODE} tune_vtab.py get_lrwd_range('finetune') (base lr, x batch/256)"),
    weight_decays=Value(VPT_WDS, f"{M8}; {VPT_CODE} tune_vtab.py get_lrwd_range('finetune')"),
    seeds=Value((42,), DEFAULT),
    final_seeds=Value((42, 44, 82, 100, 800), f"{M8}; {VPT_CODE} tune_vtab.py (five final runs)"),
    init_method=Value("random", M8 + ": not used by --arch full (no prompts); VPT's init for a prompt --arch"),
    init_grid=Value(({},), DEFAULT),
    prompt_length=Value(dict(PROMPTS) | {"full": 0}, M8 + ": no prompts (a prompt --arch gets VPT's lengths)"),
    notes=("VPT's AdamW hard-codes weight decay 0.01 and switches to SGD at weight decay 0 (docs/methods.md §5): "
           "not reproduced, the grid's weight decay is used as given",
           "the patch and position embeddings and the class token stay frozen (the embed cache serves them); "
           "VPT's end2end trains them too (docs/methods.md §8)",
           "the reference head bias init -log(99) (docs/methods.md §5 and §8) is not reproduced: bias 0"))


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InputError(f"unknown --recipe '{name}'", f"use one of {', '.join(RECIPES)}")
    return RECIPES[name]


@dataclass
class TunePlan:
    """A recipe resolved against explicit options: everything `tune` needs besides the inputs."""

    base: TuneConfig
    lrs: list[float]
    weight_decays: list[float]
    seeds: list[int]
    final_seeds: list[int]
    init_method: str
    init_grid: list[dict[str, Any]]
    prompt_length: int
    recipe: str | None
    resolved: dict[str, Any]  # every value with its source ("option" when given explicitly)
    head_weight_decay_by_family: dict[str, float] | None = None
    pool_by_family: dict[str, str] | None = None


def default_augment(recipe: str | None, augment: str | None) -> str:
    """The training augmentation when --augment is not given: with a recipe, ``auto`` (FGVC json
    sources train on random crops and flips, as the FGVC protocol does); without one, none."""
    if augment is not None:
        return augment
    return "auto" if recipe is not None else "none"


def plan(recipe: str | None = None, *, lrs: list[float] | None = None, weight_decays: list[float] | None = None,
         seeds: list[int] | None = None, final_seeds: list[int] | None = None, init_method: str | None = None,
         init_grid: list[dict[str, Any]] | None = None, prompt_length: int | None = None,
         **config: Any) -> TunePlan:
    """Resolve ``recipe`` (None: vipamin's defaults, which are the VIPAMIN recipe's training values)
    with the explicit options; an argument left at None takes the recipe's value.

    Without a recipe the grids stay single values (lr 0.1, weight decay 0.01, seed 42, one init) as
    before; with a recipe the grids, init sweep and final seeds are the paper's.
    """
    explicit = _explicit_fields(config)
    r = get_recipe(recipe or "vipamin")
    resolved: dict[str, Any] = {}

    def pick(name: str, given: Any, rec: Value, fallback: Any = None) -> Any:
        if given is not None:
            resolved[name] = {"value": _plain(given), "source": "option"}
            return given
        value = rec.value if recipe is not None or fallback is None else fallback
        source = rec.source if recipe is not None or fallback is None else "vipamin default"
        resolved[name] = {"value": _plain(value), "source": source}
        return value

    fields_: dict[str, Any] = {}
    for name, rec in r.config.items():
        fields_[name] = pick(name, explicit.pop(name, None), rec)
    for name, value in explicit.items():
        resolved[name] = {"value": _plain(value), "source": "option"}
        fields_[name] = value
    base = TuneConfig(**fields_, recipe=recipe)
    full = base.arch == "full"
    if full:
        base = _full_base(base, init_method, init_grid, prompt_length, resolved)
    out = TunePlan(
        base=base,
        lrs=list(pick("lrs", lrs, r.lrs, [FULL_DEFAULT_LR if full else 0.1])),
        weight_decays=list(pick("weight_decays", weight_decays, r.weight_decays, [0.01])),
        seeds=list(pick("seeds", seeds, r.seeds, [42])),
        final_seeds=list(pick("final_seeds", final_seeds, r.final_seeds)),
        init_method=r.init_method.value if full else pick("init_method", init_method, r.init_method),
        init_grid=[{}] if full else [dict(g) for g in pick("init_grid", init_grid, r.init_grid if init_method in (
            None, r.init_method.value) else Value(({},), "one init: --init differs from the recipe's"), [{}])],
        prompt_length=0 if full else pick("prompt_length", prompt_length, Value(r.prompt_length.value[base.arch],
                                                                                r.prompt_length.source)),
        recipe=recipe,
        resolved=resolved,
        head_weight_decay_by_family=(r.head_weight_decay_by_family.value
                                     if r.head_weight_decay_by_family and "head_weight_decay" not in
                                     {k for k, v in resolved.items() if v["source"] == "option"} else None),
    )
    _record_family_values(out, r, pool_given=config.get("pool") is not None,
                          full_default_lr=full and lrs is None and recipe is None)
    _require_grids(out)
    return out


def _explicit_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The TuneConfig fields given a value (None: take the recipe's); an unknown name is a caller's bug,
    so it is a TypeError rather than an input error."""
    explicit = {k: v for k, v in config.items() if v is not None}
    unknown = set(explicit) - set(TuneConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown TuneConfig fields {sorted(unknown)}")
    return explicit


def _record_family_values(out: TunePlan, r: Recipe, pool_given: bool, full_default_lr: bool) -> None:
    """Set the recipe's per-family pool (unless --pool was given) and record it, --arch full's default lr,
    and the per-family head weight decay in ``out.resolved``, so `tune` reports where each value came from."""
    resolved = out.resolved
    if r.pool_by_family is not None and not pool_given:
        out.pool_by_family = dict(r.pool_by_family.value)
        resolved["pool"] = {"value": _plain(out.pool_by_family), "source": r.pool_by_family.source}
    if full_default_lr:
        resolved["lrs"]["source"] = f"vipamin default for --arch full ({FULL_DEFAULT_LR}: one value of VPT's grid)"
    if out.head_weight_decay_by_family:
        resolved["head_weight_decay"] = {"value": _plain(out.head_weight_decay_by_family),
                                         "source": r.head_weight_decay_by_family.source}


def _require_grids(out: TunePlan) -> None:
    """Refuse an empty grid or final-seed list: the sweep would train nothing."""
    for what, values in (("--lr", out.lrs), ("--weight-decay", out.weight_decays), ("--seeds", out.seeds),
                         ("final seeds", out.final_seeds)):
        if not values:
            raise InputError(f"{what} is empty", f"pass at least one value to {what}")


FULL_DEFAULT_LR = 0.001  # --arch full without a recipe: one value of VPT's full fine-tuning grid
FULL_IGNORED = "--arch full trains no prompts"


def _full_base(base: TuneConfig, init_method: str | None, init_grid: list[dict[str, Any]] | None,
               prompt_length: int | None, resolved: dict[str, Any]) -> TuneConfig:
    """--arch full: refuse the prompt options given explicitly; a recipe's prompt dropout becomes 0."""
    given = [opt for opt, value in (("--init", init_method), ("--k / --lambda / --sample / --init-seed", init_grid),
                                    ("--prompt-length", prompt_length)) if value is not None]
    if resolved.get("prompt_dropout", {}).get("source") == "option" and base.prompt_dropout > 0:
        given.append("--prompt-dropout")
    if given:
        raise InputError(f"{', '.join(given)} make{'s' if len(given) == 1 else ''} no sense with --arch full (it "
                         "trains no prompts)", "drop them, or pick a prompt --arch (vpt-shallow, vpt-deep, vapt)")
    for key in ("init_method", "init_grid", "prompt_length"):
        resolved[key] = {"value": None, "source": FULL_IGNORED}
    if base.prompt_dropout:
        resolved["prompt_dropout"] = {"value": 0.0, "source": FULL_IGNORED}
    return replace(base, prompt_dropout=0.0)


def for_backbone(p: TunePlan, family: str) -> TuneConfig:
    """The plan's base config with the values that depend on the backbone family resolved (SPT's head
    weight decay, and its MAE head as the pool)."""
    base = p.base
    if p.head_weight_decay_by_family:
        table = p.head_weight_decay_by_family
        base = replace(base, head_weight_decay=table.get(family, table["default"]))
    if p.pool_by_family and base.pool is None and family in p.pool_by_family:
        base = replace(base, pool=p.pool_by_family[family])
    return base


def list_recipes() -> list[dict[str, Any]]:
    return [r.as_dict() for r in RECIPES.values()]
