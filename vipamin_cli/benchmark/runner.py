"""The benchmark's cell loop: per task, embed the splits once; per method, sweep, select, final runs, test.

A cell (task x method) follows the papers' protocol: train every (lr, weight decay) of the recipe
(and every init hyperparameter of the grid) on the sweep split, select on the validation split
by mean last-epoch top-1, then train the selected configuration on the final split once per seed
(the init recomputed from the final split's statistics) and report last-epoch test top-1 mean +-
std over seeds. Every finished cell is written to ``results.json`` at once (atomically) and skipped
when the same command runs again; an interrupted cell resumes from tune's partial state.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import iosafety
from ..artifacts import atomic_path
from ..errors import InputError
from ..iosafety import command_scope
from .inputs import INPUTS_KEY, file_digest, task_inputs, what_changed, without_inputs
from .protocol import (
    DEFAULT_METHODS,
    METHOD_SETUP,
    METHODS,
    CellProtocol,
    cell_recipe,
    check_recipe,
    recipe_protocol,
)
from .suites import Suite, Task, resolve_suite

RESULTS_SCHEMA = 1
# VIPAMIN hyperparameters a benchmark may sweep
INIT_GRID_KEYS = ("k", "lam", "orth", "orth_scale", "orth_rcond", "orth_span_tol")


@dataclass(frozen=True)
class Preset:
    """The training protocol every cell shares (tune options given to `benchmark` override it).

    ``paper`` is the VIPAMIN code's protocol (the ``vipamin`` recipe of `vipamin recipes`); ``quick``,
    ``testbed`` and ``demo`` are shortened protocols for the offline testbed on a CPU."""

    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 32
    lrs: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    weight_decays: tuple[float, ...] = (0.01,)
    seeds: tuple[int, ...] = (42, 44, 82)  # final runs
    sweep_seeds: tuple[int, ...] = (42,)
    optimizer: str = "adamw"
    prompt_length: int | None = None  # None: the architecture's default (100 shallow, 10 VAPT)
    prompt_dropout: float = 0.0
    full_lrs: tuple[float, ...] = (0.005, 0.001, 0.0005, 0.0001)  # the full cell's grid: VPT's full fine-tuning


PRESETS: dict[str, Preset] = {
    # VIPAMIN's code (from VPT): AdamW, batch 32, lr grid x 32/256, 100 epochs, seeds 42/44/82.
    "paper": Preset(),
    # A shortened protocol (a full testbed run is hours on a 2-core CPU).
    "quick": Preset(epochs=20, warmup_epochs=2, lrs=(0.25, 1.0, 2.5), prompt_length=10,
                    full_lrs=(0.005, 0.001, 0.0005)),
    # `make benchmark-testbed`: every method on the 8 testbed tasks in about 1.5 h on a 2-core CPU.
    "testbed": Preset(epochs=5, warmup_epochs=1, lrs=(0.5, 2.0), prompt_length=10, full_lrs=(0.005, 0.001)),
    # `make demo`: two testbed tasks in a few minutes (one lr, so no sweep; three final seeds). lr 0.25 x 32/256
    # over 4 epochs (1 warm-up): the training loss falls every epoch and the table is the same with the default
    # and the AVX2 CPU kernels (README); at lr 1.0 the loss rose in epoch 2, a regime that amplifies rounding.
    "demo": Preset(epochs=4, warmup_epochs=1, lrs=(0.25,), prompt_length=10, full_lrs=(0.005,)),
}


def resolve_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown --preset '{name}'", f"use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(Preset)}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = sorted(set(given) - known)
    if bad:
        raise ValueError(f"unknown recipe fields {bad}")
    for key in ("lrs", "weight_decays", "seeds", "sweep_seeds", "full_lrs"):
        if key in given:
            given[key] = tuple(given[key])
    recipe = replace(PRESETS[name], **given)
    if "warmup_epochs" not in given and recipe.warmup_epochs >= recipe.epochs:
        recipe = replace(recipe, warmup_epochs=recipe.epochs // 10)
    return recipe


@dataclass
class BenchmarkSpec:
    """Everything `vipamin benchmark` needs; a Python user fills this and calls :func:`run_benchmark`."""

    suite: str
    root: str | os.PathLike
    backbone: str
    out: str | os.PathLike
    weights: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    tasks: list[str] | None = None
    preset: str | None = None  # None: paper, unless a recipe is given (the two are alternatives)
    recipe: str | None = None  # vipamin | vpt | spt | vapt | own: every cell's protocol from the named recipes
    overrides: dict[str, Any] = field(default_factory=dict)  # Preset fields; they override a preset or a recipe
    init_grid: dict[str, list[Any]] = field(default_factory=dict)  # VIPAMIN: {"lam": [...], "k": [...]}
    device: str = "auto"
    cache_dir: str | os.PathLike | None = None
    calib_size: int = 256
    grid_batch: int | None = None
    precision: str = "auto"
    plot: bool = True
    show_progress: bool = True
    sweep: Any = None  # tuning.halving.SweepRule of every prompt cell (None: grid); the linear probe's is a grid


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=12).hexdigest()


def _preset_init_grid(method: str, init_grid: dict[str, list[Any]]) -> tuple[dict[str, Any], ...]:
    grid = {k: v for k, v in init_grid.items() if v} if METHOD_SETUP[method][1] == "vipamin" else {}
    return tuple(dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())) or ({},)


def _base_config(method: str, recipe: Preset) -> Any:
    from ..train import TuneConfig

    full = method == "full"
    return TuneConfig(arch=METHOD_SETUP[method][0] or "vpt-shallow", epochs=recipe.epochs,
                      warmup_epochs=recipe.warmup_epochs, batch_size=recipe.batch_size, optimizer=recipe.optimizer,
                      prompt_dropout=0.0 if full else recipe.prompt_dropout,
                      lr=(recipe.full_lrs if full else recipe.lrs)[0], weight_decay=recipe.weight_decays[0],
                      seed=recipe.seeds[0])


def preset_protocol(method: str, recipe: Preset, init_grid: dict[str, list[Any]] | None = None) -> CellProtocol:
    """A cell's protocol from a preset (no --recipe): the preset's plain values, every cell alike (the
    full cell: its own lr grid ``full_lrs``, no prompts)."""
    full = method == "full"
    return CellProtocol(method=method, base=_base_config(method, recipe),
                        lrs=tuple(recipe.full_lrs if full else recipe.lrs),
                        weight_decays=tuple(recipe.weight_decays), sweep_seeds=tuple(recipe.sweep_seeds),
                        seeds=tuple(recipe.seeds), init_grid=_preset_init_grid(method, init_grid or {}),
                        prompt_length=None if full else recipe.prompt_length)


def _as_protocol(method: str, recipe: Preset | CellProtocol, init_grid: dict[str, list[Any]] | None) -> CellProtocol:
    return recipe if isinstance(recipe, CellProtocol) else preset_protocol(method, recipe, init_grid)


def _backbone_family(backbone: str) -> str:
    from ..backbones import resolve_spec

    return resolve_spec(backbone).family


def protocols(spec: BenchmarkSpec, methods: list[str]) -> tuple[Preset | None, dict[str, CellProtocol]]:
    """Every method's protocol for ``spec``: from its preset (the preset is returned too: the
    signature of a preset cell holds it) or, with ``spec.recipe``, from the named recipes."""
    if spec.recipe is None:
        preset = resolve_preset(spec.preset or "paper", spec.overrides)
        return preset, {m: preset_protocol(m, preset, spec.init_grid) for m in methods}
    check_recipe(spec.recipe)
    if spec.preset is not None:
        raise InputError(f"--preset {spec.preset} and --recipe {spec.recipe} cannot be combined",
                         "a recipe replaces the preset's protocol: drop --preset and override the recipe with "
                         "--epochs, --lr, --seeds, ...")
    family = _backbone_family(spec.backbone) if any(
        cell_recipe(spec.recipe, m) == "spt" for m in methods) else ""
    return None, {m: recipe_protocol(m, spec.recipe, spec.overrides, spec.init_grid, family) for m in methods}


def cell_units(method: str, recipe: Preset | CellProtocol, init_grid: dict[str, list[Any]],
               grid_batch: int | None, sweep: Any = None) -> int:
    """Progress units of a cell: one per training-loop epoch (a grid-batched group counts once)."""
    return _as_protocol(method, recipe, init_grid).units(grid_batch, sweep)


def cell_signature(task: Task, method: str, recipe: Preset | None, spec: BenchmarkSpec,
                   protocol: CellProtocol | None = None, *, inputs: dict[str, Any]) -> dict[str, Any]:
    """What determines a cell's numbers: a finished cell is reused only when this is unchanged.
    A preset cell: the preset and the init grid; a recipe cell: the recipe and the resolved protocol;
    both: the ``inputs`` the cell reads (every split's data fingerprint, the weights file's digest,
    from :func:`inputs.task_inputs`), and a halving sweep's rule (a grid cell's signature is as before)."""
    if protocol is not None and protocol.recipe is not None:
        return {"task": task.describe(), "method": method, "backbone": spec.backbone, "weights": spec.weights,
                "recipe": spec.recipe, "cell_recipe": protocol.recipe, "protocol": protocol.describe(),
                "calib_size": spec.calib_size, INPUTS_KEY: inputs} | _init_rules(method) | _sweep_signature(
                    spec, protocol)
    assert recipe is not None
    grid = {k: v for k, v in spec.init_grid.items() if v} if METHOD_SETUP[method][1] == "vipamin" else {}
    return {"task": task.describe(), "method": method, "backbone": spec.backbone, "weights": spec.weights,
            "preset": _preset_fields(method, recipe), "init_grid": grid, "calib_size": spec.calib_size,
            INPUTS_KEY: inputs} | _init_rules(method) | _sweep_signature(
                spec, protocol or _as_protocol(method, recipe, spec.init_grid))


def _sweep_signature(spec: BenchmarkSpec, protocol: CellProtocol) -> dict[str, Any]:
    """A halving cell's sweep rule, resolved for its epochs (the linear probe always sweeps a grid)."""
    if spec.sweep is None or spec.sweep.mode != "halving" or protocol.method == "linear":
        return {}
    base = protocol.base
    return {"sweep": spec.sweep.resolved(base.epochs, base.warmup_epochs).record(base.epochs)}


