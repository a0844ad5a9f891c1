"""VPT's baseline: prompts drawn uniformly in [-v, v], v = sqrt(6 / (3 * patch^2 + D))."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import BlockInit, InitConfig, InitContext, uniform_prompts, vpt_bound


class RandomInit:
    name: ClassVar[str] = "random"

    def validate(self, config: InitConfig, ctx: InitContext) -> None:
        return None

    def init_block(self, ctx: InitContext, block: int, config: InitConfig,
                   generator: torch.Generator) -> BlockInit:
        prompts = uniform_prompts(config.num_prompts, ctx.dim, ctx.patch, generator)
        return BlockInit(prompts=prompts, info={"bound": vpt_bound(ctx.patch, ctx.dim)})
