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
from typing import Annotated, Any, TypeVar

import typer

from .errors import VipaminError

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
)

_STATE = {"debug": False}


def _fail(message: str, code: int) -> None:
    """Print the error once and exit. Under torchrun the ranks first agree on one failure (the
    lowest failing rank's), so every rank exits with the same code and only rank 0 prints it."""
    from . import distributed

    if distributed.launched():
        message, code = distributed.agree_failure(message, code)
        if not distributed.is_main():
            raise typer.Exit(code)
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _agree_before_traceback(message: str, code: int) -> None:
    """--debug under torchrun: the peers still learn of the failure before the traceback is shown."""
    from . import distributed

    if distributed.launched():
        distributed.agree_failure(message, code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except VipaminError as exc:
            if _STATE["debug"]:
                _agree_before_traceback(str(exc), exc.exit_code)
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # an unexpected failure still gets one line, not a traceback
            text = str(exc).splitlines()[0] if str(exc) else ""
            if _STATE["debug"]:
                _agree_before_traceback(f"internal error: {type(exc).__name__}: {text}", 1)
                raise
            _fail(f"internal error: {type(exc).__name__}: {text} (re-run with --debug for the traceback)", 1)

    return wrapper  # type: ignore[return-value]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")] = False,
) -> None:
    _STATE["debug"] = debug
    if quiet:
        os.environ["VIPAMIN_QUIET"] = "1"


# Options shared by the commands that read images.
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="Backbone name (see `vipamin backbones`) "
                                          "or timm:<vit name>.")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Local checkpoint (.safetensors, .pth, .pth.tar) "
                                                "instead of hub weights; 'random' = seeded random weights "
                                                "(for timing only).")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Image folder (class subfolders, optionally train/val/"
                                      "test), VTAB-1k list-file folder, FGVC json-split folder, hf:<owner>/<name>, "
                                      "or hf-disk:<path>.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split to read: train/val/test, train800/val200/"
                                              "train800val200 for VTAB; default: train (all for a plain class "
                                              "folder).")]
ShotsOpt = Annotated[int | None, typer.Option("--shots", help="Few-shot: draw K images per class (with --seed).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for few-shot draws and the calibration subset.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Embeddings cache (default $VIPAMIN_CACHE or "
                                               "the user cache dir).")]
OptDataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Data source (see `vipamin embed --help`).")]
DataSeedOpt = Annotated[int, typer.Option("--data-seed", help="Seed of the few-shot draw and calibration subset "
                                          "(embed's --seed).")]
ImageColOpt = Annotated[str, typer.Option("--image-column", help="Image column of a hub dataset.")]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="Label column of a hub dataset.")]

# The embedding options, one group shared by every command that embeds (embed; init, tune and eval with
# --backbone/--data), so that each finds the cache entry `embed` made with the same values.
EMBED_PANEL = "Embedding (embed, and init/tune/eval with --backbone/--data)"
ResizeOpt = Annotated[str, typer.Option("--resize", rich_help_panel=EMBED_PANEL, help="auto | vtab (squash to "
                                        "input size) | fgvc (resize 256, centre crop 224). auto = fgvc for FGVC "
                                        "json folders, else vtab. E.g. --resize fgvc.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", rich_help_panel=EMBED_PANEL, help="Storage dtype of cached "
                                       "tokens: bfloat16 | float32 (recommended for init-only embeddings). E.g. "
                                       "--dtype float32.")]
CalibSizeOpt = Annotated[int, typer.Option("--calib-size", rich_help_panel=EMBED_PANEL, help="Images used for "
                                           "the calibration statistics. E.g. --calib-size 256.")]
SampleImagesOpt = Annotated[int, typer.Option("--sample-images", rich_help_panel=EMBED_PANEL, help="Calibration "
                                              "images whose per-block tokens are kept for SPT prototypes. E.g. "
                                              "--sample-images 32.")]
AugmentOpt = Annotated[str | None, typer.Option("--augment", rich_help_panel=EMBED_PANEL, help="none | fgvc "
                                                "(also cache --views random training views per image: resize "
                                                "256, random crop 224, flip; tune draws one per image per epoch) "
                                                "| auto (fgvc for FGVC json folders). Default none; tune with "
                                                "--recipe: auto. E.g. --augment fgvc.")]
