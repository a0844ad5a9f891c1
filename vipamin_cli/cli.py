"""The `vipamin` command line: thin wrappers that parse options and call library functions.

Heavy imports (torch, timm, datasets) happen inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .errors import VipaminError
from .options import (  # the options several commands share, defined once with their help panels
    INIT,
    INIT_METHODS,
    OPTIM,
    PROMPTS,
    RUNTIME,
    Architecture,
    AugmentOpt,
    BackboneOpt,
    CacheOpt,
    CalibSizeOpt,
    CompileOpt,
    DataOpt,
    DataSeedOpt,
    DataSource,
    DeepStatsOpt,
    DeepStatsPromptsOpt,
    DeviceOpt,
    DtypeOpt,
    EmbedBatchOpt,
    Embedding,
    Flag,
    GridBatchOpt,
    ImageColOpt,
    InitGrid,
    InitMethodOpt,
    InitTuning,
    InitValues,
    LabelColOpt,
    Opt,
    Optimiser,
    OutCheckpointOpt,
    PrecisionOpt,
    PromptLengthOpt,
    PromptsOpt,
    RecipeOpt,
    ResizeOpt,
    ResumeOpt,
    SampleImagesOpt,
    Schedule,
    SeedOpt,
    SeedsOpt,
    Selection,
    ShotsOpt,
    SplitOpt,
    Sweep,
    Vapt,
    ViewsOpt,
    VipaminGrid,
    WeightsOpt,
    WorkersOpt,
    with_option_groups,
)
from .parsing import strict_group_class

if TYPE_CHECKING:
    from .recipes import TunePlan

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="vipamin",
    help="Visual prompt tuning for frozen ViTs with smart prompt initialisation (VIPAMIN, SPT, VPT, VAPT).\n\n"
         "Pipeline: [bold]embed[/] (one frozen forward pass, cached) -> [bold]init[/] -> [bold]tune[/] -> "
         "[bold]eval[/].\n\nExample: vipamin embed --backbone vit-tiny-test --data ./digits --split train",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    cls=strict_group_class(),  # every int / float option is read strictly ('1_0' is refused): parsing.py
)

_STATE = {"debug": False, "reported": False}


def _fail(message: str, code: int) -> None:
    """Print the error once and exit. Under torchrun the ranks first agree on one failure (the
    lowest failing rank's), so every rank exits with the same code and only rank 0 prints it."""
    from . import distributed

    if distributed.launched():
        message, code = distributed.agree_failure(message, code)
        if not distributed.is_main():
            raise typer.Exit(code)
    _STATE["reported"] = True
    try:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr itself is gone (``2>&1 | head``): the exit code still says it
        pass
    raise typer.Exit(code)


def _agree_before_traceback(message: str, code: int) -> None:
    """--debug under torchrun: the peers still learn of the failure before the traceback is shown."""
    from . import distributed

    if distributed.launched():
        distributed.agree_failure(message, code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and an exit code; tracebacks only with --debug.

    The command runs inside one :func:`iosafety.command_scope`, so every path it reads or writes is
    checked against the others; an OSError no write path caught still becomes one line naming the file.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .iosafety import command_scope

        with command_scope():
            return _run_command(fn, args, kwargs)

    return wrapper  # type: ignore[return-value]


def _run_command(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    from .iosafety import os_error_line
    from .ui import StdoutClosed

    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except StdoutClosed as exc:  # ``| head`` closed the pipe: end quietly, as Unix tools do
        raise typer.Exit(exc.exit_code) from None
    except VipaminError as exc:
        if _STATE["debug"]:
            _agree_before_traceback(str(exc), exc.exit_code)
            raise
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        known = os_error_line(exc) if isinstance(exc, OSError) else None
        if known is not None and not _STATE["debug"]:
            _fail(str(known), known.exit_code)
        text = str(exc).splitlines()[0] if str(exc) else ""
        if _STATE["debug"]:
            _agree_before_traceback(f"internal error: {type(exc).__name__}: {text}", 1)
            raise
        _fail(f"internal error: {type(exc).__name__}: {text} (re-run with --debug for the traceback)", 1)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")] = False,
) -> None:
    _STATE["debug"] = debug
    if quiet:
        os.environ["VIPAMIN_QUIET"] = "1"


def _embed_config(seed: int, resize: str, dtype: str, calib_size: int, sample_images: int, augment: str | None,
                  views: int | None, workers: int | None, batch_size: int, device: str,
                  deep_stats: str = "prompt-free", deep_stats_prompts: int | None = None) -> Any:
    """The EmbedConfig of the embedding options as embed and eval spell them (augment None = none)."""
    return Embedding(resize=resize, dtype=dtype, calib_size=calib_size, sample_images=sample_images, augment=augment,
                     views=views, deep_stats=deep_stats, deep_stats_prompts=deep_stats_prompts, workers=workers,
                     embed_batch_size=batch_size).config(seed, device)


@app.command(epilog="Example: vipamin embed --backbone mae-vit-b --data ./flowers --split train")
@handle_errors
def embed(
    backbone: BackboneOpt,
    data: DataOpt,
    split: SplitOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the embeddings to this file.")] = None,
    weights: WeightsOpt = None,
    shots: ShotsOpt = None,
    seed: SeedOpt = 0,
    resize: ResizeOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward batch.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    dtype: DtypeOpt = "bfloat16",
    calib_size: CalibSizeOpt = 256,
    sample_images: SampleImagesOpt = 32,
    augment: AugmentOpt = None,
    views: ViewsOpt = None,
    deep_stats: DeepStatsOpt = "prompt-free",
    deep_stats_prompts: DeepStatsPromptsOpt = None,
    workers: WorkersOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache (needs --out).")]
    = False,
    image_column: ImageColOpt = "image",
    label_column: LabelColOpt = "label",
) -> None:
    """Run the frozen backbone once over a data split and cache block-0 tokens plus calibration statistics.

    Later commands given the same --backbone/--data find the cached file and skip the forward pass.
    Prints the path of the embeddings file on stdout.
    """
    from .embed import embed_data

    config = _embed_config(seed, resize, dtype, calib_size, sample_images, augment, views, workers, batch_size,
                           device, deep_stats, deep_stats_prompts)
    result = embed_data(backbone, data, weights=weights, split=split, shots=shots, config=config, out=out,
                        cache_dir=cache_dir, use_cache=not no_cache, image_column=image_column,
                        label_column=label_column)
    typer.echo(str(result.path))


@app.command(epilog="Example: vipamin init --method vipamin --backbone mae-vit-b --data ./flowers --k 8 --lambda 0.5")
@handle_errors
@with_option_groups
def init(
    method: Annotated[str, Opt("--method", "-m", panel=INIT, help=f"{INIT_METHODS}.")] = "vipamin",
    out: Annotated[Path | None, Opt("--out", "-o", help="Prompts file (default prompts-<method>[-deep]"
                                    ".safetensors).")] = None,
    explain_it: Annotated[bool, Flag("--explain", help="Also print why (and draw the VIPAMIN heat map beside the "
                                     "prompts file).")] = False,
    source: DataSource = DataSource(),
    embedding: Embedding = Embedding(),
    seed: Annotated[int, Opt("--seed", panel=INIT, help="Seed of every random draw of the method.")] = 0,
    values: InitValues = InitValues(),
    tuning: InitTuning = InitTuning(),
    deep: Annotated[bool, Flag("--deep", panel=PROMPTS, help="One prompt set per block (deep VPT).")] = False,
    prompt_length: PromptLengthOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Initialise prompts (VIPAMIN, SPT prototypes or VPT random) from cached calibration statistics.

    Given --backbone/--data, the matching embeddings are found in the cache (or embedded first).
    Prints the path of the prompts file on stdout.
    """
    from dataclasses import asdict

    from .inits import InitConfig, init_prompts

    config = InitConfig(method=method, prompt_length=prompt_length, deep=deep, seed=seed, **asdict(values),
                        **asdict(tuning), device=device)
    outcome = init_prompts(config, embeddings=source.embeddings, backbone=source.backbone, data=source.data,
                           weights=source.weights, split=source.split, shots=source.shots,
                           embed_config=embedding.config(source.data_seed, device), out=out,
                           cache_dir=source.cache_dir)
    typer.echo(str(outcome.path))
    if explain_it:
        from .explain import explain as explain_prompts
        from .explain import render_explanation
        from .ui import escape, info

        for line in render_explanation(explain_prompts(outcome.path, default_from="--out")):
            info(escape(line))


@app.command(epilog="Example: vipamin explain prompts-vipamin.safetensors --png matches.png")
@handle_errors
def explain(
    prompts: Annotated[Path, typer.Argument(help="A prompts file from `vipamin init`.")],
    png: Annotated[Path | None, typer.Option("--png", help="Heat map path (default <prompts>.matches.png).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Explain an initialisation: where VIPAMIN's prompts matched on the patch grid, how spread the
    matches are, and how far the orthogonal part lies from the pretrained span."""
    from .explain import check_png_path, render_explanation
    from .explain import explain as explain_prompts

    if png is not None:
        check_png_path(png)
        from .validate import output_path

        output_path(png, "--png", [("PROMPTS", prompts)])
    summary = explain_prompts(prompts, png)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for line in render_explanation(summary):
            typer.echo(line)


def _numbers(text: str | None, option: str, kind: type = float) -> list:
    """Parse a comma-separated list option such as --lr 0.05,0.1,0.25 (see validate.LIST_OPTIONS)."""
    from .parsing import number_list

    return number_list(text, option, kind)


def _strings(text: str, option: str) -> list[str]:
    """Parse a comma-separated list of names such as --sample random,kmeans."""
    from .parsing import string_list

    return string_list(text, option)


def _given_lists(lists: dict[str, tuple[str | None, str, type]]) -> dict[str, list]:
    """The options given as comma lists, parsed: {field: values} for each (text, option, kind) not None."""
    return {field: (_strings(text, option) if kind is str else _numbers(text, option, kind))
            for field, (text, option, kind) in lists.items() if text is not None}


def _init_grid(lists: dict[str, tuple[str | None, str, type]]) -> list[dict[str, Any]] | None:
    """The cross product of the init options given as comma lists (None when none was given)."""
    import itertools

    given = _given_lists(lists)
    if not given:
        return None
    names = list(given)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(given[n] for n in names))]


def _vipamin_lists(grid: VipaminGrid) -> dict[str, tuple[str | None, str, type]]:
    """VIPAMIN's init options as (comma list, option, kind) by InitConfig field (tune, benchmark)."""
    return {"k": (grid.k, "--k", int), "lam": (grid.lam, "--lambda", float), "orth": (grid.orth, "--orth", str),
            "orth_scale": (grid.orth_scale, "--orth-scale", str), "orth_rcond": (grid.orth_rcond, "--orth-rcond", str),
            "orth_span_tol": (grid.orth_span_tol, "--orth-span-tol", str)}


def _tune_recipe_plan(recipe: str | None, init_method: str | None, prompt_length: int | None, grid: InitGrid,
                      architecture: Architecture, schedule: Schedule, optimiser: Optimiser, selection: Selection,
                      vapt: Vapt) -> TunePlan:
    """`tune`'s options resolved against --recipe: the comma lists parsed, and --seed/--seeds split into
    the sweep's seeds and the final runs' seeds when there are final runs."""
    from dataclasses import asdict

    from .recipes import plan as make_plan

    given = _given_lists({"seeds": (selection.seeds, "--seeds", int), "lrs": (schedule.lr, "--lr", float),
                          "weight_decays": (schedule.weight_decay, "--weight-decay", float)})
    init_grid = _init_grid(_vipamin_lists(grid) | {"sample": (grid.sample, "--sample", str),
                                                    "seed": (grid.init_seed, "--init-seed", int)})
    seeds, seed = given.get("seeds"), [selection.seed] if selection.seed is not None else None
    return make_plan(recipe, lrs=given.get("lrs"), weight_decays=given.get("weight_decays"),
                     seeds=seed if selection.has_final else (seeds or seed),
                     final_seeds=seeds if selection.has_final else None, init_method=init_method, init_grid=init_grid,
                     prompt_length=prompt_length, **asdict(architecture), epochs=schedule.epochs,
                     warmup_epochs=schedule.warmup_epochs, batch_size=schedule.batch_size, **asdict(optimiser),
                     **vapt.config(), tie_break=selection.tie_break, val_every=selection.val_every)


@app.command(epilog="Examples: vipamin tune --recipe vipamin --backbone mae-vit-b --data ./vtab/dtd --split train800 "
             "--val val200 --final-split train800val200 --out dtd.safetensors  |  vipamin tune --embeddings "
             "train.safetensors --val-embeddings val.safetensors --lr 0.05,0.1 --k 2,8 --lambda 0,0.5")
@handle_errors
@with_option_groups
def tune(
    out: OutCheckpointOpt = Path("checkpoint.safetensors"),
    recipe: RecipeOpt = None,
    resume: ResumeOpt = False,
    source: DataSource = DataSource(),
    embedding: Embedding = Embedding(),
    prompts: PromptsOpt = None,
    init_method: InitMethodOpt = None,
    grid: InitGrid = InitGrid(),
    tuning: InitTuning = InitTuning(),
    prompt_length: PromptLengthOpt = None,
    architecture: Architecture = Architecture(),
    schedule: Schedule = Schedule(),
    optimiser: Optimiser = Optimiser(),
    selection: Selection = Selection(),
    sweeping: Sweep = Sweep(),
    vapt: Vapt = Vapt(),
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile_: CompileOpt = "auto",
    grid_batch: GridBatchOpt = None,
) -> None:
    """Train prompts (and VAPT's generator) plus a linear head on the frozen backbone's cached tokens
    (--arch full: fine-tune every backbone weight after block 0 instead, no prompts).

    Lists in --lr / --weight-decay / --k / --lambda / --orth / --sample make a sweep selected on --val
    (last-epoch top-1; --sweep halving stops the weaker ones early); --seeds trains each configuration
    per seed; --final-split then retrains the selected one on train+val. --recipe sets a paper's
    defaults. Prints the checkpoint path on stdout.
    """
    from dataclasses import asdict

    from .errors import InputError
    from .inits import InitConfig
    from .recipes import default_augment
    from .tune import TuneInputs, tune_plan

    if selection.final_split is not None and source.data is None:
        raise InputError("--final-split needs --data (and --backbone)", "pass --data, or --final-embeddings FILE")
    plan = _tune_recipe_plan(recipe, init_method, prompt_length, grid, architecture, schedule, optimiser, selection,
                             vapt)
    inputs = TuneInputs(embeddings=source.embeddings, backbone=source.backbone, data=source.data,
                        weights=source.weights, split=source.split, shots=source.shots, val=selection.val,
                        val_embeddings=selection.val_embeddings, prompts=prompts,
                        init=InitConfig(method=plan.init_method, **asdict(tuning), device=device),
                        embed_config=embedding.config(source.data_seed, device,
                                                      default_augment(recipe, embedding.augment)),
                        cache_dir=source.cache_dir, final_split=selection.final_split,
                        final_embeddings=selection.final_embeddings, follow_seed=grid.init_seed is None)
    outcome = tune_plan(inputs, plan, out, device=device, resume=resume, grid_batch=grid_batch,
                        precision=precision, compile_mode=compile_, sweep=sweeping.rule())
    typer.echo(str(outcome.checkpoint))


@app.command(epilog="Example: vipamin recipes --json")
@handle_errors
def recipes(
    name: Annotated[str | None, typer.Argument(help="One recipe (default: all). E.g. vipamin recipes vapt.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the named training recipes (vipamin, vpt, spt, vapt, vpt-full): every value and where it comes from."""
    from .recipes import get_recipe, list_recipes

    rows = [get_recipe(name).as_dict()] if name else list_recipes()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from .ui import out_console

    for r in rows:
        table = Table(title=f"recipe {r['name']}: {r['description']}")
        for col in ("setting", "value", "source"):
            table.add_column(col)
        for key, v in r["values"].items():
            table.add_row(key, json.dumps(v["value"]), v["source"])
        out_console().print(table)
        for note in r["notes"]:
            out_console().print(f"  note: {note}")


def _benchmark_overrides(schedule: Schedule, prompt_length: int | None, full_lr: str | None,
                         seeds: str | None) -> dict[str, Any]:
    """The preset's or recipe's values that `benchmark`'s options replace, parsed (None: not given)."""
    from .validate import seed as check_seed

    return {"epochs": schedule.epochs, "warmup_epochs": schedule.warmup_epochs,
            "batch_size": schedule.batch_size, "prompt_length": prompt_length,
            "lrs": _numbers(schedule.lr, "--lr") if schedule.lr is not None else None,
            "full_lrs": _numbers(full_lr, "--full-lr") if full_lr is not None else None,
            "weight_decays": (_numbers(schedule.weight_decay, "--weight-decay")
                              if schedule.weight_decay is not None else None),
            "seeds": [check_seed(s, "--seeds") for s in _numbers(seeds, "--seeds", int)] if seeds else None}


@app.command(epilog="Example: vipamin benchmark --suite testbed --root ./testbed --backbone mae-vit-tiny-mnist "
             "--methods random,vipamin,linear --preset quick --out bench-testbed")
@handle_errors
@with_option_groups
def benchmark(
    suite: Annotated[str, typer.Option("--suite", help="testbed | vtab-1k | fgvc-fewshot. E.g. --suite vtab-1k.")],
    root: Annotated[Path, typer.Option("--root", help="Folder holding the suite's task folders (VTAB-1k: NOAH's "
                                       "names). E.g. --root ~/data/vtab-1k.")],
    backbone: BackboneOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder: results.json, table.md, results.png, cells/. "
                                      "Finished cells found there are skipped. E.g. --out bench-out.")],
    weights: WeightsOpt = None,
    methods: Annotated[str, typer.Option("--methods", help="Comma list of random | spt | vipamin | vapt | linear | "
                                         "full (full fine-tuning: every weight after block 0, its own lr grid "
                                         "--full-lr). E.g. --methods random,vipamin,linear,full.")]
    = "random,spt,vipamin,vapt,linear",
    tasks: Annotated[str | None, typer.Option("--tasks", help="Comma list of task names (default: all). E.g. "
                                              "--tasks dtd,eurosat.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="paper (the VIPAMIN code's protocol: 100 epochs, 7 "
                                               "lrs, 3 final seeds) | quick (20 epochs, 3 lrs) | testbed (5 epochs, "
                                               "2 lrs) | demo (3 epochs, 1 lr). Default paper; not with --recipe. "
                                               "E.g. --preset quick.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Train every cell with named recipes instead of a "
                                               "preset: vipamin | vpt | spt | vapt | vpt-full (that paper's protocol "
                                               "in every cell, see `vipamin recipes`) | own (each method its "
                                               "paper's: random vpt, spt spt, vipamin vipamin, vapt vapt; linear "
                                               "vipamin's schedule). The full cell always trains with vpt-full. "
                                               "--epochs, --warmup-epochs, --batch-size, --lr, "
                                               "--weight-decay, --seeds and -p override it; --preset with it is "
                                               "refused. E.g. --recipe own.")] = None,
    cache_dir: CacheOpt = None,
    calib_size: CalibSizeOpt = 256,
    grid: VipaminGrid = VipaminGrid(),
    prompt_length: PromptLengthOpt = None,
    schedule: Schedule = Schedule(),
    sweeping: Sweep = Sweep(),
    full_lr: Annotated[str | None, Opt("--full-lr", panel=OPTIM, help="Comma list: the full cell's lr grid (base "
                                       "lrs, x batch/256; default VPT's 0.005, 0.001, 0.0005, 0.0001, shorter in "
                                       "the testbed presets). E.g. --full-lr 0.001,0.005.")] = None,
    seeds: SeedsOpt = None,
    device: DeviceOpt = "auto",
    grid_batch: GridBatchOpt = None,
    plot_png: Annotated[bool, Flag("--plot/--no-plot", panel=RUNTIME, help="Write results.png (needs "
                                   "matplotlib).")] = True,
) -> None:
    """Run a benchmark suite: per task embed once; per method sweep on train800/val200, final runs on
    train800val200 with each seed, test top-1 mean ± std; prints the papers' table (also table.md)."""
    from .benchmark import BenchmarkSpec, run_benchmark
    from .benchmark.report import markdown_table

    overrides = _benchmark_overrides(schedule, prompt_length, full_lr, seeds)
    init_grid = _given_lists(_vipamin_lists(grid))
    spec = BenchmarkSpec(suite=suite, root=root, backbone=backbone, out=out, weights=weights, init_grid=init_grid,
                         methods=tuple(_strings(methods, "--methods")),
                         tasks=_strings(tasks, "--tasks") if tasks is not None else None, preset=preset,
                         recipe=recipe, overrides=overrides, device=device, cache_dir=cache_dir, calib_size=calib_size,
                         grid_batch=grid_batch, plot=plot_png, sweep=sweeping.rule())
    typer.echo(markdown_table(run_benchmark(spec)), nl=False)


@app.command(name="eval", epilog="Example: vipamin eval --checkpoint flowers.safetensors --data ./flowers "
             "--split test --json")
@handle_errors
def eval_(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint from `vipamin tune`.")],
    embeddings: Annotated[Path | None, typer.Option("--embeddings", "-e", help="Embeddings of the evaluation "
                                                    "split.")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone (default: the "
                                                 "checkpoint's).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data source to embed (cached).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Evaluation split.")] = "test",
    weights: WeightsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the metrics JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw the confusion matrix into this PNG.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    cache_dir: CacheOpt = None,
    data_seed: DataSeedOpt = 0,
    resize: ResizeOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    calib_size: CalibSizeOpt = 256,
    sample_images: SampleImagesOpt = 32,
    augment: AugmentOpt = None,
    views: ViewsOpt = None,
    deep_stats: DeepStatsOpt = "prompt-free",
    deep_stats_prompts: DeepStatsPromptsOpt = None,
    workers: WorkersOpt = None,
    embed_batch_size: EmbedBatchOpt = 64,
) -> None:
    """Top-1, top-5, per-class and macro accuracy and the confusion matrix; mean +- std over seeds."""
    from .artifacts import atomic_path
    from .evaluate import evaluate, plot_confusion, render_metrics
    from .validate import output_path

    if plot is not None and plot.suffix.lower() != ".png":
        from .errors import InputError

        raise InputError(f"--plot {plot} must end in .png", "pass e.g. --plot confusion.png")
    inputs = [("--checkpoint", checkpoint), ("--embeddings", embeddings)]
    for option, path in (("--out", out), ("--plot", plot)):
        if path is not None:
            output_path(path, option, inputs)
    result = evaluate(checkpoint, embeddings=embeddings, backbone=backbone, data=data, weights=weights, split=split,
                      embed_config=_embed_config(data_seed, resize, dtype, calib_size, sample_images, augment,
                                                 views, workers, embed_batch_size, device, deep_stats,
                                                 deep_stats_prompts),
                      cache_dir=cache_dir, device=device)
    text = json.dumps(result, indent=2)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
    if plot is not None:
        plot_confusion(result, plot)
    if as_json:
        typer.echo(text)
    else:
        render_metrics(result)


PREDICT_INPUT = "Input"
PREDICT_OUTPUT = "Output"
PREDICT_RUNTIME = "Runtime"
MODEL_PANEL = "Model"
RunOpt = Annotated[int | None, typer.Option("--run", rich_help_panel=MODEL_PANEL, help="Use only this run of the "
                                            "checkpoint (0-based index, as `vipamin info` lists them). Default: "
                                            "average every run's (seed's) softmax probabilities. E.g. --run 0.")]
RecordedBackboneOpt = Annotated[str | None, typer.Option("--backbone", "-b", rich_help_panel=MODEL_PANEL,
                                                         help="Backbone (default: the one the checkpoint records; "
                                                         "checked against it).")]
RecordedWeightsOpt = Annotated[str | None, typer.Option("--weights", rich_help_panel=MODEL_PANEL, help="Backbone "
                                                        "weights file (default: the weights the checkpoint "
                                                        "records; needed only when the recorded local file moved)."
                                                        " E.g. --weights mae.pth.")]


@app.command(epilog="Example: vipamin predict -c flowers.safetensors -d photos/ --out preds.csv  (or: find photos "
             "-name '*.jpg' | vipamin predict -c flowers.safetensors -d - --top-k 1)")
@handle_errors
def predict(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint from `vipamin tune`.",
                                             rich_help_panel=PREDICT_INPUT)],
    data: Annotated[list[str], typer.Option("--data", "-d", help="An image file, a folder of images (searched "
                                            "recursively; class folders not needed), a list file (one image path "
                                            "per line, relative to the list's folder; '-' = read it from stdin), "
                                            "hf:<owner>/<name> or hf-disk:<dir>. Repeat for several.",
                                            rich_help_panel=PREDICT_INPUT)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image, most probable first. E.g. "
                                       "--top-k 1.", rich_help_panel=PREDICT_OUTPUT)] = 5,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the rows here (.csv or .jsonl, by suffix), "
                                             "atomically. Default: stdout, one line per image.",
                                             rich_help_panel=PREDICT_OUTPUT)] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto (by --out's suffix; text on stdout) | text (tab-"
                                     "separated: path, then class and probability pairs) | csv (path,class_1,"
                                     "prob_1,...,error) | jsonl ({\"path\", \"top\": [{\"class\", \"prob\"}], "
                                     "\"error\"}).", rich_help_panel=PREDICT_OUTPUT)] = "auto",
    run: RunOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Split of an hf:/hf-disk: source (default test).",
                                              rich_help_panel=PREDICT_INPUT)] = None,
    image_column: Annotated[str, typer.Option("--image-column", help="Image column of an hf:/hf-disk: source.",
                                              rich_help_panel=PREDICT_INPUT)] = "image",
    backbone: RecordedBackboneOpt = None,
    weights: RecordedWeightsOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (bf16 autocast on CUDA).",
                                        rich_help_panel=PREDICT_RUNTIME)] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward batch (memory is bounded by "
                                            "it). E.g. --batch-size 128.", rich_help_panel=PREDICT_RUNTIME)] = 64,
    workers: Annotated[int | None, typer.Option("--workers", help="Image decoding workers (default: 0 on CPU, up "
                                                "to 8 on CUDA). E.g. --workers 4.",
                                                rich_help_panel=PREDICT_RUNTIME)] = None,
) -> None:
    """Classify new images with a tuned checkpoint: each image's top-k classes and probabilities.

    Images are decoded and run in streamed batches with the preprocessing `embed` used. A checkpoint
    with several runs (seeds) predicts with their averaged probabilities unless --run picks one. An
    unreadable image gets one line on stderr and a row with its error; the others are still
    predicted. Exit codes: 0 every image predicted, 3 some images could not be read (their rows say
    why), 2 bad input (nothing written), 1 runtime failure, 130 interrupted.
    """
    from .predict import PARTIAL_EXIT
    from .predict import predict as run_predict

    summary = run_predict(checkpoint, data, out=out, top_k=top_k, fmt=fmt, run=run, device=device,
                          batch_size=batch_size, workers=workers, split=split, image_column=image_column,
                          backbone=backbone, weights=weights)
    if summary.out is not None:
        typer.echo(str(summary.out))  # like embed, init, tune and export: the file written
    if summary.failed:
        raise typer.Exit(PARTIAL_EXIT)