def _preset_fields(method: str, preset: Preset) -> dict[str, Any]:
    """The preset values a cell of ``method`` uses: the full cell's lr grid and the prompt options
    reach only their own cells, so changing one leaves the other cells' signatures as they were."""
    fields_ = asdict(preset)
    drop = ("lrs", "prompt_length", "prompt_dropout") if method == "full" else ("full_lrs",)
    return {k: v for k, v in fields_.items() if k not in drop}


def _init_rules(method: str) -> dict[str, Any]:
    """Init defaults that change a prompt cell's numbers (cells run before them are refused, not reused):
    each run's init seed follows its training seed, and VIPAMIN's span rank rule."""
    if METHOD_SETUP[method][1] is None:
        return {}
    from ..inits import InitConfig
    from ..inits.seeding import FOLLOWS

    return {"init_rules": {"init_seed": FOLLOWS, "orth_span_tol": InitConfig().orth_span_tol}}


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _tune_step(inputs: Any, base: Any, lrs: list[float], wds: list[float], seeds: list[int], out: Path,
               device: str, grid_batch: int | None, precision: str, on_epoch: Any, sweep: Any = None) -> dict[str, Any]:
    """One tune() call, resumed from its partial state when a previous run of this cell was cut off;
    returns the sweep record (reused as is when the checkpoint is already complete)."""
    from .. import distributed
    from ..tune import has_resume_state, tune

    sweep_json = out.with_name(out.name.removesuffix(".safetensors") + ".sweep.json")
    finished = distributed.broadcast_from_main(_read_sweep(sweep_json, out) if out.exists() and
                                               os.path.lexists(sweep_json) and distributed.is_main() else None)
    if finished is not None:
        return finished
    outcome = tune(inputs, base, lrs, wds, seeds, out, device=device, resume=has_resume_state(out),
                   show_progress=False,
                   on_epoch=lambda *_: on_epoch(), grid_batch=grid_batch, precision=precision, sweep=sweep)
    return outcome.sweep


