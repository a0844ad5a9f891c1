"""Memory of full fine-tuning (`tune --arch full`) against prompt tuning, measured tensor by tensor.

Run: ``python -m bench.full_memory [--backbone mae-vit-tiny-mnist] [--weights W] [--batch 32]
[--prompts 10] [--device auto] [--epoch-images 800 --threads 1] [--out full-memory.json]``.

For one training step on random block-0 tokens it counts, in bytes: the model's own copy of the
backbone (full fine-tuning copies it), the gradients, the optimiser state after one step (SGD with
momentum and AdamW, each measured), and the activations autograd keeps for the backward pass
(every saved tensor's storage once, parameters excluded, via ``torch.autograd.graph.saved_tensors_hooks``),
in fp32 and under bf16 autocast. The same is measured for shallow prompt tuning (frozen backbone),
so the table shows what full fine-tuning adds. On CUDA the peak allocated memory of the step is
reported too; on CPU the process's peak RSS (which includes Python and torch themselves).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _storages(tensors: list[torch.Tensor]) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def saved_activation_bytes(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of one step (parameters excluded)."""
    params = _storages([p for p in model.parameters()])
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = nn.functional.cross_entropy(model(tokens).float(), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def optimizer_state_bytes(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor,
                          optimizer: str) -> dict[str, int]:
    """Gradient and optimiser-state bytes after one real step of ``optimizer``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=1e-6, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=1e-6))
    nn.functional.cross_entropy(model(tokens), labels).backward()
    grads = sum(p.grad.nbytes for p in params if p.grad is not None)
    opt.step()
    state = sum(v.nbytes for st in opt.state.values() for v in st.values()
                if torch.is_tensor(v) and v.dim() > 0)  # AdamW's scalar step counters excluded
    model.zero_grad(set_to_none=True)
    return {"gradients": grads, "optimizer_state": state}


def measure(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Every figure for one model (its parameters are restored from a copy between the two optimisers)."""
    device = tokens.device
    trained = [p for p in model.parameters() if p.requires_grad]
    start = {id(p): p.detach().clone() for p in trained}
    out: dict[str, Any] = {"trained_parameters": sum(p.numel() for p in trained),
                           "model_bytes": sum(p.nbytes for p in model.parameters())}
    model.train()
    half = max(1, tokens.shape[0] // 2)
    for autocast in (False, True):
        key = "activations_bf16" if autocast else "activations_fp32"
        whole = saved_activation_bytes(model, tokens, labels, autocast)
        part = saved_activation_bytes(model, tokens[:half], labels[:half], autocast)
        # the slope over the batch is the per-image share; the rest is per step (autocast's bf16 weight copies)
        per_image = (whole - part) / (tokens.shape[0] - half) if tokens.shape[0] > half else whole
        out[key] = {"batch": whole, "per_image": per_image, "per_step": whole - per_image * tokens.shape[0]}
    for name in ("sgd", "adamw"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out[name] = optimizer_state_bytes(model, tokens, labels, name)
        out[name]["step_seconds"] = time.perf_counter() - t0
        if device.type == "cuda":
            out[name]["peak_allocated"] = torch.cuda.max_memory_allocated(device)
        with torch.no_grad():
            for p in trained:
                p.copy_(start[id(p)])
    return out


def epoch_cpu_seconds(model: nn.Module, images: int, batch: int, device: torch.device) -> dict[str, float]:
    """CPU and wall seconds of one training epoch over ``images`` random block-0 tokens (tune's loop)."""
    from vipamin_cli.train import TuneConfig, train_group

    g = torch.Generator().manual_seed(1)
    x = torch.randn(images, model.vit.patch_embed.num_patches + model.vit.num_prefix_tokens, model.dim, generator=g)
    y = torch.randint(10, (images,), generator=g)
    arch = "full" if all(p.requires_grad for p in model.vit.blocks.parameters()) else "vpt-shallow"
    cfg = TuneConfig(arch=arch, epochs=1, warmup_epochs=0, batch_size=batch, lr=1e-4)
    cpu, wall = time.process_time(), time.perf_counter()
    train_group([model], (x, y), None, [cfg], device)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "images": images}


def run(backbone: str, weights: str | None, batch: int, prompts: int, device: str,
        epoch_images: int = 0) -> dict[str, Any]:
    from vipamin_cli.backbones import load_backbone
    from vipamin_cli.embed import resolve_device
    from vipamin_cli.full import FullViT
    from vipamin_cli.prompted import PromptedViT

    dev = resolve_device(device)
    bb = load_backbone(backbone, weights=weights)
    vit = bb.model
    pool = bb.spec.pool
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, vit.patch_embed.num_patches + vit.num_prefix_tokens, vit.embed_dim, generator=g).to(dev)
    labels = torch.randint(10, (batch,), generator=g).to(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result: dict[str, Any] = {"backbone": backbone, "weights": weights, "device": str(dev), "batch": batch,
                              "tokens": int(tokens.shape[1]), "torch": torch.__version__,
                              "backbone_parameters": sum(p.numel() for p in vit.parameters())}
    full = FullViT(vit, pool=pool, num_classes=10).to(dev)
    result["full"] = measure(full, tokens, labels)
    if epoch_images:
        result["full"]["epoch"] = epoch_cpu_seconds(full, epoch_images, batch, dev)
    del full
    prompted = PromptedViT(vit, torch.zeros(prompts, vit.embed_dim), pool=pool, num_classes=10).to(dev)
    result["prompt"] = measure(prompted, tokens, labels) | {"prompts": prompts}
    if epoch_images:
        result["prompt"]["epoch"] = epoch_cpu_seconds(prompted, epoch_images, batch, dev)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["rss_before_models"] = rss_before
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def render(r: dict[str, Any]) -> str:
    lines = [f"{r['backbone']} ({r['backbone_parameters']:,} parameters), batch {r['batch']}, {r['tokens']} tokens, "
             f"{r['device']}, torch {r['torch']}", "",
             "| MiB | full fine-tuning | prompt tuning |", "|---|---:|---:|"]
    f, p = r["full"], r["prompt"]
    rows = [("trained parameters (count)", f"{f['trained_parameters']:,}", f"{p['trained_parameters']:,}"),
            ("model weights (full: its own copy)", _mib(f["model_bytes"]), "0 (shares the backbone)"),
            ("gradients", _mib(f["adamw"]["gradients"]), _mib(p["adamw"]["gradients"])),
            ("SGD momentum", _mib(f["sgd"]["optimizer_state"]), _mib(p["sgd"]["optimizer_state"])),
            ("AdamW moments", _mib(f["adamw"]["optimizer_state"]), _mib(p["adamw"]["optimizer_state"])),
            ("activations kept for backward, fp32, whole batch", _mib(f["activations_fp32"]["batch"]),
             _mib(p["activations_fp32"]["batch"])),
            ("  of which per image", _mib(f["activations_fp32"]["per_image"]),
             _mib(p["activations_fp32"]["per_image"])),
            ("activations kept for backward, bf16 autocast, whole batch", _mib(f["activations_bf16"]["batch"]),
             _mib(p["activations_bf16"]["batch"])),
            ("  of which per image", _mib(f["activations_bf16"]["per_image"]),
             _mib(p["activations_bf16"]["per_image"])),
            ("  of which per step (bf16 copies of the weights)", _mib(f["activations_bf16"]["per_step"]),
             _mib(p["activations_bf16"]["per_step"]))]
    if "epoch" in f:
        rows.append((f"one epoch of {f['epoch']['images']} images: CPU seconds (wall)",
                     f"{f['epoch']['cpu_s']:.2f} ({f['epoch']['wall_s']:.2f})",
                     f"{p['epoch']['cpu_s']:.2f} ({p['epoch']['wall_s']:.2f})"))
    if "peak_allocated" in f["adamw"]:
        rows.append(("peak allocated, AdamW step (CUDA)", _mib(f["adamw"]["peak_allocated"]),
                     _mib(p["adamw"]["peak_allocated"])))
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"process peak RSS: {_mib(r['peak_rss'])} MiB (before the models: {_mib(r['rss_before_models'])})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mae-vit-tiny-mnist")
    ap.add_argument("--weights", default=None, help="e.g. random (seeded weights, for ViT-B sizes)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epoch-images", type=int, default=0, help="also time one epoch over N images (0: no)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time close to idle wall time)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.backbone, args.weights, args.batch, args.prompts, args.device, args.epoch_images)
    print(render(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