ViewsOpt = Annotated[int | None, typer.Option("--views", rich_help_panel=EMBED_PANEL, help="Augmented views per "
                                              "training image with --augment (default 8; storage (1 + V) x the "
                                              "tokens). E.g. --views 8.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", rich_help_panel=EMBED_PANEL, help="Image decoding "
                                                "workers (default: 0 on CPU, up to 8 on CUDA). E.g. --workers 4.")]
DeepStatsOpt = Annotated[str, typer.Option("--deep-stats", rich_help_panel=EMBED_PANEL, help="Calibration keys "
                                           "and mean inputs of blocks b >= 1: prompt-free | reference (the VIPAMIN "
                                           "authors' pass with seeded random deep prompts in every block, for deep "
                                           "VIPAMIN), e.g. --deep-stats reference.")]
DeepStatsPromptsOpt = Annotated[int | None, typer.Option("--deep-stats-prompts", rich_help_panel=EMBED_PANEL,
                                                        help="Random prompts per block of the --deep-stats "
                                                        "reference pass (default 20); deep VIPAMIN uses them as its "
                                                        "queries, so `init --deep -p` must match. E.g. "
                                                        "--deep-stats-prompts 20.")]
SptWindowsOpt = Annotated[str, typer.Option("--spt-windows", help="SPT mean/max windows: ours (P-1 windows of "
                                            "N div (P-1) tokens, then the rest) | reference (the official "
                                            "remainder rule: the P-th window is the last N mod w tokens, or all "
                                            "N when it divides), e.g. --spt-windows reference.")]
EmbedBatchOpt = Annotated[int, typer.Option("--embed-batch-size", rich_help_panel=EMBED_PANEL, help="Images per "
                                            "forward batch when embedding. E.g. --embed-batch-size 64.")]


def _embed_config(seed: int, resize: str, dtype: str, calib_size: int, sample_images: int, augment: str | None,
                  views: int | None, workers: int | None, batch_size: int, device: str,
                  deep_stats: str = "prompt-free") -> Any:
    """The EmbedConfig of the shared embedding options (augment None = none)."""
    from .embed import EmbedConfig

    return EmbedConfig(resize=resize, dtype=dtype, calib_size=calib_size, sample_images=sample_images, seed=seed,
                       batch_size=batch_size, device=device, workers=workers, augment=augment or "none",
                       views=views, deep_stats=deep_stats)


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
                           device, deep_stats)
    config.deep_stats_prompts = deep_stats_prompts
    result = embed_data(backbone, data, weights=weights, split=split, shots=shots, config=config, out=out,
                        cache_dir=cache_dir, use_cache=not no_cache, image_column=image_column,
                        label_column=label_column)
    typer.echo(str(result.path))


