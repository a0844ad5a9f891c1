"""The prompted ViT against timm's own forward and an independent concatenate-and-run implementation."""

from __future__ import annotations

import pytest
import torch

from vipamin_cli.backbones import load_backbone
from vipamin_cli.embed import block0_tokens
from vipamin_cli.prompted import PromptedViT


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def _reference(vit, x0: torch.Tensor, prompts: torch.Tensor | None, pool: str) -> torch.Tensor:
    """Written independently: splice prompts in by hand, run each block, pool as the recipes say."""
    npf = vit.num_prefix_tokens
    x = x0
    deep = prompts is not None and prompts.dim() == 3
    p = 0 if prompts is None else prompts.shape[-2]
    for b, blk in enumerate(vit.blocks):
        if p and (b == 0 or deep):
            pb = (prompts[b] if deep else prompts).unsqueeze(0).repeat(x.shape[0], 1, 1)
            keep = x[:, npf:] if b == 0 else x[:, npf + p:]
            x = torch.cat([x[:, :npf], pb, keep], dim=1)
        x = blk(x)
    if pool == "cls":
        return vit.norm(x)[:, 0]
    if pool == "mean-patch":
        return vit.norm(x)[:, npf + p:].mean(1)
    m = x[:, npf:].mean(1)
    return (m - m.mean(-1, keepdim=True)) / torch.sqrt(m.var(-1, unbiased=False, keepdim=True) + 1e-6)


@pytest.mark.parametrize("name", ["vit-tiny-test", "vit-tiny-reg-test"])
def test_zero_prompts_equal_timm(name: str) -> None:
    vit = load_backbone(name).model
    images = _images()
    with torch.no_grad():
        ff = vit.forward_features(images)
        x0 = block0_tokens(vit, images)
        npf = vit.num_prefix_tokens
        cls = PromptedViT(vit, None, pool="cls").forward_features(x0)
        torch.testing.assert_close(cls, vit.forward_head(ff, pre_logits=True), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cls, ff[:, 0], rtol=1e-5, atol=1e-5)
        patch = PromptedViT(vit, None, pool="mean-patch").forward_features(x0)
        torch.testing.assert_close(patch, ff[:, npf:].mean(1), rtol=1e-5, atol=1e-5)
        mean_all = PromptedViT(vit, None, pool="mean-all").forward_features(x0)
        torch.testing.assert_close(mean_all, _reference(vit, x0, None, "mean-all"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vit-tiny-test", "vit-tiny-reg-test"])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("pool", ["cls", "mean-all", "mean-patch"])
def test_prompts_equal_direct_implementation(name: str, deep: bool, pool: str) -> None:
    vit = load_backbone(name).model
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randn((4, 5, 64) if deep else (5, 64), generator=gen) * 0.5
    model = PromptedViT(vit, prompts, pool=pool, num_classes=3).eval()
    images = _images()
    with torch.no_grad():
        x0 = block0_tokens(vit, images)
        ours = model.forward_features(x0)
        ref = _reference(vit, x0, prompts, pool)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.forward_images(images), model.head(ref), rtol=1e-4, atol=1e-4)
    # Prompts change the output (they are really used).
    with torch.no_grad():
        assert not torch.allclose(ours, PromptedViT(vit, None, pool=pool).forward_features(x0), atol=1e-4)


def test_only_prompt_side_parameters_train() -> None:
    vit = load_backbone("vit-tiny-test").model
    model = PromptedViT(vit, torch.zeros(4, 64), num_classes=10, prompt_dropout=0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts", "head.weight", "head.bias"}
    model.train()
    assert model.training and not model.vit.training
    loss = model(torch.randn(2, 17, 64)).sum()
    loss.backward()
    assert model.prompts.grad is not None and model.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())


def test_mismatched_prompts_are_refused() -> None:
    from vipamin_cli.errors import InputError

    vit = load_backbone("vit-tiny-test").model
    with pytest.raises(InputError, match="width 64"):
        PromptedViT(vit, torch.zeros(5, 32))
    with pytest.raises(InputError, match="3 blocks but the backbone has 4"):
        PromptedViT(vit, torch.zeros(3, 5, 64))
