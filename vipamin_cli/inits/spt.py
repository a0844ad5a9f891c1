"""SPT (Wang et al., ICML 2024): prompts as prototypes of the downstream data's own tokens.

Sample types: ``random`` draws P real tokens; ``mean``/``max`` summarise consecutive windows of
each image's token sequence and draw P of the summaries; ``kmeans`` takes P k-means centres of
(a seeded sample of) the tokens, computed batched on the device with greedy k-means++ seeding.
"""

from __future__ import annotations

import math
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


def reference_window_bounds(num_tokens: int, num_prompts: int) -> list[tuple[int, int]]:
    """The official SPT code's windows: w = N div (P-1); P-1 windows of w tokens, then a P-th window
    holding the last N mod w tokens, or the whole sequence when N mod w = 0 (so tokens between the
    (P-1)-th window and the last N mod w are in no window but the last). Always P windows."""
    if num_prompts < 2 or num_tokens < num_prompts - 1:
        raise InputError(f"--spt-windows reference needs 2 <= P <= N + 1 (P = {num_prompts} prompts, "
                         f"N = {num_tokens} patch tokens)",
                         f"use --prompt-length between 2 and {num_tokens + 1}, or --spt-windows ours")
    width = num_tokens // (num_prompts - 1)
    bounds = [(i * width, (i + 1) * width) for i in range(num_prompts - 1)]
    rest = num_tokens % width
    bounds.append((num_tokens - rest, num_tokens) if rest else (0, num_tokens))
    return bounds


def window_summaries(tokens: torch.Tensor, bounds: list[tuple[int, int]], how: str) -> torch.Tensor:
    """(images, windows, D): mean or max of each window of each image's tokens."""
    parts = []
    for lo, hi in bounds:
        chunk = tokens[:, lo:hi].float()
        parts.append(chunk.mean(1) if how == "mean" else chunk.amax(1))
    return torch.stack(parts, dim=1)


def kmeans(tokens: torch.Tensor, k: int, seed: int, iters: int = 100, restarts: int = 1,
           candidates: int | None = None, device: torch.device | str | None = None, tol: float = 1e-6,
           seed_pool: int | None = None) -> tuple[torch.Tensor, float]:
    """Seeded k-means of ``tokens`` (n, D): greedy k-means++ seeding, then Lloyd steps; returns
    (centres (k, D) float32 on ``device``, inertia = the sum of squared distances to the nearest centre).

    Greedy k-means++ (as scikit-learn) draws ``candidates`` points per centre (default 2 + ln k)
    with probability proportional to the squared distance to the nearest centre so far and keeps
    the one that lowers the potential most; plain k-means++ (one candidate) gets stuck on clustered
    data. Seeding runs on a seeded subsample of ``seed_pool`` points (default max(64 k, 8192)), Lloyd
    steps on every point; they stop when assignments no longer change or the largest centre move
    falls below ``tol`` times the mean squared norm of the points. ``restarts`` independent runs
    keep the lowest inertia. Distances are batched matrix products, so it runs on the GPU when
    ``device`` (default: the tokens' device) is one. Empty clusters are re-seeded with the farthest points.
    """
    if k < 1 or k > tokens.shape[0]:
        raise InputError(f"k-means needs 1 <= k <= {tokens.shape[0]} points, got k = {k}",
                         "embed more images or lower --prompt-length")
    if restarts < 1:
        raise InputError(f"--kmeans-restarts {restarts} must be at least 1", "pass e.g. --kmeans-restarts 3")
    x = tokens.to(device if device is not None else tokens.device).float()
    sq = (x * x).sum(1)
    gen = torch.Generator().manual_seed(seed)
    trials = candidates if candidates is not None else 2 + int(math.log(k))
    pool_size = seed_pool if seed_pool is not None else max(64 * k, 8192)
    best: tuple[torch.Tensor, float] | None = None
    for _ in range(restarts):
        centres = _greedy_plus_plus(x, sq, k, trials, pool_size, gen)
        centres, inertia = _lloyd(x, sq, centres, iters, tol)
        if best is None or inertia < best[1]:
            best = (centres, inertia)
    assert best is not None
    return best