def _chosen_score(sweep: dict[str, Any]) -> float:
    """The selected configuration's mean last-epoch val top-1 over its seeds."""
    from ..tuning.selection import run_key

    c = sweep["chosen"]
    return statistics.fmean(r["final_val_top1"] for r in sweep["runs"] if r.get("pruned_at_rung") is None
                            and run_key(r) == (c.get("init_index", 0), c["lr"], c["weight_decay"]))


def _cell_sweep(task: Task, embeddings: dict[str, Path], protocol: CellProtocol, cell_dir: Path, device: str,
                grid_batch: int | None, precision: str, tick: Any, sweep: Any) -> tuple[list[dict[str, Any]], int]:
    """The cell's sweep: a grid runs one tune per init candidate (each selects its lr / weight decay,
    then the best init wins, ties to the earlier); halving runs one tune over every init candidate x
    lr x weight decay, so it prunes across them all. The candidates' records and the picked one's index."""
    from ..tune import TuneInputs

    inits = protocol.init_configs(device)  # full fine-tuning: one candidate, no init
    args = (list(protocol.lrs), list(protocol.weight_decays), list(protocol.sweep_seeds))
    if sweep is not None and sweep.mode == "halving":
        inputs = TuneInputs(embeddings=embeddings[task.sweep_train], val_embeddings=embeddings[task.sweep_val],
                            init=inits[0], init_grid=inits if len(inits) > 1 else None)
        record = _tune_step(inputs, protocol.base, *args, cell_dir / "sweep0.safetensors", device, grid_batch,
                            precision, tick, sweep)
        init = inits[record["chosen"]["init_index"]]
        return [{"init": asdict(init) if init is not None else None, "score": _chosen_score(record), **record}], 0
    candidates = []
    for j, icfg in enumerate(inits):
        inputs = TuneInputs(embeddings=embeddings[task.sweep_train], val_embeddings=embeddings[task.sweep_val],
                            init=icfg)
        record = _tune_step(inputs, protocol.base, *args, cell_dir / f"sweep{j}.safetensors", device, grid_batch,
                            precision, tick)
        candidates.append({"init": asdict(icfg) if icfg is not None else None, "score": _chosen_score(record),
                           **record})
    return candidates, max(range(len(candidates)), key=lambda j: (candidates[j]["score"], -j))


