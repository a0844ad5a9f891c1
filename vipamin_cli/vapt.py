"""VAPT (Le et al., ICLR 2026): prompts of later blocks generated from the previous block's output.

For each adaptive block b: the patch tokens of block b-1's output -> per-block LayerNorm -> the
patch grid as a D-channel image -> one k x k kernel shared by all channels (depthwise, no padding)
-> Dropout2d -> flatten the grid -> per-block Linear(positions -> P), zero-initialised -> a
residual feature projector x + W2 relu(W1 x) shared by all blocks. Because of the zero init the
adaptive prompts start at exactly zero. Blocks 1 .. first_block-1 (when the first adaptive block is
> 1, the reference's ``VPT_DEPTH``) get their own static trainable prompts, VPT-random initialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SharedKernelConv(nn.Module):
    """A depthwise k x k convolution whose kernel is shared by all channels (or one per channel)."""

    def __init__(self, channels: int, kernel: int, per_channel: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.per_channel = per_channel
        self.weight = nn.Parameter(torch.randn(channels if per_channel else 1, 1, kernel, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.per_channel else self.weight.expand(self.channels, -1, -1, -1)
        return F.conv2d(x, w.to(x.dtype), groups=self.channels)


class FeatureProjector(nn.Module):
    """x + scale * W2 relu(W1 x), no biases, dropout on the hidden layer."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1, learnable_scale: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.ones(1)) if learnable_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.drop(F.relu(self.fc1(x))))
        return x + (y * self.scale if self.scale is not None else y)


class AdaptiveBlockMap(nn.Module):
    """Block-specific part: LayerNorm, shared-kernel conv, Dropout2d, zero-initialised Linear."""

    def __init__(self, dim: int, grid: tuple[int, int], num_prompts: int, kernel: int, per_channel: bool,
                 conv_dropout: float) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.conv = SharedKernelConv(dim, kernel, per_channel)
        self.drop = nn.Dropout2d(conv_dropout)
        positions = (grid[0] - kernel + 1) * (grid[1] - kernel + 1)
        self.to_prompts = nn.Linear(positions, num_prompts)
        nn.init.zeros_(self.to_prompts.weight)
        nn.init.zeros_(self.to_prompts.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        bsz, n, dim = patches.shape
        x = self.norm(patches).transpose(1, 2).reshape(bsz, dim, *self.grid)
        x = self.drop(self.conv(x)).flatten(2)  # (B, D, positions)
        return self.to_prompts(x).transpose(1, 2)  # (B, P, D)


class VaptPromptGenerator(nn.Module):
    """Generates the prompts of blocks ``first_block`` .. depth-1 from the previous block's output."""

    def __init__(self, dim: int, depth: int, grid: tuple[int, int], num_prompts: int, hidden: int = 8,
                 kernel: int = 2, first_block: int = 1, per_channel: bool = False, dropout: float = 0.1,
                 learnable_scale: bool = False, conv_dropout: float | None = None,
                 static_bound: float = 0.0) -> None:
        super().__init__()
        if not 1 <= first_block < depth:
            raise ValueError(f"first adaptive block must be in [1, {depth - 1}]")
        self.first_block = first_block
        conv_rate = dropout if conv_dropout is None else conv_dropout
        self.maps = nn.ModuleList(AdaptiveBlockMap(dim, grid, num_prompts, kernel, per_channel, conv_rate)
                                  for _ in range(first_block, depth))
        self.projector = FeatureProjector(dim, hidden, dropout, learnable_scale)
        # static prompts of blocks 1 .. first_block-1 (VPT deep prompts, uniform in [-bound, bound])
        self.static = None
        if first_block > 1:
            init = torch.empty(first_block - 1, num_prompts, dim).uniform_(-static_bound, static_bound)
            self.static = nn.Parameter(init)

    def applies_to(self, block: int) -> bool:
        return block >= self.first_block

    def static_prompts(self, block: int) -> torch.Tensor | None:
        """Block ``block``'s own static prompts (P, D) when it lies before the first adaptive block."""
        if self.static is not None and 1 <= block < self.first_block:
            return self.static[block - 1]
        return None

    def forward(self, block: int, x: torch.Tensor, num_prefix: int, num_prompts: int) -> torch.Tensor:
        patches = x[:, num_prefix + num_prompts:]
        return self.projector(self.maps[block - self.first_block](patches))


def vapt_parameter_count(dim: int, depth: int, grid: int, num_prompts: int, hidden: int = 8, kernel: int = 2,
                         first_block: int = 1, per_channel: bool = False, learnable_scale: bool = False) -> int:
    """docs/methods.md §4: static prompts of blocks 0 .. first_block-1 + per adaptive block (LayerNorm,
    kernel: one shared or one per channel, Linear) + the shared projector (+ its optional scale)."""
    positions = (grid - kernel + 1) ** 2
    kernels = (dim if per_channel else 1) * kernel * kernel
    per_block = 2 * dim + kernels + positions * num_prompts + num_prompts
    return (first_block * num_prompts * dim + (depth - first_block) * per_block + 2 * dim * hidden
            + (1 if learnable_scale else 0))
