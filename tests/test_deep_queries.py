"""Deep VIPAMIN with `--deep-stats reference`: block b's queries are the calibration pass's prompts of block b,
as in the authors' load_match_deep.py (issue 22, item 3)."""

from __future__ import annotations

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.inits import InitConfig, init_prompts

P, K = 6, 3


@pytest.fixture(scope="module")
def reference_embeddings(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepq") / "ref.safetensors"
    embed_data("vit-tiny-test", str(digits_dir), split="train", out=out, use_cache=False,
               config=EmbedConfig(dtype="float32", calib_size=24, sample_images=2, deep_stats="reference",
                                  deep_stats_prompts=P))
    return out


def _authors_matched_part(blk, queries: torch.Tensor, key_mean: torch.Tensor, xbar: torch.Tensor) -> torch.Tensor:
    """The authors' rule written out: head-averaged keys LN1(q) W_K^T + b_K of the calibration prompts,
    cosine against every patch position's mean key, the K best positions' mean block input."""
    d = queries.shape[-1]
    h = torch.nn.functional.layer_norm(queries.double(), (d,), blk.norm1.weight.double(), blk.norm1.bias.double(),
                                       blk.norm1.eps)
    keys = h @ blk.attn.qkv.weight[d:2 * d].double().T + blk.attn.qkv.bias[d:2 * d].double()
    keys = keys.reshape(queries.shape[0], blk.attn.num_heads, -1).mean(1)
    patch_keys = key_mean[1:].double()  # one prefix token (CLS)
    cos = (keys / keys.norm(dim=1, keepdim=True)) @ (patch_keys / patch_keys.norm(dim=1, keepdim=True)).T
    best = cos.argsort(dim=1, descending=True)[:, :K]
    return torch.stack([xbar[1 + best[i]].double().mean(0) for i in range(queries.shape[0])])


def test_deep_matched_parts_equal_the_authors_rule(reference_embeddings, tmp_path) -> None:
    from vipamin_cli.backbones import load_backbone

    emb = load_artifact(reference_embeddings)
    assert emb.meta["calibration"]["deep_stats_prompts"] == P and emb["calib.deep_stats_prompts"].shape == (4, P, 64)
    res = init_prompts(InitConfig(method="vipamin", deep=True, prompt_length=P, k=K, lam=0.0),
                       embeddings=reference_embeddings, out=tmp_path / "deep.safetensors")
    torch.testing.assert_close(res.tensors["vipamin.query_prompts"], emb["calib.deep_stats_prompts"], rtol=0, atol=0)
    assert {b["queries"] for b in res.meta["info"]["blocks"]} == {"calibration prompts"}
    vit = load_backbone("vit-tiny-test").model
    with torch.no_grad():
        for b in range(4):
            expected = _authors_matched_part(vit.blocks[b], emb["calib.deep_stats_prompts"][b],
                                             emb["calib.key_mean"][b], emb["calib.block_input_mean"][b])
            torch.testing.assert_close(res.tensors["prompts"][b].double(), expected, rtol=1e-5, atol=1e-5)
    # shallow VIPAMIN keeps drawing its own queries
    shallow = init_prompts(InitConfig(method="vipamin", prompt_length=P, k=K, lam=0.0),
                           embeddings=reference_embeddings, out=tmp_path / "shallow.safetensors")
    assert shallow.meta["info"]["queries"] == "drawn"


def test_deep_prompt_length_must_equal_the_calibration_prompts(reference_embeddings, tmp_path, cli) -> None:
    out = tmp_path / "bad.safetensors"
    code, _, err = cli("init", "--embeddings", reference_embeddings, "--deep", "-p", "5", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--prompt-length 5" in err and "--deep-stats-prompts 6" in err and not out.exists()


def test_deep_stats_prompts_needs_the_reference_pass(digits_dir, tmp_path, cli) -> None:
    out = tmp_path / "e.safetensors"
    code, _, err = cli("embed", "-b", "vit-tiny-test", "-d", digits_dir, "--split", "train",
                       "--deep-stats-prompts", "6", "--out", out)
    assert code == 2 and "--deep-stats-prompts 6 needs --deep-stats reference" in err and not out.exists(), err
