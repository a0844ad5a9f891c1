"""`embed` and `tune` under torchrun: two real processes with gloo on CPU, against one process.

Workers are the real entry point (`python -m vipamin_cli`, or a wrapper that stops one rank after
some epochs), started either by torchrun itself or as plain subprocesses with RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT set, so each rank's exit code, stdout and stderr can be read (and each
rank can get its own working directory: a file only one rank sees). Every process runs with one
thread, as torchrun's workers do, so the single-process references are computed the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vipamin_cli.artifacts import load_artifact

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
EMBED = ["--backbone", "vit-tiny-test", "--batch-size", "16", "--calib-size", "40", "--sample-images", "6",
         "--device", "cpu"]
SWEEP = ["--lr", "0.1,0.5,1", "--weight-decay", "0.01,0.001", "--grid-batch", "2", "--epochs", "2",
         "--warmup-epochs", "0", "--batch-size", "16", "-p", "4", "--device", "cpu", "--compile", "off"]

STOPPER = '''
import os
import vipamin_cli.tuning.stage as stage

_train_group, _epochs = stage.train_group, {"n": 0}


def train_group(*args, **kwargs):
    """Ctrl-C on rank STOP_RANK after its STOP_AFTER-th saved epoch (as if the user pressed it then)."""
    save = kwargs["on_epoch"]

    def on_epoch(*a):
        save(*a)
        _epochs["n"] += 1
        if os.environ["RANK"] == os.environ["STOP_RANK"] and _epochs["n"] >= int(os.environ["STOP_AFTER"]):
            raise KeyboardInterrupt

    kwargs["on_epoch"] = on_epoch
    return _train_group(*args, **kwargs)


stage.train_group = train_group
from vipamin_cli.__main__ import run

run()
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               VIPAMIN_QUIET="1", PYTHONFAULTHANDLER="1", **extra)  # a crashed rank shows its Python stack
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single(args: list[str], cwd: Path) -> None:
    """The same command in this process, with one thread like a torchrun worker (no start-up cost)."""
    import signal

    from vipamin_cli.cli import main

    threads, here = torch.get_num_threads(), Path.cwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch.set_num_threads(1)
    os.chdir(cwd)
    try:
        assert main(args) == 0
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _ranks(args: list[str], cwds: list[Path], entry: list[str] | None = None,
           **extra: str) -> list[tuple[int, str, str]]:
    """Two ranks of the real entry point; (exit code, stdout, stderr) per rank."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, *(entry or ["-m", "vipamin_cli"]), *args], cwd=cwd,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, cwd in enumerate(cwds)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def embedded(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train / val embeddings made by one process (the tune tests' inputs)."""
    where = tmp_path_factory.mktemp("dist_inputs")
    for split in ("train", "val"):
        _single(["embed", *EMBED, "--data", str(digits_dir), "--split", split, "--out", f"{split}.safetensors",
                 "--no-cache"], where)
    return where


@pytest.fixture(scope="module")
def single_sweep(embedded: Path) -> Path:
    _single(["tune", "-e", "train.safetensors", "--val-embeddings", "val.safetensors", *SWEEP,
             "--out", "single.safetensors"], embedded)
    return embedded / "single.safetensors"


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_artifact(a), load_artifact(b)
    assert sorted(x.tensors) == sorted(y.tensors)
    for k in x.tensors:
        assert torch.equal(x[k], y[k]), k


def test_torchrun_embed_equals_single_process(digits_dir: Path, embedded: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*launcher, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
                           "vipamin_cli", "embed", *EMBED, "--data", str(digits_dir), "--split", "train",
                           "--out", str(tmp_path / "dist.safetensors"), "--cache-dir", str(tmp_path / "cache")],
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(tmp_path / "dist.safetensors"), proc.stdout + proc.stderr[-2000:]  # rank 0
    single, dist = load_artifact(embedded / "train.safetensors"), load_artifact(tmp_path / "dist.safetensors")
    assert dist["tokens"].shape[0] == len(dist.meta["samples"]) > 16 * 2  # several batches on each rank
    _same_tensors(embedded / "train.safetensors", tmp_path / "dist.safetensors")  # same tokens, order, stats
    assert dist.meta["world_size"] == 2 and "world_size" not in single.meta
    assert dist.meta["cache_key"] == single.meta["cache_key"]
    assert dist.meta["digest"] == single.meta["digest"]  # world_size is provenance, outside the digest
    assert dist.meta["samples"] == single.meta["samples"]
    cached = list((tmp_path / "cache" / "embeddings").glob("*.safetensors"))
    assert [c.name for c in cached] == [f"{single.meta['cache_key']}.safetensors"]


