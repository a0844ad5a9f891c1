"""SPT (Wang et al., ICML 2024): prompts as prototypes of the downstream data's own tokens.

Sample types: ``random`` draws P real tokens; ``mean``/``max`` summarise consecutive windows of
each image's token sequence and draw P of the summaries; ``kmeans`` takes P k-means centres of
(a seeded sample of) the tokens, computed batched on the device with k-means++ seeding.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import InputError
from .base import BlockInit, InitConfig, InitContext

SAMPLES = ("random", "mean", "max", "kmeans")


def window_bounds(num_tokens: int, num_prompts: int) -> list[tuple[int, int]]:
    """P-1 equal consecutive windows plus one holding the remainder (SPT's mean/max pooling)."""
    if num_prompts <= 1:
        return [(0, num_tokens)]
    width = max(1, num_tokens // (num_prompts - 1))
    bounds = [(i * width, (i + 1) * width) for i in range(num_prompts - 1) if (i + 1) * width <= num_tokens]
    start = bounds[-1][1] if bounds else 0
    if start < num_tokens:
        bounds.append((start, num_tokens))
    return bounds


def window_summaries(tokens: torch.Tensor, bounds: list[tuple[int, int]], how: str) -> torch.Tensor:
    """(images, windows, D): mean or max of each window of each image's tokens."""
    parts = []
    for lo, hi in bounds:
        chunk = tokens[:, lo:hi].float()
        parts.append(chunk.mean(1) if how == "mean" else chunk.amax(1))
    return torch.stack(parts, dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator,
           tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded k-means (k-means++ seeding, then Lloyd steps) on ``x`` (n, D); returns (centres, sizes).

    Seeding runs on a seeded subsample of max(64 k, 8192) points; Lloyd steps use every point and
    stop when assignments no longer change or the largest centre move falls below ``tol`` times the
    mean squared norm of the points.

    All distance computations are batched matrix products, so it runs on the GPU when ``x`` is
    there. Empty clusters are re-seeded with the point farthest from its centre.
    """
    n = x.shape[0]
    x = x.float()
    sq = (x * x).sum(1)
    # k-means++ seeding is sequential (k passes over the points): run it on a seeded subsample.
    pool = torch.randperm(n, generator=generator)[: max(64 * k, 8192)].to(x.device) if n > max(64 * k, 8192) \
        else torch.arange(n, device=x.device)
    xs, sqs = x[pool], sq[pool]
    first = int(torch.randint(len(pool), (1,), generator=generator))
    centres = [xs[first]]
    closest = (sqs - 2 * xs @ xs[first] + sqs[first]).clamp_min(0)
    for _ in range(1, k):
        weights = closest.cpu().double()
        if float(weights.sum()) <= 0:
            pick = int(torch.randint(len(pool), (1,), generator=generator))
        else:
            pick = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        centres.append(xs[pick])
        closest = torch.minimum(closest, (sqs - 2 * xs @ xs[pick] + sqs[pick]).clamp_min(0))
    c = torch.stack(centres)
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    scale = float(sq.mean()) or 1.0
    for _ in range(iters):
        dist = torch.addmm((c * c).sum(1)[None, :], x, c.T, alpha=-2.0)  # ||c||^2 - 2 x.c (||x||^2 is constant)
        new_assign = dist.argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        moved = sums / counts.clamp_min(1)[:, None]
        if bool(empty.any()):
            far = (dist.gather(1, assign[:, None]).squeeze(1) + sq).topk(int(empty.sum())).indices
            moved[empty] = x[far]
        shift = float(((moved - c) ** 2).sum(1).max())
        c = moved
        if shift < tol * scale:  # centres have settled (relative to the data's scale)
            break
    final = torch.addmm((c * c).sum(1)[None, :], x, c.T, alpha=-2.0).argmin(1)
    sizes = torch.bincount(final, minlength=k)
    return c, sizes


class SptInit:
    name: ClassVar[str] = "spt"

    def validate(self, config: InitConfig, ctx: InitContext) -> None:
        if config.sample not in SAMPLES:
            raise InputError(f"unknown --sample '{config.sample}'", f"use one of {', '.join(SAMPLES)}")
        if config.deep and "calib.token_sample" not in ctx.stats:
            raise InputError("the embeddings hold no per-block token sample for deep SPT",
                             "re-run `vipamin embed` with --sample-images > 0")
        if config.sample == "kmeans" and config.token_budget < config.num_prompts:
            raise InputError(f"--token-budget {config.token_budget} is smaller than the prompt length",
                             "raise --token-budget")

    def init_block(self, ctx: InitContext, block: int, config: InitConfig,
                   generator: torch.Generator) -> BlockInit:
        tokens = ctx.patch_tokens(block)  # (images, N, D)
        images, n, dim = tokens.shape
        p = config.num_prompts
        if config.sample == "random":
            flat = torch.randperm(images * n, generator=generator)[:p] if images * n >= p else torch.randint(
                images * n, (p,), generator=generator)
            ids = torch.stack([flat // n, flat % n], dim=1)
            prompts = tokens[ids[:, 0], ids[:, 1]].float()
            return BlockInit(prompts=prompts, extras={"token_index": ids}, info={"pool_size": images * n})
        if config.sample in ("mean", "max"):
            bounds = window_bounds(n, p)
            cands = window_summaries(tokens, bounds, config.sample)  # (images, W, D)
            total = cands.shape[0] * cands.shape[1]
            flat = torch.randperm(total, generator=generator)[:p] if total >= p else torch.randint(
                total, (p,), generator=generator)
            ids = torch.stack([flat // cands.shape[1], flat % cands.shape[1]], dim=1)
            prompts = cands[ids[:, 0], ids[:, 1]]
            return BlockInit(prompts=prompts, extras={"candidate_index": ids},
                             info={"windows": [list(b) for b in bounds], "candidates": total})
        flat_tokens = tokens.reshape(-1, dim)
        if flat_tokens.shape[0] < p:
            raise InputError(f"only {flat_tokens.shape[0]} tokens are cached for block {block}, fewer than the "
                             f"{p} k-means centres", "embed more images or lower --prompt-length")
        if flat_tokens.shape[0] > config.token_budget:
            keep = torch.randperm(flat_tokens.shape[0], generator=generator)[: config.token_budget]
            flat_tokens = flat_tokens[keep]
        centres, sizes = kmeans(flat_tokens.to(ctx.device), p, config.kmeans_iters, generator)
        return BlockInit(prompts=centres.float().cpu(), extras={"cluster_sizes": sizes.cpu()},
                         info={"kmeans_tokens": int(flat_tokens.shape[0])})
