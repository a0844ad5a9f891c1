"""tune / benchmark --sweep halving: the rung rule, halving equals the rule applied to a grid's curves
(selection, pruning, survivors' weights), the recorded rung history, resume between rungs, bad input,
and bench/halving.py's offline replay."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.errors import Interrupted
from vipamin_cli.inits import InitConfig
from vipamin_cli.train import TuneConfig
from vipamin_cli.tune import SweepRule, TuneInputs, tune
from vipamin_cli.tuning.halving import (
    default_min_epochs,
    halving_schedule,
    keep_count,
    replay,
    score_at,
    survivors,
)

LRS, SEEDS = [0.1, 0.3, 1.0, 3.0], [42, 44]  # 4 configurations x 2 seeds; grid-batch 2: one group per configuration
HALVING = SweepRule("halving", 2, 1)  # rungs at epochs 1, 2, 3: 4 configurations -> 2 -> 1


# The rule, as pure functions.

def test_rung_schedule_and_default_first_rung() -> None:
    assert halving_schedule(10, 3, 1) == [1, 3, 9, 10]
    assert halving_schedule(9, 3, 1) == [1, 3, 9]
    assert halving_schedule(100, 3, 12) == [12, 36, 100]
    assert halving_schedule(10, 2, 10) == [10]
    assert default_min_epochs(100, 3) == 12  # ceil(100 / 9)
    assert default_min_epochs(10, 3, warmup_epochs=2) == 3  # past the warm-up (its first epoch trains at lr 0)
    assert default_min_epochs(4, 2, warmup_epochs=9) == 4  # at most --epochs
    assert [keep_count(n, 3) for n in (1, 2, 3, 4, 9, 10, 63)] == [1, 1, 1, 2, 3, 4, 21]
    assert SweepRule("halving").resolved(100, 0) == SweepRule("halving", 3, 12)
    assert SweepRule("halving", 2, 5).rungs(20) == [5, 10, 20]


def test_survivors_break_ties_as_selection_and_a_diverged_run_scores_zero() -> None:
    scores = {(0, 0.3, 0.0): 50.0, (0, 0.1, 0.0): 50.0, (0, 1.0, 0.0): 40.0, (1, 0.1, 0.0): 50.0, (0, 0.1, 0.01): 50.0}
    # 5 configurations, eta 2: keep 3; ties: the smaller lr, then the smaller weight decay, then the earlier init
    assert survivors(scores, 2) == [(0, 0.1, 0.0), (1, 0.1, 0.0), (0, 0.1, 0.01)]
    assert survivors(scores, 2, "larger-lr") == [(0, 0.3, 0.0), (0, 0.1, 0.0), (1, 0.1, 0.0)]
    assert survivors({(0, 1.0, 0.0): 10.0}, 3) == [(0, 1.0, 0.0)]  # at least one
    diverged = [{"loss": float("nan"), "diverged": True, "val_top1": 0.0}]
    assert score_at(diverged, 3) == 0.0
    with pytest.raises(ValueError, match="not validated"):
        score_at([{"loss": 1.0}], 1)


def test_replay_on_hand_made_curves() -> None:
    def run(*vals: float) -> list[dict[str, float]]:
        return [{"loss": 1.0, "val_top1": v} for v in vals]

    curves = {(0, 0.1, 0.0): [run(10, 20, 30, 40), run(10, 20, 30, 42)],  # slow starter, best at the end
              (0, 0.3, 0.0): [run(30, 40, 35, 35), run(30, 40, 35, 35)],
              (0, 1.0, 0.0): [run(20, 10, 50, 50), run(20, 10, 50, 50)],  # pruned at epoch 2 before its rise
              (0, 3.0, 0.0): [run(25, 30, 10, 10), run(25, 30, 10, 10)],
              (0, 9.0, 0.0): [run(5, 5, 5, 5), run(5, 5, 5, 5)]}
    rep = replay(curves, 4, 2, 1)
    # rung at epoch 1: scores 10, 30, 20, 25, 5 -> keep ceil(5/2) = 3: 0.3, 3.0, 1.0
    # rung at epoch 2: 40, 30, 10 -> keep 2: 0.3, 3.0;  epoch 4: 35 vs 10 -> 0.3
    assert rep.rungs == [1, 2, 4]
    assert rep.pruned_at == {(0, 0.1, 0.0): 0, (0, 9.0, 0.0): 0, (0, 1.0, 0.0): 1}
    assert rep.selected == (0, 0.3, 0.0)  # the grid would pick 1.0 (50): halving can miss a late riser
    assert rep.scores[(0, 3.0, 0.0)] == [25, 30, 10]
    assert rep.candidate_epochs == 10 * 1 + 6 * 1 + 4 * 2 and rep.grid_candidate_epochs == 40


# The engine: a real grid and a real halving sweep on the same candidates.

@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors",
                          use_cache=False, config=EmbedConfig(calib_size=64)).path for s in ("train", "val")}


def _inputs(emb) -> TuneInputs:
    return TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], init=InitConfig(method="random",
                                                                                           prompt_length=2))


def _run(emb, out, sweep=None, lrs=LRS, **kw):
    base = TuneConfig(epochs=3, warmup_epochs=0, prompt_dropout=0.0)
    return tune(_inputs(emb), base, lrs, [0.01], SEEDS, out, device="cpu", show_progress=False, grid_batch=2,
                sweep=sweep, **kw)


@pytest.fixture(scope="module")
def sweeps(emb, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return {"root": root, "grid": _run(emb, root / "grid.safetensors"),
            "halving": _run(emb, root / "halving.safetensors", HALVING)}


def _key(run):
    return (run["init_index"], run["config"]["lr"], run["config"]["weight_decay"])


def test_halving_selects_what_the_rule_selects_on_the_grid_curves(emb, sweeps) -> None:
    grid, halving = sweeps["grid"].sweep, sweeps["halving"].sweep
    curves: dict = {}
    for run in grid["runs"]:
        curves.setdefault(_key(run), []).append(run["history"])
    assert all(len(h) == 3 and all("val_top1" in e for e in h) for hs in curves.values() for h in hs)
    rep = replay(curves, 3, 2, 1)
    chosen = halving["chosen"]
    assert (chosen["init_index"], chosen["lr"], chosen["weight_decay"]) == rep.selected
    assert {_key(r): r["pruned_at_rung"] for r in halving["runs"]} == {k: rep.pruned_at.get(k) for k in curves}
    assert sorted(rep.pruned_at.values()) == [0, 0, 1]  # 4 -> 2 -> 1
    # every run trains as it would in the grid, up to where it stopped; its rung scores are the grid's
    for g, h in zip(grid["runs"], halving["runs"], strict=True):
        assert g["config"] == h["config"] and h["epochs_trained"] == len(h["history"])
        assert [{**e, "seconds": 0} for e in h["history"]] == [{**e, "seconds": 0} for e in
                                                              g["history"][:h["epochs_trained"]]]
        assert [s["score"] for s in h["rung_scores"]] == rep.scores[_key(h)]
    # the survivors' (the selected configuration's two seeds) final weights are the grid's, bit for bit:
    # the grid's runs of that configuration retrained alone (the same group of two seeds, the same history)
    lr = chosen["lr"]
    alone = _run(emb, sweeps["root"] / "alone.safetensors", lrs=[lr])
    assert [r["history"] for r in alone.sweep["runs"]] == [
        [{**e, "seconds": r["history"][j]["seconds"]} for j, e in enumerate(g["history"])]
        for r, g in zip(alone.sweep["runs"], [g for g in grid["runs"] if g["config"]["lr"] == lr], strict=True)]
    a = load_artifact(sweeps["root"] / "alone.safetensors")
    b = load_artifact(sweeps["root"] / "halving.safetensors")
    assert b.meta["selection"]["lr"] == lr and len(b.meta["runs"]) == 2
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_the_sweep_record_holds_mode_compute_and_rung_history(sweeps) -> None:
    root = sweeps["root"]
    grid = load_artifact(root / "grid.safetensors").meta["sweep"]
    halving = load_artifact(root / "halving.safetensors").meta["sweep"]
    assert halving == json.loads((root / "halving.sweep.json").read_text())
    assert {k: grid[k] for k in ("mode", "rungs", "candidate_epochs", "grid_candidate_epochs")} == {
        "mode": "grid", "rungs": [3], "candidate_epochs": 24, "grid_candidate_epochs": 24}
    assert {k: halving[k] for k in ("mode", "rungs", "eta", "min_epochs", "grid_candidate_epochs")} == {
        "mode": "halving", "rungs": [1, 2, 3], "eta": 2, "min_epochs": 1, "grid_candidate_epochs": 24}
    trained = sorted(r["epochs_trained"] for r in halving["runs"])
    assert trained == [1, 1, 1, 1, 2, 2, 3, 3] and halving["candidate_epochs"] == sum(trained) == 14
    for run in halving["runs"]:
        reached = run["epochs_trained"]
        assert [(s["rung"], s["epoch"]) for s in run["rung_scores"]] == [(r, e) for r, e in enumerate([1, 2, 3])
                                                                       if e <= reached]
        assert run["pruned_at_rung"] == (None if reached == 3 else len(run["rung_scores"]) - 1)
        for s in run["rung_scores"]:  # the run's val top-1 at the rung; the score: its configuration's mean
            assert s["val_top1"] == run["history"][s["epoch"] - 1]["val_top1"]
            mates = [r for r in halving["runs"] if _key(r) == _key(run)]
            assert s["score"] == pytest.approx(sum(m["history"][s["epoch"] - 1]["val_top1"] for m in mates) / 2)
    for run in grid["runs"]:
        assert run["epochs_trained"] == 3 and run["pruned_at_rung"] is None and len(run["rung_scores"]) == 1


def test_halving_resumes_at_the_end_of_a_rung_and_between_rungs(emb, sweeps, tmp_path) -> None:
    """Cut (a) after the last group's first epoch, before the first pruning; (b) in the second rung,
    after it. Each resumed run writes the uninterrupted run's checkpoint and record."""
    whole = load_artifact(sweeps["root"] / "halving.safetensors")
    for name, when in (("end", lambda i, st: i == 6 and st.epoch == 1), ("between", lambda i, st: st.epoch == 2)):
        def stop(first_index, state, *_, when=when):  # *_: the stage name, which this hook is handed
            if when(first_index, state):
                raise KeyboardInterrupt

        out = tmp_path / f"{name}.safetensors"
        with pytest.raises(Interrupted):
            _run(emb, out, HALVING, on_epoch=stop)
        book = load_artifact(tmp_path / f"{name}.partial.safetensors").meta["halving"]
        assert book["rung"] == (0 if name == "end" else 1) and (book["pruned"] == {}) == (name == "end")
        _run(emb, out, HALVING, resume=True)
        cut = load_artifact(out)
        assert cut.tensors.keys() == whole.tensors.keys()
        assert all(torch.equal(cut.tensors[k], whole.tensors[k]) for k in whole.tensors), name

        def record(meta):
            return [(r["pruned_at_rung"], r["epochs_trained"], r["rung_scores"], [h["loss"] for h in r["history"]])
                    for r in meta["sweep"]["runs"]]

        assert record(cut.meta) == record(whole.meta) and cut.meta["sweep"]["candidate_epochs"] == 14
        assert not (tmp_path / f"{name}.partial.safetensors").exists()


