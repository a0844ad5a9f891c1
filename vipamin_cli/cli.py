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
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


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
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # an unexpected failure still gets one line, not a traceback
            if _STATE["debug"]:
                raise
            text = str(exc).splitlines()[0] if str(exc) else ""
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
                                                "instead of hub weights.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Image folder (class subfolders, optionally train/val/"
                                      "test), VTAB-1k list-file folder, FGVC json-split folder, or hf:<owner>/<name>.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split to read: train/val/test, train800/val200/"
                                              "train800val200 for VTAB; default: the training split.")]
ShotsOpt = Annotated[int | None, typer.Option("--shots", help="Few-shot: draw K images per class (with --seed).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for few-shot draws and the calibration subset.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Embeddings cache (default $VIPAMIN_CACHE or "
                                               "the user cache dir).")]
ImageColOpt = Annotated[str, typer.Option("--image-column", help="Image column of a hub dataset.")]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="Label column of a hub dataset.")]


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
    resize: Annotated[str, typer.Option("--resize", help="auto | vtab (squash to input size) | fgvc (resize 256, "
                                        "centre crop 224). auto = fgvc for FGVC json folders, else vtab.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward batch.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype of cached tokens: bfloat16 | float32.")]
    = "bfloat16",
    calib_size: Annotated[int, typer.Option("--calib-size", help="Images used for calibration statistics.")] = 256,
    sample_images: Annotated[int, typer.Option("--sample-images", help="Calibration images whose per-block tokens "
                                               "are kept for SPT prototypes.")] = 32,
    workers: Annotated[int | None, typer.Option("--workers", help="Image decoding workers (default: 0 on CPU, "
                                                "up to 8 on CUDA).")] = None,
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
    from .embed import EmbedConfig, embed_data

    config = EmbedConfig(resize=resize, dtype=dtype, calib_size=calib_size, sample_images=sample_images, seed=seed,
                         batch_size=batch_size, device=device, workers=workers)
    result = embed_data(backbone, data, weights=weights, split=split, shots=shots, config=config, out=out,
                        cache_dir=cache_dir, use_cache=not no_cache, image_column=image_column,
                        label_column=label_column)
    typer.echo(str(result.path))


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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: usage errors (unknown option, bad value) become one line too."""
    try:  # typer >= 0.17 vendors click; older versions use click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    try:
        result = app(args=argv, standalone_mode=False)
    except cx.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        sys.stderr.write(f"error: {message}{where}\n")
        return 2
    except cx.Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except (cx.Exit, typer.Exit) as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
