"""`vipamin benchmark` on two tiny testbed tasks: results.json, the table, the plot, resume, bad input."""

from __future__ import annotations

import json
import re
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
                        (["--preset", "slow"], "unknown --preset 'slow'")):
        code, _, stderr = cli(*_args(tiny_testbed, tmp_path / "o", *extra))
        assert code == 2 and stderr.count("\n") == 1 and text in stderr, (extra, stderr)
    code, _, stderr = cli(*_args(tmp_path / "missing", tmp_path / "o"))
    assert code == 2 and "is not a directory" in stderr
