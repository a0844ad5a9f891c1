"""Published checkpoint layouts, rebuilt with random weights on tiny timm ViTs (issue 21, item 6).

Each layout is written as its authors publish it (DINOv2 with and without registers, DINO's full
training checkpoint and a re-saved student, the JAX ``.npz`` of Google's ViT that VPT uses), loaded
through vipamin, and the tokens compared with timm's own loader of the same file (and, where no
resampling happens, with the model the file was made from). Files made for another network are
refused in one line, as are files that are not checkpoints at all, saying what they are.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models import load_checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vipamin_cli.backbones import REGISTRY, load_backbone, load_weights_file
from vipamin_cli.checkpoints import read_checkpoint
from vipamin_cli.errors import InputError

TINY = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=True, num_classes=0)
DINOV2 = dict(TINY, init_values=1e-5)  # timm's DINOv2 archs: layer scale, class token, mlp ratio aside
DINOV2_REG = dict(DINOV2, reg_tokens=4, no_embed_class=True)


def _model(img_size: int = 32, patch_size: int = 8, seed: int = 1, **kw) -> VisionTransformer:
    """A tiny ViT with every weight drawn away from timm's init, so a load that misses one shows."""
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, **kw).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _tokens(model: torch.nn.Module, img: int = 32) -> torch.Tensor:
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.forward_features(x)


def _timm_loaded(path: Path, **kw) -> VisionTransformer:
    """timm's own loader of ``path``, into a fresh model of the target architecture."""
    fresh = VisionTransformer(img_size=32, patch_size=8, **kw).eval()
    load_checkpoint(fresh, str(path), filter_fn=checkpoint_filter_fn, strict=True)
    return fresh


def _vipamin_loaded(path: Path, name: str = "tiny", **kw) -> VisionTransformer:
    model = VisionTransformer(img_size=32, patch_size=8, **kw).eval()
    load_weights_file(model, path, name)
    return model


def _dinov2_layout(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """``dinov2_vit*14[_reg4]_pretrain.pth``: ``mask_token``, and with registers ``register_tokens``
    plus a position table with a class row (which timm folds into ``cls_token``)."""
    sd = dict(model.state_dict())
    if "reg_token" in sd:
        class_row = torch.randn(1, 1, model.embed_dim, generator=torch.Generator().manual_seed(7)) * 0.2
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - class_row
        sd["pos_embed"] = torch.cat([class_row, sd["pos_embed"]], dim=1)
    return sd | {"mask_token": torch.zeros(1, model.embed_dim)}


@pytest.mark.parametrize("kw", [DINOV2_REG, DINOV2], ids=["dinov2-reg4", "dinov2"])
def test_dinov2_layouts_load_as_timm_loads_them(kw: dict, tmp_path: Path) -> None:
    source = _model(**kw)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(_dinov2_layout(source), path)
    tokens = _tokens(_vipamin_loaded(path, **kw))
    torch.testing.assert_close(tokens, _tokens(_timm_loaded(path, **kw)), rtol=0, atol=0)
    torch.testing.assert_close(tokens, _tokens(source), rtol=1e-5, atol=1e-5)  # same grid: the source's tokens
    # published at another resolution (518 px for the real files): the table, class row apart, is resampled
    other = tmp_path / "dinov2_48px.pth"
    torch.save(_dinov2_layout(_model(img_size=48, seed=2, **kw)), other)
    torch.testing.assert_close(_tokens(_vipamin_loaded(other, **kw)), _tokens(_timm_loaded(other, **kw)),
                               rtol=0, atol=0)


def test_dinov2_registers_file_loads_into_a_registered_timm_name(tmp_path: Path) -> None:
    """The crash of the issue: `timm:vit_*_reg4_dinov2` (dinov2-vit-b-reg is the ViT-B of this family),
    here timm's own vit_small_patch14_reg4_dinov2 configuration shrunk to width 64, depth 2, 28 px."""
    import timm

    def build() -> VisionTransformer:
        torch.manual_seed(0)
        return timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=28,
                                 embed_dim=64, depth=2, num_heads=4).eval()

    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    source = build()
    assert source.num_reg_tokens == 4 and source.no_embed_class and source.blocks[0].ls1.gamma.shape == (64,)
    torch.save(_dinov2_layout(source), path)
    loaded, reference = build(), build()
    load_weights_file(loaded, path, "timm:vit_small_patch14_reg4_dinov2")
    load_checkpoint(reference, str(path), filter_fn=checkpoint_filter_fn, strict=True)
    torch.testing.assert_close(_tokens(loaded, 28), _tokens(reference, 28), rtol=0, atol=0)
    torch.testing.assert_close(_tokens(loaded, 28), _tokens(source, 28), rtol=0, atol=1e-4)  # cls - row + row
    assert REGISTRY["dinov2-vit-b-reg"].arch == "vit_base_patch14_reg4_dinov2"


def test_dino_full_checkpoint_gives_its_teacher_and_a_resaved_student_loads(tmp_path: Path) -> None:
    teacher, student = _model(seed=3, **TINY), _model(seed=4, **TINY)
    head = {"head.mlp.0.weight": torch.zeros(32, 64), "head.last_layer.weight_g": torch.ones(16, 1)}
    full = {"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()} | head,
            "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()} |
            {f"module.{k}": v for k, v in head.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=0.0005, out_dim=65536),
            "dino_loss": {"center": torch.zeros(1, 16)}}
    path = tmp_path / "dino_vitbase16_full_checkpoint.pth"
    torch.save(full, path)
    assert "'teacher' weights" in read_checkpoint(path).note
    torch.testing.assert_close(_tokens(_vipamin_loaded(path, **TINY)), _tokens(teacher), rtol=0, atol=0)
    resaved = tmp_path / "student.pth"
    torch.save(full["student"], resaved)  # `module.backbone.` keys, DDP-wrapped
    torch.testing.assert_close(_tokens(_vipamin_loaded(resaved, **TINY)), _tokens(student), rtol=0, atol=0)


