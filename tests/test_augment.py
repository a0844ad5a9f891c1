"""FGVC training augmentation through the cache (`--augment fgvc --views V`) and the shared embedding options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.backbones import load_backbone
from vipamin_cli.data import open_dataset
from vipamin_cli.embed import EmbedConfig, block0_tokens, embed_data
from vipamin_cli.errors import Interrupted
from vipamin_cli.evaluate import evaluate
from vipamin_cli.train import TuneConfig, build_model, train_group, trainable_state, view_choice
from vipamin_cli.tune import TuneInputs, tune

AUG = EmbedConfig(calib_size=16, augment="fgvc", views=3, dtype="float32")


@pytest.fixture(scope="module")
def aug(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    out = {"train": embed_data("vit-tiny-test", str(digits_dir), split="train", out=root / "train.safetensors",
                               use_cache=False, config=AUG).path}
    for s in ("train", "val", "test"):
        out[f"plain-{s}"] = embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"plain-{s}.safetensors",
                                       use_cache=False, config=EmbedConfig(calib_size=16, dtype="float32")).path
    return out


def _by_hand(img: Image.Image, top: int, left: int, flip: int, mean, std) -> torch.Tensor:
    """VPT's FGVC train transform written out: resize 36x36 (32 / 0.875), crop 32 at (top, left), flip."""
    img = img.convert("RGB").resize((36, 36), Image.Resampling.BICUBIC).crop((left, top, left + 32, top + 32))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(mean, dtype=np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def test_views_are_the_seeded_crops_and_flips(aug, digits_dir) -> None:
    art = load_artifact(aug["train"], "embeddings")
    n = art["labels"].numel()
    views, params = art["views.tokens"], art["views.params"]
    assert views.shape[:2] == (n, 3) and views.shape[2:] == art["tokens"].shape[1:]
    assert params.shape == (n, 3, 3) and int(params[..., :2].max()) <= 4 and set(params[..., 2].unique().tolist()) \
        == {0, 1}
    meta = art.meta["augment"]
    assert meta["views"] == 3 and meta["resize"] == [36, 36] and meta["random_crop"] == 32
    # two views of one image, recomputed independently through the same frozen patch embedding
    backbone = load_backbone("vit-tiny-test")
    ds = open_dataset(str(digits_dir), split="train")
    spec = backbone.spec
    with torch.inference_mode():
        for i, v in ((0, 0), (7, 2)):
            top, left, flip = params[i, v].tolist()
            x = _by_hand(ds.load_image(i), top, left, flip, spec.mean, spec.std)
            expect = block0_tokens(backbone.model, x.unsqueeze(0))[0]
            torch.testing.assert_close(views[i, v], expect, rtol=1e-5, atol=1e-5)
    # the centre crop and the calibration statistics are those of the plain embedding
    plain = load_artifact(aug["plain-train"], "embeddings")
    assert torch.equal(art["tokens"], plain["tokens"])
    for k in ("calib.key_mean", "calib.block_input_mean", "calib.attn_out_mean"):
        assert torch.equal(art[k], plain[k])


def test_views_reproducible_from_the_seed_and_enter_the_cache_key(digits_dir, tmp_path) -> None:
    a = embed_data("vit-tiny-test", str(digits_dir), split="val", config=EmbedConfig(calib_size=8, augment="fgvc",
                                                                                      views=2))
    again = embed_data("vit-tiny-test", str(digits_dir), split="val", out=tmp_path / "again.safetensors",
                       use_cache=False, config=EmbedConfig(calib_size=8, augment="fgvc", views=2))
    other_seed = embed_data("vit-tiny-test", str(digits_dir), split="val", use_cache=False,
                            out=tmp_path / "seed1.safetensors",
                            config=EmbedConfig(calib_size=8, augment="fgvc", views=2, seed=1))
    ta, tb = load_artifact(a.path, "embeddings"), load_artifact(again.path, "embeddings")
    assert torch.equal(ta["views.tokens"], tb["views.tokens"]) and torch.equal(ta["views.params"], tb["views.params"])
    assert not torch.equal(ta["views.params"], load_artifact(other_seed.path, "embeddings")["views.params"])
    three = embed_data("vit-tiny-test", str(digits_dir), split="val", config=EmbedConfig(calib_size=8, augment="fgvc",
                                                                                          views=3))
    none = embed_data("vit-tiny-test", str(digits_dir), split="val", config=EmbedConfig(calib_size=8))
    keys = {r.meta["cache_key"] for r in (a, three, none)}
    assert len(keys) == 3 and not three.from_cache and not none.from_cache
    hit = embed_data("vit-tiny-test", str(digits_dir), split="val", config=EmbedConfig(calib_size=8, augment="fgvc",
                                                                                        views=2))
    assert hit.from_cache and hit.meta["cache_key"] == a.meta["cache_key"]


def test_view_draws_are_seeded_per_epoch() -> None:
    first, again, second = view_choice(50, 4, 42, 0), view_choice(50, 4, 42, 0), view_choice(50, 4, 42, 1)
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert not torch.equal(first, view_choice(50, 4, 44, 0)) and int(first.max()) == 3 and int(first.min()) == 0


def test_training_reads_the_drawn_view_of_each_image(aug) -> None:
    """Views that are all a copy of X train exactly as X does; real views train differently."""
    art = load_artifact(aug["train"], "embeddings")
    labels, views = art["labels"], art["views.tokens"]
    vit = load_backbone("vit-tiny-test").model
    cfg = TuneConfig(epochs=2, warmup_epochs=0, batch_size=16, lr=0.5)
    prompts = torch.zeros(4, 64)

    def run(train):
        model = build_model(vit, prompts, 10, cfg, "cls", (4, 4))
        train_group([model], train, None, [cfg], torch.device("cpu"))
        return trainable_state(model)

    x = views[:, 1].clone()
    copies = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    solo, via_views = run((x, labels)), run((art["tokens"], labels, copies))
    assert all(torch.equal(solo[k], via_views[k]) for k in solo)
    real = run((art["tokens"], labels, views))
    assert not torch.equal(real["head.weight"], solo["head.weight"])
    assert all(torch.equal(real[k], run((art["tokens"], labels, views))[k]) for k in real)


def test_tune_with_views_is_reproducible_resumable_and_eval_uses_the_centre_crop(aug, tmp_path) -> None:
    inputs = TuneInputs(embeddings=aug["train"], val_embeddings=aug["plain-val"])
    base = TuneConfig(epochs=3, warmup_epochs=0, batch_size=32)
    first = tune(inputs, base, [0.5], [0.01], [42], tmp_path / "a.safetensors", show_progress=False)
    second = tune(inputs, base, [0.5], [0.01], [42], tmp_path / "b.safetensors", show_progress=False)
    ta, tb = load_artifact(first.checkpoint, "checkpoint"), load_artifact(second.checkpoint, "checkpoint")
    assert all(torch.equal(ta[k], tb[k]) for k in ta.tensors)
    assert ta.meta["augment"]["sweep"]["views"] == 3
    plain = tune(TuneInputs(embeddings=aug["plain-train"], val_embeddings=aug["plain-val"]), base, [0.5], [0.01],
                 [42], tmp_path / "plain.safetensors", show_progress=False)
    tp = load_artifact(plain.checkpoint, "checkpoint")
    assert not torch.equal(ta["run0.head.weight"], tp["run0.head.weight"])

    def stop_after_one(run_index, state):
        if state.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        tune(inputs, base, [0.5], [0.01], [42], tmp_path / "r.safetensors", show_progress=False,
             on_epoch=stop_after_one)
    resumed = tune(inputs, base, [0.5], [0.01], [42], tmp_path / "r.safetensors", show_progress=False, resume=True)
    tr = load_artifact(resumed.checkpoint, "checkpoint")
    assert all(torch.equal(ta[k], tr[k]) for k in ta.tensors)
    # eval scores the centre-crop tokens: the same numbers from embeddings with or without views
    r_plain = evaluate(first.checkpoint, embeddings=aug["plain-train"])
    r_views = evaluate(first.checkpoint, embeddings=aug["train"])
    assert r_plain["runs"][0]["top1"] == r_views["runs"][0]["top1"]


def test_bad_augment_values_are_one_line_errors(digits_dir, tmp_path, cli) -> None:
    for args, needle in ((["--views", "0", "--augment", "fgvc"], "--views 0 must be at least 1"),
                         (["--views", "2"], "--views 2 needs --augment fgvc"),
                         (["--augment", "jitter"], "unknown --augment 'jitter'")):
        for command in (["embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--out", tmp_path / "e.st"],
                        ["tune", "--backbone", "vit-tiny-test", "--data", digits_dir, "--epochs", "1",
                         "--warmup-epochs", "0", "--out", tmp_path / "t.safetensors"]):
            code, _, stderr = cli(*command, *args)
            assert code == 2 and stderr.count("\n") == 1 and needle in stderr, (command, args, stderr)
    assert not list(tmp_path.iterdir())


def test_recipe_on_an_fgvc_json_source_turns_augmentation_on(digits_dir, tmp_path, cli) -> None:
    root = tmp_path / "fgvc"
    for split, per in (("train", 3), ("val", 1)):
        mapping = {}
        for c in range(10):
            for f in sorted((digits_dir / split / str(c)).glob("*.png"))[:per]:
                rel = f"images/{split}-{c}-{f.name}"
                (root / "images").mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(f.read_bytes())
                mapping[rel] = c
        (root / f"{split}.json").write_text(json.dumps(mapping))
    common = ["tune", "--backbone", "vit-tiny-test", "--data", root, "--split", "train", "--val", "val", "--epochs",
              "1", "--warmup-epochs", "0", "--lr", "0.1", "--k", "2", "--lambda", "0.5", "--calib-size", "8",
              "--seeds", "42"]
    code, out, err = cli(*common, "--recipe", "vipamin", "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    meta = load_artifact(tmp_path / "r.safetensors", "checkpoint").meta
    assert meta["augment"]["sweep"]["views"] == 8 and meta["augment"]["sweep"]["augment"] == "fgvc"
    code, out, err = cli(*common, "--recipe", "vipamin", "--augment", "none", "--out", tmp_path / "n.safetensors")
    assert code == 0 and load_artifact(tmp_path / "n.safetensors", "checkpoint").meta["augment"]["sweep"] is None
    code, out, err = cli(*common, "--out", tmp_path / "plain.safetensors")
    assert code == 0 and load_artifact(tmp_path / "plain.safetensors", "checkpoint").meta["augment"]["sweep"] is None


def test_init_tune_eval_share_the_embedding_options_and_find_embeds_entry(digits_dir, tmp_path, cli,
                                                                        _private_cache) -> None:
    def entries() -> set[str]:
        return {p.name for p in (_private_cache / "embeddings").glob("*.safetensors")}

    opts = ["--dtype", "float32", "--calib-size", "12", "--sample-images", "4", "--resize", "vtab"]
    code, out, err = cli("embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "train", *opts)
    assert code == 0, err
    made = load_artifact(out.strip(), "embeddings").meta["digest"]
    after_embed = entries()
    code, out, err = cli("init", "--method", "random", "--backbone", "vit-tiny-test", "--data", digits_dir,
                         "--split", "train", *opts, "--out", tmp_path / "p.safetensors")
    assert code == 0 and entries() == after_embed, err  # the entry embed made, nothing embedded again
    assert load_artifact(tmp_path / "p.safetensors", "prompts").meta["embeddings"]["digest"] == made
    code, out, err = cli("tune", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "train", *opts,
                         "--epochs", "1", "--warmup-epochs", "0", "--init", "random", "--out", tmp_path / "c.st")
    assert code == 0 and entries() == after_embed, err
    assert load_artifact(tmp_path / "c.st", "checkpoint").meta["embeddings"]["train"] == made
    code, out, err = cli("embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "test", *opts)
    assert code == 0
    with_test = entries()
    code, out, err = cli("eval", "--checkpoint", tmp_path / "c.st", "--data", digits_dir, "--split", "test", *opts,
                         "--json")
    assert code == 0 and entries() == with_test and len(with_test) == 2, err
    for command in ("init", "tune", "eval"):
        code, out, _ = cli(command, "--help")
        for option in ("--resize", "--dtype", "--views", "--augment", "--calib-size", "--sample-images",
                       "--workers", "--embed-batch-size"):
            assert option in out, (command, option)