def test_a_diverged_candidate_scores_zero_and_is_pruned(emb, tmp_path) -> None:
    base = TuneConfig(epochs=3, warmup_epochs=0, prompt_dropout=0.0, batch_size=8)
    outcome = tune(_inputs(emb), base, [0.3, 1e32], [0.01], [42], tmp_path / "d.safetensors", device="cpu",
                   show_progress=False, sweep=HALVING)
    runs = {r["config"]["lr"]: r for r in outcome.sweep["runs"]}
    bad = runs[1e32]
    assert bad["diverged"] and bad["final_val_top1"] == 0.0 and bad["pruned_at_rung"] == 0
    assert bad["epochs_trained"] == 1 and bad["rung_scores"][0]["score"] == 0.0
    assert runs[0.3]["pruned_at_rung"] is None and runs[0.3]["epochs_trained"] == 3
    assert outcome.sweep["chosen"]["lr"] == 0.3 and outcome.sweep["candidate_epochs"] == 4


def test_info_and_the_sweep_table_show_the_rung_history(sweeps, cli, capsys, monkeypatch) -> None:
    code, stdout, stderr = cli("info", str(sweeps["root"] / "halving.safetensors"))
    assert code == 0, stderr
    assert "sweep rungs: halving sweep (eta 2, rungs at epochs [1, 2, 3]): 14 of 24 candidate-epochs" in stdout
    from vipamin_cli.tuning.checkpoint import render_sweep
    from vipamin_cli.ui import err_console

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("VIPAMIN_QUIET", raising=False)  # the tests run quiet
    err_console.cache_clear()  # the console reads COLUMNS when made; an earlier test may have made it
    try:
        render_sweep(sweeps["halving"].sweep)  # what tune prints on stderr after the sweep
    finally:
        err_console.cache_clear()
    table = capsys.readouterr().err
    assert "14 of 24 candidate-epochs" in table and "pruned at" in table
    for text in (stdout, table):  # the 6 pruned runs: "rung 1 (epoch 1)" x 4, "rung 2 (epoch 2)" x 2
        rows = [line for line in text.splitlines() if "0.01" in line and "rung" in line]
        assert len(rows) == 6, text
        assert sum("rung 1 (epoch 1)" in r for r in rows) == 4 and sum("rung 2 (epoch 2)" in r for r in rows) == 2
        survivors = [line for line in text.splitlines() if "0.01" in line and " 3 " in line and "3:" in line]
        assert len(survivors) == 2, text  # 3 epochs trained, a score at epoch 3


