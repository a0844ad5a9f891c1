"""The prompted ViT: a frozen timm VisionTransformer run from cached block-0 tokens (or images).

Prompts are inserted right after the prefix tokens (CLS and registers) with no position
embedding. Shallow: one set at the input of block 0. Deep: one set per block; at block b >= 1
the previous block's prompt outputs are replaced by block b's own prompts. An optional
``adaptive`` module (VAPT) generates the prompts of later blocks from the previous block's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .backbones import POOLS
from .errors import InputError

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


class PromptedViT(nn.Module):
    """Frozen backbone + prompt-side parameters + an optional linear head.

    ``prompts`` is (P, D) for shallow prompting or (L, P, D) for deep prompting (L = depth).
    Only prompt-side parameters and the head require grad; the backbone stays in eval mode.
    """

    def __init__(self, vit: VisionTransformer, prompts: torch.Tensor | None, pool: str = "cls",
                 prompt_dropout: float = 0.0, num_classes: int | None = None,
                 adaptive: nn.Module | None = None) -> None:
        super().__init__()
        if pool not in POOLS:
            raise InputError(f"unknown pooling '{pool}'", f"use one of {', '.join(POOLS)}")
        self.vit = vit
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.depth = len(vit.blocks)
        self.dim = int(vit.embed_dim)
        self.num_prefix = int(vit.num_prefix_tokens)
        if prompts is None:
            prompts = torch.zeros(0, self.dim)
        if prompts.dim() not in (2, 3) or prompts.shape[-1] != self.dim:
            raise InputError(f"prompts of shape {tuple(prompts.shape)} do not fit a backbone of width {self.dim}",
                             "initialise prompts for this backbone")
        if prompts.dim() == 3 and prompts.shape[0] != self.depth:
            raise InputError(f"deep prompts have {prompts.shape[0]} blocks but the backbone has {self.depth}",
                             "initialise prompts for this backbone")
        self.deep = prompts.dim() == 3
        self.prompts = nn.Parameter(prompts.detach().clone().float())
        self.num_prompts = int(prompts.shape[-2])
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.pool = pool
        # The MAE recipe: a fresh LayerNorm without affine parameters on the mean of non-prefix tokens.
        self.fc_norm = nn.LayerNorm(self.dim, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(self.dim, num_classes) if num_classes else None
        self.adaptive = adaptive

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        self.vit.eval()  # never dropout / drop-path in the frozen backbone
        return self

    def _block_prompts(self, b: int, x: torch.Tensor) -> torch.Tensor | None:
        """Prompts entering block b (batch-expanded), or None when block b keeps the incoming ones."""
        bsz = x.shape[0]
        if self.num_prompts == 0:
            return None
        if b == 0:
            p = self.prompts[0] if self.deep else self.prompts
            return self.prompt_dropout(p).unsqueeze(0).expand(bsz, -1, -1)
        if self.adaptive is not None and self.adaptive.applies_to(b):
            return self.adaptive(b, x, self.num_prefix, self.num_prompts)
        static = self.adaptive.static_prompts(b) if self.adaptive is not None else None
        if static is not None:  # VAPT blocks before the first adaptive one: own static prompts
            return self.prompt_dropout(static).unsqueeze(0).expand(bsz, -1, -1)
        if self.deep:
            return self.prompt_dropout(self.prompts[b]).unsqueeze(0).expand(bsz, -1, -1)
        return None

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features from block-0 tokens (B, prefix + N, D)."""
        x = tokens.float()  # cached tokens are often bf16; autocast (if on) picks matmul precision
        npf, npr = self.num_prefix, self.num_prompts
        for b, blk in enumerate(self.vit.blocks):
            p = self._block_prompts(b, x)
            if p is not None:
                p = p.to(x.dtype)
                rest = x[:, npf:] if b == 0 else x[:, npf + npr:]
                x = torch.cat([x[:, :npf], p, rest], dim=1)
            x = blk(x)
        return self.pool_tokens(x)

    def pool_tokens(self, x: torch.Tensor) -> torch.Tensor:
        npf, npr = self.num_prefix, self.num_prompts
        if self.pool == "cls":
            return self.vit.norm(x)[:, 0]
        if self.pool == "mean-patch":
            return self.vit.norm(x)[:, npf + npr:].mean(1)
        if self.pool == "mean-all-norm":  # SPT's MAE head: the pretrained final norm, affine included
            return self.pretrained_norm(x[:, npf:].mean(1))
        if self.pool in ("timm", "timm-all"):  # timm's own pooling (token, avg + fc_norm, map, ...)
            if self.pool == "timm" and npr:
                x = torch.cat([x[:, :npf], x[:, npf + npr:]], dim=1)
            return self.vit.forward_head(self.vit.norm(x), pre_logits=True)
        return self.fc_norm(x[:, npf:].mean(1))  # mean-all: prompts included, no final norm

    @property
    def pretrained_norm(self) -> nn.Module:
        """The backbone's final norm: ``norm``, or ``fc_norm`` for models that norm after pooling."""
        if isinstance(self.vit.norm, nn.Identity) and not isinstance(getattr(self.vit, "fc_norm", None),
                                                                     (nn.Identity, type(None))):
            return self.vit.fc_norm
        return self.vit.norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(tokens)
        return self.head(feats) if self.head is not None else feats

    def forward_images(self, images: torch.Tensor) -> torch.Tensor:
        from .embed import block0_tokens

        return self.forward(block0_tokens(self.vit, images))


def grid_forward(models: list[PromptedViT], tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run several prompted models that share one frozen backbone in a single pass.

    Each model's batch gets its own prompts; the chunks are stacked along the batch dimension so
    every block runs once for all of them. Attention and LayerNorm act per sample, so each chunk's
    result is what that model alone would compute. All models need the same prompt count.
    """
    first = models[0]
    npf, npr = first.num_prefix, first.num_prompts
    if any(m.num_prompts != npr or m.vit is not first.vit for m in models):
        raise ValueError("grid models must share the backbone and the prompt count")
    sizes = [t.shape[0] for t in tokens]
    chunks = [t.float() for t in tokens]
    x: torch.Tensor | None = None
    for b, blk in enumerate(first.vit.blocks):
        if x is not None:
            chunks = list(x.split(sizes))
        new = [m._block_prompts(b, c) for m, c in zip(models, chunks, strict=True)]
        if x is None or any(p is not None for p in new):
            parts = []
            for c, p in zip(chunks, new, strict=True):
                if p is not None:
                    rest = c[:, npf:] if b == 0 else c[:, npf + npr:]
                    c = torch.cat([c[:, :npf], p.to(c.dtype), rest], dim=1)
                parts.append(c)
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
        x = blk(x)
    outs = []
    for m, c in zip(models, x.split(sizes), strict=True):
        feats = m.pool_tokens(c)
        outs.append(m.head(feats) if m.head is not None else feats)
    return outs
