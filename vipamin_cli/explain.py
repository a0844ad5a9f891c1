"""`vipamin explain`: why prompts were initialised the way they were.

For VIPAMIN, a heat map over the patch grid counts how many prompts selected each patch position
(one panel per block for deep prompts), and a short summary says how spread the matches are and
how far the orthogonal part is from the pretrained attention-output span. Drawn with Pillow alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_path, load_artifact
from .errors import InputError
from .iosafety import command_scope

# A perceptually ordered colour ramp (dark blue -> teal -> yellow), interpolated linearly.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _colour(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def match_counts(match_index: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(blocks, gh, gw): how many (prompt, k) selections fell on each patch position."""
    idx = match_index if match_index.dim() == 3 else match_index.unsqueeze(0)
    n = grid[0] * grid[1]
    counts = torch.stack([torch.bincount(b.reshape(-1), minlength=n) for b in idx])
    return counts.reshape(-1, grid[0], grid[1])


def spread_stats(counts: torch.Tensor) -> dict[str, float]:
    """Coverage (share of positions used) and normalised entropy (1 = perfectly even)."""
    flat = counts.reshape(-1).double()
    p = flat / flat.sum()
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum() / math.log(len(flat))) if len(flat) > 1 else 1.0
    return {"positions_used": int((flat > 0).sum()), "positions": len(flat),
            "coverage": float((flat > 0).double().mean()), "entropy": entropy,
            "top_position_share": float(p.max())}


