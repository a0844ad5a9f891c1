"""VIPAMIN (Park & Chung, NeurIPS 2025): embedding selection + subspace expansion.

Matching: each random query prompt's head-averaged key is compared (cosine) with the mean key of
every patch position; the prompt becomes the mean block input over its K best positions.
Orthogonal part: a fresh random token is mapped to value space, projected onto the orthogonal
complement of the span of the mean attention output, and mapped back. Mix with lambda.

Three forms of the orthogonal part (``--orth``): ``reference`` is the authors' formula (pinv(W_V),
LayerNorm ignored), ``exact`` solves x W_V^T + b_V = v_perp (linear, LayerNorm ignored), and
``exact-ln`` builds a token z whose value vector LN1(z) W_V^T + b_V, as block 0 really computes
it, lies in the complement: LN1 of a zero-mean token z with variance s^2 is gamma * u + beta with
u = z / sqrt(s^2 + eps), so u must satisfy the affine constraints Q^T (W_V (gamma * u + beta) + b_V)
= 0 and sum(u) = 0 and have the norm sqrt(D s^2 / (s^2 + eps)); the minimum-norm solution plus
the fresh random token's component in the constraints' null space, scaled to that norm, is one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import BlockInit, InitConfig, InitContext, uniform_prompts

ORTH_MODES = ("exact", "exact-ln", "reference")
ORTH_SCALES = ("none", "match")
RCOND_CHOICES = "none | reference | a number in (0, 1)"
SPAN_TOL_CHOICES = "stable | float64 | a number in (0, 1)"
# The rank rule of the attention-output span (docs/methods.md section 3, "the span's rank"). The statistics
# are float32 means: two CPUs' kernels give them 2e-7 relative apart, and we allow five times that.
STAT_PRECISION = 1e-6
# A span direction of singular value s tilts by about noise / s under that noise; keeping only directions
# with s >= STAT_PRECISION / SPAN_TILT of the largest bounds the tilt of the kept span by SPAN_TILT.
SPAN_TILT = 1e-4
STABLE_SPAN_RTOL = 1e-2  # = STAT_PRECISION / SPAN_TILT


def resolve_rcond(rcond: str | float | None, dim: int) -> float | None:
    """The relative singular-value cutoff of the map back to token space.

    ``none`` keeps every direction (float64 pseudo-inverse, or one LU solve); ``reference`` is
    the cutoff of the authors' float32 ``pinv``: max(D, D) * float32 eps (about 1e-4 at D = 768).
    """
    if rcond is None or str(rcond).lower() == "none":
        return None
    if str(rcond).lower() == "reference":
        return dim * float(torch.finfo(torch.float32).eps)
    from ..parsing import float_or_none  # strict: '1_0e-3' or ' 0.1' is not a cutoff

    value = float(rcond) if isinstance(rcond, (int, float)) and not isinstance(rcond, bool) else float_or_none(rcond)
    if value is None or not 0.0 < value < 1.0:
        raise InputError(f"--orth-rcond '{rcond}' is not valid", f"use {RCOND_CHOICES}")
    return value


def resolve_span_tol(tol: str | float | None, shape: tuple[int, ...] | None = None) -> float:
    """The relative singular-value tolerance of the span's rank (a direction is kept when s > tol * s_max).

    ``stable`` (default) is STAT_PRECISION / SPAN_TILT = 1e-2: only directions that float32 statistics
    determine to 1e-4 are kept. ``float64`` is the rule before it, the full float64 numerical rank
    (max(m, n) * float64 eps), which keeps directions at the float32 noise floor; ``shape`` (m, n)
    gives its max(m, n) (default: 1).
    """
    text = str("stable" if tol is None else tol).lower()
    if text == "stable":
        return STABLE_SPAN_RTOL
    if text == "float64":
        return max(shape or (1,)) * float(torch.finfo(torch.float64).eps)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise InputError(f"--orth-span-tol '{tol}' is not valid", f"use {SPAN_TOL_CHOICES}")
    return value


def layer_norm_params(norm: torch.nn.Module, dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(gamma, beta, eps) of a block's LayerNorm in float64 (identity affine when it has none)."""
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    gamma = weight.double() if weight is not None else torch.ones(dim, dtype=torch.float64)
    beta = bias.double() if bias is not None else torch.zeros(dim, dtype=torch.float64)
    return gamma, beta, float(getattr(norm, "eps", 1e-6))


