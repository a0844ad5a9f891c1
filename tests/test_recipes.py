"""Named recipes, init hyperparameters in the grid, final runs on a final split, `vipamin recipes`."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.inits import InitConfig
from vipamin_cli.recipes import RECIPES, VIPAMIN_INIT_GRID, VIPAMIN_LRS, VPT_LRS, VPT_WDS, plan
from vipamin_cli.train import TuneConfig, build_model, decay_groups, make_optimizer
from vipamin_cli.tune import TuneInputs, tune


@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors",
                          use_cache=False, config=EmbedConfig(calib_size=64)).path for s in ("train", "val", "test")}


def test_without_a_recipe_the_defaults_stay_and_equal_the_vipamin_recipe() -> None:
    p = plan(None)
    today = TuneConfig()
    for f in fields(TuneConfig):
        if f.name != "recipe":
            assert getattr(p.base, f.name) == getattr(today, f.name), f.name
    assert (p.lrs, p.weight_decays, p.seeds, p.init_grid) == ([0.1], [0.01], [42], [{}])
    v = plan("vipamin")
    for name in ("optimizer", "batch_size", "epochs", "warmup_epochs", "lr_scaling", "decay_groups", "arch"):
        assert getattr(v.base, name) == getattr(today, name), name
    assert v.lrs == list(VIPAMIN_LRS) and len(v.lrs) * len(v.init_grid) == 63  # the authors' 63-run sweep
    assert {(g["k"], g["lam"]) for g in v.init_grid} == {(k, lam) for k in (2, 8, 32, 128)
                                                          for lam in (0.0, 0.5)} | {(2, 1.0)}
    assert v.final_seeds == [42, 44, 82]


def test_a_recipe_sets_its_values_and_explicit_options_override() -> None:
    vapt = plan("vapt")
    assert (vapt.base.arch, vapt.base.optimizer, vapt.base.batch_size, vapt.base.momentum) == ("vapt", "sgd", 64, 0.9)
    assert (vapt.base.decay_groups, vapt.base.tie_break, vapt.base.prompt_dropout) == ("all-but-head-bias",
                                                                                        "larger-lr", 0.1)
    assert vapt.lrs == list(VPT_LRS) and vapt.weight_decays == list(VPT_WDS) and len(vapt.final_seeds) == 5
    assert vapt.prompt_length == 10
    spt = plan("spt")
    assert (spt.base.schedule_step, spt.base.lr_floor, spt.base.ema, spt.base.drop_last, spt.base.lr_scaling) == (
        "iteration", 1e-8, 0.9999, True, "none")
    assert spt.head_weight_decay_by_family == {"mae": 0.5, "default": 3.0}
    over = plan("vapt", optimizer="adamw", batch_size=8, lrs=[0.3], final_seeds=[1], tie_break="smaller-lr")
    assert (over.base.optimizer, over.base.batch_size, over.lrs, over.final_seeds, over.base.tie_break) == (
        "adamw", 8, [0.3], [1], "smaller-lr")
    assert over.base.decay_groups == "all-but-head-bias"  # what was not given still comes from the recipe
    assert over.resolved["batch_size"]["source"] == "option"
    assert over.resolved["decay_groups"]["source"].startswith("METHODS.md")
    assert plan("spt", head_weight_decay=0.1).head_weight_decay_by_family is None


def test_vapt_decay_groups_decay_everything_but_the_head_bias() -> None:
    from vipamin_cli.backbones import load_backbone

    bb = load_backbone("vit-tiny-test")
    cfg = plan("vapt", vapt_kernel=2).base
    model = build_model(bb.model, torch.zeros(10, bb.model.embed_dim), 3, cfg, "cls", bb.grid)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = decay_groups(model, cfg)
    assert groups["no_decay"] == ["head.bias"] and sorted(groups["decay"]) == sorted(set(trainable) - {"head.bias"})
    opt = make_optimizer(model, cfg.__class__(**{**cfg.__dict__, "weight_decay": 0.001}))
    assert [g["weight_decay"] for g in opt.param_groups if g["params"]] == [0.001, 0.0]
    vip = TuneConfig()  # VIPAMIN / VPT: prompts and weight matrices decay, biases do not
    m2 = build_model(bb.model, torch.zeros(5, bb.model.embed_dim), 3, vip, "cls", bb.grid)
    assert decay_groups(m2, vip)["no_decay"] == ["head.bias"]
    assert set(decay_groups(m2, vip)["decay"]) == {"prompts", "head.weight"}


def test_init_grid_sweep_equals_each_init_trained_alone(emb, tmp_path) -> None:
    base = TuneConfig(epochs=2, warmup_epochs=0)
    grid = [InitConfig(method="vipamin", prompt_length=4, k=k, lam=lam) for k, lam in ((2, 0.0), (4, 0.5))]
    both = tune(TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init_grid=grid), base, [0.5, 2.0],
                [0.01], [42], tmp_path / "g.safetensors", device="cpu", show_progress=False)
    runs = both.sweep["runs"]
    assert [(r["init_index"], r["config"]["lr"]) for r in runs] == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0)]
    assert [i["config"]["k"] for i in both.sweep["inits"]] == [2, 4]
    for index, init in enumerate(grid):
        alone = tune(TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init=init), base, [0.5, 2.0],
                     [0.01], [42], tmp_path / f"a{index}.safetensors", device="cpu", show_progress=False)
        for a, g in zip(alone.sweep["runs"], [r for r in runs if r["init_index"] == index], strict=True):
            assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in g["history"]], rel=1e-4)
            assert a["final_val_top1"] == pytest.approx(g["final_val_top1"], abs=1e-6)
    best = max(runs, key=lambda r: (r["final_val_top1"], -r["config"]["lr"], -r["init_index"]))
    assert (both.sweep["chosen"]["init_index"], both.sweep["chosen"]["lr"]) == (best["init_index"],
                                                                                 best["config"]["lr"])
    ckpt = load_artifact(both.checkpoint)
    assert ckpt.meta["sweep"]["runs"] == json.loads(json.dumps(runs)) and ckpt.meta["sweep_size"] == 4


def test_final_runs_train_on_the_final_split_once_per_seed(emb, tmp_path) -> None:
    final = load_artifact(emb["test"])  # stands in for train800val200: another split, another size
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], final_embeddings=emb["test"],
                        init=InitConfig(method="random", prompt_length=4))
    out = tune(inputs, TuneConfig(epochs=2, warmup_epochs=0), [0.5, 2.0], [0.01], [42], tmp_path / "f.safetensors",
               device="cpu", show_progress=False, final_seeds=[1, 2, 3])
    ckpt = load_artifact(out.checkpoint)
    assert ckpt.meta["final"]["num_images"] == final["labels"].numel() != load_artifact(emb["train"])["labels"].numel()
    assert [r["config"]["seed"] for r in ckpt.meta["runs"]] == [1, 2, 3]
    chosen = ckpt.meta["selection"]["lr"]
    assert all(r["config"]["lr"] == chosen for r in ckpt.meta["runs"]) and ckpt.meta["sweep_size"] == 2
    assert all(r["final_val_top1"] is None for r in ckpt.meta["runs"])  # no validation in the final stage
    assert len({float(ckpt[f"run{j}.head.weight"].sum()) for j in range(3)}) == 3  # one run per seed


def test_recipes_command_and_bad_values(cli) -> None:
    code, stdout, _ = cli("recipes", "--json")
    assert code == 0
    rows = json.loads(stdout)
    assert [r["name"] for r in rows] == list(RECIPES)
    for r in rows:
        assert all(v["source"] for v in r["values"].values()), r["name"]
    vip = next(r for r in rows if r["name"] == "vipamin")
    assert [tuple(sorted(g.items())) for g in vip["values"]["init_grid"]["value"]] == [
        tuple(sorted(g.items())) for g in VIPAMIN_INIT_GRID]
    for args, text in ((["--recipe", "nope"], "unknown --recipe 'nope'"), (["--k", "2,,8"], "--k '2,,8' has an empty"),
                       (["--sample", ","], "--sample is empty"), (["--final-split", "train800val200"],
                                                                   "--final-split needs --data")):
        code, _, stderr = cli("tune", "--embeddings", "x.safetensors", *args)
        assert code == 2 and stderr.count("\n") == 1 and text in stderr, (args, stderr)
    code, _, stderr = cli("recipes", "nope")
    assert code == 2 and "unknown --recipe 'nope'" in stderr
