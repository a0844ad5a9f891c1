"""`vipamin benchmark` on two tiny testbed tasks: results.json, the table, the plot, resume, bad input."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

SMALL = dict(train_size=16, val_size=8, test_size=12)


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vipamin_cli.testbed.make import make_testbed

    root = tmp_path_factory.mktemp("testbed")
    make_testbed(root, seed=0, tasks=["mnist", "orientation"], **SMALL)
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["benchmark", "--suite", "testbed", "--root", str(root), "--backbone", "vit-tiny-test",
            "--methods", "random,vipamin,linear", "--preset", "quick", "--epochs", "1", "--warmup-epochs", "0",
            "--lr", "0.5,2", "--seeds", "1,2", "-p", "4", "--calib-size", "8", "--device", "cpu",
            "--out", str(out), *extra]


def test_benchmark_writes_results_table_and_plot_and_skips_finished_cells(tiny_testbed, tmp_path, cli) -> None:
    out = tmp_path / "bench"
    code, stdout, stderr = cli(*_args(tiny_testbed, out))
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == {f"{t}/{m}" for t in ("mnist", "orientation")
                                     for m in ("random", "vipamin", "linear")}
    for key, cell in results["cells"].items():
        runs = cell["final"]["runs"]
        assert [r["seed"] for r in runs] == [1, 2], key
        assert cell["test_top1"]["mean"] == pytest.approx(statistics.fmean(r["test_top1"] for r in runs))
        assert cell["test"]["num_samples"] == SMALL["test_size"]
        assert cell["selected"]["lr"] in (0.5, 2.0) and cell["timing"]["total_s"] > 0
        if cell["method"] != "linear":  # the final runs trained on train800val200 (16 + 8 images)
            assert all(len(r["history"]) == 1 for r in runs)
    table = (out / "table.md").read_text()
    assert table == stdout
    row = next(line for line in table.splitlines() if line.startswith("| vipamin |"))
    numbers = [float(x) for x in re.findall(r"(\d+\.\d+) ±", row)]
    assert numbers == pytest.approx([round(results["cells"][f"{t}/vipamin"]["test_top1"]["mean"], 2)
                                     for t in ("mnist", "orientation")])
    header = table.splitlines()[2]
    assert header.split(" | ")[1:5] == ["mnist", "orientation", "Natural", "Structured"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = {k: c["finished_at"] for k, c in results["cells"].items()}
    code, stdout2, _ = cli(*_args(tiny_testbed, out))
    assert code == 0 and stdout2 == stdout
    again = json.loads((out / "results.json").read_text())
    assert {k: c["finished_at"] for k, c in again["cells"].items()} == before
    assert sorted(again["invocations"][-1]["skipped"]) == sorted(before) and again["invocations"][-1]["computed"] == []


def test_benchmark_bad_input(tiny_testbed, tmp_path, cli) -> None:
    for extra, text in ((["--suite", "nope"], "unknown --suite 'nope'"),
                        (["--tasks", "mnist,absent"], "unknown task(s) absent"),
                        (["--methods", "random,magic"], "unknown --methods magic"),
                        (["--preset", "slow"], "unknown --preset 'slow'"),
                        (["--recipe", "nope"],
                         "unknown --recipe 'nope'; use one of vipamin, vpt, spt, vapt, vpt-full, own"),
                        (["--recipe", "vpt"], "--preset quick and --recipe vpt cannot be combined")):
        code, _, stderr = cli(*_args(tiny_testbed, tmp_path / "o", *extra))
        assert code == 2 and stderr.count("\n") == 1 and text in stderr, (extra, stderr)
    code, _, stderr = cli(*_args(tmp_path / "missing", tmp_path / "o"))
    assert code == 2 and "is not a directory" in stderr


def _recipe_args(root: Path, out: Path, recipe: str, methods: str, *extra: str) -> list[str]:
    return ["benchmark", "--suite", "testbed", "--root", str(root), "--backbone", "vit-tiny-test", "--tasks", "mnist",
            "--methods", methods, "--recipe", recipe, "--epochs", "1", "--lr", "0.5", "--seeds", "1", "-p", "4",
            "--calib-size", "8", "--device", "cpu", "--no-plot", "--out", str(out), *extra]


def test_benchmark_recipe_own_gives_each_method_its_papers_recipe(tiny_testbed, tmp_path, cli, monkeypatch) -> None:
    from dataclasses import replace

    from vipamin_cli import recipes
    from vipamin_cli.recipes import get_recipe

    # the tiny backbone has 16 patch positions: VIPAMIN's grid (K up to 128) cut to K <= 8, two points
    vipamin = recipes.RECIPES["vipamin"]
    monkeypatch.setitem(recipes.RECIPES, "vipamin", replace(vipamin, init_grid=replace(
        vipamin.init_grid, value=({"k": 2, "lam": 0.0}, {"k": 8, "lam": 1.0}))))
    out = tmp_path / "own"
    code, _, stderr = cli(*_recipe_args(tiny_testbed, out, "own", "random,vipamin"))
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    invocation = results["invocations"][-1]
    assert invocation["recipe"] == "own" and invocation["preset"] is None
    assert invocation["cell_recipes"] == {"random": "vpt", "vipamin": "vipamin"}
    for method, recipe, optimizer in (("random", "vpt", "sgd"), ("vipamin", "vipamin", "adamw")):
        cell = results["cells"][f"mnist/{method}"]
        r = get_recipe(recipe)
        assert cell["protocol"]["recipe"] == recipe and cell["signature"]["cell_recipe"] == recipe
        values = cell["protocol"]["values"]
        assert values["epochs"] == {"value": 1, "source": "option"}  # the override, in every cell
        assert values["optimizer"] == {"value": optimizer, "source": r.config["optimizer"].source}
        sweep_runs = [run for c in cell["sweep"]["candidates"] for run in c["runs"]]
        for run in sweep_runs + cell["final"]["runs"]:
            cfg = run["config"]
            assert (cfg["optimizer"], cfg["recipe"], cfg["epochs"], cfg["lr"]) == (optimizer, recipe, 1, 0.5), method
            assert cfg["batch_size"] == r.config["batch_size"].value and len(run["history"]) == 1
        assert [run["seed"] for run in cell["final"]["runs"]] == [1]
        # not overridden: the recipe's weight-decay grid (VPT's 4 values) and, for vipamin, its init grid
        assert sorted({run["config"]["weight_decay"] for run in sweep_runs}) == sorted(r.weight_decays.value)
    grid = [(c["init"]["k"], c["init"]["lam"]) for c in results["cells"]["mnist/vipamin"]["sweep"]["candidates"]]
    assert grid == [(g["k"], g["lam"]) for g in get_recipe("vipamin").init_grid.value]
    assert len(results["cells"]["mnist/random"]["sweep"]["candidates"]) == 1


def test_benchmark_named_recipe_reaches_the_cell_and_a_changed_recipe_is_refused(tiny_testbed, tmp_path,
                                                                                  cli) -> None:
    from vipamin_cli.recipes import get_recipe

    out = tmp_path / "vpt"
    code, _, stderr = cli(*_recipe_args(tiny_testbed, out, "vpt", "linear"))
    assert code == 0, stderr
    cell = json.loads((out / "results.json").read_text())["cells"]["mnist/linear"]
    vpt = get_recipe("vpt")
    runs = cell["sweep"]["candidates"][0]["runs"]
    assert [r["config"]["weight_decay"] for r in runs] == list(vpt.weight_decays.value)
    assert {(r["config"]["batch_size"], r["config"]["optimizer"]) for r in runs + cell["final"]["runs"]} == {
        (vpt.config["batch_size"].value, "sgd")}
    assert cell["protocol"]["values"]["weight_decays"]["source"] == vpt.weight_decays.source
    assert cell["signature"]["recipe"] == "vpt" and "preset" not in cell["signature"]
    code, _, stderr = cli(*_recipe_args(tiny_testbed, out, "vpt", "linear"))  # same recipe: skipped
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())["invocations"][-1]["skipped"] == ["mnist/linear"]
    for args in (_recipe_args(tiny_testbed, out, "vapt", "linear"),
                 [a for a in _recipe_args(tiny_testbed, out, "vpt", "linear") if a not in ("--recipe", "vpt")]):
        code, _, stderr = cli(*args)
        assert code == 2 and "cell mnist/linear" in stderr and "was run with other options" in stderr, stderr


def test_benchmark_cell_signature_without_recipe_is_unchanged(tiny_testbed) -> None:
    from vipamin_cli.benchmark.inputs import task_inputs
    from vipamin_cli.benchmark.runner import BenchmarkSpec, cell_signature, protocols
    from vipamin_cli.benchmark.suites import resolve_suite

    task = resolve_suite("testbed", tiny_testbed, ["mnist"]).tasks[0]
    inputs = task_inputs(task, None)
    spec = BenchmarkSpec(suite="testbed", root=tiny_testbed, backbone="vit-tiny-test", out="o", preset="quick")
    preset, cells = protocols(spec, ["random", "vipamin"])
    for method in ("random", "vipamin"):
        assert set(cell_signature(task, method, preset, spec, cells[method], inputs=inputs)) == {
            "task", "method", "backbone", "weights", "preset", "init_grid", "calib_size", "inputs"}
    spec = BenchmarkSpec(suite="testbed", root=tiny_testbed, backbone="vit-tiny-test", out="o", recipe="own")
    preset, cells = protocols(spec, ["vipamin"])
    sig = cell_signature(task, "vipamin", preset, spec, cells["vipamin"], inputs=inputs)
    assert preset is None and set(sig) == {
        "task", "method", "backbone", "weights", "recipe", "cell_recipe", "protocol", "calib_size", "inputs"}
    assert json.loads(json.dumps(sig)) == sig  # the cell folder's signature.json reads back equal: resumable


def test_benchmark_keeps_a_cut_off_cell_folder_with_the_same_signature(tiny_testbed, tmp_path, cli) -> None:
    """A cell folder left by a cut-off run resumes (its partial tune state is kept) when the options
    are the same, and is cleared when they differ; a file vipamin does not write there is never deleted."""
    from vipamin_cli.benchmark.runner import BenchmarkSpec, cell_signature, protocols
    from vipamin_cli.benchmark.suites import resolve_suite

    out = tmp_path / "cut"
    args = [a if a != "random,vipamin,linear" else "linear" for a in _args(tiny_testbed, out, "--tasks", "mnist")]
    task = resolve_suite("testbed", tiny_testbed, ["mnist"]).tasks[0]
    spec = BenchmarkSpec(suite="testbed", root=tiny_testbed, backbone="vit-tiny-test", out=out, preset="quick",
                         overrides={"epochs": 1, "warmup_epochs": 0, "lrs": [0.5, 2.0], "seeds": [1, 2],
                                    "prompt_length": 4}, calib_size=8)
    preset, cells = protocols(spec, ["linear"])
    cell_dir = out / "cells" / "mnist" / "linear"
    from vipamin_cli.benchmark.inputs import task_inputs

    for signature, kept in ((cell_signature(task, "linear", preset, spec, cells["linear"],
                                            inputs=task_inputs(task, None)), True),
                            ({"task": "another"}, False)):
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "signature.json").write_text(json.dumps(signature))
        (cell_dir / "sweep0.partial.safetensors").write_text("left by the cut-off run")
        code, _, stderr = cli(*args)
        assert code == 0, stderr
        assert (cell_dir / "sweep0.partial.safetensors").exists() is kept
        assert json.loads((cell_dir / "signature.json").read_text())["task"] == task.describe()
        shutil.rmtree(out)
    cell_dir.mkdir(parents=True)
    (cell_dir / "signature.json").write_text(json.dumps({"task": "another"}))
    (cell_dir / "notes.txt").write_text("mine")
    code, _, stderr = cli(*args)
    assert code == 2 and f"{cell_dir}/notes.txt is not a file vipamin writes in a benchmark cell" in stderr, stderr
    assert (cell_dir / "notes.txt").read_text() == "mine"


def test_benchmark_sweeps_the_vipamin_init_grid_from_the_command_line(tiny_testbed, tmp_path, cli) -> None:
    out = tmp_path / "grid"
    args = [a if a != "random,vipamin,linear" else "vipamin" for a in _args(tiny_testbed, out, "--tasks", "mnist")]
    code, _, stderr = cli(*args, "--k", "2,4", "--orth", "exact,reference", "--orth-scale", "match")
    assert code == 0, stderr
    cell = json.loads((out / "results.json").read_text())["cells"]["mnist/vipamin"]
    candidates = cell["sweep"]["candidates"]
    assert [(c["init"]["k"], c["init"]["orth"], c["init"]["orth_scale"]) for c in candidates] == [
        (2, "exact", "match"), (2, "reference", "match"), (4, "exact", "match"), (4, "reference", "match")]
    best = max(candidates, key=lambda c: c["score"])  # ties to the first, as the runner does
    assert cell["selected"]["init"] == best["init"]
    assert cell["signature"]["init_grid"] == {"k": [2, 4], "orth": ["exact", "reference"], "orth_scale": ["match"]}
    for extra, text in ((["--orth", "exact,nope"], "unknown --orth 'nope'"),
                        (["--orth-scale", "big"], "unknown --orth-scale 'big'"),
                        (["--lambda", "2"], "--lambda 2.0 is outside [0, 1]"),
                        (["--k", "0"], "--k 0 is not a positive integer")):
        code, _, stderr = cli(*args[:-1], str(tmp_path / "bad"), *extra)
        assert code == 2 and stderr.count("\n") == 1 and text in stderr, (extra, stderr)
        assert not (tmp_path / "bad").exists()


def test_benchmark_full_cell_trains_every_weight_with_its_own_lr_grid(tiny_testbed, tmp_path, cli) -> None:
    from dataclasses import asdict

    from vipamin_cli.artifacts import load_artifact
    from vipamin_cli.benchmark.runner import BenchmarkSpec, cell_signature, protocols
    from vipamin_cli.benchmark.suites import resolve_suite
    from vipamin_cli.evaluate import evaluate

    out = tmp_path / "full"
    args = [a if a != "random,vipamin,linear" else "full" for a in _args(tiny_testbed, out, "--tasks", "mnist")]
    code, stdout, stderr = cli(*args, "--full-lr", "0.001,0.005", "--no-plot")
    assert code == 0, stderr
    cell = json.loads((out / "results.json").read_text())["cells"]["mnist/full"]
    assert cell["arch"] == "full" and cell["selected"]["init"] is None
    (candidate,) = cell["sweep"]["candidates"]  # no init grid: one candidate, no prompts
    assert candidate["init"] is None and [r["config"]["lr"] for r in candidate["runs"]] == [0.001, 0.005]
    assert all(r["config"]["arch"] == "full" and r["config"]["prompt_dropout"] == 0 for r in candidate["runs"])
    assert cell["selected"]["lr"] in (0.001, 0.005) and [r["seed"] for r in cell["final"]["runs"]] == [1, 2]
    ckpt = load_artifact(cell["final"]["checkpoint"])
    assert ckpt.meta["arch"] == "full" and any(".vit.blocks." in k for k in ckpt.tensors)
    tested = evaluate(cell["final"]["checkpoint"], embeddings=results_embedding(out, "test"), device="cpu")
    assert [r["top1"] for r in tested["runs"]] == [r["test_top1"] for r in cell["final"]["runs"]]
    assert re.search(r"^\| full \| \d+\.\d+ ± \d+\.\d+ \|", stdout, re.M)
    assert "lrs" not in cell["signature"]["preset"] and cell["signature"]["preset"]["full_lrs"] == [0.001, 0.005]
    # a prompt cell's signature never holds the full cell's grid: adding `full` reruns nothing else
    task = resolve_suite("testbed", tiny_testbed, ["mnist"]).tasks[0]
    spec = BenchmarkSpec(suite="testbed", root=tiny_testbed, backbone="vit-tiny-test", out="o", preset="quick")
    preset, cells = protocols(spec, ["random"])
    assert cell_signature(task, "random", preset, spec, cells["random"], inputs={})["preset"] == {
        k: v for k, v in asdict(preset).items() if k != "full_lrs"}
    code, _, stderr = cli(*args, "--full-lr", "0")
    assert code == 2 and "--full-lr 0" in stderr


def results_embedding(out: Path, split: str) -> str:
    """The embeddings file of a split of the benchmark's only task, from its results.json."""
    results = json.loads((out / "results.json").read_text())
    (paths,) = results["embeddings"].values()
    return paths[split]["path"]
