"""`vipamin predict` speed against a bare loop, on a folder of JPEGs (issue 23's target: >= 0.8x on CPU).

Run: ``python -m bench.predict_speed [--backbone dino-vit-s] [--images 300] [--prompts 10,100]
[--batch-size 32] [--device cpu|cuda] [--workers N] [--threads T] [--repeat 2] [--work DIR] [--out results.json]``.

It writes ``--images`` JPEGs (scikit-learn digits, upscaled to the backbone's input size), tunes one
shallow checkpoint per prompt count P (seeded random backbone weights: weights do not change speed;
one epoch on 20 images: only the shapes matter), then times, alternating, best of ``--repeat``:

- **bare**: PIL decode + the checkpoint's own transform + the timm backbone's forward (no prompts,
  no head), in the same DataLoader setup (batch size, workers) and the same torch threads;
- **bare + P tokens**: the same, with P zero tokens spliced in after the CLS token: the cost of the
  longer sequence alone, which any prompted model pays;
- **predict (stream)**: ``predict.stream_predictions`` with a loaded classifier, rows rendered as CSV;
- **predict (whole call)**: ``predict.predict`` into a CSV file, loading the checkpoint and backbone
  (fingerprint check included) inside the timed call.

With ``--device cuda`` both loops run under bf16 autocast and decode with ``--workers`` (default 8)
processes, as `vipamin predict` does on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def make_jpegs(folder: Path, count: int, px: int) -> list[str]:
    """``count`` JPEGs of the scikit-learn digits, bicubic-upscaled to ``px``, in one flat folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits().images
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            gray = Image.fromarray((digits[i % len(digits)] * (255 / 16)).round().astype(np.uint8))
            gray.resize((px, px), Image.Resampling.BICUBIC).convert("RGB").save(path, quality=90)
        paths.append(str(path))
    return paths


def make_checkpoint(work: Path, backbone: str, weights: str | None, prompts: int) -> Path:
    """A real shallow checkpoint with ``prompts`` prompts: embed 20 images, one epoch of tuning."""
    from PIL import Image

    from vipamin_cli.demo import export_digits
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.inits import InitConfig
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    out = work / f"ckpt-p{prompts}.safetensors"
    if out.exists():
        return out
    digits = export_digits(work / "digits", per_class=2)
    train = work / "train"
    for label in ("0", "1"):  # two classes of 8 px digits, as a small class folder
        (train / label).mkdir(parents=True, exist_ok=True)
        for p in sorted((digits / "train" / label).glob("*.png")) + sorted((digits / "test" / label).glob("*.png")):
            Image.open(p).convert("RGB").save(train / label / p.name)
    emb = embed_data(backbone, str(train), weights=weights, config=EmbedConfig(calib_size=8, device="cpu"),
                     out=work / "train.safetensors", use_cache=False, show_progress=False).path
    inputs = TuneInputs(embeddings=emb, init=InitConfig(method="random", prompt_length=prompts, device="cpu"))
    tune(inputs, TuneConfig(epochs=1, warmup_epochs=0, batch_size=8), [0.1], [0.01], [42], out, device="cpu",
         show_progress=False)
    return out