def _sweep_cost(candidates: list[dict[str, Any]], sweep: Any) -> dict[str, Any]:
    """The cell's sweep mode and compute, summed over its tunes (candidate-epochs: epochs trained per run)."""
    return {"mode": sweep.mode if sweep is not None else "grid",
            **{k: sum(c.get(k, 0) for c in candidates) for k in ("candidate_epochs", "grid_candidate_epochs")}}


def run_cell(task: Task, method: str, embeddings: dict[str, Path], recipe: Preset | CellProtocol,
             cell_dir: str | os.PathLike,
             device: str = "auto", init_grid: dict[str, list[Any]] | None = None, grid_batch: int | None = None,
             precision: str = "auto", on_epoch: Any = None, sweep: Any = None) -> dict[str, Any]:
    """One table cell: sweep + select on (sweep_train, sweep_val), final runs on final_train, test top-1.

    ``embeddings`` maps the task's split names to cached embeddings files; ``recipe`` is a preset
    (with ``init_grid``) or a resolved :class:`CellProtocol` (a recipe cell also records its
    ``protocol``: every value with its source). Composed from tune() calls (one per init candidate
    for the sweep, or one for all of them with ``sweep`` halving; one for the final seeds), so it can
    later use tune's own final-split mode without changing the cell's record.
    """
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'", f"use some of {', '.join(METHODS)}")
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    tick = on_epoch or (lambda: None)
    started = time.perf_counter()
    protocol = _as_protocol(method, recipe, init_grid)
    recorded = {"protocol": {"recipe": protocol.recipe, "values": protocol.resolved}} if protocol.recipe else {}
    if method == "linear":
        return _linear_cell(task, embeddings, protocol, device, tick, started) | recorded

    from ..evaluate import evaluate
    from ..tune import TuneInputs

    base = protocol.base
    candidates, best = _cell_sweep(task, embeddings, protocol, cell_dir, device, grid_batch, precision, tick, sweep)
    picked = candidates[best]
    sweep_s = time.perf_counter() - started

    from ..inits import InitConfig

    final_init = InitConfig(**picked["init"]) if picked["init"] is not None else None
    inputs = TuneInputs(embeddings=embeddings[task.final_train], init=final_init)
    final = _tune_step(inputs, base, [picked["chosen"]["lr"]], [picked["chosen"]["weight_decay"]],
                       list(protocol.seeds), cell_dir / "final.safetensors", device, grid_batch, precision, tick)
    final_s = time.perf_counter() - started - sweep_s
    result = evaluate(cell_dir / "final.safetensors", embeddings=embeddings[task.test], device=device)
    eval_s = time.perf_counter() - started - sweep_s - final_s
    runs = []
    for run, metrics in zip(final["runs"], result["runs"], strict=True):
        runs.append({"seed": run["config"]["seed"], "init_seed": run.get("init_seed"), "config": run["config"],
                     "history": run["history"], "test_top1": metrics["top1"], "test_top5": metrics["top5"],
                     "test_macro": metrics["macro"]})
    return {"task": task.name, "group": task.group, "method": method, "arch": base.arch,
            "selected": {**picked["chosen"], "init": picked["init"]},
            "sweep": {"criterion": picked["criterion"], **_sweep_cost(candidates, sweep), "candidates": candidates},
            "final": {"split": task.final_train, "runs": runs, "checkpoint": str(cell_dir / "final.safetensors")},
            "test": {"split": task.test, "num_samples": result["runs"][0]["num_samples"]},
            "test_top1": _mean_std([r["test_top1"] for r in runs]),
            "timing": {"sweep_s": sweep_s, "final_s": final_s, "eval_s": eval_s,
                       "total_s": time.perf_counter() - started}} | recorded


