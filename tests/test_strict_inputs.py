"""No stale or silently wrong result (issue 21, item 4).

Numbers are read strictly everywhere (every int / float option of every command, found by walking
the command tree; every numeric comma list; list-file labels); repeated list values are refused;
labels must leave no class empty (and absurd ones are refused before allocating); --lr-floor may not
exceed the lr; one-class training data is refused by tune and benchmark; and a benchmark cell is
recomputed, saying why, when the data it read changed (or when it was written by an older vipamin).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from entry_point import run_entry as _run
from PIL import Image

from vipamin_cli.cli import app
from vipamin_cli.validate import LIST_OPTIONS

# Python's int() / float() read all of these; a person writing them meant something else or made a typo.
LOOSE = ("1_0", "+1", " 1", "1 ", "١", "0x10")
LOOSE_INT_ONLY = ("1.0", "1e1")
LOOSE_FLOAT_ONLY = ("nan", "infinity", "1_0.5")



def _numeric_options(root) -> list[tuple[list[str], str, type, object]]:
    """(command path, option, int | float, command) of every number option under every (sub)command."""
    found = []

    def walk(command, path: list[str]) -> None:
        for param in getattr(command, "params", []):
            kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if kind in (int, float) and getattr(param, "opts", None) and not getattr(param, "is_flag", False):
                found.append((path, param.opts[0], kind, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


def test_every_number_option_of_every_command_is_read_strictly(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real entry point for one option; then, on the same command tree (which the group's
    main made strict), every int / float option of every command is parsed with each loose spelling."""
    code, out, err = _run(["tune", "--lr-floor", "1_0"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: Invalid value for '--lr-floor': '1_0' is not a number (a plain decimal") and \
        "write it as e.g. 0.05 (see '" in err, err
    root = typer.main.get_command(app)
    with pytest.raises(typer.BadParameter):
        root.main(["data", "make-testbed", "--seed", "1_0", "d"], standalone_mode=False)
    options = _numeric_options(root)
    assert (["tune"], "--lr-floor", float) in [o[:3] for o in options] and len(options) > 40
    bad = []
    for path, option, kind, command in options:
        for value in LOOSE + (LOOSE_INT_ONLY if kind is int else LOOSE_FLOAT_ONLY):
            try:
                command.make_context(path[-1], [option, value])
                bad.append((path, option, value, "accepted"))
            except typer.BadParameter as exc:
                if f"{value!r} is not {'an integer' if kind is int else 'a number'}" not in exc.format_message():
                    bad.append((path, option, value, exc.format_message()))
        try:  # the plain spelling passes (a later missing required option is not this check's business)
            command.make_context(path[-1], [option, "-1" if kind is int else "-0.5e-1"])
        except click_exceptions().MissingParameter:
            pass
        except typer.BadParameter as exc:
            bad.append((path, option, "plain", exc.format_message()))
    assert not bad, bad[:5]


def click_exceptions():
    from typer._click import exceptions

    return exceptions


def _required(command: str) -> list[str]:
    return {"benchmark": ["--suite", "testbed", "--root", ".", "--backbone", "vit-tiny-test", "--out", "o"],
            "data make-testbed": ["tb"], "data check": ["."], "data get": ["vtab-1k", "--root", "r"]}.get(command, [])


@pytest.mark.parametrize(("command", "option"), [(c, o) for c, opts in LIST_OPTIONS.items() for o in opts])
def test_every_list_option_refuses_loose_numbers_and_repeats(command: str, option: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    kind = LIST_OPTIONS[command][option]
    repeat = {str: "a,b,a", int: "42,44,42", float: "0.1,0.2,1e-1"}[kind]
    cases = [(repeat, "twice")]
    if kind is not str:
        cases += [(f"1,{v.strip() or v}", "is not") for v in ("1_0", "+2", "١")]
    for value, text in cases:
        code, out, err = _run([*command.split(), *_required(command), option, value], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and option in err and text in err, (value, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _images(root: Path, n: int) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20 % 255, 40, 90)).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def _vtab(root: Path, labels: dict[str, list[int | str]]) -> Path:
    """A VTAB-layout folder: list files with the given labels, one small PNG per line."""
    n = max(len(v) for v in labels.values())
    paths = _images(root, n)
    for split, values in labels.items():
        (root / f"{split}.txt").write_text("".join(f"{p} {v}\n" for p, v in zip(paths, values, strict=False)))
    return root


@pytest.mark.parametrize(("test_labels", "text"), [
    ([0, 1, 2, 7], "test.txt line 4: label 7 leaves class 3 without any image (4 of the 8 classes 0..7 would"),
    ([0, 1, 2, 10**12], "test.txt line 4: label 1000000000000 leaves class 3 without any image"),
    ([0, 1, 2, 10**30], "test.txt line 4: label 1000000000000000000000000000000 leaves class 3"),
    ([0, 1, "1_0", 2], "bad line in"),
    ([0, 1, "+2", 2], "bad line in"),
])
def test_labels_that_leave_a_class_empty_or_are_not_plain_are_refused(test_labels: list, text: str,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = _vtab(tmp_path / "task", {"train800": [0, 1, 2, 0], "val200": [1, 2], "test": test_labels})
    started = time.monotonic()
    code, out, err = _run(["embed", "--backbone", "vit-tiny-test", "--data", data, "--calib-size", "2",
                           "--device", "cpu", "--out", tmp_path / "e.safetensors"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and text in err, err
    assert time.monotonic() - started < 20  # refused from the set of labels, never a list of 10**30 names
    assert not (tmp_path / "e.safetensors").exists()


def test_fgvc_json_label_that_leaves_classes_empty_is_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    paths = _images(tmp_path / "cub", 3)
    (tmp_path / "cub" / "train.json").write_text(json.dumps({paths[0]: 0, paths[1]: 1, paths[2]: 10**30}))
    code, _, err = _run(["embed", "--backbone", "vit-tiny-test", "--data", tmp_path / "cub", "--calib-size", "2",
                         "--device", "cpu", "--out", tmp_path / "e.safetensors"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"train.json ({paths[2]}): label {10**30} leaves class 2 without any image" in err, err


@pytest.fixture(scope="module")
def one_class_embeddings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Embeddings of a one-class folder, and of a split whose images are all of one class (of two)."""
    from vipamin_cli.embed import EmbedConfig, embed_data

    root = tmp_path_factory.mktemp("oneclass")
    solo = root / "solo" / "only"
    solo.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 60, 9, 9)).save(solo / f"{i}.png")
    lopsided = _vtab(root / "lopsided", {"train800": [0, 0, 0], "val200": [0, 1], "test": [1, 0, 1]})
    config = EmbedConfig(calib_size=2, device="cpu")
    return {"solo": embed_data("vit-tiny-test", str(root / "solo"), config=config, out=root / "solo.safetensors",
                               show_progress=False).path,
            "lopsided": embed_data("vit-tiny-test", str(lopsided), split="train800", config=config,
                                   out=root / "lop.safetensors", show_progress=False).path}


@pytest.mark.parametrize(("which", "text"), [("solo", "has 1 class; classification needs at least two"),
                                             ("lopsided", "holds images of 1 class only (of 2)")])
def test_tune_refuses_one_class_training_data(which: str, text: str, one_class_embeddings: dict[str, Path],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["tune", "--embeddings", one_class_embeddings[which], "--init", "random", "-p", "2",
                           "--epochs", "1", "--warmup-epochs", "0", "--device", "cpu", "--out",
                           tmp_path / "c.safetensors"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "the training data (" in err and text in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_duplicate_seeds_and_a_floor_above_the_lr_are_refused_in_the_library_too(tmp_path: Path) -> None:
    from vipamin_cli.benchmark.runner import BenchmarkSpec, protocols
    from vipamin_cli.errors import InputError
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    with pytest.raises(InputError, match="--seeds lists 42 twice"):
        tune(TuneInputs(embeddings=tmp_path / "e.safetensors"), TuneConfig(), [0.1], [0.01], [42, 42],
             tmp_path / "c.safetensors", device="cpu")
    spec = BenchmarkSpec(suite="testbed", root=tmp_path, backbone="vit-tiny-test", out=tmp_path / "o",
                         preset="quick", overrides={"seeds": [1, 1]})
    with pytest.raises(InputError, match="--seeds lists 1 twice"):
        next(iter(protocols(spec, ["linear"])[1].values())).validate()
    TuneConfig(lr=0.1, batch_size=32, lr_floor=0.0125).validate()  # the floor may equal the scaled lr
    with pytest.raises(InputError, match=r"--lr-floor 0.05 is above the lr 0.0125 \(--lr 0.1 x --batch-size 32 "
                       r"/ 256 with --lr-scaling batch256\) that the schedule decays from"):
        TuneConfig(lr=0.1, batch_size=32, lr_floor=0.05).validate()
    assert not any(tmp_path.iterdir())


def test_lr_floor_above_any_lr_of_the_list_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["tune", "--embeddings", tmp_path / "missing.safetensors", "--lr", "1,0.001",
                         "--lr-scaling", "none", "--lr-floor", "0.01", "--out", tmp_path / "c.safetensors"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--lr-floor 0.01 is above the lr 0.001 that" in err, err


def _flat(text: str) -> str:
    """stderr notes as one line of words (rich wraps them at the console width)."""
    return " ".join(text.split())


def _bench(root: Path, out: Path, *extra: str) -> list[str]:
    return ["benchmark", "--suite", "testbed", "--root", root, "--backbone", "vit-tiny-test", "--methods", "linear",
            "--preset", "quick", "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.5", "--seeds", "1,2",
            "--calib-size", "2", "--no-plot", "--device", "cpu", "--out", out, *extra]


def _bench_root(root: Path) -> Path:
    for name in ("alpha", "beta"):
        _vtab(root / name, {"train800": [0, 1, 0, 1], "val200": [0, 1], "train800val200": [0, 1, 0, 1, 0, 1],
                            "test": [1, 0, 1, 0]})
    return root


def test_benchmark_recomputes_a_cell_whose_data_changed_and_says_why(tmp_path: Path, monkeypatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VIPAMIN_QUIET", "0")
    root, out = _bench_root(tmp_path / "root"), tmp_path / "bench"
    code, table, err = _run(_bench(root, out), capsys)
    assert code == 0, err
    first = json.loads((out / "results.json").read_text())
    assert set(first["cells"]["alpha/linear"]["signature"]["inputs"]["splits"]) == {
        "train800", "val200", "train800val200", "test"}
    code, again, err = _run(_bench(root, out), capsys)  # nothing changed: skipped, the same table
    assert code == 0 and again == table and "2 finished cell(s)" in _flat(err) and "recomputed" not in err, err

    (root / "alpha" / "test.txt").write_text((root / "alpha" / "test.txt").read_text().replace(" 1\n", " 0\n", 1))
    code, _, err = _run(_bench(root, out), capsys)
    assert code == 0 and "benchmark: cell alpha/linear is recomputed: the data of split test changed" in _flat(err)
    results = json.loads((out / "results.json").read_text())
    assert results["invocations"][-1]["computed"] == ["alpha/linear"]
    assert results["invocations"][-1]["skipped"] == ["beta/linear"]
    assert results["replaced"]["alpha/linear"]["finished_at"] == first["cells"]["alpha/linear"]["finished_at"]
    splits = [cells["alpha/linear"]["signature"]["inputs"]["splits"] for cells in (first["cells"], results["cells"])]
    assert splits[0]["test"] != splits[1]["test"]  # the new cell was computed on the edited data (its timestamp
    assert {k: v for k, v in splits[0].items() if k != "test"} == {  # has one-second steps: it can be the same)
        k: v for k, v in splits[1].items() if k != "test"}

    # beta's data changes, but this run covers alpha only: beta's old cell leaves the table (kept in 'replaced')
    with open(root / "beta" / "val200.txt", "a") as fh:
        fh.write("img/2.png 1\n")
    code, table, err = _run(_bench(root, out, "--tasks", "alpha"), capsys)
    assert code == 0 and "cell beta/linear is dropped: the data of split val200 changed; run with --tasks beta" \
        in _flat(err), err
    assert "beta" not in table and "beta/linear" not in json.loads((out / "results.json").read_text())["cells"]

    # a results.json written before cells recorded their inputs still reads; its cells are redone, not reused
    from vipamin_cli.benchmark.runner import _digest

    results = json.loads((out / "results.json").read_text())
    cell = results["cells"]["alpha/linear"]
    del cell["signature"]["inputs"]
    cell["signature_digest"] = _digest(cell["signature"])  # exactly what the older version wrote
    (out / "results.json").write_text(json.dumps(results))
    code, _, err = _run(_bench(root, out, "--tasks", "alpha"), capsys)
    assert code == 0 and "cell alpha/linear is recomputed: its record predates data fingerprints" in _flat(err), err




def test_benchmark_refuses_a_task_whose_training_split_has_one_class(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    _vtab(root / "solo", {"train800": [0, 0, 0, 0], "val200": [0, 1], "train800val200": [0, 0, 0, 0, 0, 1],
                          "test": [1, 0, 1, 0]})
    code, _, err = _run(_bench(root, tmp_path / "bench"), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "task solo: split train800 of" in err and "holds images of 1 class only (of 2)" in err, err
    assert not (tmp_path / "bench" / "cells").exists()


def test_make_testbed_refuses_sizes_that_leave_a_class_without_images(tmp_path: Path) -> None:
    from vipamin_cli.errors import InputError
    from vipamin_cli.testbed.make import make_testbed

    with pytest.raises(InputError, match=r"task mnist: 6 train \+ 4 val \+ 4 test images leave class 5 of 10 "
                       "without any image; pass larger sizes"):
        make_testbed(tmp_path / "tb", seed=0, tasks=["mnist"], train_size=6, val_size=4, test_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