@app.command(epilog="Example: vipamin export --checkpoint flowers.safetensors --out flowers.pt2")
@handle_errors
def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint from `vipamin tune`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The program file (.pt2); <out>.json is written beside "
                                      "it.")],
    run: RunOpt = None,
    backbone: RecordedBackboneOpt = None,
    weights: RecordedWeightsOpt = None,
) -> None:
    """Save the tuned classifier (frozen backbone + prompts + head) with torch.export.

    The file loads with torch.export.load alone (no vipamin, no timm), takes any batch size at the
    checkpoint's input resolution, and returns logits (with several runs: the log of their averaged
    probabilities). Class names and preprocessing are in its extra file vipamin.json and in
    <out>.json. Prints the path of the program on stdout.
    """
    from .export import export_classifier

    result = export_classifier(checkpoint, out, run=run, backbone=backbone, weights=weights)
    typer.echo(str(result.out))


@app.command(epilog="Example: vipamin info embeddings.safetensors --json")
@handle_errors
def info(
    file: Annotated[Path, typer.Argument(help="An artifact written by vipamin (embeddings, prompts, checkpoint).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also load the tensors and check their digest.")] = False,
) -> None:
    """Show an artifact's metadata and tensor shapes."""
    from .summary import artifact_summary, render_summary

    summary = artifact_summary(file, verify=verify)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        render_summary(summary)


