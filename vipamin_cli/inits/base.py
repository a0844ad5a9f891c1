"""The interface every prompt-initialisation method implements, and what they share.

A method initialises the P prompts entering one block from the cached calibration statistics
(no second pass over the images). Shallow prompting calls it for block 0, deep prompting for
every block, and the driver stacks the results; the seeded generator is consumed in block order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


DEFAULT_DEEP_PROMPTS = 20  # prompts per block of deep prompting (also the --deep-stats reference pass)


@dataclass
class InitConfig:
    """Every hyperparameter of every method; each method reads its own and all are recorded."""

    method: str = "vipamin"
    prompt_length: int | None = None  # default: 100 shallow, 20 deep
    deep: bool = False
    seed: int = 0
    # VIPAMIN
    k: int = 8
    lam: float = 0.5
    orth: str = "exact"  # exact | exact-ln | reference
    orth_scale: str = "none"  # none | match (orthogonal rows rescaled to the matched part's mean norm)
    orth_rcond: str = "none"  # none | reference | a relative singular-value cutoff of the map back
    orth_span_tol: str = "stable"  # stable | float64 | a relative singular-value tolerance of the span's rank
    orth_energy: float = 0.99  # used when the attention-output span fills the whole space
    orth_rank: int | None = None  # force a truncated basis of this rank
    # SPT
    sample: str = "kmeans"  # random | mean | max | kmeans
    spt_windows: str = "ours"  # ours | reference (the official code's remainder rule for mean/max windows)
    token_budget: int = 200_000
    kmeans_iters: int = 100
    kmeans_restarts: int = 1  # independent greedy k-means++ runs; the lowest inertia is kept
    kmeans_candidates: int | None = None  # candidates per centre in greedy k-means++ (default 2 + ln k)
    device: str = "auto"

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Method-independent checks (types, ranges, finiteness); methods add geometry checks.

        ``names`` renames options where a command spells them differently (tune's --init-seed)."""
        from .. import validate as v

        names = names or {}

        v.integer(self.prompt_length, "--prompt-length", minimum=1, example=100, optional=True)
        v.seed(self.seed, names.get("seed", "--seed"))
        v.integer(self.k, "--k", example=8)
        v.number(self.lam, "--lambda", example=0.5)
        v.number(self.orth_energy, "--orth-energy", example=0.99)
        v.integer(self.orth_rank, "--orth-rank", minimum=0, example=8, optional=True)
        v.integer(self.token_budget, "--token-budget", minimum=1, example=200_000)
        v.integer(self.kmeans_iters, "--kmeans-iters", minimum=1, example=100)
        if self.spt_windows not in ("ours", "reference"):
            from ..errors import InputError

            raise InputError(f"unknown --spt-windows '{self.spt_windows}'",
                             "use one of ours, reference (e.g. --spt-windows reference)")

    @property
    def num_prompts(self) -> int:
        if self.prompt_length is not None:
            return self.prompt_length
        return DEFAULT_DEEP_PROMPTS if self.deep else 100


@dataclass
class InitContext:
    """What a method may read: the frozen backbone and the cached embeddings."""

    vit: VisionTransformer
    tokens: torch.Tensor  # (images, prefix + N, D): block-0 input of every cached image
    stats: dict[str, torch.Tensor]  # the calib.* tensors of the embeddings file
    num_prefix: int
    patch: int
    device: torch.device

    @property
    def dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_patches(self) -> int:
        return int(self.tokens.shape[1]) - self.num_prefix

    def patch_tokens(self, block: int) -> torch.Tensor:
        """Patch tokens entering ``block`` (images, N, D): all cached images for block 0, the
        calibration sample for later blocks."""
        if block == 0:
            return self.tokens[:, self.num_prefix:]
        return self.stats["calib.token_sample"][block]


@dataclass
class BlockInit:
    prompts: torch.Tensor  # (P, D) float32
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors kept for inspection
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able notes (e.g. the rank used)


class InitMethod(Protocol):
    name: ClassVar[str]

    def validate(self, config: InitConfig, ctx: InitContext) -> None: ...

    def init_block(self, ctx: InitContext, block: int, config: InitConfig,
                   generator: torch.Generator) -> BlockInit: ...


def vpt_bound(patch: int, dim: int) -> float:
    """VPT's xavier-uniform bound for prompts: sqrt(6 / (3 * patch^2 + D))."""
    return math.sqrt(6.0 / float(3 * patch * patch + dim))


def uniform_prompts(num: int, dim: int, patch: int, generator: torch.Generator) -> torch.Tensor:
    v = vpt_bound(patch, dim)
    return torch.empty(num, dim, dtype=torch.float32).uniform_(-v, v, generator=generator)