def draw_heatmaps(counts: torch.Tensor, path: str | os.PathLike, title: str) -> Path:
    from PIL import Image, ImageDraw

    blocks, gh, gw = counts.shape
    cell = max(6, min(32, 320 // max(gh, gw)))
    cols = min(blocks, 4)
    rows = math.ceil(blocks / cols)
    pad, head = 12, 44
    pw, ph = gw * cell, gh * cell + 16
    legend = "colour = selections per position, dark = fewest, yellow = most (per block)"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = int(max(probe.textlength(title), probe.textlength(legend))) + 2 * pad
    img = Image.new("RGB", (max(pad + cols * (pw + pad), text_w), head + rows * (ph + pad)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 8), title, fill=(0, 0, 0))
    draw.text((pad, 24), legend, fill=(90, 90, 90))
    for b in range(blocks):
        c = counts[b].double()
        top = float(c.max()) or 1.0
        x0 = pad + (b % cols) * (pw + pad)
        y0 = head + (b // cols) * (ph + pad)
        draw.text((x0, y0), f"block {b}: max {int(top)}", fill=(0, 0, 0))
        for i in range(gh):
            for j in range(gw):
                xa, ya = x0 + j * cell, y0 + 16 + i * cell
                draw.rectangle([xa, ya, xa + cell - 1, ya + cell - 1], fill=_colour(float(c[i, j]) / top))
    dest = Path(path)
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")
    return dest


@command_scope()
def explain(prompts_path: str | os.PathLike, png: str | os.PathLike | None = None,
            default_from: str = "--png") -> dict[str, Any]:
    """Summarise a prompts file; for VIPAMIN also draw the match heat map (default: beside the file,
    ``<prompts>.matches.png``; ``default_from`` names the option a failure there is blamed on)."""
    from .iosafety import declare_output

    art = load_artifact(prompts_path, "prompts", what="explain's input")
    meta = art.meta
    out: dict[str, Any] = {"method": meta["method"], "deep": meta["deep"], "prompt_shape": meta["prompt_shape"]}
    prompts = art["prompts"].double()
    out["prompt_norm_mean"] = float(prompts.norm(dim=-1).mean())
    if meta["method"] != "vipamin":
        if "spt.cluster_sizes" in art.tensors:
            sizes = art["spt.cluster_sizes"].double()
            out["cluster_size_min_mean_max"] = [float(sizes.min()), float(sizes.mean()), float(sizes.max())]
        return out
    backbone = meta["backbone"]
    side = backbone["img_size"] // backbone["patch"]
    grid = (side, side) if side * side == backbone["num_patches"] else (1, backbone["num_patches"])
    counts = match_counts(art["vipamin.match_index"], grid)
    out["match_spread"] = spread_stats(counts)
    out["match_similarity_mean"] = float(art["vipamin.match_similarity"].double().mean())
    infos = meta["info"]["blocks"] if meta["deep"] else [meta["info"]]
    out["orth_in_span"] = sum(i["orth_in_span"] for i in infos) / len(infos)
    out["random_in_span"] = sum(i["random_in_span"] for i in infos) / len(infos)
    out["orth_rank_used"] = [i["rank_used"] for i in infos]
    out["orth_truncated"] = any(i["truncated"] for i in infos)
    out["orth_forced_rank"] = infos[0].get("forced_rank")
    if all("span_tol" in i for i in infos):  # the span's rank rule (docs/methods.md §3, "The span's rank")
        out["orth_span_tol"] = infos[0]["span_tol"]
        out["orth_span_rank_float64"] = [i["span_rank_float64"] for i in infos]
    out["orth_mode"] = meta["config"].get("orth", "exact")
    out["orth_scale"] = meta["config"].get("orth_scale", "none")
    if all("orth_in_span_ln" in i for i in infos):  # measured through LN1, as block b computes values
        out["orth_in_span_ln"] = sum(i["orth_in_span_ln"] for i in infos) / len(infos)
        out["random_in_span_ln"] = sum(i["random_in_span_ln"] for i in infos) / len(infos)
    out["match_norm_mean"] = float(art["vipamin.match_part"].double().norm(dim=-1).mean())
    out["orth_norm_mean"] = float(art["vipamin.orth_part"].double().norm(dim=-1).mean())
    if all("orth_norm_raw_mean" in i for i in infos):
        out["orth_norm_raw_mean"] = sum(i["orth_norm_raw_mean"] for i in infos) / len(infos)
    dest = Path(png) if png is not None else Path(prompts_path).with_suffix(".matches.png")
    if png is None:
        declare_output(dest, default_from, role="the heat map",
                       source="written beside the prompts file; choose its path with --png"
                       if default_from == "--png" else f"written beside {default_from}",
                       inputs=[("PROMPTS", prompts_path)])
    cfg = meta["config"]
    draw_heatmaps(counts, dest, f"VIPAMIN matches per patch position (P={cfg['prompt_length']}, K={cfg['k']}, "
                                f"lambda={cfg['lam']})")
    out["heatmap"] = str(dest)
    return out


def _span_rule(summary: dict[str, Any]) -> str:
    """Which directions the span kept, when the prompts file records the rule."""
    if "orth_span_tol" not in summary:
        return ""
    return (f" (singular values above {summary['orth_span_tol']:.1e} of the largest; "
            f"{summary['orth_span_rank_float64']} at float64 precision)")


def render_explanation(summary: dict[str, Any]) -> list[str]:
    """Plain sentences a user can read in a terminal."""
    lines = [f"method {summary['method']}{' (deep)' if summary['deep'] else ''}, prompts "
             f"{' x '.join(map(str, summary['prompt_shape']))}, mean norm {summary['prompt_norm_mean']:.3f}"]
    if "match_spread" in summary:
        s = summary["match_spread"]
        lines.append(f"matching: prompts selected {s['positions_used']} of {s['positions']} patch positions "
                     f"(coverage {s['coverage']:.0%}, evenness {s['entropy']:.2f}, busiest position "
                     f"{s['top_position_share']:.1%} of selections); mean cosine of selected keys "
                     f"{summary['match_similarity_mean']:.3f}")
        trunc = ""
        if summary["orth_truncated"]:
            trunc = (" (truncated basis: --orth-rank)" if summary.get("orth_forced_rank") is not None
                     else " (truncated basis: the span filled the space)")
        lines.append(f"orthogonal part (--orth {summary.get('orth_mode', 'exact')}): {summary['orth_in_span']:.2e} "
                     f"of its value vector lies in the pretrained attention-output span, versus "
                     f"{summary['random_in_span']:.2f} for a random token; span rank "
                     f"{summary['orth_rank_used']}{trunc}{_span_rule(summary)}")
        if "orth_in_span_ln" in summary:
            lines.append(f"through LayerNorm 1 (as the block computes values): {summary['orth_in_span_ln']:.2e} in the "
                         f"span, versus {summary['random_in_span_ln']:.2f} for a random token")
        raw = summary.get("orth_norm_raw_mean")
        scaled = f" (before --orth-scale {summary['orth_scale']}: {raw:.3f})" if raw is not None and \
            summary.get("orth_scale", "none") != "none" else ""
        lines.append(f"mean row norms: matching part {summary['match_norm_mean']:.3f}, orthogonal part "
                     f"{summary['orth_norm_mean']:.3f}{scaled}, final prompts {summary['prompt_norm_mean']:.3f}")
        lines.append(f"heat map: {summary['heatmap']}")
    if "cluster_size_min_mean_max" in summary:
        lo, mean, hi = summary["cluster_size_min_mean_max"]
        lines.append(f"k-means clusters: sizes min {lo:.0f}, mean {mean:.1f}, max {hi:.0f}")
    return lines


def check_png_path(path: str | os.PathLike) -> None:
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"--png {path} must end in .png", "pass e.g. --png matches.png")
