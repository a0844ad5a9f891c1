"""Init methods checked against independent computations; reproducibility; shapes; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import CalibrationRecorder, EmbedConfig, block0_tokens, embed_data
from vipamin_cli.inits import InitConfig, InitContext, init_prompts, run_init
from vipamin_cli.inits.spt import kmeans, nearest_centre, window_bounds
from vipamin_cli.prompted import PromptedViT


@pytest.fixture(scope="module")
def embeddings(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "emb.safetensors"
    embed_data("vit-tiny-test", str(digits_dir), split="train", out=out, use_cache=False,
               config=EmbedConfig(dtype="float32", calib_size=64, sample_images=16))
    return out


def _init(embeddings, tmp_path, name="p.safetensors", **kw):
    return init_prompts(InitConfig(**kw), embeddings=embeddings, out=tmp_path / name)


def _manual_keys(blk, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    h = torch.nn.functional.layer_norm(x, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    k = h @ blk.attn.qkv.weight[d:2 * d].T + blk.attn.qkv.bias[d:2 * d]
    return k.reshape(x.shape[0], blk.attn.num_heads, -1).mean(1)


@pytest.mark.parametrize("deep", [False, True])
def test_vipamin_matching_against_direct_computation(embeddings, tmp_path, deep) -> None:
    from vipamin_cli.backbones import load_backbone

    res = _init(embeddings, tmp_path, method="vipamin", k=3, lam=0.0, deep=deep, prompt_length=6)
    emb = load_artifact(embeddings)
    vit = load_backbone("vit-tiny-test").model
    query = res.tensors["vipamin.query_prompts"]
    blocks = range(4) if deep else [0]
    for b in blocks:
        q = query[b] if deep else query
        with torch.no_grad():
            qk = _manual_keys(vit.blocks[b], q)
        pk = emb["calib.key_mean"][b, 1:]
        sim = torch.nn.functional.cosine_similarity(qk[:, None, :], pk[None, :, :], dim=-1)
        xbar = emb["calib.block_input_mean"][b]
        got = res.tensors["prompts"][b] if deep else res.tensors["prompts"]
        for i in range(6):
            best = sorted(range(16), key=lambda j: -float(sim[i, j]))[:3]
            expected = xbar[[1 + j for j in best]].mean(0)
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-5)


def test_lambda_endpoints_and_mix(embeddings, tmp_path) -> None:
    zero = _init(embeddings, tmp_path, "a.safetensors", method="vipamin", lam=0.0, prompt_length=5).tensors
    one = _init(embeddings, tmp_path, "b.safetensors", method="vipamin", lam=1.0, prompt_length=5).tensors
    half = _init(embeddings, tmp_path, "c.safetensors", method="vipamin", lam=0.5, prompt_length=5).tensors
    torch.testing.assert_close(zero["prompts"], zero["vipamin.match_part"], rtol=0, atol=0)
    torch.testing.assert_close(one["prompts"], one["vipamin.orth_part"], rtol=0, atol=0)
    torch.testing.assert_close(half["prompts"], 0.5 * half["vipamin.match_part"] + 0.5 * half["vipamin.orth_part"])


def _span_residual(values: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(attn_out.double().T, mode="reduced")  # independent basis: QR, not SVD
    return (values @ q).norm(dim=1) / values.norm(dim=1)


def test_exact_orthogonal_part_lies_in_the_complement(embeddings, tmp_path) -> None:
    from vipamin_cli.backbones import load_backbone

    res = _init(embeddings, tmp_path, method="vipamin", lam=1.0, prompt_length=8)
    vit = load_backbone("vit-tiny-test").model
    w = vit.blocks[0].attn.qkv.weight[128:].double()
    bias = vit.blocks[0].attn.qkv.bias[128:].double()
    values = res.tensors["vipamin.orth_part"].double() @ w.T + bias
    o = load_artifact(embeddings)["calib.attn_out_mean"][0]
    assert o.shape == (17, 64)  # 1 + N < D: the complement is 47-dimensional
    assert float(_span_residual(values, o).max()) < 1e-4
    random_values = res.tensors["vipamin.orth_random"].double() @ w.T + bias
    assert float(_span_residual(random_values, o).min()) > 0.1  # a random token is far from orthogonal
    assert res.meta["info"]["rank_used"] == 17 and not res.meta["info"]["truncated"]


def test_reference_formula_reproduces_itself(embeddings, tmp_path) -> None:
    from vipamin_cli.backbones import load_backbone

    res = _init(embeddings, tmp_path, method="vipamin", lam=1.0, prompt_length=4, orth="reference")
    vit = load_backbone("vit-tiny-test").model
    w = vit.blocks[0].attn.qkv.weight[128:].double()
    bias = vit.blocks[0].attn.qkv.bias[128:].double()
    o = load_artifact(embeddings)["calib.attn_out_mean"][0].double()
    q, _ = torch.linalg.qr(o.T, mode="reduced")
    proj = torch.eye(64, dtype=torch.float64) - q @ q.T
    r = res.tensors["vipamin.orth_random"].double()
    expected = ((r @ w.T + bias) @ proj.T - bias) @ torch.linalg.pinv(w)
    torch.testing.assert_close(res.tensors["prompts"].double(), expected, rtol=1e-5, atol=1e-5)
    exact = _init(embeddings, tmp_path, "e.safetensors", method="vipamin", lam=1.0, prompt_length=4)
    assert not torch.allclose(exact.tensors["prompts"], res.tensors["prompts"], atol=1e-3)


def _ln1_values_float64(blk, tokens: torch.Tensor) -> torch.Tensor:
    """Block-0 values as the block computes them, written out by hand in float64."""
    x = tokens.double()
    d = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    h = (x - mu) / torch.sqrt(var + blk.norm1.eps) * blk.norm1.weight.double() + blk.norm1.bias.double()
    return h @ blk.attn.qkv.weight[2 * d:].double().T + blk.attn.qkv.bias[2 * d:].double()


@pytest.mark.parametrize("deep", [False, True])
def test_exact_ln_values_are_orthogonal_through_layer_norm(embeddings, tmp_path, deep) -> None:
    from vipamin_cli.backbones import load_backbone

    res = _init(embeddings, tmp_path, method="vipamin", lam=1.0, prompt_length=8, orth="exact-ln", deep=deep)
    vit = load_backbone("vit-tiny-test").model
    emb = load_artifact(embeddings)
    orth, fresh = res.tensors["vipamin.orth_part"], res.tensors["vipamin.orth_random"]
    for b in range(4) if deep else [0]:
        blk = vit.blocks[b]
        o = emb["calib.attn_out_mean"][b]
        z = orth[b] if deep else orth
        r = fresh[b] if deep else fresh
        assert float(_span_residual(_ln1_values_float64(blk, z), o).max()) < 1e-4
        assert float(_span_residual(_ln1_values_float64(blk, r), o).min()) > 0.3
        # z is a real token: zero mean, and the random draw's variance
        torch.testing.assert_close(z.double().mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(z.double().var(1), r.double().var(1), rtol=1e-4, atol=0)
    infos = res.meta["info"]["blocks"] if deep else [res.meta["info"]]
    assert all(i["orth_in_span_ln"] < 1e-4 and i["random_in_span_ln"] > 0.3 for i in infos)
    # The linear modes are not orthogonal once LN1 is applied; the metadata says so.
    for mode in ("exact", "reference"):
        other = _init(embeddings, tmp_path, f"{mode}.safetensors", method="vipamin", lam=1.0, prompt_length=8,
                      orth=mode)
        assert other.meta["info"]["orth_in_span_ln"] > 0.1
        got = float(_span_residual(_ln1_values_float64(vit.blocks[0], other.tensors["vipamin.orth_part"]),
                                   emb["calib.attn_out_mean"][0]).mean())
        assert abs(got - other.meta["info"]["orth_in_span_ln"]) < 1e-5


def test_exact_ln_falls_back_when_the_span_fills_the_space() -> None:
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0).eval()
    ctx = _synthetic_context(vit, 1)
    _, info = run_init(ctx, InitConfig(method="vipamin", prompt_length=4, k=2, orth="exact-ln", orth_energy=0.9,
                                       orth_span_tol="float64"))  # every direction: the span fills the space
    assert info["truncated"] and info["span_rank"] == 16 and 1 <= info["rank_used"] <= 14
    assert info["orth_in_span_ln"] < 1e-6


def test_orth_scale_match_and_recorded_norms(embeddings, tmp_path) -> None:
    plain = _init(embeddings, tmp_path, "a.safetensors", method="vipamin", lam=0.5, prompt_length=6)
    scaled = _init(embeddings, tmp_path, "b.safetensors", method="vipamin", lam=0.5, prompt_length=6,
                   orth_scale="match")
    match = scaled.tensors["vipamin.match_part"].double()
    orth = scaled.tensors["vipamin.orth_part"].double()
    target = float(match.norm(dim=1).mean())
    torch.testing.assert_close(orth.norm(dim=1), torch.full((6,), target, dtype=torch.float64), rtol=1e-5, atol=0)
    # same direction as the unscaled orthogonal part
    raw = plain.tensors["vipamin.orth_part"].double()
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(orth, raw), torch.ones(6, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    for res in (plain, scaled):
        info, t = res.meta["info"], res.tensors
        assert abs(info["match_norm_mean"] - float(t["vipamin.match_part"].double().norm(dim=1).mean())) < 1e-5
        assert abs(info["orth_norm_mean"] - float(t["vipamin.orth_part"].double().norm(dim=1).mean())) < 1e-5
        assert abs(info["prompt_norm_mean"] - float(t["prompts"].double().norm(dim=1).mean())) < 1e-5
    assert abs(scaled.meta["info"]["orth_norm_raw_mean"] - float(raw.norm(dim=1).mean())) < 1e-5
    assert scaled.meta["config"]["orth_scale"] == "match" and plain.meta["config"]["orth_rcond"] == "none"


def test_orth_rcond_reference_is_the_float32_pinv_cutoff(embeddings, tmp_path) -> None:
    from vipamin_cli.backbones import load_backbone

    res = _init(embeddings, tmp_path, method="vipamin", lam=1.0, prompt_length=4, orth="reference",
                orth_rcond="reference")
    assert res.meta["info"]["rcond"] == 64 * torch.finfo(torch.float32).eps
    vit = load_backbone("vit-tiny-test").model
    w = vit.blocks[0].attn.qkv.weight[128:].float()
    bias = vit.blocks[0].attn.qkv.bias[128:].double()
    q, _ = torch.linalg.qr(load_artifact(embeddings)["calib.attn_out_mean"][0].double().T, mode="reduced")
    v = res.tensors["vipamin.orth_random"].double() @ w.double().T + bias
    expected = (v - (v @ q) @ q.T - bias) @ torch.linalg.pinv(w).double()  # the authors: float32 pinv
    torch.testing.assert_close(res.tensors["prompts"].double(), expected, rtol=1e-4, atol=1e-4)


def test_full_span_falls_back_to_truncated_basis() -> None:
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0).eval()
    ctx = _synthetic_context(vit, 1)
    tensors, info = run_init(ctx, InitConfig(method="vipamin", prompt_length=4, k=2, orth_energy=0.9,
                                             orth_span_tol="float64"))  # every direction: the span fills the space
    assert info["truncated"] and info["span_rank"] == 16 and 1 <= info["rank_used"] < 16
    _, forced = run_init(ctx, InitConfig(method="vipamin", prompt_length=4, k=2, orth_rank=3, orth_span_tol="float64"))
    assert forced["rank_used"] == 3 and forced["truncated"]


def test_kmeans_recovers_planted_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=gen) * 10
    labels = torch.arange(5).repeat_interleave(60)
    points = centres[labels] + 0.1 * torch.randn(300, 8, generator=gen)
    found, inertia = kmeans(points, 5, seed=1, iters=50)
    dist = torch.cdist(found, centres)
    assert sorted(dist.argmin(1).tolist()) == [0, 1, 2, 3, 4]
    assert float(dist.min(1).values.max()) < 0.1
    sizes = torch.bincount(nearest_centre(points, found), minlength=5)
    assert sorted(sizes.tolist()) == [60] * 5
    expected = float(torch.cdist(points.double(), found.double()).min(1).values.pow(2).sum())
    assert abs(inertia - expected) < 1e-3 * expected


def _blobs(seed: int, clusters: int = 12, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs of unequal sizes (10 to 200 points)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * 8
    sizes = torch.randint(10, 200, (clusters,), generator=gen)
    labels = torch.arange(clusters).repeat_interleave(sizes)
    return centres[labels] + torch.randn(len(labels), dim, generator=gen) * 0.5, centres


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_kmeans_finds_every_blob_and_matches_sklearn(seed) -> None:
    from sklearn.cluster import KMeans

    points, centres = _blobs(seed)
    found, inertia = kmeans(points, 12, seed=seed, restarts=3)
    nearest = torch.cdist(centres, found).argmin(1)
    assert len(set(nearest.tolist())) == 12  # every true cluster has its own centre
    assert float(torch.cdist(centres, found).min(1).values.max()) < 1.5  # blob means, 10+ points each
    reference = KMeans(n_clusters=12, random_state=seed, n_init=1).fit(points.double().numpy())
    assert inertia <= 1.05 * reference.inertia_
    # restarts only ever lower the inertia; same seed, same centres
    _, single = kmeans(points, 12, seed=seed, restarts=1)
    assert inertia <= single + 1e-6
    again, _ = kmeans(points, 12, seed=seed, restarts=3)
    assert torch.equal(again, found)


def test_kmeans_restarts_recorded_and_refused_when_bad(embeddings, tmp_path, cli) -> None:
    res = _init(embeddings, tmp_path, method="spt", sample="kmeans", prompt_length=4, kmeans_restarts=2)
    assert res.meta["config"]["kmeans_restarts"] == 2 and res.meta["info"]["kmeans_restarts"] == 2
    assert res.meta["info"]["kmeans_candidates"] == 3 and res.meta["info"]["kmeans_inertia"] > 0
    code, _, stderr = cli("init", "--embeddings", embeddings, "--method", "spt", "--kmeans-restarts", "0",
                          "--out", tmp_path / "bad.safetensors")
    assert code == 2 and stderr.count("\n") == 1 and "--kmeans-restarts 0 must be at least 1" in stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_spt_random_draws_only_real_tokens(embeddings, tmp_path) -> None:
    res = _init(embeddings, tmp_path, method="spt", sample="random", prompt_length=12)
    tokens = load_artifact(embeddings)["tokens"][:, 1:]
    ids = res.tensors["spt.token_index"]
    torch.testing.assert_close(res.tensors["prompts"], tokens[ids[:, 0], ids[:, 1]], rtol=0, atol=0)
    assert len({tuple(i) for i in ids.tolist()}) == 12  # without replacement


@pytest.mark.parametrize("how", ["mean", "max"])
def test_spt_window_pooling_matches_direct_computation(embeddings, tmp_path, how) -> None:
    res = _init(embeddings, tmp_path, method="spt", sample=how, prompt_length=6)
    tokens = load_artifact(embeddings)["tokens"][:, 1:]
    # 16 patch tokens, P = 6: five windows of 16 // 5 = 3 tokens, then the remaining 1 token.
    assert window_bounds(16, 6) == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 16)]
    for prompt, (img, win) in zip(res.tensors["prompts"], res.tensors["spt.candidate_index"].tolist(), strict=True):
        lo, hi = window_bounds(16, 6)[win]
        chunk = tokens[img, lo:hi]
        expected = chunk.mean(0) if how == "mean" else chunk.max(0).values
        torch.testing.assert_close(prompt, expected, rtol=1e-6, atol=1e-6)


def test_spt_kmeans_deep_uses_each_block(embeddings, tmp_path) -> None:
    res = _init(embeddings, tmp_path, method="spt", sample="kmeans", deep=True, prompt_length=4)
    assert res.tensors["prompts"].shape == (4, 4, 64)
    sizes = res.tensors["spt.cluster_sizes"]
    emb = load_artifact(embeddings)
    assert int(sizes[0].sum()) == emb["tokens"].shape[0] * 16  # block 0: every cached image
    assert int(sizes[2].sum()) == emb["calib.token_sample"].shape[1] * 16  # later blocks: the sample


@pytest.mark.parametrize("method", ["random", "spt", "vipamin"])
def test_same_seed_bit_identical_other_seed_different(embeddings, tmp_path, method) -> None:
    a = _init(embeddings, tmp_path, "a.safetensors", method=method, seed=4, prompt_length=10)
    b = _init(embeddings, tmp_path, "b.safetensors", method=method, seed=4, prompt_length=10)
    c = _init(embeddings, tmp_path, "c.safetensors", method=method, seed=5, prompt_length=10)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert not torch.equal(a.tensors["prompts"], c.tensors["prompts"])


def test_random_init_bound(embeddings, tmp_path) -> None:
    res = _init(embeddings, tmp_path, method="random", prompt_length=500)
    bound = math.sqrt(6 / (3 * 8 * 8 + 64))
    p = res.tensors["prompts"]
    assert float(p.abs().max()) <= bound and float(p.abs().max()) > 0.95 * bound
    assert abs(float(p.mean())) < 0.01
    deep = _init(embeddings, tmp_path, "d.safetensors", method="random", deep=True)
    assert deep.tensors["prompts"].shape == (4, 20, 64)
    assert res.meta["prompt_shape"] == [500, 64] and deep.meta["config"]["prompt_length"] == 20


def _synthetic_context(vit: VisionTransformer, seed: int) -> InitContext:
    """Calibration statistics from a real forward of random images through ``vit``."""
    size = vit.patch_embed.img_size[0]
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x0 = block0_tokens(vit, images)
        rec = CalibrationRecorder(vit, torch.float32)
        rec.run(x0, torch.ones(4, dtype=torch.bool))
    return InitContext(vit=vit, tokens=x0, stats=rec.tensors(), num_prefix=vit.num_prefix_tokens,
                       patch=vit.patch_embed.patch_size[0], device=torch.device("cpu"))


@pytest.mark.parametrize("width,depth,heads,regs", [(64, 2, 2, 0), (256, 12, 4, 4), (1024, 24, 16, 1)])
def test_shapes_across_model_sizes(width, depth, heads, regs) -> None:
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=1.0,
                            reg_tokens=regs, num_classes=0).eval()
    ctx = _synthetic_context(vit, 0)
    prefix = 1 + regs
    assert ctx.stats["calib.key_mean"].shape == (depth, prefix + 16, width // heads)
    for method in ("random", "spt", "vipamin"):
        for deep in (False, True):
            cfg = InitConfig(method=method, deep=deep, prompt_length=5, k=4, sample="kmeans")
            tensors, _ = run_init(ctx, cfg)
            expected = (depth, 5, width) if deep else (5, width)
            assert tensors["prompts"].shape == expected, (method, deep)
            assert torch.isfinite(tensors["prompts"]).all()
            model = PromptedViT(vit, tensors["prompts"], num_classes=3)
            with torch.no_grad():
                assert model(ctx.tokens[:2]).shape == (2, 3)


def test_bad_init_inputs_via_cli(cli, embeddings, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prompts = tmp_path / "prompts.safetensors"
    _init(embeddings, tmp_path, "prompts.safetensors", method="random", prompt_length=3)
    cases = [
        (["--embeddings", embeddings, "--backbone", "vit-tiny-reg-test"], "made with backbone 'vit-tiny-test'"),
        (["--embeddings", prompts], "is a prompts file, but --embeddings must be embeddings"),
        (["--embeddings", embeddings, "--k", "17"], "--k 17 is out of range: the backbone has 16 patch positions"),
        (["--embeddings", embeddings, "--lambda", "1.5"], "--lambda 1.5 is outside [0, 1]"),
        (["--embeddings", embeddings, "--lambda", "-0.1"], "outside [0, 1]"),
        (["--embeddings", embeddings, "--prompt-length", "0"], "--prompt-length 0 must be at least 1"),
        (["--embeddings", embeddings, "--method", "magic"], "unknown init method 'magic'"),
        (["--embeddings", embeddings, "--orth", "ln"], "unknown --orth 'ln'"),
        (["--embeddings", embeddings, "--orth-scale", "big"], "unknown --orth-scale 'big'"),
        (["--embeddings", embeddings, "--orth-rcond", "2"], "--orth-rcond '2' is not valid"),
        (["--embeddings", embeddings, "--orth-rcond", "tiny"], "--orth-rcond 'tiny' is not valid"),
        (["--embeddings", embeddings, "--method", "spt", "--sample", "median"], "unknown --sample 'median'"),
        ([], "init needs --embeddings FILE, or --backbone and --data"),
    ]
    for args, needle in cases:
        code, stdout, stderr = cli("init", *args, "--out", out / "p.safetensors")
        assert code == 2, (args, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and needle in stderr, (args, stderr)
        assert list(out.iterdir()) == [], args


def test_init_runs_embed_when_nothing_is_cached(cli, digits_dir, tmp_path) -> None:
    out = tmp_path / "p.safetensors"
    code, stdout, stderr = cli("init", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "val",
                               "--method", "vipamin", "--prompt-length", "7", "--out", out, "--explain")
    assert code == 0, stderr
    art = load_artifact(out, "prompts")
    assert art["prompts"].shape == (7, 64)
    assert art.meta["backbone"]["name"] == "vit-tiny-test" and art.meta["config"]["k"] == 8
    assert art.meta["embeddings"]["digest"]
    assert (tmp_path / "p.matches.png").exists()
    code, stdout, _ = cli("explain", out, "--json")
    import json

    summary = json.loads(stdout)
    assert summary["match_spread"]["positions"] == 16 and summary["orth_in_span"] < 1e-6


def _official_windows(n: int, p: int) -> list[tuple[int, int]]:
    """SPT's official remainder rule, written out: w = N div (P-1); P-1 windows of w tokens, then the
    last N mod w tokens, or the whole sequence when N mod w = 0."""
    w = n // (p - 1)
    out = [(i * w, i * w + w) for i in range(p - 1)]
    return out + [(n - n % w, n) if n % w else (0, n)]


@pytest.mark.parametrize(("how", "length"), [("mean", 7), ("max", 5), ("mean", 11)])
def test_spt_reference_windows_match_the_official_rule(embeddings, tmp_path, how, length) -> None:
    res = _init(embeddings, tmp_path, method="spt", sample=how, prompt_length=length, spt_windows="reference")
    tokens = load_artifact(embeddings)["tokens"][:, 1:].float()
    windows = _official_windows(16, length)
    # P = 7: w = 2, six windows cover 0..12, 16 mod 2 = 0 -> the 7th is all 16 tokens (ours: 12..16);
    # P = 5: w = 4, 16 mod 4 = 0 -> all 16 (ours has only 4 windows); P = 11: w = 1, all 16 again.
    assert windows[-1] == (0, 16) and len(windows) == length
    assert res.meta["info"]["windows"] == [list(w) for w in windows]
    assert res.meta["info"]["windows_rule"] == "reference" and res.meta["config"]["spt_windows"] == "reference"
    assert res.meta["info"]["candidates"] == tokens.shape[0] * length
    for prompt, (img, win) in zip(res.tensors["prompts"], res.tensors["spt.candidate_index"].tolist(), strict=True):
        lo, hi = windows[win]
        chunk = tokens[img, lo:hi]
        torch.testing.assert_close(prompt, chunk.mean(0) if how == "mean" else chunk.max(0).values,
                                   rtol=1e-6, atol=1e-6)
    ours = _init(embeddings, tmp_path, "o.safetensors", method="spt", sample=how, prompt_length=length)
    assert ours.meta["info"]["windows"] != res.meta["info"]["windows"]
    assert ours.meta["config"]["spt_windows"] == "ours"


def test_spt_reference_windows_remainder_and_refusals(embeddings, tmp_path, cli) -> None:
    from vipamin_cli.inits.spt import reference_window_bounds

    assert reference_window_bounds(11, 5) == [(0, 2), (2, 4), (4, 6), (6, 8), (10, 11)]  # 8, 9 in no window
    assert reference_window_bounds(196, 10)[-1] == (189, 196) == _official_windows(196, 10)[-1]
    for args, needle in [(["--sample", "mean", "--spt-windows", "official"], "unknown --spt-windows 'official'"),
                         (["--sample", "max", "--spt-windows", "reference", "-p", "18"],
                          "--spt-windows reference needs 2 <= P <= N + 1 (P = 18 prompts, N = 16"),
                         (["--sample", "mean", "--spt-windows", "reference", "-p", "1"], "needs 2 <= P")]:
        code, _, stderr = cli("init", "--embeddings", embeddings, "--method", "spt", *args,
                              "--out", tmp_path / "bad.safetensors")
        assert code == 2 and stderr.count("\n") == 1 and needle in stderr, (args, stderr)
        assert not (tmp_path / "bad.safetensors").exists()
    # P = N + 1 = 17 is the largest the rule allows: w = 1, 16 single tokens plus the whole sequence
    res = _init(embeddings, tmp_path, method="spt", sample="mean", prompt_length=17, spt_windows="reference")
    assert res.meta["info"]["windows"][-1] == [0, 16] and len(res.meta["info"]["windows"]) == 17


def test_calibration_and_init_run_in_float32_under_any_autocast(digits_dir, embeddings, tmp_path) -> None:
    """A caller's bf16 autocast (tune --precision bf16) reaches neither the calibration pass nor the init;
    both record precision float32."""
    config = EmbedConfig(dtype="bfloat16", calib_size=12, sample_images=0, seed=2)
    plain = load_artifact(embed_data("vit-tiny-test", str(digits_dir), split="val", config=config,
                                     out=tmp_path / "a.safetensors", use_cache=False).path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = load_artifact(embed_data("vit-tiny-test", str(digits_dir), split="val", config=config,
                                         out=tmp_path / "b.safetensors", use_cache=False).path)
    assert plain.meta["calibration"]["precision"] == "float32" == under.meta["calibration"]["precision"]
    for name in ("calib.block_input_mean", "calib.key_mean", "calib.attn_out_mean"):
        assert plain[name].dtype == torch.float32
        torch.testing.assert_close(under[name], plain[name], rtol=0, atol=0)
    outside = _init(embeddings, tmp_path, "o.safetensors", prompt_length=6, deep=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = _init(embeddings, tmp_path, "i.safetensors", prompt_length=6, deep=True)
        assert torch.is_autocast_enabled("cpu")  # the caller's context is restored afterwards
    torch.testing.assert_close(inside.tensors["prompts"], outside.tensors["prompts"], rtol=0, atol=0)
    assert inside.meta["precision"] == "float32"
    assert inside.meta["embeddings"]["calibration"]["precision"] == "float32"
    assert torch.get_float32_matmul_precision() == "highest"