@pytest.mark.parametrize(("extra", "text"), [
    (["--sweep", "halving", "--eta", "1"], "--eta 1"),
    (["--sweep", "halving", "--eta", "0"], "--eta 0"),
    (["--sweep", "halving", "--min-epochs", "0"], "--min-epochs 0"),
    (["--sweep", "halving", "--min-epochs", "4"], "--min-epochs 4 is above --epochs 3"),
    (["--eta", "2"], "--eta 2 applies to --sweep halving only"),
    (["--min-epochs", "2"], "--min-epochs 2 applies to --sweep halving only"),
    (["--sweep", "fast"], "unknown --sweep 'fast'"),
])
def test_bad_sweep_options_are_refused(emb, tmp_path, cli, extra, text) -> None:
    out = tmp_path / "ck.safetensors"
    code, _, stderr = cli("tune", "-e", str(emb["train"]), "--val-embeddings", str(emb["val"]), "--lr", "0.1,1",
                          "--epochs", "3", "--warmup-epochs", "0", "-p", "2", "--device", "cpu", "--out", str(out),
                          *extra)
    assert code == 2 and text in stderr and stderr.count("\n") == 1, stderr
    assert list(tmp_path.iterdir()) == []


# benchmark and bench/halving.py

def test_benchmark_halving_cell_is_what_the_replay_of_its_grid_cell_predicts(tmp_path, cli) -> None:
    """A grid benchmark cell (VIPAMIN, 2 K x 2 lrs) replayed by bench/halving.py predicts the real
    halving cell: its selection and its candidate-epochs; results.json records the rung history."""
    from bench import halving as bench_halving
    from vipamin_cli.testbed.make import make_testbed

    make_testbed(tmp_path / "tb", seed=0, tasks=["mnist"], train_size=16, val_size=8, test_size=8)
    args = ["benchmark", "--suite", "testbed", "--root", str(tmp_path / "tb"), "--backbone", "vit-tiny-test",
            "--methods", "vipamin", "--preset", "quick", "--epochs", "3", "--warmup-epochs", "0", "--lr", "0.5,2",
            "--k", "2,4", "--seeds", "1", "-p", "2", "--calib-size", "8", "--device", "cpu", "--no-plot"]
    for extra, text in ((["--sweep", "halving", "--eta", "1"], "--eta 1"),
                        (["--sweep", "halving", "--min-epochs", "4"], "--min-epochs 4 is above --epochs 3"),
                        (["--eta", "2"], "--eta 2 applies to --sweep halving only")):
        code, _, stderr = cli(*args, "--out", str(tmp_path / "bad"), *extra)
        assert code == 2 and text in stderr and stderr.count("\n") == 1, (extra, stderr)
        assert not (tmp_path / "bad").exists()
    code, _, stderr = cli(*args, "--out", str(tmp_path / "grid"))
    assert code == 0, stderr
    code, _, stderr = cli(*args, "--out", str(tmp_path / "halving"), "--sweep", "halving", "--eta", "2",
                          "--min-epochs", "1")
    assert code == 0, stderr
    grid = json.loads((tmp_path / "grid" / "results.json").read_text())["cells"]["mnist/vipamin"]
    cell = json.loads((tmp_path / "halving" / "results.json").read_text())["cells"]["mnist/vipamin"]
    assert grid["sweep"]["mode"] == "grid" and grid["sweep"]["candidate_epochs"] == 4 * 3
    sweep = cell["sweep"]
    assert sweep["mode"] == "halving" and sweep["grid_candidate_epochs"] == 12 and len(sweep["candidates"]) == 1
    runs = sweep["candidates"][0]["runs"]  # one tune over both K x both lrs
    assert sorted(r["epochs_trained"] for r in runs) == [1, 1, 2, 3] and sweep["candidate_epochs"] == 7
    assert sorted((r["pruned_at_rung"] is None, len(r["rung_scores"])) for r in runs) == [
        (False, 1), (False, 1), (False, 2), (True, 3)]
    assert cell["signature"]["sweep"] == {"mode": "halving", "rungs": [1, 2, 3], "eta": 2, "min_epochs": 1}

    result = bench_halving.main([str(tmp_path / "grid" / "results.json"), "--eta", "2", "--min-epochs", "1",
                                 "--search", "--etas", "2"])
    row = result["sweeps"][0]
    assert row["name"] == "mnist/vipamin" and row["halving_candidate_epochs"] == 7 and row["rungs"] == [1, 2, 3]
    picked = cell["selected"]
    k = [c["init"]["k"] for c in grid["sweep"]["candidates"]]
    assert (k[row["halving_selected"][0]], row["halving_selected"][1]) == (picked["init"]["k"], picked["lr"])
    g = grid["selected"]
    assert (k[row["grid_selected"][0]], row["grid_selected"][1]) == (g["init"]["k"], g["lr"])
    assert row["agree"] == (row["grid_selected"] == row["halving_selected"])
    assert row["halving_selected_label"] == f"k {picked['init']['k']} lr {picked['lr']:g} wd {picked['weight_decay']:g}"
    with pytest.raises(SystemExit, match=r"no grid sweep in the records named \*/random,x$"):
        bench_halving.main([str(tmp_path / "grid" / "results.json"), "--cells", "*/random,x"])
    only = bench_halving.main([str(tmp_path / "grid" / "results.json"), "--cells", "*grid/results.json:*/vip*",
                               "--eta", "2", "--min-epochs", "1"])
    assert only["sweeps"] == [row]
    assert [(r["eta"], r["min_epochs"]) for r in sorted(result["search"], key=lambda r: r["min_epochs"])] == [
        (2, 1), (2, 2), (2, 3)]
    assert next(r for r in result["search"] if r["min_epochs"] == 3)["share"] == 1.0  # one rung: the grid
    assert math.isclose(next(r for r in result["search"] if r["min_epochs"] == 1)["share"], 7 / 12)