@app.command(epilog="Example: vipamin backbones --json")
@handle_errors
def backbones(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the named backbones with their source, width, depth and patch size."""
    from .backbones import list_backbones

    rows = [{"name": s.name, "source": s.source, "width": s.width, "depth": s.depth, "heads": s.heads,
             "patch": s.patch, "img_size": s.img_size, "pool": s.pool, "description": s.description}
            for s in list_backbones()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from .ui import out_console

    table = Table(title="backbones (any timm ViT also works as timm:<name>)")
    for col in ("name", "source", "width", "depth", "patch", "img_size", "pool"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("name", "source", "width", "depth", "patch", "img_size", "pool")))
    out_console().print(table)


@app.command(epilog="Example: vipamin demo --out demo-out")
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the exported data and all artifacts.")]
    = Path("demo-out"),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
) -> None:
    """Run the pipeline offline on real handwritten digits (from scikit-learn) with the built-in tiny ViT."""
    from .demo import run_demo

    run_demo(out, device=device)


data_app = typer.Typer(help="Get, check and make benchmark data folders (VTAB-1k, FGVC, the offline testbed).",
                       no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")


@data_app.command("make-testbed", epilog="Example: vipamin data make-testbed ./testbed --seed 0")
@handle_errors
def data_make_testbed(
    dest: Annotated[Path, typer.Argument(help="Folder to create (empty, absent, or a testbed made before).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split of the source images and the canvases.")]
    = 0,
    tasks: Annotated[str | None, typer.Option("--tasks", help="Comma-separated subset of the tasks.")] = None,
    test_size: Annotated[int, typer.Option("--test-size", help="Test images per task (at most 2000).")] = 1000,
) -> None:
    """Write the mini-VTAB testbed (real MNIST-test and scikit-learn digits) in VTAB-1k list-file layout."""
    from .testbed.make import make_testbed
    from .ui import info

    names = _strings(tasks, "--tasks") if tasks is not None else None
    manifest = make_testbed(dest, seed=seed, tasks=names, test_size=test_size, progress=lambda t: info(f"task {t}"))
    typer.echo(str(manifest))


@data_app.command("check", epilog="Example: vipamin data check --suite vtab-1k ~/data/vtab-1k")
@handle_errors
def data_check(
    root: Annotated[Path, typer.Argument(help="Folder holding the suite's task folders.")],
    suite: Annotated[str, typer.Option("--suite", help="vtab-1k | fgvc | testbed")] = "vtab-1k",
    tasks: Annotated[str | None, typer.Option("--tasks", help="Comma-separated subset of the tasks.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Read image headers only (no full decode).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check a benchmark data folder: task folders, list-file counts, classes, labels, every image. Exit 2 if wrong."""
    from dataclasses import asdict

    from .data.check import check_data, render_report
    from .ui import info

    names = _strings(tasks, "--tasks") if tasks is not None else None
    report = check_data(root, suite, decode=not fast, tasks=names, progress=lambda t: info(f"checking {t}"))
    if as_json:
        typer.echo(json.dumps({"suite": report.suite, "root": report.root, "ok": report.ok,
                               "problems": [asdict(p) for p in report.problems],
                               "tasks": [asdict(t) for t in report.tasks]}, indent=2))
    else:
        render_report(report)
    if not report.ok:
        raise typer.Exit(2)


@data_app.command("get", epilog="Example: vipamin data get vtab-1k --root ~/data/vtab-1k")
@handle_errors
def data_get(
    suite: Annotated[str, typer.Argument(help="vtab-1k | fgvc")],
    root: Annotated[Path, typer.Option("--root", help="Folder to unpack the task folders into (created if "
                                       "missing). E.g. --root ~/data/vtab-1k.")],
    tasks: Annotated[str | None, typer.Option("--tasks", help="Comma-separated subset of the tasks.")] = None,
    from_files: Annotated[list[Path] | None, typer.Option("--from", help="Unpack this archive instead of "
                                                          "downloading (repeatable). E.g. --from vtab-1k.zip.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be downloaded and unpacked.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Unpack again tasks this command unpacked "
                                            "before (refused if you added files to them).")] = False,
    force_download: Annotated[bool, typer.Option("--force-download", help="Download again even if the Hugging "
                                                 "Face cache has the file.")] = False,
) -> None:
    """Download V-PETL Bench's VTAB-1k or FGVC copy from the Hugging Face hub, unpack it safely into
    ROOT/<task>/ and check it. Interrupted runs continue where they stopped."""
    from .data.get import get_data
    from .ui import info

    names = _strings(tasks, "--tasks") if tasks is not None else None
    report = get_data(suite, root, tasks=names, from_files=from_files or (), dry_run=dry_run, overwrite=overwrite,
                      force_download=force_download, note=info)
    for line in report.lines:
        typer.echo(line)
    if not report.ok:
        raise report.failure()


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None, *, end_process: bool = False) -> int:
    """Console entry point: usage errors (unknown option, bad value) become one line too.

    Under torchrun (WORLD_SIZE > 1) the process group is joined once here; ranks other than 0 keep
    stdout and progress quiet, and every rank ends with the same exit code (see distributed.py).
    ``end_process`` (the `vipamin` script and ``python -m vipamin_cli``) ends a torchrun worker with
    :func:`distributed.end_process` once every rank agreed on the exit code, instead of returning.
    """
    from . import distributed

    if not distributed.launched():
        return _main(argv)
    try:
        distributed.init()
    except Exception as exc:  # no group, so no agreement: each rank reports for itself
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"error: cannot join the torchrun process group: {text}; check the torchrun "
                         f"rendezvous settings (MASTER_ADDR/MASTER_PORT, --rdzv-endpoint)\n")
        return 1
    if not distributed.is_main():
        os.environ["VIPAMIN_QUIET"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone prints results
    try:
        code = _main(argv)
        if not distributed.agreed():  # a rank that finished must still hear of a late failure elsewhere
            codes = _final_codes(code)
            code = next((c for c in codes if c), 0)
    except BaseException:
        distributed.shutdown()
        raise
    if end_process:
        distributed.end_process(code)
    distributed.shutdown()
    return code


def _final_codes(code: int) -> list[int]:
    """Every rank's exit code; a rank that failed late (after its peers finished) is reported here."""
    from . import distributed

    try:
        return distributed.exchange(code)
    except distributed.PeerFailure as exc:
        if distributed.is_main():
            sys.stderr.write(f"error: {exc}\n")
        return [exc.exit_code]


def _say(line: str) -> None:
    """One line on stderr, from rank 0 only under torchrun (every rank parsed the same arguments)."""
    from . import distributed

    if distributed.is_main():
        sys.stderr.write(line + "\n")


def _main(argv: list[str] | None = None) -> int:
    """The app with every way out turned into an exit code; a Ctrl-C at any point (even while a module
    is imported) is one line and 130."""
    try:
        try:
            return _run_app(argv)
        finally:
            from .iosafety import remove_pending, shielded

            with shielded():
                remove_pending()  # a second net under the command scope's: a Ctrl-C as that scope ended
    except KeyboardInterrupt:
        _say("error: interrupted")
        return 130


def _run_app(argv: list[str] | None) -> int:
    try:  # typer >= 0.17 vendors click; older versions use click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C: atomic writes, resumable state

    if threading_is_main():
        signal.signal(signal.SIGTERM, terminate)
        # A shell without job control starts background jobs with SIGINT ignored, and Python then
        # keeps it ignored: restore Ctrl-C so an interrupt always stops cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from .ui import StdoutClosed, guarded_stdout

    _STATE["reported"] = False
    try:
        with guarded_stdout():
            result = app(args=argv, standalone_mode=False)
    except cx.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 2  # bare `vipamin` (or `vipamin data`): the usage was printed, nothing else to say
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        _say(f"error: {message}{where}")
        return 2
    except StdoutClosed as exc:  # `vipamin --help | head`
        return exc.exit_code
    except typer.Abort:
        _say("error: interrupted")
        return 130
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except VipaminError as exc:  # only with --debug: handle_errors re-raised it to show the traceback
        import traceback

        traceback.print_exc()
        return exc.exit_code
    if result == 130 and not _STATE.get("reported"):  # Ctrl-C while typer parsed (it returns 130 silently)
        _say("error: interrupted")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