def test_sharded_sweep_equals_single_process(embedded: Path, single_sweep: Path) -> None:
    results = _ranks(["tune", "-e", "train.safetensors", "--val-embeddings", "val.safetensors", *SWEEP,
                      "--out", "dist.safetensors"], [embedded, embedded])
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    assert results[0][1].strip() == "dist.safetensors" and results[1][1] == ""
    _same_tensors(single_sweep, embedded / "dist.safetensors")
    single, dist = load_artifact(single_sweep).meta, load_artifact(embedded / "dist.safetensors").meta
    assert dist["selection"] == single["selection"] and dist["world_size"] == 2
    # 6 configurations in groups of 2: groups 0 and 2 on rank 0, group 1 on rank 1
    assert [r["rank"] for r in dist["sweep"]["runs"]] == [0, 0, 1, 1, 0, 0]
    for a, b in zip(single["sweep"]["runs"], dist["sweep"]["runs"], strict=True):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
        assert a["config"] == b["config"]
    assert not list(embedded.glob("dist*.partial.safetensors"))


def test_bad_input_on_one_rank_stops_both(embedded: Path, tmp_path: Path) -> None:
    """Rank 1 runs where train.safetensors does not exist (a node without the file): both ranks end
    with exit 2 and the one error line, printed once; nothing is written."""
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "val.safetensors").symlink_to(embedded / "val.safetensors")
    results = _ranks(["tune", "-e", "train.safetensors", "--val-embeddings", "val.safetensors", *SWEEP,
                      "--out", str(tmp_path / "bad.safetensors")], [embedded, lonely])
    assert [r[0] for r in results] == [2, 2]
    lines = _error_lines(results[0][2])
    assert len(lines) == 1 and "artifact not found: train.safetensors" in lines[0], results[0][2]
    assert _error_lines(results[1][2]) == [] and "Traceback" not in results[0][2] + results[1][2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely"]


def test_interrupted_distributed_tune_resumes_to_the_uninterrupted_result(embedded: Path, single_sweep: Path,
                                                                          tmp_path: Path) -> None:
    stopper = tmp_path / "stopper.py"
    stopper.write_text(STOPPER)
    args = ["tune", "-e", str(embedded / "train.safetensors"), "--val-embeddings", str(embedded / "val.safetensors"),
            *SWEEP, "--out", "cut.safetensors"]
    results = _ranks(args, [tmp_path, tmp_path], entry=[str(stopper)], STOP_RANK="1", STOP_AFTER="1")
    assert [r[0] for r in results] == [130, 130], results[0][2] + results[1][2]
    lines = _error_lines(results[0][2])
    assert len(lines) == 1 and "tune interrupted" in lines[0] and "--resume" in lines[0], results[0][2]
    assert _error_lines(results[1][2]) == []
    assert not (tmp_path / "cut.safetensors").exists()
    kept = {r: load_artifact(tmp_path / f"cut.rank{r}.partial.safetensors").meta for r in (0, 1)}
    assert kept[0]["done_index"] == [0, 1, 4, 5] and kept[0]["current"] is None  # rank 0 finished its groups
    assert kept[1]["done_index"] == [] and kept[1]["current"]["states"][0]["epoch"] == 1
    results = _ranks([*args, "--resume"], [tmp_path, tmp_path])
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    _same_tensors(single_sweep, tmp_path / "cut.safetensors")
    assert not list(tmp_path.glob("*.partial.safetensors"))


def test_single_configuration_trains_data_parallel(embedded: Path, tmp_path: Path) -> None:
    """One grid point: every rank trains it on its half of each batch; the result is the single
    process's up to float summation order, recorded as trained by all ranks."""
    args = ["tune", "-e", str(embedded / "train.safetensors"), "--val-embeddings", str(embedded / "val.safetensors"),
            "--lr", "0.5", *SWEEP[4:]]
    _single([*args, "--out", "one.safetensors"], tmp_path)
    results = _ranks([*args, "--out", "dp.safetensors"], [tmp_path, tmp_path])
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    one, dp = load_artifact(tmp_path / "one.safetensors"), load_artifact(tmp_path / "dp.safetensors")
    for k in one.tensors:
        torch.testing.assert_close(dp[k], one[k], rtol=1e-4, atol=1e-5)
    assert dp.meta["runs"][0]["rank"] == "all"
    for a, b in zip(one.meta["runs"][0]["history"], dp.meta["runs"][0]["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def _without_run_details(obj: object) -> object:
    """A results.json minus what may differ between runs: timings, cache paths, who trained what."""
    skip = {"timing", "finished_at", "rank", "world_size", "seconds", "from_cache", "path", "invocations"}
    if isinstance(obj, dict):
        return {k: _without_run_details(v) for k, v in obj.items() if k not in skip}
    if isinstance(obj, list):
        return [_without_run_details(v) for v in obj]
    return obj


def test_distributed_benchmark_results_equal_single_process(tmp_path_factory: pytest.TempPathFactory,
                                                            tmp_path: Path) -> None:
    import json

    from vipamin_cli.testbed.make import make_testbed

    root = tmp_path_factory.mktemp("dist_testbed")
    make_testbed(root, seed=0, tasks=["mnist"], train_size=16, val_size=8, test_size=12)
    args = ["benchmark", "--suite", "testbed", "--root", str(root), "--backbone", "vit-tiny-test",
            "--methods", "random,linear", "--preset", "quick", "--epochs", "1", "--warmup-epochs", "0",
            "--lr", "0.5,2", "--seeds", "1,2", "-p", "4", "--calib-size", "8", "--device", "cpu", "--grid-batch", "1",
            "--no-plot", "--out", "bench"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _single([*args, "--cache-dir", str(tmp_path / "cache1")], tmp_path / "one")
    results = _ranks([*args, "--cache-dir", str(tmp_path / "cache2")], [tmp_path / "two"] * 2)
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    one = json.loads((tmp_path / "one" / "bench" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "bench" / "results.json").read_text())
    assert _without_run_details(two) == _without_run_details(one)
    assert two["invocations"][-1]["world_size"] == 2
    runs = two["cells"]["mnist/random"]["sweep"]["candidates"][0]["runs"]
    assert [r["rank"] for r in runs] == [0, 1]  # one configuration per group, a group per rank
    tables = [(tmp_path / d / "bench" / "table.md").read_text() for d in ("one", "two")]
    assert tables[0] == tables[1]


def test_halving_sweep_sharded_and_resumed_equals_single_process(embedded: Path, tmp_path: Path) -> None:
    """--sweep halving under torchrun (6 configurations, rungs at epochs 1, 2, 3 keeping 3 then 2):
    every rung's groups dealt over the ranks, survivors handed to the rank that trains them next. Rank 1
    is stopped in the second rung (after the first rung's pruning and hand-over); the resumed run writes
    the single process's checkpoint and the same pruning record."""
    stopper = tmp_path / "stopper.py"
    stopper.write_text(STOPPER)
    args = ["tune", "-e", str(embedded / "train.safetensors"), "--val-embeddings", str(embedded / "val.safetensors"),
            *SWEEP, "--epochs", "3", "--sweep", "halving", "--eta", "2", "--min-epochs", "1"]  # click keeps the last
    _single([*args, "--out", "one.safetensors"], tmp_path)
    results = _ranks([*args, "--out", "cut.safetensors"], [tmp_path, tmp_path], entry=[str(stopper)],
                     STOP_RANK="1", STOP_AFTER="2")
    assert [r[0] for r in results] == [130, 130], results[0][2] + results[1][2]
    kept = {r: load_artifact(tmp_path / f"cut.rank{r}.partial.safetensors").meta for r in (0, 1)}
    assert kept[0]["halving"]["rung"] == kept[1]["halving"]["rung"] == 1  # both ranks past the first pruning
    assert sorted(kept[0]["halving"]["pruned"]) == sorted(kept[1]["halving"]["pruned"]) and kept[0]["halving"]["pruned"]
    results = _ranks([*args, "--out", "cut.safetensors", "--resume"], [tmp_path, tmp_path])
    assert [r[0] for r in results] == [0, 0], results[0][2] + results[1][2]
    _same_tensors(tmp_path / "one.safetensors", tmp_path / "cut.safetensors")
    one, cut = load_artifact(tmp_path / "one.safetensors").meta, load_artifact(tmp_path / "cut.safetensors").meta
    assert cut["selection"] == one["selection"] and one["sweep"]["rungs"] == [1, 2, 3]

    def record(meta: dict) -> list:
        return [(r["pruned_at_rung"], r["epochs_trained"], [h["loss"] for h in r["history"]])
                for r in meta["sweep"]["runs"]]

    assert record(cut) == record(one)
    pruned = [r["pruned_at_rung"] for r in one["sweep"]["runs"]]
    assert pruned.count(None) == 2 and pruned.count(0) == 3 and pruned.count(1) == 1
    # groups of 2 dealt round-robin: rung 0 [0,1] [2,3] [4,5]; rung 1 the 3 survivors re-grouped, at least
    # one of them now on the other rank (its paused state was handed over)
    second = [i for i, p in enumerate(pruned) if p != 0]
    assert any((i // 2) % 2 != (j // 2) % 2 for j, i in enumerate(second))
    assert not list(tmp_path.glob("*.partial.safetensors"))
