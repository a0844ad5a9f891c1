"""Benchmark (not a test): how long prompt initialisation takes for a ViT-B/16-sized backbone.

Run from the repository root::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m bench.init_bench --images 256

Steps: (1) write N synthetic JPEG images in 10 class folders (or use ``--data``); (2) embed them
once with seeded random weights (``weights="random"``: same shapes and FLOPs as the real
checkpoint, no download) and time it; (3) load the embeddings and the backbone once and time the
pure ``run_init`` computation of each method ``--repeats`` times (median reported); then time
``init_prompts`` end to end (load and verify the embeddings file, rebuild and fingerprint the
backbone, run, write the prompts file) for VIPAMIN shallow and deep, and `vipamin init` once in a
fresh process; (4) print a table and write JSON.

CPU timings are only meaningful on an otherwise idle machine. Every measurement therefore also
records ``other_cpu_pct``: the share of all cores that *other* processes used meanwhile (from
/proc/stat minus this process and its children); rows where it is high are inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGET_S = 60.0  # `init` for ViT-B/16 from 256 cached images, end to end, on CPU
NUM_CLASSES = 10


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_counters() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its children); Linux only."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


@dataclass
class Timing:
    seconds: float
    other_cpu_pct: float | None  # share of all cores used by other processes meanwhile


def measure(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    before = cpu_counters()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    after = cpu_counters()
    other = None
    if before is not None and after is not None and wall > 0:
        foreign = (after[0] - before[0]) - (after[1] - before[1])
        other = round(max(0.0, min(100.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))), 1)
    return Timing(wall, other), result


def other_load(seconds: float = 1.0) -> float | None:
    """Share of all cores other processes use right now (sampled over ``seconds``)."""
    return measure(lambda: time.sleep(seconds))[0].other_cpu_pct


def make_images(dest: Path, count: int, size: int = 224, seed: int = 0) -> Path:
    """Write ``count`` seeded RGB JPEGs (noise + a few shapes) into ``dest/class_<c>/``, round-robin."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c in range(NUM_CLASSES):
        (dest / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % NUM_CLASSES
        base = rng.integers(0, 256, size=3)
        noise = rng.normal(0.0, 40.0, size=(size, size, 3))
        pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 32, size=2))
            w, h = (int(v) for v in rng.integers(16, size // 2, size=2))
            box = (x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if (label + int(rng.integers(0, 2))) % 2:
                draw.ellipse(box, fill=fill)
            else:
                draw.rectangle(box, fill=fill)
        img.save(dest / f"class_{label}" / f"img_{i:05d}.jpg", quality=90)
    return dest


def cases(device: str) -> list[tuple[str, Any]]:
    """(label, InitConfig) of every timed method; P = 100 shallow, 20 per block deep."""
    from vipamin_cli.inits import InitConfig

    return [
        ("VIPAMIN", InitConfig(method="vipamin", prompt_length=100, k=8, lam=0.5, device=device)),
        ("VIPAMIN", InitConfig(method="vipamin", prompt_length=20, deep=True, k=8, lam=0.5, device=device)),
        ("SPT k-means", InitConfig(method="spt", sample="kmeans", prompt_length=100, device=device)),
        ("SPT k-means", InitConfig(method="spt", sample="kmeans", prompt_length=20, deep=True, device=device)),
        ("SPT random", InitConfig(method="spt", sample="random", prompt_length=100, device=device)),
        ("VPT random", InitConfig(method="random", prompt_length=100, device=device)),
    ]


def machine_info(device: Any) -> dict[str, Any]:
    import timm
    import torch

    info = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "device": str(device), "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(label: str, cfg: Any, timings: list[Timing], **extra: Any) -> dict[str, Any]:
    others = [t.other_cpu_pct for t in timings if t.other_cpu_pct is not None]
    return {"method": label, "prompting": "deep" if cfg.deep else "shallow", "prompts": cfg.num_prompts, **extra,
            "runs_s": [round(t.seconds, 4) for t in timings],
            "median_s": round(statistics.median(t.seconds for t in timings), 4),
            "other_cpu_pct": [t.other_cpu_pct for t in timings], "max_other_cpu_pct": max(others, default=None)}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from vipamin_cli.artifacts import load_artifact
    from vipamin_cli.backbones import load_backbone
    from vipamin_cli.embed import EmbedConfig, embed_data, resolve_device
    from vipamin_cli.inits import context_from_embeddings, init_prompts, run_init

    console = Console(stderr=True)
    device = resolve_device(args.device)
    result: dict[str, Any] = {"machine": machine_info(device), "backbone": args.backbone, "weights": "random"}
    busy = other_load()
    result["machine"]["other_cpu_pct_at_start"] = busy
    if device.type == "cpu" and busy is not None and busy > 10:
        console.print(f"[yellow]warning[/]: other processes use {busy:.0f}% of the CPU: they will inflate "
                      "(and scatter) these timings")

    # 1. data
    if args.data:
        data = Path(args.data)
        result["data"] = {"path": str(data), "synthetic": False}
    else:
        data = work / "images"
        t, _ = measure(lambda: make_images(data, args.images))
        result["data"] = {"synthetic": True, "images": args.images, "size": 224, "classes": NUM_CLASSES,
                          "write_s": round(t.seconds, 3)}
        console.print(f"wrote {args.images} synthetic JPEGs in {t.seconds:.1f} s")

    # 2. embed once: every image through the patch embedding, the calibration images through all blocks
    config = EmbedConfig(calib_size=args.images, batch_size=args.batch_size, device=args.device)
    embed_t, embedded = measure(lambda: embed_data(args.backbone, str(data), weights="random", config=config,
                                                   cache_dir=work / "cache", show_progress=not args.no_progress))
    images = len(embedded.meta.get("samples", [])) or args.images
    result["embed"] = {
        "seconds": round(embed_t.seconds, 3), "images": images, "images_per_s": round(images / embed_t.seconds, 2),
        "other_cpu_pct": embed_t.other_cpu_pct, "from_cache": embedded.from_cache,
        "file_mb": round(embedded.path.stat().st_size / 2**20, 1), "config": asdict(config),
    }
    console.print(f"embed: {images} images in {embed_t.seconds:.1f} s ({images / embed_t.seconds:.2f} images/s)")

    # 3. load once, then time the pure computation
    art_t, art = measure(lambda: load_artifact(embedded.path, "embeddings"))
    bb_t, bb = measure(lambda: load_backbone(args.backbone, weights="random"))
    result["load"] = {"embeddings_s": round(art_t.seconds, 3), "backbone_s": round(bb_t.seconds, 3),
                      "other_cpu_pct": [art_t.other_cpu_pct, bb_t.other_cpu_pct]}
    ctx = context_from_embeddings(art, bb.model, device)

    figures = []
    for label, cfg in cases(args.device):
        def once(cfg: Any = cfg) -> None:
            run_init(ctx, cfg)
            sync(device)

        timings = [measure(once)[0] for _ in range(args.repeats)]
        figures.append(summary(label, cfg, timings, blocks=len(bb.model.blocks) if cfg.deep else 1,
                               config=cfg.method + (f"/{cfg.sample}" if cfg.method == "spt" else "")))
        console.print(f"run_init {label} {figures[-1]['prompting']}: {figures[-1]['runs_s']} s, "
                      f"other CPU {figures[-1]['other_cpu_pct']} %")
    result["run_init"] = figures

    # 3b. end to end: `init_prompts` from the embeddings file
    end_to_end = []
    for label, cfg in cases(args.device)[:2]:
        out = work / f"prompts-{cfg.method}{'-deep' if cfg.deep else ''}.safetensors"

        def whole(cfg: Any = cfg, out: Path = out) -> None:
            init_prompts(cfg, embeddings=embedded.path, out=out, show_progress=False)

        timings = [measure(whole)[0] for _ in range(args.repeats)]
        end_to_end.append(summary(label, cfg, timings))
        end_to_end[-1]["target_met"] = end_to_end[-1]["median_s"] < TARGET_S
        console.print(f"init_prompts {label} {end_to_end[-1]['prompting']}: {end_to_end[-1]['runs_s']} s, "
                      f"other CPU {end_to_end[-1]['other_cpu_pct']} %")
    result["init_prompts"] = end_to_end

    # 3c. the CLI in a fresh process (adds interpreter start, imports and first-call set-up), once each
    cli = []
    if not args.no_cli:
        for label, cfg in cases(args.device)[:2]:
            cmd = [sys.executable, "-m", "vipamin_cli", "-q", "init", "--method", cfg.method, "--embeddings",
                   str(embedded.path), "--out", str(work / "prompts-cli.safetensors"), "--device", args.device]
            cmd += ["--deep"] if cfg.deep else []
            t, proc = measure(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True))
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            cli.append(summary(label, cfg, [t], command="vipamin -q init " + " ".join(cmd[5:])))
            console.print(f"vipamin init {label} {cli[-1]['prompting']} (fresh process): {t.seconds:.2f} s, "
                          f"other CPU {t.other_cpu_pct} %")
    result["cli"] = cli
    result["target"] = {"seconds": TARGET_S, "scope": "VIPAMIN shallow and deep, end to end",
                        "met": all(e["median_s"] < TARGET_S for e in end_to_end + cli)}

    # 4. report
    table = Table(title=f"Prompt initialisation, {args.backbone} (random weights), {images} cached images, "
                        f"{device} ({os.cpu_count()} cores), median of {args.repeats}")
    for name, justify in (("step", "left"), ("method", "left"), ("prompting", "left"), ("P", "right"),
                          ("seconds", "right"), ("other CPU %", "right")):
        table.add_column(name, justify=justify)

    def pct(value: Any) -> str:
        return "-" if value is None else f"{value:.0f}"

    table.add_row("embed (once)", "-", "-", "-", f"{embed_t.seconds:.1f} ({images / embed_t.seconds:.2f} img/s)",
                  pct(embed_t.other_cpu_pct))
    table.add_row("load embeddings", "-", "-", "-", f"{art_t.seconds:.2f}", pct(art_t.other_cpu_pct))
    table.add_row("build backbone", "-", "-", "-", f"{bb_t.seconds:.2f}", pct(bb_t.other_cpu_pct))
    for step, rows in (("run_init", figures), ("init_prompts (end to end)", end_to_end),
                       ("vipamin init (new process)", cli)):
        for f in rows:
            table.add_row(step, f["method"], f["prompting"], str(f["prompts"]), f"{f['median_s']:.3f}",
                          pct(f["max_other_cpu_pct"]))
    Console().print(table)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.init_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="synthetic images to write and embed")
    parser.add_argument("--backbone", default="mae-vit-b")
    parser.add_argument("--data", default=None, help="use this image folder instead of synthetic images")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-init.json", help="JSON file for the figures")
    parser.add_argument("--work-dir", default=None, help="keep images/cache/prompts here instead of a temp dir")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-cli", action="store_true", help="skip timing `vipamin init` in a fresh process")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    start = time.perf_counter()
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="vipamin-bench-") as tmp:
            result = run(args, Path(tmp))
    result["total_s"] = round(time.perf_counter() - start, 2)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"total {result['total_s']:.1f} s; figures written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
