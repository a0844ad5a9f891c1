"""Full fine-tuning (`--arch full`): the papers' end-to-end reference row, trained on cached tokens.

Every backbone weight after the cached block-0 tokens trains: all blocks, and the final norm (or
timm's ``fc_norm`` / attention pooling) when the head input uses it, plus a new linear head. The
patch embedding, position embedding, class / register tokens and ``norm_pre`` stay frozen: they
make the block-0 tokens, so the embed cache still serves and no image is decoded again. No prompts.

Each model owns a deep copy of the backbone, so the configurations of a sweep (and the final runs)
all start from the pretrained weights; for the same reason they cannot share one forward pass and
train one configuration at a time (``tune`` sets ``grid_batch`` to 1 for this architecture).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import InputError
from .prompted import PromptedViT

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

ARCH = "full"
NO_PROMPTS = "full fine-tuning trains no prompts"


def pooling_modules(vit: nn.Module, pool: str) -> list[str]:
    """The backbone modules after the blocks that the head input ``pool`` runs through."""
    if pool in ("cls", "mean-patch"):
        return ["norm"]
    if pool == "mean-all-norm":  # PromptedViT.pretrained_norm: norm, or fc_norm for models that norm late
        late = isinstance(vit.norm, nn.Identity) and not isinstance(getattr(vit, "fc_norm", None),
                                                                     (nn.Identity, type(None)))
        return ["fc_norm" if late else "norm"]
    if pool in ("timm", "timm-all"):  # vit.norm, then timm's forward_head (fc_norm, attention pooling)
        return ["norm", "fc_norm", "attn_pool"]
    return []  # mean-all: a fresh affine-free LayerNorm of PromptedViT, no backbone weight


def trained_prefixes(vit: nn.Module, pool: str) -> tuple[str, ...]:
    """Parameter-name prefixes of the backbone weights full fine-tuning trains."""
    return ("blocks.", *(f"{m}." for m in pooling_modules(vit, pool)))


class FullViT(PromptedViT):
    """A ViT fine-tuned end to end from its cached block-0 tokens (no prompts).

    ``vit`` is copied, so training never touches the caller's backbone. The backbone follows the
    module's train / eval mode (its own dropout and drop-path, as built, apply while training).
    """

    def __init__(self, vit: VisionTransformer, pool: str = "cls", num_classes: int | None = None) -> None:
        super().__init__(copy.deepcopy(vit), None, pool=pool, num_classes=num_classes)
        self.prompts.requires_grad_(False)  # the empty (0, D) prompt tensor of PromptedViT: not trained
        prefixes = trained_prefixes(self.vit, pool)
        for name, p in self.vit.named_parameters():
            p.requires_grad_(name.startswith(prefixes))

    def train(self, mode: bool = True) -> FullViT:
        nn.Module.train(self, mode)  # unlike prompt tuning, the backbone is trained: it follows the mode
        return self


def build_full_model(vit: nn.Module, num_classes: int, pool: str) -> FullViT:
    return FullViT(vit, pool=pool, num_classes=num_classes)


def trainable_backbone_parameters(vit: nn.Module, pool: str) -> int:
    """How many backbone weights full fine-tuning trains (the head excluded)."""
    prefixes = trained_prefixes(vit, pool)
    return sum(p.numel() for n, p in vit.named_parameters() if n.startswith(prefixes))


def no_prompts(width: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """What `tune` records as the init of a full fine-tune: an empty prompt tensor, no init."""
    return torch.zeros(0, width), {"file": None, "digest": None, "method": None, "config": None, "note": NO_PROMPTS}


def check_request(arch: str, prompts: Any) -> None:
    """Refuse --prompts with --arch full before any work (the other prompt options: recipes.plan)."""
    if arch == ARCH and prompts is not None:
        raise InputError(f"--prompts {prompts} makes no sense with --arch full ({NO_PROMPTS})",
                         "drop --prompts, or pick a prompt --arch (vpt-shallow, vpt-deep, vapt)")


# Bytes per trained parameter besides the fp32 weight itself: its gradient, and the optimiser state.
OPTIMIZER_STATE_BYTES = {"sgd": 4, "adamw": 8}  # SGD: momentum; AdamW: two moments


def full_memory(vit: nn.Module, pool: str, tokens: int, batch: int, optimizer: str) -> float:
    """Bytes one full fine-tuning configuration needs: its own copy of the backbone, the gradient and
    optimiser state of every trained weight, and the activations the backward pass keeps in fp32:
    per block and image about 9 (tokens x width) and 2 (tokens x MLP width) tensors, 7-8 % above what
    ``bench/full_memory.py`` measures for ViT-B/16 and the testbed backbone (docs/performance.md)."""
    weights = sum(p.numel() for p in vit.parameters()) * 4.0
    trained = trainable_backbone_parameters(vit, pool)
    dim, depth = int(vit.embed_dim), len(vit.blocks)
    fc1 = getattr(getattr(vit.blocks[0], "mlp", None), "fc1", None)
    hidden = int(fc1.out_features) if isinstance(fc1, nn.Linear) else 4 * dim
    activations = 4.0 * batch * depth * (9 * tokens * dim + 2 * tokens * hidden)
    return weights + trained * (4.0 + OPTIMIZER_STATE_BYTES.get(optimizer, 8)) + activations


def check_memory(vit: nn.Module, pool: str, tokens: int, config: Any, device: torch.device) -> None:
    """Refuse a full fine-tune whose estimated memory exceeds what the device has, before training."""
    from . import validate as v

    need = full_memory(vit, pool, tokens, config.batch_size, config.optimizer)
    v.memory_fits(need, "--batch-size", config.batch_size, device,
                  "pass a smaller --batch-size (full fine-tuning keeps every block's activations, the weight "
                  "gradients and the optimiser state)")
