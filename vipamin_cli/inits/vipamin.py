"""VIPAMIN (Park & Chung, NeurIPS 2025): embedding selection + subspace expansion.

Matching: each random query prompt's head-averaged key is compared (cosine) with the mean key of
every patch position; the prompt becomes the mean block input over its K best positions.
Orthogonal part: a fresh random token is mapped to value space, projected onto the orthogonal
complement of the span of the mean attention output, and mapped back. Mix with lambda.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import BlockInit, InitConfig, InitContext, uniform_prompts

ORTH_MODES = ("exact", "reference")


def head_mean_keys(block: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Keys of ``tokens`` (n, D) at ``block``: LayerNorm1, key projection, k_norm, mean over heads."""
    attn = block.attn
    qkv = attn.qkv(block.norm1(tokens)).reshape(tokens.shape[0], 3, attn.num_heads, attn.head_dim)
    return attn.k_norm(qkv[:, 1]).mean(1)


def value_projection(block: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_V, b_V) of a fused qkv layer, in float64."""
    attn = block.attn
    a = attn.num_heads * attn.head_dim
    weight = attn.qkv.weight[2 * a: 3 * a].double()
    bias = attn.qkv.bias[2 * a: 3 * a].double() if attn.qkv.bias is not None else torch.zeros(a, dtype=torch.float64)
    return weight, bias


def complement_basis(attn_out: torch.Tensor, energy: float, rank: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Orthonormal basis (D, r) of the span of the mean attention output's rows.

    The full numerical rank is used (as the method prescribes) unless that span fills the whole
    space (then the complement would be empty) or ``rank`` is forced: then the top singular
    vectors holding ``energy`` of the squared spectrum (or exactly ``rank`` of them) are used.
    """
    o = attn_out.double()
    _, s, vh = torch.linalg.svd(o, full_matrices=False)
    dim = o.shape[1]
    tol = s[0] * max(o.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
    full_rank = int((s > tol).sum())
    info: dict[str, Any] = {"span_rank": full_rank, "dim": dim}
    if rank is not None:
        used = min(rank, full_rank)
        truncated = used < full_rank
    elif full_rank >= dim:
        cum = torch.cumsum(s**2, 0) / (s**2).sum()
        used, truncated = int((cum < energy).sum()) + 1, True
        used = min(used, dim - 1)
    else:
        used, truncated = full_rank, False
    info.update(rank_used=used, truncated=truncated, forced_rank=rank,
                energy=energy if truncated and rank is None else None)
    return vh[:used].T.contiguous(), info


def solve_value_map(w_v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """x with x W_V^T = target: one LU solve when W_V is square and the solve is accurate (far
    cheaper than an SVD per block), else the pseudo-inverse (least squares, minimum norm)."""
    if w_v.shape[0] == w_v.shape[1]:
        x, info = torch.linalg.solve_ex(w_v, target.T)
        x = x.T
        if int(info) == 0 and bool(torch.isfinite(x).all()):
            residual = (x @ w_v.T - target).norm() / target.norm().clamp_min(1e-300)
            if float(residual) < 1e-9:
                return x
    return target @ torch.linalg.pinv(w_v.T)


class VipaminInit:
    name: ClassVar[str] = "vipamin"

    def validate(self, config: InitConfig, ctx: InitContext) -> None:
        n = ctx.num_patches
        if not 1 <= config.k <= n:
            raise InputError(f"--k {config.k} is out of range: the backbone has {n} patch positions",
                             f"choose 1 <= K <= {n}")
        if not 0.0 <= config.lam <= 1.0:
            raise InputError(f"--lambda {config.lam} is outside [0, 1]", "choose lambda in [0, 1] (default 0.5)")
        if config.orth not in ORTH_MODES:
            raise InputError(f"unknown --orth '{config.orth}'", f"use one of {', '.join(ORTH_MODES)}")
        if not 0.0 < config.orth_energy <= 1.0:
            raise InputError(f"--orth-energy {config.orth_energy} is outside (0, 1]", "use e.g. 0.99")
        if config.orth_rank is not None and not 0 <= config.orth_rank < ctx.dim:
            raise InputError(f"--orth-rank {config.orth_rank} is out of range", f"choose 0 <= r < {ctx.dim}")
        if "calib.key_mean" not in ctx.stats:
            raise InputError("the embeddings hold no calibration statistics", "re-run `vipamin embed`")

    def init_block(self, ctx: InitContext, block: int, config: InitConfig,
                   generator: torch.Generator) -> BlockInit:
        blk = ctx.vit.blocks[block]
        npf, p = ctx.num_prefix, config.num_prompts
        x_mean = ctx.stats["calib.block_input_mean"][block].float()  # (T, D)
        patch_keys = ctx.stats["calib.key_mean"][block, npf:].float()  # (N, dh)

        # A. matching ("embedding selection")
        query = uniform_prompts(p, ctx.dim, ctx.patch, generator)
        with torch.no_grad():
            query_keys = head_mean_keys(blk, query)
        sim = F.normalize(query_keys, dim=-1) @ F.normalize(patch_keys, dim=-1).T  # (P, N)
        top_sim, index = torch.topk(sim, config.k, dim=-1)
        match = x_mean[npf + index].mean(1)  # (P, D)

        # B. orthogonal component ("subspace expansion")
        basis, info = complement_basis(ctx.stats["calib.attn_out_mean"][block], config.orth_energy,
                                       config.orth_rank)
        fresh = uniform_prompts(p, ctx.dim, ctx.patch, generator)
        w_v, b_v = value_projection(blk)
        value = fresh.double() @ w_v.T + b_v
        value_perp = value - (value @ basis) @ basis.T
        if config.orth == "exact":  # solve x W_V^T + b_V = v_perp
            orth = solve_value_map(w_v, value_perp - b_v)
        else:  # the reference code's formula, kept for reproduction
            orth = (value_perp - b_v) @ torch.linalg.pinv(w_v)
        # How much of each value vector still lies in the pretrained span (0 = fully orthogonal).
        orth_value = orth @ w_v.T + b_v
        info["orth_in_span"] = float(((orth_value @ basis).norm(dim=1) / orth_value.norm(dim=1)).mean())
        info["random_in_span"] = float(((value @ basis).norm(dim=1) / value.norm(dim=1)).mean())
        orth = orth.float()
        prompts = (1.0 - config.lam) * match + config.lam * orth
        extras = {"query_prompts": query, "match_index": index, "match_similarity": top_sim,
                  "match_part": match, "orth_random": fresh, "orth_part": orth}
        return BlockInit(prompts=prompts, extras=extras, info=info)
