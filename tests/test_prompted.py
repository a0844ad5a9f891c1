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


def _timm_vit(global_pool: str, class_token: bool = True, reg_tokens: int = 0):
    """A random-weight tiny timm ViT pooled by ``global_pool`` (weights at timm's own init)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                            global_pool=global_pool, class_token=class_token, reg_tokens=reg_tokens,
                            num_classes=0).eval()
    with torch.no_grad():  # unit-scale norms and biases, so a wrong norm or pool shows
        for name, p in vit.named_parameters():
            if "norm" in name or name.endswith("bias") or name.endswith("latent"):
                p.normal_(0.0, 1.0)
    return vit


@pytest.mark.parametrize("global_pool,class_token,regs", [("avg", True, 0), ("avg", False, 0), ("map", True, 0),
                                                         ("map", False, 0), ("avg", True, 2)])
def test_timm_pooling_equals_timm_forward_head(global_pool, class_token, regs) -> None:
    vit = _timm_vit(global_pool, class_token, regs)
    images = _images()
    npf = vit.num_prefix_tokens
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(images), pre_logits=True)
        x0 = block0_tokens(vit, images)
        for pool in ("timm", "timm-all"):
            got = PromptedViT(vit, None, pool=pool).forward_features(x0)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        prompts = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
        x = torch.cat([x0[:, :npf], prompts.expand(3, -1, -1), x0[:, npf:]], dim=1)
        for blk in vit.blocks:
            x = blk(x)
        x = vit.norm(x)
        if global_pool == "avg":  # written out: mean over rows after the prefix, then fc_norm
            without = vit.fc_norm(x[:, npf + 5:].mean(1))
            with_prompts = vit.fc_norm(x[:, npf:].mean(1))
        else:  # attention pooling over the non-prefix rows (timm's default for map)
            without = vit.attn_pool(x[:, npf + 5:])
            with_prompts = vit.attn_pool(x[:, npf:])
        excluded = PromptedViT(vit, prompts, pool="timm").forward_features(x0)
        included = PromptedViT(vit, prompts, pool="timm-all").forward_features(x0)
        torch.testing.assert_close(excluded, without, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(included, with_prompts, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(excluded, included, atol=1e-3)


def test_mean_all_norm_uses_the_pretrained_final_norm() -> None:
    vit = load_backbone("vit-tiny-test").model
    with torch.no_grad():
        vit.norm.weight.normal_(1.0, 0.5)  # a visible affine
        vit.norm.bias.normal_(0.0, 0.5)
        prompts = torch.randn(5, 64, generator=torch.Generator().manual_seed(4))
        x0 = block0_tokens(vit, _images())
        x = torch.cat([x0[:, :1], prompts.expand(3, -1, -1), x0[:, 1:]], dim=1)
        for blk in vit.blocks:
            x = blk(x)
        m = x[:, 1:].mean(1)  # prompts and patches
        expected = (m - m.mean(-1, keepdim=True)) / torch.sqrt(m.var(-1, unbiased=False, keepdim=True) + vit.norm.eps)
        expected = expected * vit.norm.weight + vit.norm.bias
        got = PromptedViT(vit, prompts, pool="mean-all-norm").forward_features(x0)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_timm_gap_and_map_backbones_default_to_timm_pooling() -> None:
    from vipamin_cli.backbones import resolve_spec

    assert resolve_spec("timm:vit_base_patch16_gap_224").pool == "timm"
    assert resolve_spec("timm:vit_base_patch16_siglip_224").pool == "timm"  # map pooling
    assert resolve_spec("timm:vit_tiny_patch16_224").pool == "cls"