@app.command(epilog="Example: vipamin init --method vipamin --backbone mae-vit-b --data ./flowers --k 8 --lambda 0.5")
@handle_errors
def init(
    method: Annotated[str, typer.Option("--method", "-m", help="vipamin | spt | random (VPT's uniform init).")]
    = "vipamin",
    embeddings: Annotated[Path | None, typer.Option("--embeddings", "-e", help="Embeddings file from `vipamin "
                                                    "embed` (instead of --backbone/--data).")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone name; with --data, the "
                                                 "cached embeddings are found or made.")] = None,
    data: OptDataOpt = None,
    split: SplitOpt = None,
    weights: WeightsOpt = None,
    shots: ShotsOpt = None,
    data_seed: DataSeedOpt = 0,
    resize: ResizeOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    calib_size: CalibSizeOpt = 256,
    sample_images: SampleImagesOpt = 32,
    augment: AugmentOpt = None,
    views: ViewsOpt = None,
    deep_stats: DeepStatsOpt = "prompt-free",
    workers: WorkersOpt = None,
    embed_batch_size: EmbedBatchOpt = 64,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Prompts file (default prompts-<method>"
                                             "[-deep].safetensors).")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="One prompt set per block (deep VPT).")] = False,
    prompt_length: Annotated[int | None, typer.Option("--prompt-length", "-p", help="Prompts per block "
                                                      "(default 100 shallow, 20 deep).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random draw of the method.")] = 0,
    k: Annotated[int, typer.Option("--k", help="VIPAMIN: patch positions averaged per prompt.")] = 8,
    lam: Annotated[float, typer.Option("--lambda", help="VIPAMIN: weight of the orthogonal part, in [0, 1].")]
    = 0.5,
    orth: Annotated[str, typer.Option("--orth", help="VIPAMIN: exact (solve x W_V^T + b_V = v_perp) | exact-ln "
                                      "(values orthogonal through block 0's LayerNorm, as the block computes "
                                      "them) | reference (the authors' pinv(W_V) formula).")] = "exact",
    orth_scale: Annotated[str, typer.Option("--orth-scale", help="VIPAMIN: none | match (rescale each orthogonal "
                                            "row to the matched part's mean norm before mixing).")] = "none",
    orth_rcond: Annotated[str, typer.Option("--orth-rcond", help="VIPAMIN: relative singular-value cutoff of the "
                                            "map back to token space: none (keep all, float64) | reference (the "
                                            "authors' float32 pinv cutoff, D * 1.19e-7) | a number in (0, 1).")]
    = "none",
    orth_span_tol: Annotated[str, typer.Option("--orth-span-tol", help="VIPAMIN: relative singular-value "
                                               "tolerance of the attention-output span's rank: stable (1e-2: "
                                               "directions float32 statistics determine to 1e-4) | float64 (the "
                                               "former rule: the full float64 numerical rank) | a number in (0, 1).")]
    = "stable",
    orth_energy: Annotated[float, typer.Option("--orth-energy", help="VIPAMIN: spectral energy kept when the "
                                               "attention-output span fills the whole space.")] = 0.99,
    orth_rank: Annotated[int | None, typer.Option("--orth-rank", help="VIPAMIN: force a truncated span basis "
                                                  "of this rank.")] = None,
    sample: Annotated[str, typer.Option("--sample", help="SPT: random | mean | max | kmeans.")] = "kmeans",
    spt_windows: SptWindowsOpt = "ours",
    token_budget: Annotated[int, typer.Option("--token-budget", help="SPT k-means: tokens sampled at most.")]
    = 200_000,
    kmeans_iters: Annotated[int, typer.Option("--kmeans-iters", help="SPT k-means: Lloyd steps at most.")] = 100,
    kmeans_restarts: Annotated[int, typer.Option("--kmeans-restarts", help="SPT k-means: independent greedy "
                                                 "k-means++ runs; the lowest inertia is kept.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    cache_dir: CacheOpt = None,
    explain_it: Annotated[bool, typer.Option("--explain", help="Also print why (and draw the VIPAMIN heat "
                                             "map beside the prompts file).")] = False,
) -> None:
    """Initialise prompts (VIPAMIN, SPT prototypes or VPT random) from cached calibration statistics.

    Given --backbone/--data, the matching embeddings are found in the cache (or embedded first).
    Prints the path of the prompts file on stdout.
    """
    from .inits import InitConfig, init_prompts

    config = InitConfig(method=method, prompt_length=prompt_length, deep=deep, seed=seed, k=k, lam=lam, orth=orth,
                        orth_scale=orth_scale, orth_rcond=orth_rcond, orth_energy=orth_energy, orth_rank=orth_rank,
                        orth_span_tol=orth_span_tol, sample=sample, spt_windows=spt_windows, token_budget=token_budget,
                        kmeans_iters=kmeans_iters, kmeans_restarts=kmeans_restarts, device=device)
    embed_config = _embed_config(data_seed, resize, dtype, calib_size, sample_images, augment, views, workers,
                                 embed_batch_size, device, deep_stats)
    outcome = init_prompts(config, embeddings=embeddings, backbone=backbone, data=data, weights=weights,
                           split=split, shots=shots, embed_config=embed_config, out=out, cache_dir=cache_dir)
    typer.echo(str(outcome.path))
    if explain_it:
        from .explain import explain as explain_prompts
        from .explain import render_explanation
        from .ui import escape, info

        for line in render_explanation(explain_prompts(outcome.path)):
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
    from .validate import number_list

    return number_list(text, option, kind)


def _strings(text: str, option: str) -> list[str]:
    """Parse a comma-separated list of names such as --sample random,kmeans."""
    from .errors import InputError

    values = [v.strip() for v in str(text).split(",")]
    if not any(values):
        raise InputError(f"{option} is empty", f"pass at least one value to {option}")
    if not all(values):
        raise InputError(f"{option} '{text}' has an empty item", "separate values by single commas")
    return values


def _init_grid(lists: dict[str, tuple[str | None, str, type]]) -> list[dict[str, Any]] | None:
    """The cross product of the init options given as comma lists (None when none was given)."""
    import itertools

    given = {field: (_strings(text, option) if kind is str else _numbers(text, option, kind))
             for field, (text, option, kind) in lists.items() if text is not None}
    if not given:
        return None
    names = list(given)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(given[n] for n in names))]


