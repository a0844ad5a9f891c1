"""Command-line options that several commands share, each defined once, grouped into help panels.

``init``, ``tune``, ``eval`` and ``benchmark`` take the same data, embedding, init, training and
runtime options; defining each here (its flag, help text and panel) keeps them from drifting apart.
An init option that ``init`` takes as one value and ``tune`` / ``benchmark`` sweep as a comma list
(``--k 2,8,32``) is one :class:`InitChoice`, which makes both forms from the same flag and text.
On/off flags get an empty metavar, so help shows them as flags rather than ``<bool>``.

Options that travel together (the data source, the embedding settings, the init's settings, the
schedule, ...) are option groups: frozen dataclasses of annotated fields that a command takes as
one parameter (``embedding: Embedding``); :func:`with_option_groups` spreads each group's fields
into the command's options for typer and hands the command the filled-in group, so every command
that takes a group takes all of it, with the same flags, defaults and help.

Only typer is imported here: ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")

# Help panels, in the order a reader needs them.
DATA = "Data"
EMBED = "Embedding (embed, and init/tune/eval with --backbone/--data)"
INIT = "Init"
PROMPTS = "Prompts and architecture"
OPTIM = "Optimisation and schedule"
SWEEP = "Sweep and selection"
VAPT = "VAPT"
RUNTIME = "Runtime"


def Opt(*names: str, help: str, panel: str | None = None) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel)


def Flag(*names: str, help: str, panel: str | None = None) -> Any:
    """An on/off option, shown as a flag (no ``<bool>`` type)."""
    return typer.Option(*names, help=help, rich_help_panel=panel, metavar="")


# Data: where images or embeddings come from.
BackboneOpt = Annotated[str, Opt("--backbone", "-b", panel=DATA, help="Backbone name (see `vipamin backbones`) "
                                    "or timm:<vit name>.")]
OptBackboneOpt = Annotated[str | None, Opt("--backbone", "-b", panel=DATA, help="Backbone name (see `vipamin "
                                              "backbones`); with --data, the cached embeddings are found or made.")]
WeightsOpt = Annotated[str | None, Opt("--weights", panel=DATA, help="Local checkpoint (.safetensors, .pth, "
                                          ".pth.tar) instead of hub weights; 'random' = seeded random weights (for "
                                          "timing only).")]
DataOpt = Annotated[str, Opt("--data", "-d", panel=DATA, help="Image folder (class subfolders, optionally "
                                "train/val/test), VTAB-1k list-file folder, FGVC json-split folder, "
                                "hf:<owner>/<name>, or hf-disk:<path>.")]
OptDataOpt = Annotated[str | None, Opt("--data", "-d", panel=DATA, help="Data source (see `vipamin embed "
                                          "--help`).")]
SplitOpt = Annotated[str | None, Opt("--split", panel=DATA, help="Split to read: train/val/test, train800/val200/"
                                        "train800val200 for VTAB; default: train (all for a plain class folder).")]
ShotsOpt = Annotated[int | None, Opt("--shots", panel=DATA, help="Few-shot: draw K images per class (with "
                                        "--seed).")]
SeedOpt = Annotated[int, Opt("--seed", panel=DATA, help="Seed for few-shot draws and the calibration subset.")]
DataSeedOpt = Annotated[int, Opt("--data-seed", panel=DATA, help="Seed of the few-shot draw and calibration "
                                    "subset (embed's --seed).")]
EmbeddingsOpt = Annotated[Path | None, Opt("--embeddings", "-e", panel=DATA, help="Training embeddings from "
                                              "`vipamin embed` (instead of --backbone/--data).")]
CacheOpt = Annotated[Path | None, Opt("--cache-dir", panel=DATA, help="Embeddings cache (default $VIPAMIN_CACHE "
                                         "or the user cache dir).")]
ImageColOpt = Annotated[str, Opt("--image-column", panel=DATA, help="Image column of a hub dataset.")]
LabelColOpt = Annotated[str, Opt("--label-column", panel=DATA, help="Label column of a hub dataset.")]

# Embedding: one group shared by every command that embeds (embed; init, tune and eval with
# --backbone/--data), so that each finds the cache entry `embed` made with the same values.
ResizeOpt = Annotated[str, Opt("--resize", panel=EMBED, help="auto | vtab (squash to input size) | fgvc (resize "
                                  "256, centre crop 224). auto = fgvc for FGVC json folders, else vtab. E.g. "
                                  "--resize fgvc.")]
DtypeOpt = Annotated[str, Opt("--dtype", panel=EMBED, help="Storage dtype of cached tokens: bfloat16 | float32 "
                                 "(recommended for init-only embeddings). E.g. --dtype float32.")]
CalibSizeOpt = Annotated[int, Opt("--calib-size", panel=EMBED, help="Images used for the calibration "
                                     "statistics. E.g. --calib-size 256.")]
SampleImagesOpt = Annotated[int, Opt("--sample-images", panel=EMBED, help="Calibration images whose per-block "
                                        "tokens are kept for SPT prototypes. E.g. --sample-images 32.")]
AugmentOpt = Annotated[str | None, Opt("--augment", panel=EMBED, help="none | fgvc (also cache --views random "
                                          "training views per image: resize 256, random crop 224, flip; tune draws "
                                          "one per image per epoch) | auto (fgvc for FGVC json folders). Default "
                                          "none; tune with --recipe: auto. E.g. --augment fgvc.")]
ViewsOpt = Annotated[int | None, Opt("--views", panel=EMBED, help="Augmented views per training image with "
                                        "--augment (default 8; storage (1 + V) x the tokens). E.g. --views 8.")]
WorkersOpt = Annotated[int | None, Opt("--workers", panel=EMBED, help="Image decoding workers (default: 0 on "
                                          "CPU, up to 8 on CUDA). E.g. --workers 4.")]
DeepStatsOpt = Annotated[str, Opt("--deep-stats", panel=EMBED, help="Calibration keys and mean inputs of blocks "
                                     "b >= 1: prompt-free | reference (the VIPAMIN authors' pass with seeded random "
                                     "deep prompts in every block, for deep VIPAMIN), e.g. --deep-stats reference.")]
DeepStatsPromptsOpt = Annotated[int | None, Opt("--deep-stats-prompts", panel=EMBED, help="Random prompts per "
                                                "block of the --deep-stats reference pass (default 20); deep VIPAMIN "
                                                "uses them as its queries, so a deep init's -p must equal it. E.g. "
                                                "--deep-stats-prompts 20.")]
EmbedBatchOpt = Annotated[int, Opt("--embed-batch-size", panel=EMBED, help="Images per forward batch when "
                                      "embedding. E.g. --embed-batch-size 64.")]


@dataclass(frozen=True)
class InitChoice:
    """An init option ``init`` takes as one value and ``tune`` / ``benchmark`` also as a comma list
    of init candidates swept with the lr grid: one flag and one help text for both forms."""

    flag: str
    help: str
    default: str
    example: str
    examples: str

    def one(self, kind: type) -> Any:
        """The single-value form (``init``)."""
        return Annotated[kind, Opt(self.flag, panel=INIT, help=f"{self.help}. E.g. {self.flag} {self.example}.")]

    def many(self) -> Any:
        """The comma-list form (``tune``, ``benchmark``): each value an init candidate."""
        return Annotated[str | None, Opt(self.flag, panel=INIT, help=(
            f"{self.help}, or a comma list swept as init candidates (default: the recipe's init grid, else "
            f"{self.default}; given, it replaces that grid). E.g. {self.flag} {self.examples}."))]


K = InitChoice("--k", "VIPAMIN: patch positions averaged per prompt (K)", "8", "8", "2,8,32,128")
LAMBDA = InitChoice("--lambda", "VIPAMIN: weight of the orthogonal part, in [0, 1]", "0.5", "0.5", "0,0.5")
ORTH = InitChoice("--orth", "VIPAMIN: exact (solve x W_V^T + b_V = v_perp) | exact-ln (values orthogonal through "
                  "block 0's LayerNorm, as the block computes them) | reference (the authors' pinv(W_V) formula)",
                  "exact", "reference", "exact,reference")
ORTH_SCALE = InitChoice("--orth-scale", "VIPAMIN: none | match (rescale each orthogonal row to the matched part's "
                        "mean norm before mixing)", "none", "match", "none,match")
ORTH_RCOND = InitChoice("--orth-rcond", "VIPAMIN: relative singular-value cutoff of the map back to token space: "
                        "none (keep all, float64) | reference (the authors' float32 pinv cutoff, D * 1.19e-7) | a "
                        "number in (0, 1)", "none", "reference", "none,reference")
ORTH_SPAN_TOL = InitChoice("--orth-span-tol", "VIPAMIN: relative singular-value tolerance of the attention-output "
                           "span's rank: stable (1e-2: directions float32 statistics determine to 1e-4) | float64 "
                           "(the former rule: the full float64 numerical rank) | a number in (0, 1)", "stable",
                           "float64", "stable,float64")
SAMPLE = InitChoice("--sample", "SPT: random | mean | max | kmeans", "kmeans", "kmeans", "random,kmeans")

KOpt, KListOpt = K.one(int), K.many()
LambdaOpt, LambdaListOpt = LAMBDA.one(float), LAMBDA.many()
OrthOpt, OrthListOpt = ORTH.one(str), ORTH.many()
OrthScaleOpt, OrthScaleListOpt = ORTH_SCALE.one(str), ORTH_SCALE.many()
OrthRcondOpt, OrthRcondListOpt = ORTH_RCOND.one(str), ORTH_RCOND.many()
OrthSpanTolOpt, OrthSpanTolListOpt = ORTH_SPAN_TOL.one(str), ORTH_SPAN_TOL.many()
SampleOpt, SampleListOpt = SAMPLE.one(str), SAMPLE.many()

# Init options that take one value everywhere.
INIT_METHODS = "vipamin | spt | random (VPT's uniform init)"
OrthEnergyOpt = Annotated[float, Opt("--orth-energy", panel=INIT, help="VIPAMIN: spectral energy kept when the "
                                        "attention-output span fills the whole space. E.g. --orth-energy 0.99.")]
OrthRankOpt = Annotated[int | None, Opt("--orth-rank", panel=INIT, help="VIPAMIN: force a truncated span basis "
                                           "of this rank. E.g. --orth-rank 32.")]
SptWindowsOpt = Annotated[str, Opt("--spt-windows", panel=INIT, help="SPT mean/max windows: ours (P-1 windows of "
                                      "N div (P-1) tokens, then the rest) | reference (the official remainder rule: "
                                      "the P-th window is the last N mod w tokens, or all N when it divides), e.g. "
                                      "--spt-windows reference.")]
TokenBudgetOpt = Annotated[int, Opt("--token-budget", panel=INIT, help="SPT k-means: tokens sampled at most.")]
KmeansItersOpt = Annotated[int, Opt("--kmeans-iters", panel=INIT, help="SPT k-means: Lloyd steps at most.")]
KmeansRestartsOpt = Annotated[int, Opt("--kmeans-restarts", panel=INIT, help="SPT k-means: independent greedy "
                                          "k-means++ runs; the lowest inertia is kept.")]

# Prompts and architecture.
PromptLengthOpt = Annotated[int | None, Opt("--prompt-length", "-p", panel=PROMPTS, help="Prompts per block "
                                               "(default 100 vpt-shallow, 20 vpt-deep, 10 vapt; tune and benchmark: "
                                               "the recipe's or preset's). E.g. -p 10.")]

# Optimisation and schedule: tune takes them as recipe overrides, benchmark as preset or recipe overrides.
EpochsOpt = Annotated[int | None, Opt("--epochs", panel=OPTIM, help="Training epochs (default: the recipe's or "
                                         "preset's; 100). E.g. --epochs 10.")]
WarmupOpt = Annotated[int | None, Opt("--warmup-epochs", panel=OPTIM, help="Linear warm-up epochs (default: the "
                                         "recipe's or preset's; 10). E.g. --warmup-epochs 1.")]
BatchSizeOpt = Annotated[int | None, Opt("--batch-size", panel=OPTIM, help="Batch size (default: the recipe's or "
                                            "preset's; 32; also scales the lr with --lr-scaling batch256). E.g. "
                                            "--batch-size 64.")]
LrOpt = Annotated[str | None, Opt("--lr", panel=OPTIM, help="Base lr, or a comma list to sweep (default: the "
                                     "recipe's or preset's grid; 0.1; benchmark: not the full cell's, see "
                                     "--full-lr). E.g. --lr 0.5,1.")]
WeightDecayOpt = Annotated[str | None, Opt("--weight-decay", panel=OPTIM, help="Weight decay, or a comma list to "
                                              "sweep (default: the recipe's or preset's grid; 0.01). E.g. "
                                              "--weight-decay 0.01,0.001.")]

# Sweep and selection.
SeedsOpt = Annotated[str | None, Opt("--seeds", panel=SWEEP, help="Comma list of training seeds, one run each; "
                                        "with a final split (tune --final-split, every benchmark cell) the final "
                                        "runs' seeds. E.g. --seeds 42,44,82.")]
SweepModeOpt = Annotated[str, Opt("--sweep", panel=SWEEP, help="How the sweep spends its epochs: grid (every "
                                  "candidate to --epochs) | halving (successive halving: every candidate to the first "
                                  "rung, the best 1/eta on to the next, ... the survivors to --epochs; a fraction of "
                                  "the compute, see docs/usage.md). E.g. --sweep halving.")]
EtaOpt = Annotated[int | None, Opt("--eta", panel=SWEEP, help="--sweep halving: keep the best ceil(n/eta) "
                                      "configurations at each rung (default 3). E.g. --eta 3.")]
MinEpochsOpt = Annotated[int | None, Opt("--min-epochs", panel=SWEEP, help="--sweep halving: the first rung R "
                                            "(rungs at R, R*eta, ... then --epochs; default epochs/eta^2 rounded up, "
                                            "at least --warmup-epochs + 1). E.g. --min-epochs 12.")]

# Runtime.
DeviceOpt = Annotated[str, Opt("--device", panel=RUNTIME, help="auto | cpu | cuda")]
GridBatchOpt = Annotated[int | None, Opt("--grid-batch", panel=RUNTIME, help="Train at most N configurations of "
                                            "a sweep together in one pass over the backbone (default: all; 1 = one "
                                            "after another). Bounds memory. E.g. --grid-batch 4.")]


# tune's own options, by panel (the halving sweep and later benchmark options belong here too).
OutCheckpointOpt = Annotated[Path, Opt("--out", "-o", help="Checkpoint file.")]
RecipeOpt = Annotated[str | None, Opt("--recipe", help="A paper's protocol as defaults: vipamin | vpt | spt | vapt "
                                         "| vpt-full (VPT's full fine-tuning, --arch full; see `vipamin recipes`); "
                                         "explicit options override it. E.g. --recipe vapt.")]
ResumeOpt = Annotated[bool, Flag("--resume", help="Continue an interrupted run of the same command (sweep or final "
                                 "stage).")]
PromptsOpt = Annotated[Path | None, Opt("--prompts", panel=INIT, help="Initial prompts from `vipamin init` "
                                           "(instead of computing them with --init).")]
InitMethodOpt = Annotated[str | None, Opt("--init", panel=INIT, help=f"Init computed now if --prompts is not "
                                             f"given: {INIT_METHODS} (default: the recipe's, vipamin). E.g. --init "
                                             "spt.")]
InitSeedListOpt = Annotated[str | None, Opt("--init-seed", panel=INIT, help="Seed of the init's random draws "
                                               "for every run, or a comma list swept as init candidates (default: "
                                               "each run's training seed, as the authors' global seeding). E.g. "
                                               "--init-seed 0,1.")]
ArchOpt = Annotated[str | None, Opt("--arch", panel=PROMPTS, help="vpt-shallow | vpt-deep | vapt | full (full "
                                       "fine-tuning: every weight after block 0, no prompts; one configuration at "
                                       "a time) (default: the recipe's, vpt-shallow). E.g. --arch vpt-deep.")]
PoolOpt = Annotated[str | None, Opt("--pool", panel=PROMPTS, help="Head input: cls | mean-patch | mean-all (mean "
                                       "of prompts + patches, fresh affine-free LayerNorm: VPT's MAE head) | "
                                       "mean-all-norm (the same mean, then the pretrained final norm: SPT's MAE head) "
                                       "| timm (timm's own pooling: token, avg + fc_norm or map attention pooling, "
                                       "prompts excluded) | timm-all (prompts included). Default: the backbone's "
                                       "recipe.")]
PromptDropoutOpt = Annotated[float | None, Opt("--prompt-dropout", panel=PROMPTS, help="Dropout on prompts "
                                                  "(default 0). E.g. --prompt-dropout 0.1.")]
HeadInitOpt = Annotated[str | None, Opt("--head-init", panel=PROMPTS, help="kaiming (normal, fan_out) | zeros | "
                                           "trunc-normal (std 0.02, SPT); bias 0.")]
OptimizerOpt = Annotated[str | None, Opt("--optimizer", panel=OPTIM, help="adamw (VIPAMIN, SPT) | sgd (VPT, "
                                            "VAPT).")]
LrScalingOpt = Annotated[str | None, Opt("--lr-scaling", panel=OPTIM, help="batch256 (lr x batch/256) | none "
                                            "(SPT). E.g. --lr-scaling none.")]
ScheduleStepOpt = Annotated[str | None, Opt("--schedule-step", panel=OPTIM, help="Step the warm-up + cosine per "
                                               "epoch (VPT) or per iteration (SPT). E.g. --schedule-step "
                                               "iteration.")]
LrFloorOpt = Annotated[float | None, Opt("--lr-floor", panel=OPTIM, help="The lr the cosine ends at (SPT 1e-8). "
                                            "E.g. --lr-floor 1e-8.")]
DecayGroupsOpt = Annotated[str | None, Opt("--decay-groups", panel=OPTIM, help="matrices (prompts + weight "
                                              "matrices) | all-but-head-bias (VAPT). E.g. --decay-groups "
                                              "all-but-head-bias.")]
HeadWeightDecayOpt = Annotated[float | None, Opt("--head-weight-decay", panel=OPTIM, help="Separate weight decay "
                                                    "of the head weight (SPT: 0.5 MAE, 3.0 others). E.g. "
                                                    "--head-weight-decay 0.5.")]
EmaOpt = Annotated[float | None, Opt("--ema", panel=OPTIM, help="Decay of a weight EMA used for validation and "
                                        "the checkpoint (SPT 0.9999; 0 = none). E.g. --ema 0.9999.")]
DropLastOpt = Annotated[bool | None, Flag("--drop-last/--no-drop-last", panel=OPTIM, help="Drop each epoch's last "
                                          "partial batch (SPT; default: the recipe's). E.g. --drop-last.")]
ValOpt = Annotated[str | None, Opt("--val", panel=SWEEP, help="Validation split of --data (e.g. val, val200).")]
ValEmbeddingsOpt = Annotated[Path | None, Opt("--val-embeddings", panel=SWEEP, help="Validation embeddings "
                                                 "file.")]
FinalSplitOpt = Annotated[str | None, Opt("--final-split", panel=SWEEP, help="After selecting on --val, retrain "
                                             "the chosen configuration on this split of --data once per seed "
                                             "(--seeds, default the recipe's final seeds); those runs are the "
                                             "checkpoint. E.g. --final-split train800val200.")]
FinalEmbeddingsOpt = Annotated[Path | None, Opt("--final-embeddings", panel=SWEEP, help="Embeddings of the final "
                                                   "split instead of --final-split. E.g. --final-embeddings "
                                                   "trainval.safetensors.")]
TrainSeedOpt = Annotated[int | None, Opt("--seed", panel=SWEEP, help="Training seed (head init, order, dropout; "
                                            "default 42).")]
TieBreakOpt = Annotated[str | None, Opt("--tie-break", panel=SWEEP, help="Selection ties: smaller-lr | larger-lr "
                                           "(VAPT). E.g. --tie-break larger-lr.")]
ValEveryOpt = Annotated[int, Opt("--val-every", panel=SWEEP, help="Validate every N epochs (selection reads the "
                                    "last epoch's).")]
VaptHiddenOpt = Annotated[int, Opt("--vapt-hidden", panel=VAPT, help="VAPT projector hidden size.")]
VaptKernelOpt = Annotated[int, Opt("--vapt-kernel", panel=VAPT, help="VAPT conv kernel size.")]
VaptFirstBlockOpt = Annotated[int, Opt("--vapt-first-block", panel=VAPT, help="VAPT: first block whose prompts "
                                          "are generated (earlier blocks keep the incoming ones).")]
VaptPerChannelOpt = Annotated[bool, Flag("--vapt-per-channel", panel=VAPT, help="VAPT: one kernel per channel "
                                         "instead of one shared kernel.")]
VaptDropoutOpt = Annotated[float, Opt("--vapt-dropout", panel=VAPT, help="VAPT: dropout in the projector's hidden "
                                         "layer (and Dropout2d after the conv unless --vapt-conv-dropout is given), "
                                         "e.g. --vapt-dropout 0.1.")]
VaptConvDropoutOpt = Annotated[float | None, Opt("--vapt-conv-dropout", panel=VAPT, help="VAPT: Dropout2d rate "
                                                    "after the conv (default: --vapt-dropout), e.g. "
                                                    "--vapt-conv-dropout 0.1.")]
VaptScaleOpt = Annotated[bool, Flag("--vapt-scale", panel=VAPT, help="VAPT: a learnable scale on the projector's "
                                    "residual branch (1 parameter), e.g. --vapt-scale.")]
PrecisionOpt = Annotated[str, Opt("--precision", panel=RUNTIME, help="auto (bf16 autocast on CUDA, fp32 on CPU) | "
                                     "bf16 | fp32.")]
CompileOpt = Annotated[str, Opt("--compile", panel=RUNTIME, help="torch.compile the frozen blocks: auto (on for "
                                   "CUDA) | on | off.")]


def option_group(cls: type[T]) -> type[T]:
    """Declare a group of options: a frozen dataclass whose fields are annotated options with defaults."""
    group = dataclass(frozen=True)(cls)
    group.__option_group__ = True  # type: ignore[attr-defined]
    return group


def with_option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """Let ``command`` take option groups as parameters: typer sees each group's fields as options
    (in the group's order, at the group's place), and the command gets the group filled in."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for p in inspect.signature(command).parameters.values():
        kind = hints.get(p.name, p.annotation)
        if getattr(kind, "__option_group__", False):
            fields = typing.get_type_hints(kind, include_extras=True)
            names = [f.name for f in dataclasses.fields(kind)]
            groups[p.name] = (kind, names)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                         annotation=fields[f.name]) for f in dataclasses.fields(kind)]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=kind))
    seen = [p.name for p in params]
    if len(seen) != len(set(seen)):
        raise TypeError(f"{command.__name__}: an option name appears twice: {sorted(seen)}")

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        for name, (kind, names) in groups.items():
            kwargs[name] = kind(**{n: kwargs.pop(n) for n in names})
        return command(**kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


@option_group
class DataSource:
    """Where a command's training split comes from (init, tune): a file, or a backbone and data."""

    embeddings: EmbeddingsOpt = None
    backbone: OptBackboneOpt = None
    data: OptDataOpt = None
    split: SplitOpt = None
    weights: WeightsOpt = None
    shots: ShotsOpt = None
    data_seed: DataSeedOpt = 0
    cache_dir: CacheOpt = None


@option_group
class Embedding:
    """How images are embedded (init, tune; embed and eval spell the seed and batch size their own way)."""

    resize: ResizeOpt = "auto"
    dtype: DtypeOpt = "bfloat16"
    calib_size: CalibSizeOpt = 256
    sample_images: SampleImagesOpt = 32
    augment: AugmentOpt = None
    views: ViewsOpt = None
    deep_stats: DeepStatsOpt = "prompt-free"
    deep_stats_prompts: DeepStatsPromptsOpt = None
    workers: WorkersOpt = None
    embed_batch_size: EmbedBatchOpt = 64

    def config(self, seed: int, device: str, augment: str | None = None) -> Any:
        """The EmbedConfig (``augment`` replaces --augment; None = none)."""
        from .embed import EmbedConfig

        return EmbedConfig(resize=self.resize, dtype=self.dtype, calib_size=self.calib_size,
                           sample_images=self.sample_images, seed=seed, batch_size=self.embed_batch_size,
                           device=device, workers=self.workers, augment=(augment or self.augment) or "none",
                           views=self.views, deep_stats=self.deep_stats,
                           deep_stats_prompts=self.deep_stats_prompts)


@option_group
class InitValues:
    """The init hyperparameters ``init`` takes one value of (``tune`` sweeps them: :class:`InitGrid`)."""

    k: KOpt = 8
    lam: LambdaOpt = 0.5
    orth: OrthOpt = "exact"
    orth_scale: OrthScaleOpt = "none"
    orth_rcond: OrthRcondOpt = "none"
    orth_span_tol: OrthSpanTolOpt = "stable"
    sample: SampleOpt = "kmeans"


@option_group
class VipaminGrid:
    """VIPAMIN's hyperparameters as comma lists of init candidates (tune, benchmark); None = not given."""

    k: KListOpt = None
    lam: LambdaListOpt = None
    orth: OrthListOpt = None
    orth_scale: OrthScaleListOpt = None
    orth_rcond: OrthRcondListOpt = None
    orth_span_tol: OrthSpanTolListOpt = None


@option_group
class InitGrid(VipaminGrid):
    """tune's init candidates: VIPAMIN's lists, SPT's sampling and the init seed."""

    sample: SampleListOpt = None
    init_seed: InitSeedListOpt = None


@option_group
class InitTuning:
    """Init settings that take one value in every command (init, tune)."""

    orth_energy: OrthEnergyOpt = 0.99
    orth_rank: OrthRankOpt = None
    spt_windows: SptWindowsOpt = "ours"
    token_budget: TokenBudgetOpt = 200_000
    kmeans_iters: KmeansItersOpt = 100
    kmeans_restarts: KmeansRestartsOpt = 1


@option_group
class Schedule:
    """The training length and the lr / weight-decay grids (tune, benchmark); None = the recipe's or preset's."""

    epochs: EpochsOpt = None
    warmup_epochs: WarmupOpt = None
    batch_size: BatchSizeOpt = None
    lr: LrOpt = None
    weight_decay: WeightDecayOpt = None


@option_group
class Architecture:
    """The prompts' architecture and the head (tune); None = the recipe's."""

    arch: ArchOpt = None
    pool: PoolOpt = None
    prompt_dropout: PromptDropoutOpt = None
    head_init: HeadInitOpt = None


@option_group
class Optimiser:
    """The optimiser and schedule details of a recipe (tune); None = the recipe's. Named as TuneConfig's fields."""

    optimizer: OptimizerOpt = None
    lr_scaling: LrScalingOpt = None
    schedule_step: ScheduleStepOpt = None
    lr_floor: LrFloorOpt = None
    decay_groups: DecayGroupsOpt = None
    head_weight_decay: HeadWeightDecayOpt = None
    ema: EmaOpt = None
    drop_last: DropLastOpt = None


@option_group
class Selection:
    """What the sweep selects on and what it retrains (tune)."""

    val: ValOpt = None
    val_embeddings: ValEmbeddingsOpt = None
    final_split: FinalSplitOpt = None
    final_embeddings: FinalEmbeddingsOpt = None
    seed: TrainSeedOpt = None
    seeds: SeedsOpt = None
    tie_break: TieBreakOpt = None
    val_every: ValEveryOpt = 1

    @property
    def has_final(self) -> bool:
        return self.final_split is not None or self.final_embeddings is not None


@option_group
class Sweep:
    """How a sweep spends its epochs (tune, benchmark): the full grid, or successive halving."""

    sweep: SweepModeOpt = "grid"
    eta: EtaOpt = None
    min_epochs: MinEpochsOpt = None

    def rule(self) -> Any:
        """The tuning.halving.SweepRule (checked against the epochs when the sweep is planned)."""
        from .tuning.halving import SweepRule

        return SweepRule(self.sweep, self.eta, self.min_epochs)


@option_group
class Vapt:
    """VAPT's prompt generator (tune)."""

    vapt_hidden: VaptHiddenOpt = 8
    vapt_kernel: VaptKernelOpt = 2
    vapt_first_block: VaptFirstBlockOpt = 1
    vapt_per_channel: VaptPerChannelOpt = False
    vapt_dropout: VaptDropoutOpt = 0.1
    vapt_conv_dropout: VaptConvDropoutOpt = None
    vapt_scale: VaptScaleOpt = False

    def config(self) -> dict[str, Any]:
        """TuneConfig fields; --vapt-scale off leaves the recipe's value."""
        return dataclasses.asdict(self) | {"vapt_scale": self.vapt_scale or None}