def _linear_cell(task: Task, embeddings: dict[str, Path], protocol: CellProtocol, device: str, tick: Any,
                 started: float) -> dict[str, Any]:
    from ..train import top1
    from .linear import linear_sweep, pooled_features, train_linear

    feats = {}
    for split in dict.fromkeys((task.sweep_train, task.sweep_val, task.final_train, task.test)):
        x, y, meta = pooled_features(embeddings[split], pool=protocol.base.pool, device=device)
        feats[split] = (x, y)
        num_classes = len(meta["data"]["class_names"])
    features_s = time.perf_counter() - started
    base = protocol.base
    sweep = linear_sweep(feats[task.sweep_train], feats[task.sweep_val], num_classes, base, list(protocol.lrs),
                         list(protocol.weight_decays), list(protocol.sweep_seeds), tick)
    sweep_s = time.perf_counter() - started - features_s
    chosen = sweep["chosen"]
    score = statistics.fmean(r["final_val_top1"] for r in sweep["runs"]
                             if (r["config"]["lr"], r["config"]["weight_decay"]) ==
                             (chosen["lr"], chosen["weight_decay"]))
    runs = []
    for seed in protocol.seeds:
        cfg = replace(base, lr=chosen["lr"], weight_decay=chosen["weight_decay"], seed=seed)
        head, run = train_linear(feats[task.final_train], None, num_classes, cfg, tick)
        with_grad_off = head(feats[task.test][0]).detach()
        runs.append({"seed": seed, "config": run["config"], "history": run["history"],
                     "test_top1": top1(with_grad_off, feats[task.test][1])})
    final_s = time.perf_counter() - started - features_s - sweep_s
    return {"task": task.name, "group": task.group, "method": "linear", "arch": "linear-probe",
            "selected": {**chosen, "init": None},
            "sweep": {"criterion": sweep["criterion"], "candidates": [{"init": None, "score": score, **sweep}]},
            "final": {"split": task.final_train, "runs": runs},
            "test": {"split": task.test, "num_samples": int(feats[task.test][1].numel())},
            "test_top1": _mean_std([r["test_top1"] for r in runs]),
            "timing": {"features_s": features_s, "sweep_s": sweep_s, "final_s": final_s,
                       "total_s": time.perf_counter() - started}}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically; under torchrun rank 0 alone writes (every rank holds the same results)."""
    from .. import distributed

    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))


def _load_results(path: Path, suite: Suite, spec: BenchmarkSpec) -> dict[str, Any]:
    from ..iosafety import read_json

    header = {"schema": RESULTS_SCHEMA, "suite": suite.name, "root": str(suite.root), "backbone": spec.backbone,
              "weights": spec.weights}
    if not os.path.lexists(path):
        return header | {"groups": list(suite.groups), "tasks": {}, "methods": [], "embeddings": {},
                         "cells": {}, "invocations": []}
    fix = "delete it (or pass another --out) to start the benchmark over"
    results = read_json(path, "benchmark results", fix, own=True)
    problem = _results_problem(results)
    if problem is not None:
        raise InputError(f"{path} is not a vipamin benchmark results file ({problem})", fix)
    for key, value in header.items():
        if results.get(key) != value and not (key == "root" and _same_folder(results.get(key), value)):
            raise InputError(f"{path} holds a benchmark with {key} {results.get(key)!r}, not {value!r}",
                             "pass another --out for a different benchmark")
    results["root"] = header["root"]
    return results


def _same_folder(a: Any, b: str) -> bool:
    """A root recorded relative (by an older vipamin) that names the same folder."""
    try:
        return isinstance(a, str) and os.path.samefile(a, b)
    except OSError:
        return False


_RESULTS_FIELDS = {"suite": str, "root": str, "backbone": str, "groups": list, "tasks": dict, "methods": list,
                   "embeddings": dict, "cells": dict, "invocations": list}


def _results_problem(results: Any) -> str | None:
    """What is wrong with a parsed results.json (None: nothing)."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    for key, typ in _RESULTS_FIELDS.items():
        if not isinstance(results.get(key), typ):
            return f"'{key}' is {'missing' if key not in results else 'not a ' + typ.__name__}"
    for key, cell in results["cells"].items():
        if not isinstance(cell, dict) or not isinstance(cell.get("signature_digest"), str) or not isinstance(
                cell.get("test_top1"), dict) or not isinstance(cell["test_top1"].get("mean"), (int, float)):
            return f"cell {key} is damaged"
    for name, task in results["tasks"].items():
        if not isinstance(task, dict) or not isinstance(task.get("group"), str):
            return f"task {name} is damaged"
    return None


def _read_sweep(sweep_json: Path, out: Path) -> dict[str, Any]:
    """The record of a finished tune step of a cell (its own file), checked before it is used."""
    from ..iosafety import read_json

    fix = f"delete {sweep_json} and {out} to run that step again"
    sweep = read_json(sweep_json, "sweep record", fix, own=True)
    chosen = sweep.get("chosen") if isinstance(sweep, dict) else None
    runs = sweep.get("runs") if isinstance(sweep, dict) else None
    ok = (isinstance(chosen, dict) and all(isinstance(chosen.get(k), (int, float)) for k in ("lr", "weight_decay"))
          and isinstance(runs, list) and runs and all(isinstance(r, dict) and isinstance(r.get("config"), dict)
                                                      for r in runs))
    if not ok:
        raise InputError(f"{sweep_json} is damaged (not a sweep record of `vipamin tune`)", fix)
    return sweep


# The files a cell folder holds, all written by tune/run_cell: what a stale cell may be cleared of.
_CELL_FILE = re.compile(r"(signature\.json|(sweep\d+|final)(\.prompts(-\w+)?|(\.rank\d+)?\.partial)?\.safetensors"
                        r"|(sweep\d+|final)\.sweep\.json|(sweep\d+|final)\.safetensors\.lock|\.vp-\w+\.tmp)")


