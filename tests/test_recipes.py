"""Named recipes, init-configuration sweeps and final runs on train+val (tiny ViT, real digits)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.backbones import load_backbone
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.errors import Interrupted
from vipamin_cli.evaluate import evaluate
from vipamin_cli.inits import InitConfig
from vipamin_cli.recipes import RECIPES, plan
from vipamin_cli.train import TuneConfig, build_model, decay_groups, make_optimizer, predict, train_group
from vipamin_cli.tune import TuneInputs, select, tune, tune_plan


@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors",
                          use_cache=False, config=EmbedConfig(calib_size=32)).path for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def vtab(digits_dir, tmp_path_factory) -> Path:
    """A VTAB-1k style list-file folder made of real digits: 5 + 2 images per class."""
    root = tmp_path_factory.mktemp("vtab")
    lines: dict[str, list[str]] = {"train800": [], "val200": []}
    for split, name, n in (("train", "train800", 5), ("val", "val200", 2)):
        for c in range(10):
            for f in sorted((digits_dir / split / str(c)).glob("*.png"))[:n]:
                rel = f"images/{split}-{c}-{f.name}"
                (root / "images").mkdir(exist_ok=True)
                (root / rel).write_bytes(f.read_bytes())
                lines[name].append(f"{rel} {c}")
    (root / "train800.txt").write_text("\n".join(lines["train800"]) + "\n")
    (root / "val200.txt").write_text("\n".join(lines["val200"]) + "\n")
    (root / "train800val200.txt").write_text("\n".join(lines["train800"] + lines["val200"]) + "\n")
    (root / "test.txt").write_text("\n".join(lines["val200"]) + "\n")
    return root


QUICK = {"epochs": 2, "warmup_epochs": 1}


def test_no_recipe_keeps_todays_defaults_which_are_the_vipamin_recipe() -> None:
    default = plan()
    assert default.base == TuneConfig()
    assert (default.lrs, default.weight_decays, default.seeds, default.init_grid) == ([0.1], [0.01], [42], [{}])
    assert default.init_method == "vipamin" and default.prompt_length == 100
    vip = plan("vipamin")
    assert replace(vip.base, recipe=None) == TuneConfig()  # the recipe's training values are today's defaults
    assert len(vip.lrs) * len(vip.init_grid) == 63 and vip.final_seeds == [42, 44, 82]
    assert {(g["k"], g["lam"]) for g in vip.init_grid} == {(k, lam) for k in (2, 8, 32, 128) for lam in (0, .5)} | {
        (2, 1.0)}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_sets_each_value_and_options_override(name) -> None:
    recipe = RECIPES[name]
    p = plan(name)
    for field, value in recipe.config.items():
        assert getattr(p.base, field) == value.value, field
        assert p.resolved[field]["source"] == value.source and value.source
    assert p.lrs == list(recipe.lrs.value) and p.weight_decays == list(recipe.weight_decays.value)
    assert p.final_seeds == list(recipe.final_seeds.value) and p.base.recipe == name
    assert p.prompt_length == recipe.prompt_length.value[p.base.arch]
    assert p.init_method == recipe.init_method.value
    # Every TuneConfig field a recipe sets can be overridden explicitly.
    over = plan(name, batch_size=8, epochs=3, lrs=[0.5], ema=0.5, drop_last=False, optimizer="adamw")
    assert (over.base.batch_size, over.base.epochs, over.lrs, over.base.ema, over.base.drop_last) == (
        8, 3, [0.5], 0.5, False)
    assert over.resolved["batch_size"]["source"] == "option" and over.resolved["lrs"]["source"] == "option"
    assert over.base.warmup_epochs == recipe.config["warmup_epochs"].value


def test_specific_recipe_values() -> None:
    vapt, spt, vpt = plan("vapt"), plan("spt"), plan("vpt")
    assert (vapt.base.optimizer, vapt.base.momentum, vapt.base.batch_size, vapt.base.prompt_dropout) == (
        "sgd", 0.9, 64, 0.1)
    assert vapt.base.arch == "vapt" and vapt.prompt_length == 10 and vapt.base.tie_break == "larger-lr"
    assert vapt.lrs == [50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05] and vapt.weight_decays == [0.01, 0.001, 1e-4, 0]
    assert vapt.final_seeds == [42, 44, 82, 100, 800]
    assert vapt.base.effective_lr == vapt.base.lr * 64 / 256
    assert (spt.base.eps, spt.base.lr_scaling, spt.base.schedule_step, spt.base.lr_floor) == (
        1e-8, "none", "iteration", 1e-8)
    assert (spt.base.ema, spt.base.drop_last, spt.base.head_init) == (0.9999, True, "trunc-normal")
    assert spt.base.effective_lr == spt.base.lr and spt.head_weight_decay_by_family == {"mae": 0.5, "default": 3.0}
    assert vpt.base.optimizer == "sgd" and vpt.init_method == "random"
    # SPT's per-iteration cosine with its floor: warm-up from the floor, cosine down to it.
    cfg = replace(spt.base, lr=1.0, epochs=4, warmup_epochs=1)
    assert cfg.lr_at(0, 0, 10) == pytest.approx(1e-8)
    assert cfg.lr_at(0, 5, 10) == pytest.approx(1e-8 + (1 - 1e-8) * 0.5)
    assert cfg.lr_at(1, 0, 10) == pytest.approx(1.0)
    assert cfg.lr_at(2, 5, 10) == pytest.approx(1e-8 + (1 - 1e-8) * 0.5)  # halfway through 30 cosine steps
    assert cfg.lr_at(3, 9, 10) > 1e-8


def test_vapt_decay_groups_match_methods_and_optimizer_settings() -> None:
    vit = load_backbone("vit-tiny-test").model
    cfg = plan("vapt").base
    model = build_model(vit, torch.zeros(3, 64), 10, cfg, "cls", (4, 4))
    groups = decay_groups(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # docs/methods.md §5: every trainable tensor except the head bias decays (LayerNorms and biases included).
    assert groups["no_decay"] == ["head.bias"] and groups["head"] == []
    assert sorted(groups["decay"]) == sorted(n for n in trainable if n != "head.bias")
    assert any("norm.bias" in n for n in groups["decay"]) and any(n.endswith(".bias") for n in groups["decay"])
    opt = make_optimizer(model, replace(cfg, weight_decay=0.001))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [0.001, None, 0.0]
    # VIPAMIN's groups: prompts and weight matrices; SPT's head weight gets its own decay.
    vip = TuneConfig(arch="vapt")
    g = decay_groups(build_model(vit, torch.zeros(3, 64), 10, vip, "cls", (4, 4)), vip)
    assert "head.bias" in g["no_decay"] and any("norm" in n for n in g["no_decay"]) and "prompts" in g["decay"]
    spt = replace(plan("spt").base, head_weight_decay=0.5)
    model = build_model(vit, torch.zeros(3, 64), 10, spt, "cls", (4, 4))
    opt = make_optimizer(model, spt)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.5
    assert opt.param_groups[0]["eps"] == 1e-8 and decay_groups(model, spt)["head"] == ["head.weight"]


def test_spt_ema_weights_are_what_eval_uses(emb, tmp_path) -> None:
    cfg = replace(plan("spt").base, epochs=2, warmup_epochs=1, lr=0.01, ema=0.5, batch_size=64, head_weight_decay=0.5)
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init=InitConfig(method="random",
                                                                                         prompt_length=4))
    outcome = tune(inputs, cfg, [0.01], [0.01], [42], tmp_path / "ck.safetensors", device="cpu", show_progress=False)
    ckpt = load_artifact(outcome.checkpoint)
    assert ckpt.meta["runs"][0]["config"]["ema"] == 0.5
    # The same run again, without an EMA, averaging the weights by hand after every step.
    train = load_artifact(emb["train"])
    train_xy = (train["tokens"], train["labels"])
    prompts = load_artifact(tmp_path / "ck.prompts.safetensors")["prompts"]
    plain = replace(cfg, ema=0.0)
    model = build_model(load_backbone("vit-tiny-test").model, prompts, 10, plain, "cls", (4, 4))
    shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def average(n, losses):
        for name, p in model.named_parameters():
            if name in shadow:
                shadow[name] = 0.5 * shadow[name] + 0.5 * p.detach()

    state = train_group([model], train_xy, None, [plain], torch.device("cpu"), on_step=average)[0]
    assert len(state.history) == 2
    assert 240 // 64 == 3  # drop_last: 3 steps per epoch, the 48 leftover images dropped
    for name, value in shadow.items():
        torch.testing.assert_close(ckpt[f"run0.{name}"], value, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(ckpt["run0.prompts"], model.prompts.detach())  # EMA != live weights
    test = load_artifact(emb["test"])
    result = evaluate(outcome.checkpoint, embeddings=emb["test"], device="cpu")
    with torch.no_grad():
        model.load_state_dict(shadow, strict=False)
    direct = float((predict(model, test["tokens"], torch.device("cpu")).argmax(1) == test["labels"]).float().mean())
    assert result["runs"][0]["top1"] == pytest.approx(100 * direct)


def _solo_init(emb, out, init, lrs, **cfg):
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init=init)
    return tune(inputs, TuneConfig(**(QUICK | cfg)), lrs, [0.01], [42], out, device="cpu", show_progress=False,
                grid_batch=1)


def test_init_config_sweep_equals_each_config_alone(emb, tmp_path) -> None:
    inits = [InitConfig(method="vipamin", prompt_length=4, k=k, lam=lam) for k, lam in ((2, 0.0), (8, 0.5))]
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init_grid=inits)
    grid = tune(inputs, TuneConfig(**QUICK), [0.5, 2.0], [0.01], [42], tmp_path / "grid.safetensors", device="cpu",
                show_progress=False)
    runs = grid.sweep["runs"]
    assert [(r["init_index"], r["config"]["lr"]) for r in runs] == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0)]
    assert [s["config"]["k"] for s in grid.sweep["inits"]] == [2, 8]
    for i, init in enumerate(inits):
        solo = _solo_init(emb, tmp_path / f"solo{i}.safetensors", init, [0.5, 2.0])
        torch.testing.assert_close(load_artifact(tmp_path / f"grid.prompts-{i}.safetensors")["prompts"],
                                   load_artifact(tmp_path / f"solo{i}.prompts.safetensors")["prompts"])
        for g, s in zip(runs[2 * i: 2 * i + 2], solo.sweep["runs"], strict=True):
            assert [h["loss"] for h in g["history"]] == pytest.approx([h["loss"] for h in s["history"]], rel=1e-4)
            assert g["final_val_top1"] == pytest.approx(s["final_val_top1"], abs=2.5)
    chosen = grid.sweep["chosen"]
    assert (chosen["init_index"], chosen["lr"], chosen["weight_decay"]) == select(runs)
    ckpt = load_artifact(grid.checkpoint)
    assert len(ckpt.meta["sweep"]["runs"]) == 4 and ckpt.meta["runs"][0]["init_index"] == chosen["init_index"]


def test_select_tie_breaks() -> None:
    runs = [{"config": {"lr": lr, "weight_decay": 0.0}, "final_val_top1": 50.0, "init_index": 0} for lr in (1, 2)]
    assert select(runs)[1] == 1 and select(runs, "larger-lr")[1] == 2


def test_final_split_trains_on_final_images_with_each_seed_and_resumes(vtab, tmp_path) -> None:
    def run(out, **kw):
        inputs = TuneInputs(backbone="vit-tiny-test", data=str(vtab), split="train800", val="val200",
                            final_split="train800val200", init=InitConfig(method="vipamin", prompt_length=4),
                            embed_config=EmbedConfig(calib_size=16))
        p = plan(lrs=[0.5, 2.0], final_seeds=[42, 44], batch_size=16, **QUICK)
        return tune_plan(inputs, p, out, device="cpu", show_progress=False, **kw)

    full = run(tmp_path / "full.safetensors")
    ckpt = load_artifact(full.checkpoint)
    assert ckpt.meta["final"]["num_images"] == 70 and ckpt.meta["final"]["split"] == "train800val200"
    assert [r["config"]["seed"] for r in ckpt.meta["runs"]] == [42, 44]
    assert ckpt.meta["runs"][0]["config"]["lr"] == ckpt.meta["selection"]["lr"]
    assert len(ckpt.meta["sweep"]["runs"]) == 2 and ckpt.meta["recipe"]["name"] is None
    assert ckpt.meta["init"]["embeddings"] == ckpt.meta["final"]["embeddings"]  # init from the final split
    assert all(r["final_val_top1"] is None for r in ckpt.meta["runs"])
    # The final runs equal a plain run on the final split's 70 images (one epoch: ceil(70 / 16) = 5 steps).
    final_emb = embed_data("vit-tiny-test", str(vtab), split="train800val200", config=EmbedConfig(calib_size=16))
    assert load_artifact(final_emb.path)["labels"].numel() == 70
    lr = ckpt.meta["selection"]["lr"]
    # Each final seed redrew its init with that seed (the authors' global seeding): one prompts file per seed.
    assert [r["init_seed"] for r in ckpt.meta["runs"]] == [42, 44] and ckpt.meta["init_seed"] == "the training seed"
    for j, seed in enumerate((42, 44)):
        prompts = tmp_path / f"full.prompts-final-s{seed}.safetensors"
        alone = tune(TuneInputs(embeddings=final_emb.path, prompts=prompts), TuneConfig(batch_size=16, **QUICK), [lr],
                     [0.01], [seed], tmp_path / f"alone{seed}.safetensors", device="cpu", show_progress=False)
        other = load_artifact(alone.checkpoint)
        for k in other.tensors:
            torch.testing.assert_close(ckpt[k.replace("run0.", f"run{j}.")], other[k], msg=k)
    result = evaluate(full.checkpoint, backbone="vit-tiny-test", data=str(vtab), split="test",
                      embed_config=EmbedConfig(calib_size=16), device="cpu")
    assert [r["seed"] for r in result["runs"]] == [42, 44] and "std" in result["summary"]["top1"]

    # Interrupt once in the sweep and once in the final stage; the resumed result is the same.
    stops = {("sweep", 1), ("final", 1)}

    def stop(first, state, stage):
        if (stage, state.epoch) in stops:
            stops.discard((stage, state.epoch))
            raise KeyboardInterrupt

    out = tmp_path / "cut.safetensors"
    with pytest.raises(Interrupted):
        run(out, on_epoch=stop)
    partial = tmp_path / "cut.partial.safetensors"
    assert load_artifact(partial).meta["stage"] == "sweep"
    with pytest.raises(Interrupted):
        run(out, on_epoch=stop, resume=True)
    assert load_artifact(partial).meta["stage"] == "final"
    run(out, resume=True)
    cut = load_artifact(out)
    assert cut.tensors.keys() == ckpt.tensors.keys()
    for k in ckpt.tensors:
        assert torch.equal(cut[k], ckpt[k]), k
    assert not partial.exists()


def test_recipes_command_lists_every_value_with_source(cli) -> None:
    code, stdout, stderr = cli("recipes", "--json")
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert [r["name"] for r in rows] == ["vipamin", "vpt", "spt", "vapt", "vpt-full"]
    for r in rows:
        assert all(v["source"] for v in r["values"].values())
        assert {"optimizer", "batch_size", "epochs", "lrs", "weight_decays", "final_seeds", "tie_break", "ema",
                "decay_groups", "drop_last", "head_init", "prompt_length"} <= set(r["values"])
    code, stdout, _ = cli("recipes", "vapt")
    assert code == 0 and "all-but-head-bias" in stdout


def test_cli_recipe_with_override_recorded_in_checkpoint(emb, tmp_path, cli) -> None:
    out = tmp_path / "vapt.safetensors"
    code, _, stderr = cli("tune", "--recipe", "vapt", "--embeddings", emb["train"], "--val-embeddings", emb["val"],
                          "--lr", "1", "--weight-decay", "0.001", "--epochs", "1", "--warmup-epochs", "0",
                          "-p", "3", "--out", out)
    assert code == 0, stderr
    meta = load_artifact(out).meta
    config = meta["runs"][0]["config"]
    assert (config["optimizer"], config["batch_size"], config["decay_groups"], config["recipe"]) == (
        "sgd", 64, "all-but-head-bias", "vapt")
    assert (config["epochs"], config["lr"], config["weight_decay"], meta["arch"]) == (1, 1.0, 0.001, "vapt")
    values = meta["recipe"]["values"]
    assert meta["recipe"]["name"] == "vapt" and values["epochs"]["source"] == "option"
    assert "docs/methods.md §5 and §7" in values["batch_size"]["source"]
    assert meta["init"]["method"] == "random"


@pytest.mark.parametrize("args, needle", [
    (["--recipe", "nope"], "unknown --recipe 'nope'"),
    (["--lr", ","], "--lr is empty"),  # as --sample: no value at all
    (["--k", ""], "--k is empty"),
    (["--sample", ","], "--sample is empty"),
    (["--seeds", "1,,2"], "--seeds '1,,2' has an empty item"),
    (["--ema", "1.5"], "--ema 1.5"),
    (["--tie-break", "coin"], "unknown --tie-break"),
    (["--final-split", "train800val200"], "--final-split needs --data"),
])
def test_bad_values_one_line_exit_2(emb, tmp_path, cli, args, needle) -> None:
    out = tmp_path / "bad.safetensors"
    code, _, stderr = cli("tune", "--embeddings", emb["train"], "--val-embeddings", emb["val"], "--epochs", "1",
                          "--warmup-epochs", "0", *args, "--out", out)
    assert code == 2 and needle in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_missing_final_split_is_refused(vtab, tmp_path, cli) -> None:
    code, _, stderr = cli("tune", "--backbone", "vit-tiny-test", "--data", vtab, "--split", "train800", "--val",
                          "val200", "--final-split", "trainval9", "--epochs", "1", "--warmup-epochs", "0",
                          "--calib-size", "16", "--out", tmp_path / "x.safetensors")
    assert code == 2 and "trainval9" in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_new_options_have_help_with_example(cli) -> None:
    import inspect
    import typing

    from vipamin_cli.cli import tune as tune_cmd

    hints = typing.get_type_hints(tune_cmd, include_extras=True)
    new = ("final_split", "final_embeddings", "recipe", "init_seed", "k", "lam", "sample", "lr_scaling",
           "schedule_step", "lr_floor", "decay_groups", "head_weight_decay", "ema", "drop_last", "tie_break", "seeds")
    for name in new:
        option = hints[name].__metadata__[0]
        assert "E.g." in option.help, name
    assert inspect.signature(tune_cmd).parameters["recipe"].default is None
    code, stdout, _ = cli("tune", "--help")
    assert code == 0 and "--recipe" in stdout and "--final-split" in stdout
    assert {f.name for f in fields(TuneConfig)} >= {"ema", "decay_groups", "head_weight_decay", "tie_break"}


def test_spt_recipe_uses_the_mae_head_for_mae_backbones_only() -> None:
    from vipamin_cli.recipes import for_backbone

    p = plan("spt")
    assert for_backbone(p, "mae").pool == "mean-all-norm" and for_backbone(p, "mae").head_weight_decay == 0.5
    assert for_backbone(p, "moco-v3").pool is None and for_backbone(p, "moco-v3").head_weight_decay == 3.0
    assert p.resolved["pool"]["value"] == {"mae": "mean-all-norm"} and "SPT" in p.resolved["pool"]["source"]
    given = plan("spt", pool="cls")
    assert for_backbone(given, "mae").pool == "cls" and given.resolved["pool"]["source"] == "option"
    assert for_backbone(plan("vipamin"), "mae").pool is None