class _Decode:
    """The bare loop's dataset: PIL decode + the transform, nothing else."""

    def __init__(self, paths: list[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def bare_loop(vit: torch.nn.Module, paths: list[str], transform: Any, batch_size: int, workers: int,
              device: torch.device, extra_tokens: int = 0) -> int:
    """Decode, transform and run the timm backbone (optionally with ``extra_tokens`` zero tokens after CLS)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_Decode(paths, transform), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n = 0
    with torch.inference_mode(), autocast:
        for images in loader:
            images = images.to(device, non_blocking=True)
            if extra_tokens == 0:
                feats = vit(images)
            else:
                x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
                pad = x.new_zeros(x.shape[0], extra_tokens, x.shape[2])
                npf = vit.num_prefix_tokens
                x = vit.blocks(torch.cat([x[:, :npf], pad, x[:, npf:]], dim=1))
                feats = vit.norm(x)[:, 0]
            n += int(feats.float().sum().isfinite())  # read back, as predict does
    return n


def stream(model: Any, paths: list[str], batch_size: int, workers: int, device: torch.device) -> int:
    """`predict`'s streaming loop with a loaded classifier, each row rendered as CSV."""
    from vipamin_cli.predict import ImageItems, Item, format_rows, stream_predictions

    _, render = format_rows("csv", 5)
    dataset = ImageItems([Item(p, p) for p in paths], [], model.transform)
    return sum(len(render(p)) > 0 for p in stream_predictions(model, dataset, 5, batch_size, workers, device))


def _prompts_of(case: str) -> int:
    """The extra tokens a case runs with: P of 'bare + P tokens' and 'predict P=...'."""
    if case.startswith("bare + "):
        return int(case.split()[2])
    if case.startswith("predict P="):
        return int(case.split()[1][2:])
    return 0


def token_ratio(vit: torch.nn.Module, tokens: int, extra: int) -> float:
    """Block matmul FLOPs with ``tokens`` over those with ``tokens + extra``: the speed the longer
    sequence alone allows, relative to the bare loop (bench.run.forward_flops, the same count)."""
    from bench.run import forward_flops

    depth, dim = len(vit.blocks), int(vit.embed_dim)
    ratio = float(vit.blocks[0].mlp.fc1.out_features) / dim
    return forward_flops(depth, dim, tokens, ratio) / forward_flops(depth, dim, tokens + extra, ratio)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vipamin_cli import load_classifier
    from vipamin_cli.embed import resolve_device
    from vipamin_cli.predict import predict

    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else 8)
    work = Path(args.work or tempfile.mkdtemp(prefix="vipamin-predict-bench-"))
    ckpts = {p: make_checkpoint(work, args.backbone, args.weights, p) for p in args.prompts}
    models = {p: load_classifier(c, device=device) for p, c in ckpts.items()}
    first = models[args.prompts[0]]
    paths = make_jpegs(work / "jpegs", args.images, first.img_size)
    vit, transform = first.backbone, first.transform
    cases: dict[str, Callable[[], Any]] = {"bare": lambda: bare_loop(vit, paths, transform, args.batch_size,
                                                                       workers, device)}
    for p in args.prompts:
        cases[f"bare + {p} tokens"] = lambda p=p: bare_loop(vit, paths, transform, args.batch_size, workers, device, p)
        cases[f"predict P={p} (stream)"] = lambda p=p: stream(models[p], paths, args.batch_size, workers, device)
        cases[f"predict P={p} (whole call)"] = lambda p=p: predict(
            ckpts[p], str(work / "jpegs"), out=work / "preds.csv", batch_size=args.batch_size, workers=workers,
            device=str(device), show_progress=False)
    warm = paths[: args.batch_size]
    bare_loop(vit, warm, transform, args.batch_size, 0, device)
    for p in args.prompts:
        stream(models[p], warm, args.batch_size, 0, device)
    seconds: dict[str, float] = {}
    for _ in range(args.repeat):  # alternate the cases so a change in machine load hits them alike
        for name, fn in cases.items():
            seconds[name] = min(seconds.get(name, float("inf")), timed(fn, device))
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    rows = [{"case": name, "seconds": s, "images_per_s": args.images / s, "vs_bare": seconds["bare"] / s,
             "tokens_alone": token_ratio(vit, tokens, _prompts_of(name))} for name, s in seconds.items()]
    return {"rows": rows, "backbone": args.backbone, "weights": args.weights, "images": args.images,
            "img_size": first.img_size, "tokens": tokens, "batch_size": args.batch_size, "workers": workers,
            "device": str(device), "threads": torch.get_num_threads(), "repeat": args.repeat,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average_before": args.load_before,
            "load_average_after": os.getloadavg(), "torch": torch.__version__}


def render(result: dict[str, Any]) -> str:
    lines = [f"backbone {result['backbone']} ({result['img_size']} px, {result['tokens']} tokens), "
             f"{result['images']} JPEGs, batch {result['batch_size']}, workers {result['workers']}, device "
             f"{result['device']}, {result['threads']} threads, best of {result['repeat']}",
             "", "| case | images/s | seconds | vs bare | token count alone allows |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['images_per_s']:.1f} | {r['seconds']:.2f} | {r['vs_bare']:.2f}x | "
              f"{r['tokens_alone']:.2f}x |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dino-vit-s")
    parser.add_argument("--weights", default="random", help="'random' (seeded) or a local file; 'none' = the hub's")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--prompts", default="10,100", help="comma list of shallow prompt counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="default: 0 on CPU, 8 on CUDA")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every case (default: torch's; "
                        "1 avoids OpenMP stalls when other processes share the cores)")
    parser.add_argument("--work", default=None, help="folder for the JPEGs and checkpoints (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.prompts = [int(p) for p in args.prompts.split(",")]
    args.weights = None if args.weights == "none" else args.weights
    args.load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("VIPAMIN_QUIET", "1")
    result = run(args)
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
