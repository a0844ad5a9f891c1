"""Each training seed redraws its init (the authors' global seeding); --init-seed pins one draw (issue 22, 6a)."""

from __future__ import annotations

import math

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.inits import InitConfig
from vipamin_cli.inits.seeding import init_slots
from vipamin_cli.train import TuneConfig
from vipamin_cli.tune import TuneInputs, tune

P, D, PATCH = 3, 64, 8  # vit-tiny-test: width 64, patch 8


@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_emb")
    cfg = EmbedConfig(dtype="float32", calib_size=16, sample_images=4)
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors", use_cache=False,
                          config=cfg).path for s in ("train", "val")}


def _vpt_draw(seed: int) -> torch.Tensor:
    """VPT's random prompts written out independently: uniform in +-sqrt(6 / (3 p^2 + D))."""
    bound = math.sqrt(6.0 / (3 * PATCH * PATCH + D))
    return torch.empty(P, D).uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))


def test_each_training_seed_redraws_the_init(emb, tmp_path) -> None:
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"],
                        init=InitConfig(method="random", prompt_length=P))
    out = tmp_path / "f.safetensors"
    outcome = tune(inputs, TuneConfig(epochs=1, warmup_epochs=0), [1.0], [0.01], [42, 44], out, device="cpu",
                   show_progress=False)
    meta = load_artifact(outcome.checkpoint).meta
    assert meta["init_seed"] == "the training seed"
    assert [(r["config"]["seed"], r["init_seed"]) for r in meta["runs"]] == [(42, 42), (44, 44)]
    for seed, run in zip((42, 44), meta["runs"], strict=True):
        drawn = load_artifact(tmp_path / f"f.prompts-s{seed}.safetensors")
        torch.testing.assert_close(drawn["prompts"], _vpt_draw(seed), rtol=0, atol=0)
        assert run["init_digest"] == drawn.meta["digest"]


def test_each_final_seed_redraws_the_final_splits_init(emb, tmp_path) -> None:
    """The final stage (tuning/final.py) draws one init per final seed from the final split, as the sweep does."""
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], final_embeddings=emb["val"],
                        init=InitConfig(method="random", prompt_length=P))
    out = tmp_path / "g.safetensors"
    tune(inputs, TuneConfig(epochs=1, warmup_epochs=0), [1.0], [0.01], [42], out, device="cpu",
         show_progress=False, final_seeds=[44, 82])
    meta = load_artifact(out).meta
    assert [r["init_seed"] for r in meta["sweep"]["runs"]] == [42]
    assert [(r["config"]["seed"], r["init_seed"]) for r in meta["runs"]] == [(44, 44), (82, 82)]
    for seed, run in zip((44, 82), meta["runs"], strict=True):
        drawn = load_artifact(tmp_path / f"g.prompts-final-s{seed}.safetensors")
        torch.testing.assert_close(drawn["prompts"], _vpt_draw(seed), rtol=0, atol=0)
        assert run["init_digest"] == drawn.meta["digest"]
    assert meta["final"]["init"]["file"] == str(tmp_path / "g.prompts-final-s44.safetensors")


def test_init_seed_pins_one_draw_for_every_run(emb, tmp_path, cli) -> None:
    out = tmp_path / "p.safetensors"
    code, _, stderr = cli("tune", "--embeddings", emb["train"], "--val-embeddings", emb["val"], "--init", "random",
                          "-p", P, "--init-seed", "7", "--seeds", "42,44", "--lr", "1", "--epochs", "1",
                          "--warmup-epochs", "0", "--device", "cpu", "--compile", "off", "--out", out)
    assert code == 0, stderr
    meta = load_artifact(out).meta
    assert meta["init_seed"] == "pinned (--init-seed)" and [r["init_seed"] for r in meta["runs"]] == [7, 7]
    torch.testing.assert_close(load_artifact(tmp_path / "p.prompts.safetensors")["prompts"], _vpt_draw(7),
                               rtol=0, atol=0)
    assert not list(tmp_path.glob("p.prompts-s*.safetensors"))


def test_slots_one_init_per_candidate_and_seed() -> None:
    inits = [InitConfig(k=2), InitConfig(k=8)]
    slots = init_slots(inits, [0, 0, 1, 1], [42, 44, 42, 44], follow=True, numbered=True)
    assert [(c.k, c.seed) for c in slots.configs] == [(2, 42), (2, 44), (8, 42), (8, 44)]
    assert slots.of_point == [0, 1, 2, 3] and slots.suffixes == ["-0-s42", "-0-s44", "-1-s42", "-1-s44"]
    pinned = init_slots(inits, [0, 0, 1, 1], [42, 44, 42, 44], follow=False, numbered=True)
    assert [(c.k, c.seed) for c in pinned.configs] == [(2, 0), (8, 0)] and pinned.of_point == [0, 0, 1, 1]
    assert pinned.suffixes == ["-0", "-1"] and pinned.first_slot(1) == 1