def _clear_cell(cell_dir: Path) -> None:
    """Delete a stale cell's files: only names a cell run writes; anything else is refused, named."""
    entries = sorted(cell_dir.iterdir())
    for entry in entries:
        if entry.is_symlink() or not entry.is_file() or not _CELL_FILE.fullmatch(entry.name):
            raise InputError(f"{entry} is not a file vipamin writes in a benchmark cell, so the stale cell "
                             f"{cell_dir} is not cleared", f"move it away, or delete the folder {cell_dir} yourself")
    for entry in entries:
        entry.unlink()
    cell_dir.rmdir()


def _stale_cell(cell_dir: Path, sig: dict[str, Any]) -> bool:
    """Whether ``cell_dir`` holds leftovers of a cut-off run with other options (its signature.json
    differs); a damaged signature is refused, not guessed at."""
    from ..iosafety import read_json

    sig_file = cell_dir / "signature.json"
    if not cell_dir.exists():
        return False
    if not os.path.lexists(sig_file):
        return True
    fix = f"delete the folder {cell_dir} to run that cell from the start"
    recorded = read_json(sig_file, "cell signature", fix, own=True)
    if not isinstance(recorded, dict):
        raise InputError(f"{sig_file} is damaged (a JSON {type(recorded).__name__}, not an object)", fix)
    return recorded != json.loads(json.dumps(sig))  # JSON has no tuples: compare as read back


def _check_plot_support() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("the benchmark plot needs matplotlib, which is not installed",
                         "pip install 'vipamin[plot]', or pass --no-plot") from None


def _embed_task(task: Task, spec: BenchmarkSpec) -> tuple[dict[str, Path], dict[str, Any]]:
    from ..embed import EmbedConfig, embed_data

    config = EmbedConfig(calib_size=spec.calib_size, device=spec.device)
    paths, record = {}, {}
    for split in dict.fromkeys((task.sweep_train, task.sweep_val, task.final_train, task.test)):
        shots = task.shots if split in (task.sweep_train, task.final_train) else None
        t0 = time.perf_counter()
        res = embed_data(spec.backbone, str(task.path), weights=spec.weights, split=split, shots=shots, config=config,
                         cache_dir=spec.cache_dir, show_progress=False)
        paths[split] = res.path
        record[split] = {"path": str(res.path), "digest": res.meta["digest"], "images": res.meta["data"].get(
            "num_samples", len(res.meta.get("samples", []))), "from_cache": res.from_cache,
            "seconds": time.perf_counter() - t0}
    return paths, record


def _check_init_grid(grid: dict[str, list[Any]]) -> None:
    """The VIPAMIN init grid's keys and values, before any cell runs (K against the patch count is
    checked by the init itself, once the backbone is embedded)."""
    from ..inits.vipamin import check_choices, resolve_rcond

    for key, values in grid.items():
        if key not in INIT_GRID_KEYS:
            raise InputError(f"unknown init grid key '{key}'", f"use {', '.join(INIT_GRID_KEYS)}")
        for value in values:
            if key == "k" and not (isinstance(value, int) and value >= 1):
                raise InputError(f"--k {value} is not a positive integer", "pass e.g. --k 2,8,32")
            if key == "orth_rcond":
                resolve_rcond(value, 1)  # its form (none, reference, a number in (0, 1)); the width comes later
            elif key != "k":
                check_choices(**{key: value})


def _plan_cells(suite: Suite, methods: list[str], recipe: Preset | None, cell_protocols: dict[str, CellProtocol],
                spec: BenchmarkSpec, results: dict[str, Any], results_path: Path,
                invocation: dict[str, Any]) -> list[tuple[Task, str, dict[str, Any]]]:
    """The cells to compute now. A finished cell is skipped when its signature is unchanged, refused
    when its options differ, and recomputed (its old record removed at once, so no table mixes old
    and new data) when only its inputs changed: the data of a split, or the weights file."""
    from ..embed import EmbedConfig

    seed, weights_file, seen, memo = EmbedConfig().seed, file_digest(spec.weights), {}, {}
    todo: list[tuple[Task, str, dict[str, Any]]] = []
    for task in suite.tasks:
        inputs = seen[task.name] = task_inputs(task, weights_file, seed, memo)
        for method in methods:
            key = f"{task.name}/{method}"
            sig = cell_signature(task, method, recipe, spec, cell_protocols[method], inputs=inputs)
            done = results["cells"].get(key)
            if done is not None and done.get("signature_digest") == _digest(sig):
                invocation["skipped"].append(key)
                continue
            if done is not None:
                old = done.get("signature") if isinstance(done.get("signature"), dict) else {}
                if _digest(without_inputs(old)) != _digest(without_inputs(sig)):
                    raise InputError(f"cell {key} in {results_path} was run with other options",
                                     "repeat the original options, pass another --out, or delete that results.json")
                _retire(results, invocation, key, what_changed(old, sig), "recomputed")
            todo.append((task, method, sig))

    def inputs_of(task: Task) -> dict[str, Any]:
        if task.name not in seen:
            seen[task.name] = task_inputs(task, weights_file, seed, memo)
        return seen[task.name]

    _retire_unselected(suite, methods, results, invocation, inputs_of)
    return todo