def values_through_ln(block: torch.nn.Module, tokens: torch.Tensor,
                      value_map: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Block-0 value vectors of ``tokens`` as the block computes them: LN1(x) W_V^T + b_V (float64)."""
    dim = tokens.shape[-1]
    gamma, beta, eps = layer_norm_params(block.norm1, dim)
    w_v, b_v = value_map if value_map is not None else value_projection(block)
    return F.layer_norm(tokens.double(), (dim,), gamma, beta, eps) @ w_v.T + b_v


def span_share(values: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean share of each value vector's norm inside the span of ``basis`` (0 = fully orthogonal)."""
    return float(((values @ basis).norm(dim=1) / values.norm(dim=1).clamp_min(1e-300)).mean())


def ln_orthogonal_tokens(fresh: torch.Tensor, block: torch.nn.Module, basis: torch.Tensor,
                         rcond: float | None,
                         value_map: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """Tokens z (P, D) whose values LN1(z) W_V^T + b_V lie in the complement of ``basis``; each keeps
    its random token's variance. None when no such token exists for this basis."""
    dim = fresh.shape[1]
    gamma, beta, eps = layer_norm_params(block.norm1, dim)
    w_v, b_v = value_map if value_map is not None else value_projection(block)
    lhs = torch.cat([(basis.T @ w_v) * gamma[None, :], torch.ones(1, dim, dtype=torch.float64) / dim**0.5])
    rhs = torch.cat([-(basis.T @ (w_v @ beta + b_v)), torch.zeros(1, dtype=torch.float64)])
    lhs_pinv = torch.linalg.pinv(lhs, rtol=rcond) if rcond is not None else torch.linalg.pinv(lhs)
    base = lhs_pinv @ rhs  # minimum-norm u: lies in the constraints' row space
    null = torch.eye(dim, dtype=torch.float64) - lhs_pinv @ lhs
    r = fresh.double()
    var = r.var(dim=1, unbiased=False)
    free = (r - r.mean(1, keepdim=True)) @ null  # null is symmetric
    room = dim * var / (var + eps) - base.dot(base)
    free_norm = free.norm(dim=1)
    if bool((room <= 0).any()) or bool((free_norm <= 1e-12 * r.norm(dim=1).clamp_min(1e-300)).any()):
        return None
    u = base[None, :] + free * (room.sqrt() / free_norm)[:, None]
    return u * (var + eps).sqrt()[:, None]


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


def complement_basis(attn_out: torch.Tensor, energy: float, rank: int | None,
                     reserve: int = 0, span_tol: str | float | None = "stable") -> tuple[torch.Tensor, dict[str, Any]]:
    """Orthonormal basis (D, r) of the span of the mean attention output's rows.

    The rank is the numerical rank at ``span_tol`` (``resolve_span_tol``: by default the directions the
    float32 statistics determine to 1e-4, so that the same init on two CPUs agrees to 1e-4) unless
    that span fills the whole space (then the complement would be empty) or ``rank`` is forced: then
    the top singular vectors holding ``energy`` of the squared spectrum (or exactly ``rank`` of them)
    are used. ``reserve`` extra dimensions must stay free (``exact-ln`` adds the zero-mean constraint).
    """
    o = attn_out.double()
    _, s, vh = torch.linalg.svd(o, full_matrices=False)
    dim = o.shape[1]
    rtol = resolve_span_tol(span_tol, tuple(o.shape))
    top = float(s[0]) if s.numel() else 0.0
    full_rank = int((s > top * rtol).sum())
    info: dict[str, Any] = {"span_rank": full_rank, "dim": dim, "span_tol": rtol,
                            "span_rank_float64": int((s > top * resolve_span_tol("float64", tuple(o.shape))).sum())}
    if rank is not None:
        used = min(rank, full_rank)
        truncated = used < full_rank
    elif full_rank + reserve >= dim:
        cum = torch.cumsum(s**2, 0) / (s**2).sum()
        used, truncated = int((cum < energy).sum()) + 1, True
        used = min(used, dim - 1 - reserve)
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


def check_choices(lam: float | None = None, orth: str | None = None, orth_scale: str | None = None,
                  orth_span_tol: str | None = None) -> None:
    """The given ones of lambda's range, the orthogonal mode and scale names and the span tolerance (no
    backbone needed: the benchmark checks its init grid with this before any cell runs)."""
    if orth_span_tol is not None:
        resolve_span_tol(orth_span_tol)
    if lam is not None and not 0.0 <= float(lam) <= 1.0:
        raise InputError(f"--lambda {lam} is outside [0, 1]", "choose lambda in [0, 1] (default 0.5)")
    if orth is not None and orth not in ORTH_MODES:
        raise InputError(f"unknown --orth '{orth}'", f"use one of {', '.join(ORTH_MODES)}")
    if orth_scale is not None and orth_scale not in ORTH_SCALES:
        raise InputError(f"unknown --orth-scale '{orth_scale}'", f"use one of {', '.join(ORTH_SCALES)}")


def check_k_grid(ks: list[int], patches: int, origin: str = "--k") -> None:
    """Every K a run will use against the backbone's patch count, before the first init or cell runs;
    ``origin`` (:func:`k_origin`) says where the values came from: ``--k``, ``default``, or a recipe
    whose grid the user never typed."""
    for k in dict.fromkeys(ks):
        if 1 <= k <= patches:
            continue
        if origin == "--k":
            what = f"--k {k}"
        elif origin == "default":
            what = f"the default K = {k} (VIPAMIN's --k)"
        else:
            what = f"{origin} sets K = {k}, which"
        raise InputError(f"{what} is out of range: the backbone has {patches} patch positions",
                         f"pass --k with values from 1 to {patches} (e.g. --k {min(2, patches)},{min(8, patches)})"
                         + ("; it replaces the recipe's K grid" if origin.startswith("--recipe") else ""))


def k_origin(recipe: str | None, source: str | None, given: bool) -> str:
    """Where a run's K values come from, for :func:`check_k_grid`'s message."""
    if given:
        return "--k"
    if recipe is None or source in (None, "option"):
        return "default"
    return f"--recipe {recipe} ({source})" if source else f"--recipe {recipe}"


def _match_prompts(ctx: InitContext, block: int, config: InitConfig, generator: torch.Generator,
                   calib_prompts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VIPAMIN's matching part: each query prompt becomes the mean block input over the K patch positions
    whose mean keys are most similar (cosine) to its own key. Returns (query, index, similarity, match).

    The queries are drawn from ``generator``; with --deep-stats reference statistics, deep VIPAMIN's queries
    are instead the very prompts the calibration pass carried in this block, as in the authors' code.
    """
    blk = ctx.vit.blocks[block]
    npf, p = ctx.num_prefix, config.num_prompts
    x_mean = ctx.stats["calib.block_input_mean"][block].float()  # (T, D)
    patch_keys = ctx.stats["calib.key_mean"][block, npf:].float()  # (N, dh)
    query = calib_prompts[block].float() if calib_prompts is not None else uniform_prompts(p, ctx.dim, ctx.patch,
                                                                                            generator)
    with torch.no_grad():
        query_keys = head_mean_keys(blk, query)
    sim = F.normalize(query_keys, dim=-1) @ F.normalize(patch_keys, dim=-1).T  # (P, N)
    top_sim, index = torch.topk(sim, config.k, dim=-1)
    match = x_mean[npf + index].mean(1)  # (P, D)
    return query, index, top_sim, match


def _ln_orthogonal_part(fresh: torch.Tensor, blk: torch.nn.Module, block: int, basis: torch.Tensor,
                        rcond: float | None, value_map: tuple[torch.Tensor, torch.Tensor],
                        info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``--orth exact-ln``: tokens whose value vectors through LN1 leave the span. When no token can, the
    weakest span directions are dropped (recorded in ``info``) until one can; returns (tokens, basis used)."""
    orth = ln_orthogonal_tokens(fresh, blk, basis, rcond, value_map)
    while orth is None and basis.shape[1] > 0:  # infeasible: drop the weakest span directions
        basis = basis[:, : basis.shape[1] - max(1, basis.shape[1] // 4)]
        orth = ln_orthogonal_tokens(fresh, blk, basis, rcond, value_map)
        info.update(rank_used=basis.shape[1], truncated=True, ln_infeasible=True)
    if orth is None:
        raise InputError(f"block {block}: no token has a value vector orthogonal to the span",
                         "use --orth exact")
    return orth, basis


def _linear_orthogonal_part(value: torch.Tensor, basis: torch.Tensor, rcond: float | None,
                            value_map: tuple[torch.Tensor, torch.Tensor], orth_mode: str) -> torch.Tensor:
    """``--orth exact`` / ``reference`` (LayerNorm ignored): the tokens mapped by x W_V^T + b_V onto the
    random values' components outside the span; ``reference`` keeps the authors' pinv(W_V) formula."""
    w_v, b_v = value_map
    value_perp = value - (value @ basis) @ basis.T
    if orth_mode == "exact":  # solve x W_V^T + b_V = v_perp
        return solve_value_map(w_v, value_perp - b_v) if rcond is None else \
            (value_perp - b_v) @ torch.linalg.pinv(w_v.T, rtol=rcond)
    # the reference code's formula, kept for reproduction
    w_pinv = torch.linalg.pinv(w_v) if rcond is None else torch.linalg.pinv(w_v, rtol=rcond)
    return (value_perp - b_v) @ w_pinv


class VipaminInit:
    name: ClassVar[str] = "vipamin"

    def validate(self, config: InitConfig, ctx: InitContext) -> None:
        n = ctx.num_patches
        if not 1 <= config.k <= n:
            raise InputError(f"--k {config.k} is out of range: the backbone has {n} patch positions",
                             f"choose 1 <= K <= {n}")
        check_choices(config.lam, config.orth, config.orth_scale, config.orth_span_tol)
        resolve_rcond(config.orth_rcond, ctx.dim)
        if not 0.0 < config.orth_energy <= 1.0:
            raise InputError(f"--orth-energy {config.orth_energy} is outside (0, 1]", "use e.g. 0.99")
        if config.orth_rank is not None and not 0 <= config.orth_rank < ctx.dim:
            raise InputError(f"--orth-rank {config.orth_rank} is out of range", f"choose 0 <= r < {ctx.dim}")
        if "calib.key_mean" not in ctx.stats:
            raise InputError("the embeddings hold no calibration statistics", "re-run `vipamin embed`")
        calib_prompts = ctx.stats.get("calib.deep_stats_prompts")
        if config.deep and calib_prompts is not None and int(calib_prompts.shape[1]) != config.num_prompts:
            p = int(calib_prompts.shape[1])
            raise InputError(f"--prompt-length {config.num_prompts} differs from the {p} calibration prompts per "
                             f"block of these embeddings (embed --deep-stats reference --deep-stats-prompts {p}), "
                             "which deep VIPAMIN uses as its queries",
                             f"pass --prompt-length {p}, or re-embed with --deep-stats-prompts {config.num_prompts}")

    def init_block(self, ctx: InitContext, block: int, config: InitConfig,
                   generator: torch.Generator) -> BlockInit:
        blk = ctx.vit.blocks[block]
        p = config.num_prompts
        # A. matching ("embedding selection")
        calib_prompts = ctx.stats.get("calib.deep_stats_prompts") if config.deep else None
        query, index, top_sim, match = _match_prompts(ctx, block, config, generator, calib_prompts)

        # B. orthogonal component ("subspace expansion")
        ln_mode = config.orth == "exact-ln"
        basis, info = complement_basis(ctx.stats["calib.attn_out_mean"][block], config.orth_energy,
                                       config.orth_rank, reserve=1 if ln_mode else 0, span_tol=config.orth_span_tol)
        rcond = resolve_rcond(config.orth_rcond, ctx.dim)
        info["rcond"] = rcond
        info["queries"] = "calibration prompts" if calib_prompts is not None else "drawn"
        fresh = uniform_prompts(p, ctx.dim, ctx.patch, generator)
        w_v, b_v = value_projection(blk)
        value = fresh.double() @ w_v.T + b_v
        if ln_mode:
            orth, basis = _ln_orthogonal_part(fresh, blk, block, basis, rcond, (w_v, b_v), info)
        else:
            orth = _linear_orthogonal_part(value, basis, rcond, (w_v, b_v), config.orth)
        # How much of each value vector still lies in the pretrained span (0 = fully orthogonal):
        # linearly (x W_V^T + b_V) and through LN1, as the block really computes it.
        info["orth_in_span"] = span_share(orth @ w_v.T + b_v, basis)
        info["random_in_span"] = span_share(value, basis)
        norm_raw = float(orth.norm(dim=1).mean())
        if config.orth_scale == "match":  # each orthogonal row gets the matched part's mean norm
            orth = orth * (match.double().norm(dim=1).mean() / orth.norm(dim=1).clamp_min(1e-300))[:, None]
        orth = orth.float()
        info["orth_in_span_ln"] = span_share(values_through_ln(blk, orth, (w_v, b_v)), basis)
        info["random_in_span_ln"] = span_share(values_through_ln(blk, fresh, (w_v, b_v)), basis)
        prompts = (1.0 - config.lam) * match + config.lam * orth
        info.update(match_norm_mean=float(match.double().norm(dim=1).mean()), orth_norm_raw_mean=norm_raw,
                    orth_norm_mean=float(orth.double().norm(dim=1).mean()),
                    prompt_norm_mean=float(prompts.double().norm(dim=1).mean()),
                    random_norm_mean=float(fresh.double().norm(dim=1).mean()))
        extras = {"query_prompts": query, "match_index": index, "match_similarity": top_sim,
                  "match_part": match, "orth_random": fresh, "orth_part": orth}
        return BlockInit(prompts=prompts, extras=extras, info=info)
