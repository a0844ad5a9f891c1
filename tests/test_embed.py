"""`embed`: block-0 tokens, calibration statistics against an independent computation, the cache."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import vipamin_cli.embed as embed_mod
from vipamin_cli.artifacts import load_artifact
from vipamin_cli.backbones import load_backbone
from vipamin_cli.data import make_transform, open_dataset
from vipamin_cli.embed import EmbedConfig, embed_data


def _images(image_set, backbone) -> torch.Tensor:
    spec = backbone.spec
    t = make_transform("vtab", backbone.img_size, spec.mean, spec.std, spec.interpolation)
    return torch.stack([t(image_set.load_image(i)) for i in range(len(image_set))])


def _manual_block(blk, x: torch.Tensor):
    """Pre-norm ViT block written out by hand: returns (keys head-mean, attention output, block output)."""
    heads = blk.attn.num_heads
    bsz, tokens, dim = x.shape
    dh = dim // heads
    h = torch.nn.functional.layer_norm(x, (dim,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    q = (h @ w[:dim].T + b[:dim]).reshape(bsz, tokens, heads, dh).transpose(1, 2)
    k = (h @ w[dim:2 * dim].T + b[dim:2 * dim]).reshape(bsz, tokens, heads, dh).transpose(1, 2)
    v = (h @ w[2 * dim:].T + b[2 * dim:]).reshape(bsz, tokens, heads, dh).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(bsz, tokens, dim)
    y = x + blk.attn.proj(o)
    y = y + blk.mlp(blk.norm2(y))
    return k.mean(1), o, y


@pytest.mark.parametrize("name", ["vit-tiny-test", "vit-tiny-reg-test"])
def test_tokens_and_calibration_match_independent_computation(digits_dir, tmp_path, name) -> None:
    out = tmp_path / "emb.safetensors"
    config = EmbedConfig(dtype="float32", calib_size=50, sample_images=7, seed=3, batch_size=32)
    res = embed_data(name, str(digits_dir), split="val", config=config, out=out)
    art = load_artifact(res.path, "embeddings")
    backbone = load_backbone(name)
    image_set = open_dataset(str(digits_dir), split="val")
    images = _images(image_set, backbone)
    model = backbone.model
    with torch.no_grad():
        x0 = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    prefix = backbone.num_prefix_tokens
    assert art["tokens"].shape == (len(image_set), prefix + 16, 64)
    torch.testing.assert_close(art["tokens"], x0, rtol=1e-5, atol=1e-5)
    assert art["labels"].tolist() == [s.label for s in image_set.samples]
    assert art.meta["samples"] == [s.key for s in image_set.samples]
    assert art.meta["data"]["class_names"] == [str(i) for i in range(10)]

    calib = art["calib.index"]
    assert len(calib) == 50 and len(set(calib.tolist())) == 50
    sample = art["calib.sample_index"]
    assert len(sample) == 7 and set(sample.tolist()) <= set(calib.tolist())
    x = x0[calib]
    with torch.no_grad():
        for b, blk in enumerate(model.blocks):
            keys, attn_out, y = _manual_block(blk, x)
            torch.testing.assert_close(art["calib.block_input_mean"][b], x.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(art["calib.key_mean"][b], keys.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(art["calib.attn_out_mean"][b], attn_out.mean(0), rtol=1e-4, atol=1e-5)
            rows = [calib.tolist().index(i) for i in sample.tolist()]
            torch.testing.assert_close(art["calib.token_sample"][b], x[rows, prefix:], rtol=1e-4, atol=1e-5)
            x = y


def test_default_dtype_is_bf16_and_close(digits_dir, tmp_path) -> None:
    res = embed_data("vit-tiny-test", str(digits_dir), split="val", config=EmbedConfig(calib_size=8))
    art = load_artifact(res.path, "embeddings")
    assert art["tokens"].dtype == torch.bfloat16
    ref = embed_data("vit-tiny-test", str(digits_dir), split="val",
                     config=EmbedConfig(calib_size=8, dtype="float32"))
    torch.testing.assert_close(art["tokens"].float(), load_artifact(ref.path)["tokens"], rtol=1e-2, atol=1e-2)


def test_cache_is_reused_without_a_forward_pass(digits_dir, tmp_path, monkeypatch) -> None:
    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    config = EmbedConfig(calib_size=16)
    first = embed_data("vit-tiny-test", str(data), split="val", config=config)
    assert not first.from_cache

    def no_forward(*args, **kwargs):
        raise AssertionError("forward pass ran although the cache should have matched")

    monkeypatch.setattr(embed_mod, "compute_embeddings", no_forward)
    again = embed_data("vit-tiny-test", str(data), split="val", config=config)
    assert again.from_cache and again.path == first.path
    explicit = embed_data("vit-tiny-test", str(data), split="val", config=config, out=tmp_path / "copy.safetensors")
    assert explicit.from_cache and explicit.path.read_bytes() == first.path.read_bytes()
    # Each changed input must miss the cache, i.e. reach the (now failing) forward pass.
    for kwargs in ({"split": "test"}, {"config": EmbedConfig(calib_size=16, seed=1)},
                   {"config": EmbedConfig(calib_size=17)}):
        with pytest.raises(AssertionError, match="forward pass ran"):
            embed_data("vit-tiny-test", str(data), **({"split": "val", "config": config} | kwargs))
    with pytest.raises(AssertionError, match="forward pass ran"):
        embed_data("vit-tiny-reg-test", str(data), split="val", config=config)
    # One changed image, same size in bytes: the content hash must notice.
    victim = sorted((data / "val" / "3").glob("*.png"))[0]
    raw = bytearray(victim.read_bytes())
    from PIL import Image

    img = Image.open(victim)
    img.load()
    px = img.copy()
    px.putpixel((0, 0), 255 - px.getpixel((0, 0)))
    px.save(victim)
    assert victim.read_bytes() != bytes(raw)
    with pytest.raises(AssertionError, match="forward pass ran"):
        embed_data("vit-tiny-test", str(data), split="val", config=config)


def test_changed_weights_miss_the_cache(digits_dir, tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    config = EmbedConfig(calib_size=8)
    embed_data("vit-tiny-test", str(digits_dir), split="val", config=config)
    state = {k: v + 0.01 for k, v in load_backbone("vit-tiny-test").model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(embed_mod, "compute_embeddings",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward pass ran")))
    with pytest.raises(AssertionError, match="forward pass ran"):
        embed_data("vit-tiny-test", str(digits_dir), split="val", config=config,
                   weights=str(tmp_path / "w.safetensors"))


def test_few_shot_embeddings_record_shots_and_seed(digits_dir) -> None:
    res = embed_data("vit-tiny-test", str(digits_dir), split="train", shots=2, config=EmbedConfig(seed=5))
    art = load_artifact(res.path)
    assert art["tokens"].shape[0] == 20
    assert sorted(art["labels"].tolist()) == sorted(list(range(10)) * 2)
    assert art.meta["data"]["shots"] == 2 and art.meta["data"]["seed"] == 5


def test_deep_stats_reference_match_a_prompted_pass_by_hand(digits_dir, tmp_path) -> None:
    """--deep-stats reference: keys and Xbar from a pass carrying seeded U[-v, v] deep prompts (VPT's
    bound, P = 20, drawn as one (L, P, D) tensor from embed's seed); O and the SPT sample stay prompt-free."""
    seed, prompts_per_block = 4, 20
    config = EmbedConfig(dtype="float32", calib_size=24, sample_images=3, seed=seed, deep_stats="reference")
    art = load_artifact(embed_data("vit-tiny-test", str(digits_dir), split="val", config=config,
                                   out=tmp_path / "ref.safetensors").path, "embeddings")
    plain = load_artifact(embed_data("vit-tiny-test", str(digits_dir), split="val",
                                     config=EmbedConfig(dtype="float32", calib_size=24, sample_images=3,
                                                        seed=seed)).path, "embeddings")
    assert art.meta["calibration"]["deep_stats"] == "reference"
    assert art.meta["calibration"]["deep_stats_prompts"] == prompts_per_block
    assert art.meta["config"]["deep_stats"] == "reference"
    assert plain.meta["calibration"]["deep_stats"] == "prompt-free"
    assert art.meta["cache_key"] != plain.meta["cache_key"]

    backbone = load_backbone("vit-tiny-test")
    model = backbone.model
    depth, dim, prefix = len(model.blocks), int(model.embed_dim), backbone.num_prefix_tokens
    bound = math.sqrt(6.0 / (3 * backbone.spec.patch**2 + dim))
    prompts = torch.empty(depth, prompts_per_block, dim).uniform_(-bound, bound,
                                                                  generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(art["calib.deep_stats_prompts"], prompts)
    x0 = art["tokens"][art["calib.index"]].float()
    x, free = x0, x0
    with torch.no_grad():
        for b, blk in enumerate(model.blocks):
            z = torch.cat([x[:, :prefix], prompts[b].expand(len(x), -1, -1), x[:, prefix:]], dim=1)
            keys, _, y = _manual_block(blk, z)
            keys = torch.cat([keys[:, :prefix], keys[:, prefix + prompts_per_block:]], dim=1)
            torch.testing.assert_close(art["calib.block_input_mean"][b], x.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(art["calib.key_mean"][b], keys.mean(0), rtol=1e-4, atol=1e-5)
            _, attn_free, y_free = _manual_block(blk, free)
            torch.testing.assert_close(art["calib.attn_out_mean"][b], attn_free.mean(0), rtol=1e-4, atol=1e-5)
            x = torch.cat([y[:, :prefix], y[:, prefix + prompts_per_block:]], dim=1)
            free = y_free
        # the prompts change the statistics of every block after the first, not of block 0
        torch.testing.assert_close(art["calib.key_mean"][0], plain["calib.key_mean"][0])
        assert not torch.allclose(art["calib.key_mean"][1], plain["calib.key_mean"][1], atol=1e-4)
    torch.testing.assert_close(art["calib.token_sample"], plain["calib.token_sample"])
    torch.testing.assert_close(art["calib.attn_out_mean"], plain["calib.attn_out_mean"])


def test_deep_stats_bad_value_is_one_line(digits_dir, cli, tmp_path) -> None:
    code, _, err = cli("embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "val",
                       "--deep-stats", "prompted", "--out", tmp_path / "e.safetensors")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--deep-stats 'prompted'" in lines[0] and "reference" in lines[0], err
    assert not (tmp_path / "e.safetensors").exists()
    code, _, err = cli("init", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "val", "--deep",
                       "--deep-stats", "x", "--out", tmp_path / "p.safetensors")
    assert code == 2 and "--deep-stats 'x'" in err and len(err.strip().splitlines()) == 1, err