def _retire(results: dict[str, Any], invocation: dict[str, Any], key: str, reason: str, action: str) -> None:
    """Take a stale cell out of the table, keeping its record under ``replaced`` (nothing is lost)."""
    from ..ui import escape, info

    info(escape(f"benchmark: cell {key} is {action}: {reason}"))
    results.setdefault("replaced", {})[key] = results["cells"].pop(key) | {"replaced_because": reason}
    invocation.setdefault(action, []).append({"cell": key, "reason": reason})


def _retire_unselected(suite: Suite, methods: list[str], results: dict[str, Any], invocation: dict[str, Any],
                       inputs_of: Any) -> None:
    """Cells of tasks (or methods) outside this run are still in the table: check their inputs too, and
    take out the ones whose data changed (a later run with those --tasks recomputes them)."""
    selected = {t.name for t in suite.tasks}
    for key in [k for k in results["cells"] if k.split("/")[0] not in selected or k.split("/")[1] not in methods]:
        record = results["tasks"].get(key.split("/")[0])
        old = results["cells"][key].get("signature")
        if not isinstance(record, dict) or not isinstance(old, dict) or not Path(record.get("path", "")).is_dir():
            continue  # its folder is gone: nothing to compare with, the record stands as it was
        task = Task(record["name"], record["group"], Path(record["path"]), shots=record.get("shots"),
                    **record["splits"])
        again = f"; run with --tasks {task.name} --methods {key.split('/')[1]} to recompute it"
        try:
            now = {INPUTS_KEY: inputs_of(task)}
        except InputError as exc:  # not this run's task: its data is unusable now, so its cell cannot stand
            _retire(results, invocation, key, f"its data cannot be read now ({exc.message}){again}", "dropped")
            continue
        if old.get(INPUTS_KEY) != now[INPUTS_KEY]:
            _retire(results, invocation, key, what_changed(old, now) + again, "dropped")