def _jax_vit_npz(model: VisionTransformer, path: Path, classes: int = 21843) -> None:
    """Google's ViT release layout (``imagenet21k_ViT-B_16.npz``): HWIO kernels, per-head q/k/v."""
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "pre_logits/kernel": np.zeros((d, d), np.float32), "pre_logits/bias": np.zeros(d, np.float32),
         "head/kernel": np.zeros((d, classes), np.float32), "head/bias": np.zeros(classes, np.float32)}
    for i in range(len(model.blocks)):
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for n, (wt, bias) in zip(("query", "key", "value"), zip(qkv_w, qkv_b, strict=True), strict=True):
            w[j + f"MultiHeadDotProductAttention_1/{n}/kernel"] = wt.T.reshape(d, heads, d // heads)
            w[j + f"MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(heads, d // heads)
        w[j + "MultiHeadDotProductAttention_1/out/kernel"] = (
            sd[b + "attn.proj.weight"].reshape(d, heads, d // heads).transpose(1, 2, 0))
        w[j + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for ln, src in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[j + f"{ln}/scale"], w[j + f"{ln}/bias"] = sd[b + f"{src}.weight"], sd[b + f"{src}.bias"]
        for r in range(2):
            w[j + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[j + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_jax_npz_of_vpt_loads_as_timm_loads_it(tmp_path: Path) -> None:
    source = _model(seed=5, **TINY)
    path = tmp_path / "imagenet21k_ViT-B_16.npz"
    _jax_vit_npz(source, path)
    tokens = _tokens(_vipamin_loaded(path, **TINY))
    torch.testing.assert_close(tokens, _tokens(_timm_loaded(path, **TINY)), rtol=0, atol=0)
    torch.testing.assert_close(tokens, _tokens(source), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=r"has 2 transformer blocks but backbone 'vit-tiny-test' has 4"):
        load_backbone("vit-tiny-test", weights=path)


@pytest.mark.parametrize(("kw", "backbone", "text"), [
    (dict(DINOV2, img_size=32, patch_size=4), "vit-tiny-test",
     r"has 4x4 patches but backbone 'vit-tiny-test' uses 8x8; resampling the patch kernel would change"),
    (dict(DINOV2, depth=4), "vit-tiny-test", r"weights the backbone lacks \(blocks\.0\.ls1\.gamma.*layer-scale"),
    (dict(DINOV2_REG, depth=4), "vit-tiny-test", r"holds 4 register tokens.*that the backbone lacks.*dinov2-vit-b-reg"),
    (dict(DINOV2, depth=4), "vit-tiny-reg-test", r"backbone has 2 register tokens but the file has none.*dinov2-vit-b"),
], ids=["dinov2-under-another-patch", "layer-scale-dropped", "registers-dropped", "registers-missing"])
def test_a_file_for_another_network_is_refused(kw: dict, backbone: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "dinov2.pth"
    torch.save(_dinov2_layout(_model(**{"img_size": 32, "patch_size": 8, **kw})), path)
    with pytest.raises(InputError, match=text):
        load_backbone(backbone, weights=path)


def _write(path: Path, kind: str) -> None:
    if kind == "text":
        path.write_text("model weights go here\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "html":
        path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    elif kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 343\n")
    elif kind == "truncated":
        torch.save({"w": torch.zeros(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "npz":  # under a .pth name: the content decides, not the suffix
        with open(path, "wb") as fh:
            np.savez(fh, a=np.zeros(3), b=np.ones(2))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif kind == "object":
        torch.save({"state_dict": {"x": torch.zeros(1)}, "when": __import__("datetime").date(2024, 1, 1)}, path)


@pytest.mark.parametrize(("kind", "text"), [
    ("text", "is a text file, not a checkpoint"), ("empty", "is an empty file, not a checkpoint"),
    ("html", "is an HTML page (a failed download?)"), ("lfs", "is a Git LFS pointer, not the weights"),
    ("truncated", "is a truncated or damaged zip archive"),
    ("npz", "is an npz of 2 arrays (a, b) without the JAX ViT layout"),
    ("zip", "is a zip archive of 1 files, not a checkpoint"),
    ("object", "pickles the Python object datetime.date, which vipamin never unpickles"),
])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(kind: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    _write(path, kind)
    with pytest.raises(InputError, match=re.escape(text)) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value) and "(101)" not in str(info.value)


def test_cli_names_the_refused_layout_in_one_line(tmp_path: Path, cli) -> None:
    path = tmp_path / "reg.pth"
    torch.save(_dinov2_layout(_model(img_size=32, patch_size=8, **dict(DINOV2_REG, depth=4))), path)
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "data" / cls / "0.png")
    code, out, err = cli("embed", "--backbone", "vit-tiny-test", "--weights", path, "--data", tmp_path / "data",
                         "--out", tmp_path / "e.safetensors")
    assert code == 2 and out == "" and err.count("\n") == 1 and "register tokens" in err, err
    assert not (tmp_path / "e.safetensors").exists()