@app.command(epilog="Examples: vipamin tune --recipe vipamin --backbone mae-vit-b --data ./vtab/dtd --split train800 "
             "--val val200 --final-split train800val200 --out dtd.safetensors  |  vipamin tune --embeddings "
             "train.safetensors --val-embeddings val.safetensors --lr 0.05,0.1 --k 2,8 --lambda 0,0.5")
@handle_errors
def tune(
    embeddings: Annotated[Path | None, typer.Option("--embeddings", "-e", help="Training embeddings (instead of "
                                                    "--backbone/--data).")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone name (with --data).")] = None,
    data: OptDataOpt = None,
    split: SplitOpt = None,
    weights: WeightsOpt = None,
    shots: ShotsOpt = None,
    data_seed: DataSeedOpt = 0,
    val: Annotated[str | None, typer.Option("--val", help="Validation split of --data (e.g. val, val200).")] = None,
    val_embeddings: Annotated[Path | None, typer.Option("--val-embeddings", help="Validation embeddings file.")]
    = None,
    final_split: Annotated[str | None, typer.Option("--final-split", help="After selecting on --val, retrain the "
                                                    "chosen configuration on this split of --data once per seed "
                                                    "(--seeds, default the recipe's final seeds); those runs are "
                                                    "the checkpoint. E.g. --final-split train800val200.")] = None,
    final_embeddings: Annotated[Path | None, typer.Option("--final-embeddings", help="Embeddings of the final "
                                                          "split instead of --final-split. E.g. --final-embeddings "
                                                          "trainval.safetensors.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="A paper's protocol as defaults: vipamin | vpt | "
                                               "spt | vapt (see `vipamin recipes`); explicit options override it. "
                                               "E.g. --recipe vapt.")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Initial prompts from `vipamin init`.")] = None,
    init_method: Annotated[str | None, typer.Option("--init", help="Init computed now if --prompts is not given: "
                                                    "vipamin | spt | random (default: the recipe's, vipamin).")]
    = None,
    init_seed: Annotated[str | None, typer.Option("--init-seed", help="Seed of the init's random draws for every "
                                                  "run, or a comma list to sweep (default: each run's training "
                                                  "seed, as the authors' global seeding). E.g. --init-seed 0,1.")]
    = None,
    k: Annotated[str | None, typer.Option("--k", help="VIPAMIN init: K, or a comma list swept with the lr grid "
                                          "(default 8). E.g. --k 2,8,32,128.")] = None,
    lam: Annotated[str | None, typer.Option("--lambda", help="VIPAMIN init: lambda, or a comma list (default 0.5). "
                                            "E.g. --lambda 0,0.5.")] = None,
    sample: Annotated[str | None, typer.Option("--sample", help="SPT init: random | mean | max | kmeans, or a comma "
                                               "list (default kmeans). E.g. --sample random,kmeans.")] = None,
    spt_windows: SptWindowsOpt = "ours",
    prompt_length: Annotated[int | None, typer.Option("--prompt-length", "-p", help="Prompts (per block); default "
                                                      "100 vpt-shallow, 20 vpt-deep, 10 vapt.")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="vpt-shallow | vpt-deep | vapt (default: the recipe's, "
                                             "vpt-shallow).")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="Head input: cls | mean-patch | mean-all (mean of "
                                             "prompts + patches, fresh affine-free LayerNorm: VPT's MAE head) | "
                                             "mean-all-norm (the same mean, then the pretrained final norm: SPT's "
                                             "MAE head) | timm (timm's own pooling: token, avg + fc_norm or map "
                                             "attention pooling, prompts excluded) | timm-all (prompts included). "
                                             "Default: the backbone's recipe.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs (default 100).")] = None,
    warmup_epochs: Annotated[int | None, typer.Option("--warmup-epochs", help="Linear warm-up epochs (default 10)."
                                                      )] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size (default 32; also scales the "
                                                   "lr with --lr-scaling batch256).")] = None,
    lr: Annotated[str | None, typer.Option("--lr", help="Base lr, or a comma list to sweep (default 0.1; a recipe: "
                                           "its grid).")] = None,
    weight_decay: Annotated[str | None, typer.Option("--weight-decay", help="Weight decay, or a comma list "
                                                     "(default 0.01).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw (VIPAMIN, SPT) | sgd (VPT, VAPT).")]
    = None,
    lr_scaling: Annotated[str | None, typer.Option("--lr-scaling", help="batch256 (lr x batch/256) | none (SPT). "
                                                   "E.g. --lr-scaling none.")] = None,
    schedule_step: Annotated[str | None, typer.Option("--schedule-step", help="Step the warm-up + cosine per epoch "
                                                      "(VPT) or per iteration (SPT). E.g. --schedule-step "
                                                      "iteration.")] = None,
    lr_floor: Annotated[float | None, typer.Option("--lr-floor", help="The lr the cosine ends at (SPT 1e-8). "
                                                   "E.g. --lr-floor 1e-8.")] = None,
    decay_groups: Annotated[str | None, typer.Option("--decay-groups", help="matrices (prompts + weight matrices) | "
                                                     "all-but-head-bias (VAPT). E.g. --decay-groups "
                                                     "all-but-head-bias.")] = None,
    head_weight_decay: Annotated[float | None, typer.Option("--head-weight-decay", help="Separate weight decay of "
                                                            "the head weight (SPT: 0.5 MAE, 3.0 others). E.g. "
                                                            "--head-weight-decay 0.5.")] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="Decay of a weight EMA used for validation and the "
                                              "checkpoint (SPT 0.9999; 0 = none). E.g. --ema 0.9999.")] = None,
    drop_last: Annotated[bool | None, typer.Option("--drop-last/--no-drop-last", help="Drop each epoch's last "
                                                   "partial batch (SPT). E.g. --drop-last.")] = None,
    tie_break: Annotated[str | None, typer.Option("--tie-break", help="Selection ties: smaller-lr | larger-lr "
                                                  "(VAPT). E.g. --tie-break larger-lr.")] = None,
    prompt_dropout: Annotated[float | None, typer.Option("--prompt-dropout", help="Dropout on prompts (default 0)."
                                                         )] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Training seed (head init, order, dropout; default "
                                             "42).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma list of training seeds (overrides --seed); "
                                              "with --final-split, the final runs' seeds. E.g. --seeds 42,44,82.")]
    = None,
    vapt_hidden: Annotated[int, typer.Option("--vapt-hidden", help="VAPT projector hidden size.")] = 8,
    vapt_kernel: Annotated[int, typer.Option("--vapt-kernel", help="VAPT conv kernel size.")] = 2,
    vapt_first_block: Annotated[int, typer.Option("--vapt-first-block", help="VAPT: first block whose prompts "
                                                  "are generated (earlier blocks keep the incoming ones).")] = 1,
    vapt_per_channel: Annotated[bool, typer.Option("--vapt-per-channel", help="VAPT: one kernel per channel "
                                                   "instead of one shared kernel.")] = False,
    vapt_dropout: Annotated[float, typer.Option("--vapt-dropout", help="VAPT: dropout in the projector's hidden "
                                                "layer (and Dropout2d after the conv unless --vapt-conv-dropout "
                                                "is given), e.g. --vapt-dropout 0.1.")] = 0.1,
    vapt_conv_dropout: Annotated[float | None, typer.Option("--vapt-conv-dropout", help="VAPT: Dropout2d rate "
                                                            "after the conv (default: --vapt-dropout), e.g. "
                                                            "--vapt-conv-dropout 0.1.")] = None,
    vapt_scale: Annotated[bool, typer.Option("--vapt-scale", help="VAPT: a learnable scale on the projector's "
                                             "residual branch (1 parameter), e.g. --vapt-scale.")] = False,
    head_init: Annotated[str | None, typer.Option("--head-init", help="kaiming (normal, fan_out) | zeros | "
                                                  "trunc-normal (std 0.02, SPT); bias 0.")] = None,
    resize: ResizeOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    calib_size: CalibSizeOpt = 256,
    sample_images: SampleImagesOpt = 32,
    augment: AugmentOpt = None,
    views: ViewsOpt = None,
    deep_stats: DeepStatsOpt = "prompt-free",
    workers: WorkersOpt = None,
    embed_batch_size: EmbedBatchOpt = 64,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate every N epochs.")] = 1,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU) | "
                                           "bf16 | fp32.")] = "auto",
    compile_: Annotated[str, typer.Option("--compile", help="torch.compile the frozen blocks: auto (on for "
                                          "CUDA) | on | off.")] = "auto",
    grid_batch: Annotated[int | None, typer.Option("--grid-batch", help="Train at most N configurations of a "
                                                   "sweep together in one pass over the backbone (default: all; "
                                                   "1 = one after another). Bounds memory.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint file.")] = Path("checkpoint.safetensors"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same command (sweep "
                                         "or final stage).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    cache_dir: CacheOpt = None,
) -> None:
    """Train prompts (and VAPT's generator) plus a linear head on the frozen backbone's cached tokens.

    Lists in --lr / --weight-decay / --k / --lambda / --sample make a sweep selected on --val
    (last-epoch top-1); --seeds trains each configuration per seed; --final-split then retrains the
    selected one on train+val. --recipe sets a paper's defaults. Prints the checkpoint path on stdout.
    """
    from .errors import InputError
    from .inits import InitConfig
    from .recipes import default_augment
    from .recipes import plan as make_plan
    from .tune import TuneInputs, tune_plan

    if final_split is not None and data is None:
        raise InputError("--final-split needs --data (and --backbone)", "pass --data, or --final-embeddings FILE")
    has_final = final_split is not None or final_embeddings is not None
    seed_list = _numbers(seeds, "--seeds", int) if seeds is not None else None
    sweep_seeds = ([seed] if seed is not None else None) if has_final else (seed_list or
                                                                            ([seed] if seed is not None else None))
    init_grid = _init_grid({"k": (k, "--k", int), "lam": (lam, "--lambda", float), "sample": (sample, "--sample", str),
                            "seed": (init_seed, "--init-seed", int)})
    tune_plan_ = make_plan(
        recipe, lrs=_numbers(lr, "--lr") if lr is not None else None,
        weight_decays=_numbers(weight_decay, "--weight-decay") if weight_decay is not None else None,
        seeds=sweep_seeds, final_seeds=seed_list if has_final else None, init_method=init_method,
        init_grid=init_grid, prompt_length=prompt_length, arch=arch, pool=pool, epochs=epochs,
        warmup_epochs=warmup_epochs, batch_size=batch_size, optimizer=optimizer, prompt_dropout=prompt_dropout,
        vapt_hidden=vapt_hidden, vapt_kernel=vapt_kernel, vapt_first_block=vapt_first_block,
        vapt_per_channel=vapt_per_channel, vapt_dropout=vapt_dropout, vapt_conv_dropout=vapt_conv_dropout,
        vapt_scale=vapt_scale or None, head_init=head_init, val_every=val_every,
        lr_scaling=lr_scaling, schedule_step=schedule_step, lr_floor=lr_floor, decay_groups=decay_groups,
        head_weight_decay=head_weight_decay, ema=ema, drop_last=drop_last, tie_break=tie_break)
    inputs = TuneInputs(embeddings=embeddings, backbone=backbone, data=data, weights=weights, split=split,
                        shots=shots, val=val, val_embeddings=val_embeddings, prompts=prompts,
                        init=InitConfig(method=tune_plan_.init_method, spt_windows=spt_windows, device=device),
                        embed_config=_embed_config(data_seed, resize, dtype, calib_size, sample_images,
                                                   default_augment(recipe, augment), views, workers,
                                                   embed_batch_size, device, deep_stats),
                        cache_dir=cache_dir, final_split=final_split, final_embeddings=final_embeddings,
                        follow_seed=init_seed is None)
    outcome = tune_plan(inputs, tune_plan_, out, device=device, resume=resume, grid_batch=grid_batch,
                        precision=precision, compile_mode=compile_)
    typer.echo(str(outcome.checkpoint))


@app.command(epilog="Example: vipamin recipes --json")
@handle_errors
def recipes(
    name: Annotated[str | None, typer.Argument(help="One recipe (default: all). E.g. vipamin recipes vapt.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the named training recipes (vipamin, vpt, spt, vapt): every value and where it comes from."""
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


@app.command(epilog="Example: vipamin benchmark --suite testbed --root ./testbed --backbone mae-vit-tiny-mnist "
             "--methods random,vipamin,linear --preset quick --out bench-testbed")
@handle_errors
def benchmark(
    suite: Annotated[str, typer.Option("--suite", help="testbed | vtab-1k | fgvc-fewshot. E.g. --suite vtab-1k.")],
    root: Annotated[Path, typer.Option("--root", help="Folder holding the suite's task folders (VTAB-1k: NOAH's "
                                       "names). E.g. --root ~/data/vtab-1k.")],
    backbone: BackboneOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder: results.json, table.md, results.png, cells/. "
                                      "Finished cells found there are skipped. E.g. --out bench-out.")],
    weights: WeightsOpt = None,
    methods: Annotated[str, typer.Option("--methods", help="Comma list of random | spt | vipamin | vapt | linear. "
                                         "E.g. --methods random,vipamin,linear.")] = "random,spt,vipamin,vapt,linear",
    tasks: Annotated[str | None, typer.Option("--tasks", help="Comma list of task names (default: all). E.g. "
                                              "--tasks dtd,eurosat.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="paper (the VIPAMIN code's protocol: 100 epochs, 7 "
                                               "lrs, 3 final seeds) | quick (20 epochs, 3 lrs) | testbed (5 epochs, "
                                               "2 lrs) | demo (3 epochs, 1 lr). Default paper; not with --recipe. "
                                               "E.g. --preset quick.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Train every cell with named recipes instead of a "
                                               "preset: vipamin | vpt | spt | vapt (that paper's protocol in every "
                                               "cell, see `vipamin recipes`) | own (each method its paper's: random "
                                               "vpt, spt spt, vipamin vipamin, vapt vapt; linear vipamin's "
                                               "schedule). --epochs, --warmup-epochs, --batch-size, --lr, "
                                               "--weight-decay, --seeds and -p override it; --preset with it is "
                                               "refused. E.g. --recipe own.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the preset's (or recipe's) epochs. E.g. "
                                               "--epochs 10.")] = None,
    warmup_epochs: Annotated[int | None, typer.Option("--warmup-epochs", help="Override the warm-up epochs. E.g. "
                                                      "--warmup-epochs 1.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Override the batch size. E.g. "
                                                   "--batch-size 64.")] = None,
    lr: Annotated[str | None, typer.Option("--lr", help="Comma list: override the lr grid. E.g. --lr 0.5,1.")] = None,
    weight_decay: Annotated[str | None, typer.Option("--weight-decay", help="Comma list: override the weight-decay "
                                                     "grid. E.g. --weight-decay 0.01.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma list: the final runs' seeds. E.g. --seeds "
                                              "42,44,82.")] = None,
    prompt_length: Annotated[int | None, typer.Option("--prompt-length", "-p", help="Override the prompt length. "
                                                      "E.g. -p 10.")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images per task (VIPAMIN, SPT). "
                                            "E.g. --calib-size 256.")] = 256,
    k: Annotated[str | None, typer.Option("--k", help="Comma list: VIPAMIN's K values, swept as init candidates "
                                          "(replaces a recipe's grid). E.g. --k 2,8,32.")] = None,
    lam: Annotated[str | None, typer.Option("--lambda", help="Comma list: VIPAMIN's lambda values, swept with "
                                            "--k. E.g. --lambda 0,0.5.")] = None,
    orth: Annotated[str | None, typer.Option("--orth", help="Comma list of VIPAMIN orthogonal modes swept as "
                                             "candidates: exact | exact-ln | reference. E.g. --orth "
                                             "exact,reference.")] = None,
    orth_scale: Annotated[str | None, typer.Option("--orth-scale", help="Comma list: none | match, swept with "
                                                   "--orth. E.g. --orth-scale none,match.")] = None,
    orth_span_tol: Annotated[str | None, typer.Option("--orth-span-tol", help="Comma list: VIPAMIN's span rank "
                                                      "tolerance, swept with --orth: stable | float64 | a number. "
                                                      "E.g. --orth-span-tol float64.")] = None,
    grid_batch: Annotated[int | None, typer.Option("--grid-batch", help="Configurations trained together (memory "
                                                   "bound). E.g. --grid-batch 4.")] = None,
    plot_png: Annotated[bool, typer.Option("--plot/--no-plot", help="Write results.png (needs matplotlib).")] = True,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    cache_dir: CacheOpt = None,
) -> None:
    """Run a benchmark suite: per task embed once; per method sweep on train800/val200, final runs on
    train800val200 with each seed, test top-1 mean ± std; prints the papers' table (also table.md)."""
    from .benchmark import BenchmarkSpec, run_benchmark
    from .benchmark.report import markdown_table
    from .validate import seed as check_seed

    overrides = {"epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch_size,
                 "prompt_length": prompt_length,
                 "lrs": _numbers(lr, "--lr") if lr is not None else None,
                 "weight_decays": _numbers(weight_decay, "--weight-decay") if weight_decay is not None else None,
                 "seeds": [check_seed(s, "--seeds") for s in _numbers(seeds, "--seeds", int)] if seeds else None}
    init_grid = {key: values for key, values in (
        ("k", _numbers(k, "--k", int) if k is not None else None),
        ("lam", _numbers(lam, "--lambda") if lam is not None else None),
        ("orth", _strings(orth, "--orth") if orth is not None else None),
        ("orth_scale", _strings(orth_scale, "--orth-scale") if orth_scale is not None else None),
        ("orth_span_tol", _strings(orth_span_tol, "--orth-span-tol") if orth_span_tol is not None else None))
        if values}
    spec = BenchmarkSpec(suite=suite, root=root, backbone=backbone, out=out, weights=weights, init_grid=init_grid,
                         methods=tuple(_strings(methods, "--methods")),
                         tasks=_strings(tasks, "--tasks") if tasks is not None else None, preset=preset,
                         recipe=recipe, overrides=overrides, device=device, cache_dir=cache_dir, calib_size=calib_size,
                         grid_batch=grid_batch, plot=plot_png)
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
                                                 views, workers, embed_batch_size, device, deep_stats),
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


data_app = typer.Typer(help="Make the offline testbed and check benchmark data folders.", no_args_is_help=True,
                       rich_markup_mode="rich", pretty_exceptions_enable=False)
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

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
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

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    report = check_data(root, suite, decode=not fast, tasks=names, progress=lambda t: info(f"checking {t}"))
    if as_json:
        typer.echo(json.dumps({"suite": report.suite, "root": report.root, "ok": report.ok,
                               "problems": [asdict(p) for p in report.problems],
                               "tasks": [asdict(t) for t in report.tasks]}, indent=2))
    else:
        render_report(report)
    if not report.ok:
        raise typer.Exit(2)


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
    try:
        result = app(args=argv, standalone_mode=False)
    except cx.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        _say(f"error: {message}{where}")
        return 2
    except typer.Abort:
        _say("error: aborted")
        return 130
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except VipaminError as exc:  # only with --debug: handle_errors re-raised it to show the traceback
        import traceback

        traceback.print_exc()
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