def _check_init_k(spec: BenchmarkSpec, cell_protocols: dict[str, CellProtocol]) -> None:
    """Every VIPAMIN cell's K values against the backbone's patch count, before the first cell runs; a
    value from a recipe's grid is blamed on --recipe, not on a --k the user never typed."""
    from ..backbones import resolve_spec
    from ..inits.vipamin import check_k_grid, k_origin

    cells = {m: p for m, p in cell_protocols.items() if p.init_method == "vipamin"}
    if not cells:
        return
    bb = resolve_spec(spec.backbone)
    patches = (bb.img_size // bb.patch) ** 2
    for protocol in cells.values():
        source = ((protocol.resolved or {}).get("init_grid") or {}).get("source") if protocol.recipe else None
        check_k_grid([c.k for c in protocol.init_configs("cpu")], patches,
                     k_origin(spec.recipe if protocol.recipe else None, source, given=bool(spec.init_grid.get("k"))))


@command_scope()
def run_benchmark(spec: BenchmarkSpec) -> dict[str, Any]:
    """Run (or resume) every task x method cell of the suite; returns the results and writes the report."""
    from .. import distributed
    from ..ui import info
    from .report import write_report

    methods, recipe, cell_protocols = _check_spec(spec)
    suite = resolve_suite(spec.suite, spec.root, spec.tasks)
    out = _declare_outputs(spec)
    results_path = out / "results.json"
    results = _load_results(results_path, suite, spec)
    for t in suite.tasks:
        results["tasks"][t.name] = t.describe()
    results["methods"] = list(dict.fromkeys(results["methods"] + methods))
    invocation = _invocation(spec, recipe, cell_protocols)
    results["invocations"].append(invocation)

    todo = _plan_cells(suite, methods, recipe, cell_protocols, spec, results, results_path, invocation)
    if invocation["skipped"]:
        info(f"benchmark: {len(invocation['skipped'])} finished cell(s) in {results_path} skipped")
    total = sum(cell_protocols[m].units(spec.grid_batch, spec.sweep) for _, m, _ in todo)
    write_json(results_path, results)
    _run_cells(todo, spec, suite.name, cell_protocols, total, out, results, invocation)
    invocation["finished"] = _now()
    write_json(results_path, results)
    if distributed.is_main():
        write_report(results, out, plot_png=spec.plot)
    return results


def _check_spec(spec: BenchmarkSpec) -> tuple[list[str], Preset | None, dict[str, CellProtocol]]:
    """Every option of every cell, checked before the first cell runs (a bad value fails in seconds,
    not hours in); the methods (deduplicated), the preset (None under --recipe) and each cell's protocol."""
    methods = list(dict.fromkeys(spec.methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"unknown --methods {','.join(bad) or '(empty)'}", f"use some of {','.join(METHODS)}")
    _check_init_grid(spec.init_grid)
    from .. import validate as v
    from ..embed import EmbedConfig, resolve_device

    for lr in spec.overrides.get("full_lrs") or ():  # checked even when no full cell runs
        v.number(lr, "--full-lr", minimum=0, min_open=True, example=0.001)
    recipe, cell_protocols = protocols(spec, methods)
    for protocol in cell_protocols.values():
        protocol.validate()
        if spec.sweep is not None:  # --sweep / --eta / --min-epochs against every cell's epochs
            spec.sweep.resolved(protocol.base.epochs, protocol.base.warmup_epochs)
    v.integer(spec.grid_batch, "--grid-batch", minimum=1, example=4, optional=True)
    EmbedConfig(calib_size=spec.calib_size, device=spec.device).validate()
    if spec.plot:
        _check_plot_support()
    resolve_device(spec.device)
    _check_init_k(spec, cell_protocols)
    return methods, recipe, cell_protocols


def _declare_outputs(spec: BenchmarkSpec) -> Path:
    """The --out folder, with the files the benchmark writes there declared (and checked) as outputs."""
    out = iosafety.declare_output_dir(spec.out, "--out")
    for name, role in (("results.json", "the results"), ("table.md", "the table"), ("results.png", "the plot")):
        iosafety.declare_output(out / name, "--out", role=role)
    return out


def _invocation(spec: BenchmarkSpec, recipe: Preset | None, cell_protocols: dict[str, CellProtocol]
                ) -> dict[str, Any]:
    """This run's entry in results.json: its preset or recipes, and the cells it computes and skips."""
    from .. import distributed

    if recipe is not None:
        invocation = {"started": _now(), "preset": spec.preset or "paper", "effective_preset": asdict(recipe),
                      "computed": [], "skipped": []}
    else:
        invocation = {"started": _now(), "preset": None, "recipe": spec.recipe,
                      "cell_recipes": {m: p.recipe for m, p in cell_protocols.items()},
                      "overrides": {k: v for k, v in spec.overrides.items() if v is not None}, "computed": [],
                      "skipped": []}
    if distributed.launched():
        invocation["world_size"] = distributed.world_size()
    return invocation


def _run_cells(todo: list[tuple[Task, str, dict[str, Any]]], spec: BenchmarkSpec, suite_name: str,
               cell_protocols: dict[str, CellProtocol], total: int, out: Path, results: dict[str, Any],
               invocation: dict[str, Any]) -> None:
    """Compute the planned cells in order, embedding each task once, under one progress bar; each
    finished cell is written to results.json at once, so a cut-off run loses only the cell in progress."""
    from ..ui import progress_bar

    embedded: dict[str, dict[str, Path]] = {}
    with progress_bar(f"benchmark {suite_name}", total, spec.show_progress) as bar:
        for i, (task, method, sig) in enumerate(todo):
            label = f"{task.name}/{method} ({i + 1}/{len(todo)})"
            bar.advance(0, cell=label, step="embed")
            if task.name not in embedded:
                embedded[task.name], results["embeddings"][task.name] = _embed_task(task, spec)
            cell_dir = out / "cells" / task.name / method
            _prepare_cell_dir(cell_dir, sig)
            bar.advance(0, cell=label, step="train")
            cell = run_cell(task, method, embedded[task.name], cell_protocols[method], cell_dir, device=spec.device,
                            init_grid=spec.init_grid, grid_batch=spec.grid_batch, precision=spec.precision,
                            on_epoch=lambda label=label: bar.advance(1, cell=label, step="train"), sweep=spec.sweep)
            _record_cell(results, invocation, out / "results.json", f"{task.name}/{method}", sig, cell, label)


def _prepare_cell_dir(cell_dir: Path, sig: dict[str, Any]) -> None:
    """Make the cell's folder ready with its signature on rank 0 (a stale cut-off run's leftovers with
    other options cleared first), and hold every rank until it is, before any rank trains in it."""
    from .. import distributed

    sig_file = cell_dir / "signature.json"
    stale = _stale_cell(cell_dir, sig) if distributed.is_main() else False
    if stale and distributed.is_main():
        _clear_cell(cell_dir)  # leftovers of a cut-off run with other options
    if distributed.is_main():
        cell_dir.mkdir(parents=True, exist_ok=True)
    write_json(sig_file, sig)
    distributed.sync()  # the cell folder is ready on rank 0 before any rank trains in it


def _record_cell(results: dict[str, Any], invocation: dict[str, Any], results_path: Path, key: str,
                 sig: dict[str, Any], cell: dict[str, Any], label: str) -> None:
    """Put a finished cell (with its signature, to skip it next time) in results.json now, and say its score."""
    from ..ui import info

    cell.update(signature=sig, signature_digest=_digest(sig), finished_at=_now())
    results["cells"][key] = cell
    invocation["computed"].append(key)
    write_json(results_path, results)
    s = cell["test_top1"]
    info(f"{label}: test top-1 {s['mean']:.2f} ± {s['std']:.2f} ({cell['timing']['total_s']:.0f} s)")
