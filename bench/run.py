"""`make bench`: how fast embed, init, tune and grid sweeps run, against a reference-style loop.

Run: ``python -m bench.run [--size auto|small|vit-b] [--device auto|cpu|cuda] [--out bench-results.json]``.
``small`` (the default without a GPU) uses the built-in 32 px tiny ViT and takes a minute or two on a
laptop CPU; ``vit-b`` (the default with a GPU) times ViT-B/16 at 224 px with seeded random weights.

FLOPs count the matmuls of attention (qkv, scores, scores x values, output projection) and the MLP
for the actual sequence length (prefix + prompts + patches). Training counts the forward pass and
the activation-gradient backward pass (the frozen weights get no gradient): 2 x forward.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SETTINGS = {
    "small": {"backbone": "vit-tiny-test", "weights": None, "images": 512, "image_px": 40, "steps": 30,
              "grid_configs": 7, "grid_images": 512, "init_images": (256,)},
    "vit-b": {"backbone": "mae-vit-b", "weights": "random", "images": 1000, "image_px": 256, "steps": 50,
              "grid_configs": 7, "grid_images": 1000, "init_images": (256, 1000)},
}


def forward_flops(depth: int, dim: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Matmul FLOPs of one image's forward through the blocks (multiply-add = 2 FLOPs)."""
    per_block = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim  # qkv + output projection
    per_block += 2 * 2 * tokens * tokens * dim  # q k^T and attn x v
    per_block += 2 * 2 * tokens * dim * int(mlp_ratio * dim)  # MLP fc1 + fc2
    return float(depth * per_block)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 3) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_jpegs(root: Path, count: int, px: int, classes: int = 10) -> Path:
    from PIL import Image, ImageDraw

    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = (torch.rand(px, px, 3, generator=gen) * 255).to(torch.uint8).numpy()
        img = Image.fromarray(noise)
        ImageDraw.Draw(img).ellipse([px // 4, px // 4, px // 2 + (i % classes) * 2, px // 2], fill=(255, 0, 0))
        img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


class Bench:
    def __init__(self, size: str, device: torch.device, workdir: Path) -> None:
        from vipamin_cli.backbones import load_backbone

        self.size, self.device, self.workdir = size, device, workdir
        self.s = SETTINGS[size]
        self.backbone = load_backbone(self.s["backbone"], weights=self.s["weights"])
        vit = self.backbone.model
        self.depth, self.dim = len(vit.blocks), int(vit.embed_dim)
        self.tokens = self.backbone.num_prefix_tokens + self.backbone.num_patches
        self.rows: list[dict[str, Any]] = []
        self.data = make_jpegs(workdir / "images", self.s["images"], self.s["image_px"])

    def add(self, case: str, seconds: float, images: int, seq: int | None, train: bool, **extra: Any) -> dict:
        ips = images / seconds
        row = {"case": case, "seconds": seconds, "images_per_s": ips}
        if seq is not None:
            row["tflops"] = ips * forward_flops(self.depth, self.dim, seq) * (2 if train else 1) / 1e12
        row["peak_mem_mb"] = peak_memory_mb(self.device)
        row.update(extra)
        self.rows.append(row)
        print(f"  {case}: {ips:,.1f} images/s" + (f", {row['tflops']:.3f} TFLOP/s" if "tflops" in row else ""),
              flush=True)
        return row

    # embed ------------------------------------------------------------------------------------
    def embed(self) -> Path:
        from vipamin_cli.embed import EmbedConfig, embed_data

        n = self.s["images"]
        reset_peak(self.device)
        start = time.perf_counter()
        res = embed_data(self.s["backbone"], str(self.data), weights=self.s["weights"], use_cache=False,
                         out=self.workdir / "emb.safetensors", show_progress=False,
                         config=EmbedConfig(calib_size=n, batch_size=64, device=str(self.device)))
        sync(self.device)
        self.add("embed: JPEG decode + resize + full forward (all images calibrated)", time.perf_counter() - start,
                 n, self.tokens, False)

        from vipamin_cli.embed import block0_tokens

        vit = self.backbone.model.to(self.device)
        px = self.backbone.img_size
        images = torch.randn(64, 3, px, px, device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

        def forward() -> None:
            with torch.inference_mode(), autocast:
                vit.blocks(block0_tokens(vit, images))

        reset_peak(self.device)
        self.add("embed: forward only (preprocessed batch of 64)", timed(forward, self.device), 64, self.tokens,
                 False)
        vit.to("cpu")
        return res.path

    # init -------------------------------------------------------------------------------------
    def init(self) -> None:
        from vipamin_cli.artifacts import load_artifact
        from vipamin_cli.embed import EmbedConfig, embed_data
        from vipamin_cli.inits import InitConfig, context_from_embeddings, run_init

        for count in self.s["init_images"]:
            sub = self.workdir / f"init{count}"
            if not sub.exists():
                make_jpegs(sub, count, self.s["image_px"])
            path = embed_data(self.s["backbone"], str(sub), weights=self.s["weights"], use_cache=False,
                              out=self.workdir / f"init{count}.safetensors", show_progress=False,
                              config=EmbedConfig(calib_size=count, device=str(self.device))).path
            art = load_artifact(path)
            ctx = context_from_embeddings(art, self.backbone.model, self.device)
            for label, cfg in (("VIPAMIN shallow P=100", InitConfig(method="vipamin")),
                               ("VIPAMIN deep P=20", InitConfig(method="vipamin", deep=True)),
                               ("SPT k-means shallow P=100", InitConfig(method="spt")),
                               ("SPT k-means deep P=20", InitConfig(method="spt", deep=True))):
                seconds = timed(lambda cfg=cfg, ctx=ctx: run_init(ctx, cfg), self.device, repeat=2)
                self.rows.append({"case": f"init: {label}, {count} cached images", "seconds": seconds,
                                  "peak_mem_mb": peak_memory_mb(self.device)})
                print(f"  init {label} ({count} images): {seconds:.3f} s", flush=True)

    # tune -------------------------------------------------------------------------------------
    def _train_tokens(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, self.tokens, self.dim, generator=gen).to(torch.bfloat16)
        y = torch.randint(0, 10, (n,), generator=gen)
        return x.to(self.device), y.to(self.device)

    def _models(self, arch: str, prompts: int, count: int = 1):
        from vipamin_cli.train import TuneConfig, build_model

        shape = (self.depth, prompts, self.dim) if arch == "vpt-deep" else (prompts, self.dim)
        init = torch.empty(shape).uniform_(-0.06, 0.06)
        grid = (self.backbone.grid[0], self.backbone.grid[1])
        cfgs = [TuneConfig(arch=arch, epochs=2, warmup_epochs=1, lr=0.1 * (i + 1), batch_size=32)
                for i in range(count)]
        return [build_model(self.backbone.model, init, 10, c, "cls", grid) for c in cfgs], cfgs

    def tune(self) -> dict[str, float]:
        from vipamin_cli.train import train_group

        steps, batch = self.s["steps"], 32
        train = self._train_tokens(steps * batch)
        out = {}
        for arch, prompts in (("vpt-shallow", 100), ("vpt-deep", 20), ("vapt", 10)):
            models, cfgs = self._models(arch, prompts)
            compile_blocks = self.device.type == "cuda"
            warm = (train[0][:batch], train[1][:batch])
            train_group(models, warm, None, cfgs, self.device, compile_blocks=compile_blocks)  # warm-up
            reset_peak(self.device)
            cfgs = [type(c)(**{**vars(c), "epochs": 1, "warmup_epochs": 0}) for c in cfgs]
            start = time.perf_counter()
            train_group(models, train, None, cfgs, self.device, compile_blocks=compile_blocks)
            sync(self.device)
            row = self.add(f"tune: {arch}, P={prompts}, batch {batch}", time.perf_counter() - start, steps * batch,
                           self.tokens + prompts, True)
            out[arch] = row["images_per_s"]
        return out

    def reference_loop(self) -> float:
        """The reference pipelines' way: fp32, eager, images decoded and transformed every step."""
        from torch.utils.data import DataLoader

        from vipamin_cli.data import TorchImages, make_transform, open_dataset

        models, cfgs = self._models("vpt-shallow", 100)
        model = models[0].to(self.device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        spec = self.backbone.spec
        transform = make_transform("vtab", self.backbone.img_size, spec.mean, spec.std, spec.interpolation)
        loader = DataLoader(TorchImages(open_dataset(str(self.data)), transform), batch_size=32, shuffle=True,
                            num_workers=min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0,
                            drop_last=True)
        steps = min(self.s["steps"], len(loader))
        model.train()

        def run(limit: int) -> int:
            seen = 0
            for i, (images, labels, _) in enumerate(loader):
                if i == limit:
                    break
                logits = model.forward_images(images.to(self.device))
                loss = torch.nn.functional.cross_entropy(logits, labels.to(self.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # the reference logs every step
                seen += len(labels)
            return seen

        run(2)
        reset_peak(self.device)
        start = time.perf_counter()
        seen = run(steps)
        sync(self.device)
        return self.add("reference-style loop: fp32 eager, decode + transform every step, P=100",
                        time.perf_counter() - start, seen, self.tokens + 100, True)["images_per_s"]

    def grid(self) -> None:
        from vipamin_cli.train import train_group

        count, n = self.s["grid_configs"], self.s["grid_images"]
        train = self._train_tokens(n)
        compile_blocks = self.device.type == "cuda"
        times = {}
        for label, groups in (("grid", [list(range(count))]), ("one by one", [[i] for i in range(count)])):
            models, cfgs = self._models("vpt-shallow", 100, count)
            cfgs = [type(c)(**{**vars(c), "epochs": 1, "warmup_epochs": 0}) for c in cfgs]
            warm = (train[0][:64], train[1][:64])
            train_group([models[g] for g in groups[0]], warm, None, [cfgs[g] for g in groups[0]], self.device,
                        compile_blocks=compile_blocks)
            reset_peak(self.device)
            start = time.perf_counter()
            for group in groups:
                train_group([models[g] for g in group], train, None, [cfgs[g] for g in group], self.device,
                            tolerate_divergence=True, compile_blocks=compile_blocks)
            sync(self.device)
            times[label] = time.perf_counter() - start
            self.add(f"sweep of {count} lrs, one epoch of {n} images: {label}", times[label], count * n,
                     self.tokens + 100, True)
        self.rows[-2]["speedup_vs_one_by_one"] = times["one by one"] / times["grid"]
        self.rows[-2]["epoch_seconds"] = times["grid"]
        print(f"  grid speed-up over one-by-one: {times['one by one'] / times['grid']:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="auto", choices=["auto", "small", "vit-b"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: embed,init,tune,reference,grid")
    parser.add_argument("--images", type=int, help="override the number of images (smoke tests)")
    parser.add_argument("--steps", type=int, help="override the timed training steps (smoke tests)")
    args = parser.parse_args(argv)
    os.environ.setdefault("VIPAMIN_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vipamin_cli.embed import resolve_device

    device = resolve_device(args.device)
    size = args.size if args.size != "auto" else ("vit-b" if device.type == "cuda" else "small")
    skip = set(filter(None, args.skip.split(",")))
    if args.images:
        SETTINGS[size].update(images=args.images, grid_images=args.images, init_images=(args.images,))
    if args.steps:
        SETTINGS[size]["steps"] = args.steps
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "size": size}
    print(f"vipamin bench: {size} on {machine['device']} ({device})", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(size, device, Path(tmp))
        if "embed" not in skip:
            bench.embed()
        if "init" not in skip:
            bench.init()
        tune_speed = bench.tune() if "tune" not in skip else {}
        if "reference" not in skip:
            ref = bench.reference_loop()
            if "vpt-shallow" in tune_speed:
                bench.rows[-1]["our_speedup"] = tune_speed["vpt-shallow"] / ref
                print(f"  our tune (vpt-shallow) vs reference-style loop: {tune_speed['vpt-shallow'] / ref:.1f}x")
        if "grid" not in skip:
            bench.grid()
    result = {"machine": machine, "seconds": time.perf_counter() - started, "rows": bench.rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    render(result)
    return 0


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    table = Table(title=f"vipamin bench ({m['size']}, {m['device']}, torch {m['torch']}, {result['seconds']:.0f} s)")
    for col in ("case", "images/s", "TFLOP/s", "seconds", "peak MiB", "note"):
        table.add_column(col, justify="left" if col in ("case", "note") else "right")
    for r in result["rows"]:
        note = ""
        if "our_speedup" in r:
            note = f"ours is {r['our_speedup']:.1f}x faster"
        if "speedup_vs_one_by_one" in r:
            note = f"{r['speedup_vs_one_by_one']:.2f}x faster than one by one"
        table.add_row(r["case"], f"{r['images_per_s']:,.1f}" if "images_per_s" in r else "-",
                      f"{r['tflops']:.3f}" if "tflops" in r else "-", f"{r['seconds']:.3f}",
                      f"{r['peak_mem_mb']:,.0f}", note)
    Console(width=160).print(table)


if __name__ == "__main__":
    raise SystemExit(main())
