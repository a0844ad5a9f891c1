"""Full fine-tuning (`--arch full`): the trained set, the checkpoint round trip, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.backbones import load_backbone
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.errors import Interrupted
from vipamin_cli.evaluate import evaluate
from vipamin_cli.train import (
    RunState,
    TuneConfig,
    build_model,
    make_optimizer,
    predict,
    prompt_side_parameters,
    train_group,
    trainable_state,
)
from vipamin_cli.tune import TuneInputs, load_runs, tune

GRID = (4, 4)  # vit-tiny-test: 32 px, patch 8


@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors",
                          use_cache=False, config=EmbedConfig(calib_size=16)).path for s in ("train", "val", "test")}


def _full_tune(emb, out, lrs=(0.005,), epochs=2, **kw):
    base = TuneConfig(arch="full", epochs=epochs, warmup_epochs=1, batch_size=32)
    inputs = TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"])
    return tune(inputs, base, list(lrs), [0.01], [42], out, device="cpu", show_progress=False, **kw)


@pytest.mark.parametrize(("pool", "norm_trained"), [("cls", True), ("mean-all", False)])
def test_full_model_trains_every_weight_after_block_zero(pool, norm_trained) -> None:
    vit = load_backbone("vit-tiny-test").model
    pretrained = {k: v.clone() for k, v in vit.state_dict().items()}
    config = TuneConfig(arch="full", lr=0.5, batch_size=256)
    model = build_model(vit, None, 10, config, pool, GRID)
    assert model.vit is not vit  # its own copy: the caller's backbone is never trained
    tokens = torch.randn(6, 17, 64, generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(model.train()(tokens), torch.arange(6)).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trained = {n for n, _ in model.named_parameters()
               if n.startswith(("vit.blocks.", "head.")) or (norm_trained and n.startswith("vit.norm."))}
    assert got == trained == {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("vit.") and not p.requires_grad}
    assert frozen == {"cls_token", "pos_embed", "patch_embed"} | (set() if norm_trained else {"norm"})
    assert set(trainable_state(model)) == trained  # what a checkpoint stores: never the embedding, no prompts
    assert prompt_side_parameters(config, 64, 4, GRID, 0, vit, pool) == sum(
        p.numel() for n, p in model.named_parameters() if n in trained and not n.startswith("head."))
    make_optimizer(model, config).step()
    after = model.vit.state_dict()
    for k, v in pretrained.items():
        assert torch.equal(vit.state_dict()[k], v), k  # the original backbone is untouched
        assert torch.equal(after[k], v) == (not any(f"vit.{k}" == n for n in trained)), k


def test_full_models_in_one_group_equal_solo_runs(emb) -> None:
    """train_group with full models (each owns its backbone) runs them one after another per step."""
    vit = load_backbone("vit-tiny-test").model
    art = load_artifact(emb["train"])
    train = (art["tokens"][:64].float(), art["labels"][:64])
    configs = [TuneConfig(arch="full", epochs=2, warmup_epochs=1, lr=lr, seed=s) for lr, s in ((0.005, 1), (0.01, 2))]
    group = [build_model(vit, None, 10, c, "cls", GRID) for c in configs]
    states = train_group(group, train, None, configs, torch.device("cpu"))
    for c, m, st in zip(configs, group, states, strict=True):
        solo = build_model(vit, None, 10, c, "cls", GRID)
        solo_state = train_group([solo], train, None, [c], torch.device("cpu"))[0]
        assert [h["loss"] for h in st.history] == pytest.approx([h["loss"] for h in solo_state.history], rel=1e-5)
        for k, v in trainable_state(solo).items():
            torch.testing.assert_close(trainable_state(m)[k], v, rtol=1e-4, atol=1e-6)
    assert isinstance(states[0], RunState) and states[0].epoch == 2


def test_full_checkpoint_round_trip_and_eval_equal_the_in_memory_model(emb, tmp_path, cli) -> None:
    outcome = _full_tune(emb, tmp_path / "full.safetensors")
    model = outcome.models[0]
    ckpt = load_artifact(outcome.checkpoint, "checkpoint")
    names = {k.split(".", 1)[1] for k in ckpt.tensors}
    assert {k for k in names if not k.startswith("vit.blocks.")} == {"vit.norm.weight", "vit.norm.bias",
                                                                      "head.weight", "head.bias"}
    assert all(k.startswith("run0.") for k in ckpt.tensors)
    meta = ckpt.meta
    vit = load_backbone("vit-tiny-test").model
    assert meta["arch"] == "full" and meta["runs"][0]["config"]["arch"] == "full"
    assert meta["backbone"]["weights_fingerprint"] == load_backbone("vit-tiny-test").fingerprint
    assert meta["init"]["method"] is None and meta["prompt_side_parameters"] == sum(
        p.numel() for n, p in vit.named_parameters() if n.startswith(("blocks.", "norm.")))
    changed = [k for k in names if k.startswith("vit.") and not torch.equal(ckpt[f"run0.{k}"], vit.state_dict()[k[4:]])]
    assert len(changed) == len(names) - 2  # every stored backbone weight was trained (the head is new)
    test = load_artifact(emb["test"])
    expected = predict(model, test["tokens"], torch.device("cpu"))
    rebuilt = load_runs(ckpt, vit)[0]
    assert torch.equal(predict(rebuilt, test["tokens"], torch.device("cpu")), expected)
    code, stdout, stderr = cli("eval", "--checkpoint", outcome.checkpoint, "--embeddings", emb["test"], "--json")
    assert code == 0, stderr
    run = json.loads(stdout)["runs"][0]
    assert run["top1"] == pytest.approx(float((expected.argmax(1) == test["labels"]).float().mean()) * 100)
    assert evaluate(outcome.checkpoint, embeddings=emb["test"], device="cpu")["runs"][0]["top1"] == run["top1"]


def test_full_resume_equals_uninterrupted_and_sweep_points_start_from_the_pretrained_weights(emb, tmp_path) -> None:
    _full_tune(emb, tmp_path / "whole.safetensors", lrs=(0.001, 0.005), epochs=2, grid_batch=2)

    def stop(run_index, state):
        if run_index == 1 and state.epoch == 1:
            raise KeyboardInterrupt

    out = tmp_path / "cut.safetensors"
    with pytest.raises(Interrupted, match="--resume"):
        _full_tune(emb, out, lrs=(0.001, 0.005), epochs=2, grid_batch=2, on_epoch=stop)
    partial = load_artifact(tmp_path / "cut.partial.safetensors")
    assert partial.meta["signature"]["grid_batch"] == 1  # full fine-tuning: one configuration at a time
    assert partial.meta["current"]["indices"] == [1] and len(partial.meta["done"]) == 1
    assert any(k.startswith("cur0.optim.") for k in partial.tensors)
    assert any(k.startswith("cur0.vit.blocks.") for k in partial.tensors)
    _full_tune(emb, out, lrs=(0.001, 0.005), epochs=2, grid_batch=2, resume=True)
    a, b = load_artifact(tmp_path / "whole.safetensors"), load_artifact(out)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    def curves(art):
        return [[(h["loss"], h["val_top1"]) for h in r["history"]] for r in art.meta["sweep"]["runs"]]

    assert curves(a) == curves(b)
    # the second sweep point trained after the first and still equals a run of its own: each point starts
    # from the pretrained weights (its own copy), nothing leaks from one fine-tune into the next
    solo = _full_tune(emb, tmp_path / "solo.safetensors", lrs=(0.005,), epochs=2)
    second = a.meta["sweep"]["runs"][1]
    assert second["config"]["lr"] == 0.005
    assert [(h["loss"], h["val_top1"]) for h in second["history"]] == [
        (h["loss"], h["val_top1"]) for h in solo.sweep["runs"][0]["history"]]


@pytest.mark.parametrize(("extra", "text"), [
    (["--prompts", "p.safetensors"], "--prompts p.safetensors makes no sense with --arch full"),
    (["--init", "vipamin"], "--init makes no sense with --arch full"),
    (["--k", "2,8"], "--k / --lambda / --sample / --init-seed makes no sense with --arch full"),
    (["--prompt-length", "5"], "--prompt-length makes no sense with --arch full"),
    (["--prompt-dropout", "0.1"], "--prompt-dropout makes no sense with --arch full"),
])
def test_full_bad_inputs(emb, tmp_path, cli, extra, text) -> None:
    code, _, stderr = cli("tune", "--embeddings", emb["train"], "--arch", "full", "--epochs", "1", "--device", "cpu",
                          "--out", tmp_path / "ck.safetensors", *extra)
    assert code == 2 and stderr.count("\n") == 1 and text in stderr, stderr
    assert not list(tmp_path.iterdir())


def test_vpt_full_recipe_listed_with_its_sources(cli) -> None:
    code, stdout, stderr = cli("recipes", "vpt-full", "--json")
    assert code == 0, stderr
    values = json.loads(stdout)[0]["values"]
    assert values["arch"]["value"] == "full" and values["optimizer"]["value"] == "adamw"
    assert values["lrs"]["value"] == [0.005, 0.001, 0.0005, 0.0001]
    assert values["weight_decays"]["value"] == [0.01, 0.001, 0.0001, 0.0]
    assert (values["batch_size"]["value"], values["warmup_epochs"]["value"], values["epochs"]["value"]) == (384, 5, 100)
    assert values["final_seeds"]["value"] == [42, 44, 82, 100, 800]
    assert all("docs/methods.md §8" in values[k]["source"] for k in ("arch", "optimizer", "lrs", "batch_size"))


def test_full_memory_estimate_against_the_saved_tensors_and_the_refusal(monkeypatch) -> None:
    """The pre-flight estimate's activation term against autograd's saved tensors, counted directly."""
    from vipamin_cli import validate
    from vipamin_cli.errors import InputError
    from vipamin_cli.full import FullViT, check_memory, full_memory

    vit = load_backbone("vit-tiny-test").model
    model = FullViT(vit, pool="cls", num_classes=10).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randn(16, 17, 64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(tokens), torch.arange(16) % 10)
    loss.backward()
    estimate = full_memory(vit, "cls", 17, 16, "adamw")
    weights = sum(p.numel() for p in vit.parameters()) * 4
    trained = sum(p.numel() for n, p in vit.named_parameters() if n.startswith(("blocks.", "norm.")))
    activations = estimate - weights - trained * 12
    assert 1.0 <= activations / sum(saved.values()) <= 1.2
    monkeypatch.setattr(validate, "available_memory", lambda device=None: int(estimate) - 1)
    with pytest.raises(InputError, match="--batch-size 16 needs about .* pass a smaller --batch-size"):
        check_memory(vit, "cls", 17, TuneConfig(arch="full", batch_size=16), torch.device("cpu"))
    monkeypatch.setattr(validate, "available_memory", lambda device=None: int(estimate) + 1)
    check_memory(vit, "cls", 17, TuneConfig(arch="full", batch_size=16), torch.device("cpu"))