def _greedy_plus_plus(x: torch.Tensor, sq: torch.Tensor, k: int, trials: int, pool_size: int,
                      gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    pool = torch.randperm(n, generator=gen)[:pool_size].to(x.device) if n > pool_size else \
        torch.arange(n, device=x.device)
    xs, sqs = x[pool], sq[pool]
    first = int(torch.randint(len(pool), (1,), generator=gen))
    picks = [first]
    closest = (sqs - 2 * xs @ xs[first] + sqs[first]).clamp_min(0)
    for _ in range(1, k):
        weights = closest.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # every point already is a centre: any pick will do
            cand = torch.randint(len(pool), (trials,), generator=gen)
        else:
            cand = torch.multinomial(weights / total, trials, replacement=True, generator=gen)
        cand_dev = cand.to(x.device)
        dist = (sqs[None, :] - 2 * xs[cand_dev] @ xs.T + sqs[cand_dev][:, None]).clamp_min(0)  # (trials, pool)
        updated = torch.minimum(closest[None, :], dist)
        best = int(updated.double().sum(1).argmin())
        picks.append(int(cand[best]))
        closest = updated[best]
    return xs[torch.tensor(picks, device=x.device)].clone()


def _lloyd(x: torch.Tensor, sq: torch.Tensor, c: torch.Tensor, iters: int,
           tol: float) -> tuple[torch.Tensor, float]:
    k = c.shape[0]
    assign = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
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
    dist = torch.addmm((c * c).sum(1)[None, :], x, c.T, alpha=-2.0)
    inertia = float((dist.min(1).values + sq).clamp_min(0).double().sum())
    return c, inertia


def nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centre."""
    c = centres.to(x.device).float()
    return torch.addmm((c * c).sum(1)[None, :], x.float(), c.T, alpha=-2.0).argmin(1)


class SptInit:
    name: ClassVar[str] = "spt"

    def validate(self, config: InitConfig, ctx: InitContext) -> None:
        if config.sample not in SAMPLES:
            raise InputError(f"unknown --sample '{config.sample}'", f"use one of {', '.join(SAMPLES)}")
        if config.sample in ("mean", "max") and config.spt_windows == "reference":
            reference_window_bounds(ctx.num_patches, config.num_prompts)  # refuses N < P - 1 now
        if config.deep and "calib.token_sample" not in ctx.stats:
            raise InputError("the embeddings hold no per-block token sample for deep SPT",
                             "re-run `vipamin embed` with --sample-images > 0")
        if config.kmeans_restarts < 1:
            raise InputError(f"--kmeans-restarts {config.kmeans_restarts} must be at least 1",
                             "pass e.g. --kmeans-restarts 3")
        if config.kmeans_candidates is not None and config.kmeans_candidates < 1:
            raise InputError(f"kmeans_candidates {config.kmeans_candidates} must be at least 1",
                             "leave it unset (2 + ln k)")
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
            bounds = reference_window_bounds(n, p) if config.spt_windows == "reference" else window_bounds(n, p)
            cands = window_summaries(tokens, bounds, config.sample)  # (images, W, D)
            total = cands.shape[0] * cands.shape[1]
            flat = torch.randperm(total, generator=generator)[:p] if total >= p else torch.randint(
                total, (p,), generator=generator)
            ids = torch.stack([flat // cands.shape[1], flat % cands.shape[1]], dim=1)
            prompts = cands[ids[:, 0], ids[:, 1]]
            return BlockInit(prompts=prompts, extras={"candidate_index": ids},
                             info={"windows": [list(b) for b in bounds], "candidates": total,
                                   "windows_rule": config.spt_windows})
        flat_tokens = tokens.reshape(-1, dim)
        if flat_tokens.shape[0] < p:
            raise InputError(f"only {flat_tokens.shape[0]} tokens are cached for block {block}, fewer than the "
                             f"{p} k-means centres", "embed more images or lower --prompt-length")
        if flat_tokens.shape[0] > config.token_budget:
            keep = torch.randperm(flat_tokens.shape[0], generator=generator)[: config.token_budget]
            flat_tokens = flat_tokens[keep]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        x = flat_tokens.to(ctx.device)
        centres, inertia = kmeans(x, p, seed, iters=config.kmeans_iters, restarts=config.kmeans_restarts,
                                  candidates=config.kmeans_candidates)
        sizes = torch.bincount(nearest_centre(x, centres), minlength=p)
        return BlockInit(prompts=centres.float().cpu(), extras={"cluster_sizes": sizes.cpu()},
                         info={"kmeans_tokens": int(flat_tokens.shape[0]), "kmeans_inertia": inertia,
                               "kmeans_restarts": config.kmeans_restarts,
                               "kmeans_candidates": config.kmeans_candidates or 2 + int(math.log(p))})
