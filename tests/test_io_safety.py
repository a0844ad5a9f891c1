"""Reliability round 3 (issue 21): every class walked over every command of the Typer tree.

1. no output destroys an input or a user's file (outputs vs inputs by identity, no write through a link
   or onto a FIFO, make-testbed deletes only what it made);
2. nothing hangs (a FIFO in place of any input, Ctrl-C at the first press);
3. no internal errors (full disk, read-only folder, closed or full stdout, malformed state files, markup);
5. messages name what the user did.

The command table (``CASES``) gives each command's cheap invocations and the files each one reads; the
path options come from ``iosafety.PATH_OPTIONS``, which ``test_path_registry_matches_the_commands``
checks against the command tree, so a new command or path option cannot skip these tests. Real FIFOs,
symlinks, hard links, a full tmpfs and a read-only bind mount (``unshare -rm``); no mocks of the OS.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from entry_point import run_entry as _run
from test_data_get import vtab_entries, write_zip
from test_hostile_inputs import _batch, _env, _namespace_prefix, _one_line_error

from vipamin_cli.iosafety import PATH_OPTIONS

# ----------------------------------------------------------------------------------------------------------
# The command table


def _walk(command, prefix: str = ""):
    subs = getattr(command, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _walk(sub, f"{prefix} {name}".strip())
    else:
        yield prefix, command


def _tree() -> dict:
    import typer

    from vipamin_cli.cli import app

    return dict(_walk(typer.main.get_command(app)))


def _param_name(param) -> str:
    return param.opts[0] if param.param_type_name == "option" else param.name.upper()


def _is_path_param(param) -> bool:
    bare = param.bare_type() if callable(getattr(param, "bare_type", None)) else None
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return bare is pathlib.Path or annotation is pathlib.Path or "Path" in str(annotation)


STR_PATH_OPTIONS = ("--data", "--weights")  # str-typed options that still name files or folders


def test_path_registry_matches_the_commands() -> None:
    """Every Path-typed option or argument (and --data / --weights) of every command is in
    iosafety.PATH_OPTIONS, and every registered name exists: a new path option must say what it is."""
    tree = _tree()
    found = {(name, _param_name(p)) for name, c in tree.items() for p in c.params
             if _is_path_param(p) or _param_name(p) in STR_PATH_OPTIONS}
    registered = {(name, opt) for name, opts in PATH_OPTIONS.items() for opt in opts}
    assert found <= registered, f"path options missing from iosafety.PATH_OPTIONS: {sorted(found - registered)}"
    params = {(name, _param_name(p)) for name, c in tree.items() for p in c.params}
    assert registered <= params, f"PATH_OPTIONS names options that do not exist: {sorted(registered - params)}"
    assert set(PATH_OPTIONS) <= set(tree)


@dataclass
class Case:
    """One invocation of a command: ``argv(outputs)`` with its output options set from ``outputs``, and
    the files it reads (for the output-onto-input and FIFO walks)."""

    argv: Callable[[dict[str, Path]], list]
    reads: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny testbed task and its artifacts, built once through the library."""
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.inits import InitConfig, init_prompts
    from vipamin_cli.testbed.make import make_testbed
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    root = tmp_path_factory.mktemp("io")
    # 16 / 8 / 12 images hold every one of the 10 classes (a gap in the labels is refused since issue 21 item 4)
    make_testbed(root / "tb", seed=0, tasks=["mnist"], train_size=16, val_size=8, test_size=12)
    task = root / "tb" / "mnist"
    cfg = EmbedConfig(calib_size=4, device="cpu")
    emb = {s: embed_data("vit-tiny-test", str(task), split=s, config=cfg, out=root / f"{s}.safetensors",
                         use_cache=False, show_progress=False).path for s in ("train800", "val200", "test")}
    prompts = init_prompts(InitConfig(prompt_length=4, device="cpu"), embeddings=emb["train800"],
                           out=root / "p.safetensors").path
    ckpt = tune(TuneInputs(embeddings=emb["train800"], prompts=prompts), TuneConfig(epochs=1, warmup_epochs=0),
                [0.1], [0.01], [42], root / "c.safetensors", device="cpu", show_progress=False).checkpoint
    lists = sorted(task.glob("*.txt"))
    # one VTAB-1k task in V-PETL Bench's archive layout, with the real list counts (`data get --from`)
    vtab = write_zip(root / "vtab-1k.zip", vtab_entries("kitti", 4), "vtab-1k/")

    def images(split: str, k: int = 1) -> list[Path]:
        rows = (task / f"{split}.txt").read_text().split("\n")[:k]
        return [task / r.rsplit(" ", 1)[0] for r in rows]

    return SimpleNamespace(root=root, tb=root / "tb", task=task, emb=emb, prompts=prompts, ckpt=ckpt, lists=lists,
                           images=images, manifest=root / "tb" / "manifest.json", vtab=vtab,
                           files=[*emb.values(), prompts, ckpt, vtab])


def _cases(w: SimpleNamespace, cache: Path) -> dict[str, list[Case]]:
    """Cheap invocations of every command; the outputs are filled in by the caller."""
    tiny = ["--calib-size", "4", "--device", "cpu"]
    data = ["-b", "vit-tiny-test", "-d", w.task, *tiny, "--cache-dir", cache]
    train = [*w.lists, *w.images("train800")]
    short = ["--epochs", "1", "--warmup-epochs", "0", "-p", "4", "--compile", "off"]
    return {
        "embed": [Case(lambda o: ["embed", *data, "--split", "train800", "--no-cache", "--out", o["--out"]], train)],
        "init": [Case(lambda o: ["init", "-e", w.emb["train800"], "-p", "4", "--device", "cpu", "--out", o["--out"]],
                      [w.emb["train800"]]),
                 Case(lambda o: ["init", *data, "--split", "train800", "-p", "4", "--out", o["--out"]], train)],
        "explain": [Case(lambda o: ["explain", w.prompts, "--png", o["--png"]], [w.prompts])],
        "tune": [Case(lambda o: ["tune", "-e", w.emb["train800"], "--val-embeddings", w.emb["val200"], "--prompts",
                                 w.prompts, *short, "--device", "cpu", "--out", o["--out"]],
                      [w.emb["train800"], w.emb["val200"], w.prompts]),
                 Case(lambda o: ["tune", *data, "--split", "train800", "--val", "val200", *short, "--out", o["--out"]],
                      [*train, *w.images("val200")])],
        "eval": [Case(lambda o: ["eval", "-c", w.ckpt, "-e", w.emb["test"], "--device", "cpu", "--out", o["--out"],
                                 "--plot", o["--plot"]], [w.ckpt, w.emb["test"]]),
                 Case(lambda o: ["eval", "-c", w.ckpt, *data[2:], "--split", "test", "--out", o["--out"], "--plot",
                                 o["--plot"]], [*w.lists, *w.images("test")])],
        "info": [Case(lambda o: ["info", w.emb["test"], "--json"], [w.emb["test"]])],
        "backbones": [Case(lambda o: ["backbones", "--json"])],
        "recipes": [Case(lambda o: ["recipes", "--json"])],
        "benchmark": [Case(lambda o: ["benchmark", "--suite", "testbed", "--root", w.tb, "-b", "vit-tiny-test",
                                      "--methods", "linear", "--preset", "demo", "--epochs", "1", "--warmup-epochs",
                                      "0", "--seeds", "1", "--no-plot", *tiny, "--cache-dir", cache, "--out",
                                      o["--out"]], [w.manifest, *w.lists, *w.images("test")])],
        "demo": [Case(lambda o: ["demo", "--device", "cpu", "--out", o["--out"]])],
        "data make-testbed": [Case(lambda o: ["data", "make-testbed", o["DEST"], "--tasks", "mnist",
                                              "--test-size", "4"])],
        "data check": [Case(lambda o: ["data", "check", "--suite", "testbed", w.tb, "--fast"],
                            [w.manifest, *w.lists, *w.images("train800")])],
        "data get": [Case(lambda o: ["data", "get", "vtab-1k", "--root", o["--root"], "--tasks", "kitti", "--from",
                                     w.vtab], [w.vtab])],
        # a list file (paths relative to it, VTAB labels ignored) names the 12 test images
        "predict": [Case(lambda o: ["predict", "-c", w.ckpt, "-d", w.task / "test.txt", "--format", "csv", "--device",
                                    "cpu", "--out", o["--out"]], [w.ckpt, w.task / "test.txt", *w.images("test", 2)])],
        "export": [Case(lambda o: ["export", "-c", w.ckpt, "--out", o["--out"]], [w.ckpt])],
    }


# Commands whose whole run is too slow for the walks that run each command to the end (they still go
# through every walk that stops before the work).
SLOW = {"demo": "a full demo run takes about a minute on this CPU"}


# Output options whose suffix the command requires (--png / --plot images, export's program).
REQUIRED_SUFFIXES = (".png", ".pt2")


def _outputs(command: str, out: Path) -> dict[str, Path]:
    names = {"--out": "o.safetensors", "--png": "m.png", "--plot": "cm.png", "DEST": "dest"}
    names |= {"predict": {"--out": "o.csv"}, "export": {"--out": "o.pt2"}}.get(command, {})
    kinds = PATH_OPTIONS.get(command, {})
    return {opt: out / (names[opt] if kinds[opt] == "output" else f"dir{opt.strip('-').lower()}")
            for opt in kinds if kinds[opt] in ("output", "output-dir")}


def test_every_command_has_cases(w: SimpleNamespace, tmp_path: Path) -> None:
    cases = _cases(w, tmp_path)
    missing = sorted(set(_tree()) - set(cases))
    assert not missing, f"commands without a case in tests/test_io_safety.py::_cases: {missing}"
    for name, kinds in PATH_OPTIONS.items():
        for opt, kind in kinds.items():
            if kind in ("output", "output-dir"):
                assert opt in _outputs(name, tmp_path)


def _digests(paths) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


# ----------------------------------------------------------------------------------------------------------
# Class 1: no output destroys an input


def _onto_input_cases(w: SimpleNamespace, cache: Path, out: Path):
    """(command, output option, victim, argv) for every output option of every command, aimed at every
    file the command reads (every other one through a hard link in another folder)."""
    links = out / "links"
    links.mkdir(exist_ok=True)
    n = 0
    for command, cases in _cases(w, cache).items():
        for case in cases:
            for opt, kind in PATH_OPTIONS.get(command, {}).items():
                if kind != "output":
                    continue
                needs = _outputs(command, out)[opt].suffix  # --png must end in .png, ...: a link named so
                needs = needs if needs in REQUIRED_SUFFIXES else None
                for victim in case.reads:
                    n += 1
                    target = victim
                    if n % 2 or (needs and victim.suffix != needs):
                        target = links / f"{n}{needs or victim.suffix}"
                        os.link(victim, target)
                    outputs = _outputs(command, out) | {opt: target}
                    yield command, opt, victim, case.argv(outputs)


def test_no_output_overwrites_an_input(w: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    before = _digests([*w.lists, *w.task.rglob("*.png"), w.manifest, *w.emb.values(), w.prompts, w.ckpt])
    seen = set()
    for command, opt, victim, argv in _onto_input_cases(w, cache, tmp_path):
        line = _one_line_error(*_run(argv, capsys)[::2])
        assert f"{opt} " in line and "is the same file as the input" in line and victim.name in line, (argv, line)
        seen.add((command, opt))
    assert seen >= {("embed", "--out"), ("init", "--out"), ("explain", "--png"), ("tune", "--out"),
                    ("eval", "--out"), ("eval", "--plot"), ("predict", "--out"), ("export", "--out")}
    assert _digests(before) == before
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.png"))


def test_two_outputs_of_one_command_never_coincide(w: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Commands with two output options (eval --out/--plot): the same path, or a hard link to it, is refused."""
    (tmp_path / "x.png").write_bytes(b"keep")
    os.link(tmp_path / "x.png", tmp_path / "y.png")
    n = 0
    for command, cases in _cases(w, tmp_path / "cache").items():
        opts = [o for o, k in PATH_OPTIONS.get(command, {}).items() if k == "output"]
        for a, b in ((a, b) for a in opts for b in opts if a < b):
            for one, two in ((tmp_path / "new.png", tmp_path / "new.png"), (tmp_path / "x.png", tmp_path / "y.png")):
                argv = cases[0].argv(_outputs(command, tmp_path) | {a: one, b: two})
                line = _one_line_error(*_run(argv, capsys)[::2])
                assert "one would overwrite the other" in line and a in line and b in line, line
                n += 1
    assert n >= 2 and (tmp_path / "x.png").read_bytes() == b"keep" and not (tmp_path / "new.png").exists()


def test_no_write_follows_a_link_or_replaces_a_fifo(w: SimpleNamespace, tmp_path: Path) -> None:
    """Every output option of every command, and the derived files (tune's lock, explain's default heat
    map), set to a symlink to a user file, a FIFO or a directory: refused, the target untouched (in a
    subprocess: a regression that opens the FIFO fails on the timeout instead of hanging)."""
    user = tmp_path / "user.txt"
    user.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    cases, expect = [], []
    for command, kinds in PATH_OPTIONS.items():
        for opt, kind in kinds.items():
            if kind not in ("output", "output-dir"):
                continue
            for form in ("link", "fifo") + (("dir",) if kind == "output" else ()):
                suffix = _outputs(command, out)[opt].suffix  # --png / --plot must end in .png
                target = out / f"{command.replace(' ', '-')}{opt}-{form}{suffix}"
                if form == "link":
                    target.symlink_to(user)
                elif form == "fifo":
                    os.mkfifo(target)
                else:
                    target.mkdir()
                cases.append(_cases(w, tmp_path / "cache")[command][0].argv(_outputs(command, out) | {opt: target}))
                expect.append((command, opt, form, kind))
    # the derived files: tune's <out>.lock as a link to the user's file; explain's default heat map a FIFO
    (out / "t.safetensors.lock").symlink_to(user)
    cases.append(["tune", "-e", w.emb["train800"], "--prompts", w.prompts, "--epochs", "1", "--warmup-epochs", "0",
                  "--device", "cpu", "--out", out / "t.safetensors"])
    expect.append(("tune", "--out", "lock", "output"))
    shutil.copyfile(w.prompts, out / "q.safetensors")
    os.mkfifo(out / "q.matches.png")
    cases.append(["explain", out / "q.safetensors"])
    expect.append(("explain", "--png", "default", "output"))
    # export's <out>.json beside the program, a link; data get's lock inside --root, a link
    (out / "x.pt2.json").symlink_to(user)
    cases.append(["export", "-c", w.ckpt, "--out", out / "x.pt2"])
    expect.append(("export", "--out", "side", "output"))
    (out / "g").mkdir()
    (out / "g" / ".vipamin-get.lock").symlink_to(user)
    cases.append(["data", "get", "vtab-1k", "--root", out / "g", "--tasks", "kitti", "--from", w.vtab])
    expect.append(("data get", "--root", "lock", "output-dir"))
    for (code, _, err), (command, opt, form, kind) in zip(_batch(cases, tmp_path, timeout=240), expect, strict=True):
        line = _one_line_error(code, err)
        assert opt in line, line
        words = {"link": "symbolic link", "fifo": "FIFO", "dir": "is a directory", "lock": "symbolic link",
                 "default": "FIFO", "side": "symbolic link"}
        assert words[form] in line or (kind == "output-dir" and form != "lock" and "not a folder" in line), \
            (command, opt, form, line)
    assert user.read_text() == "precious\n"
    assert (out / "q.matches.png").is_fifo() and (out / "t.safetensors.lock").is_symlink()
    assert (out / "x.pt2.json").is_symlink() and not (out / "x.pt2").exists()
    assert sorted(os.listdir(out / "g")) == [".vipamin-get.lock"]
    assert not (out / "t.safetensors").exists() and not list(out.glob(".vp-*"))


def test_a_side_file_is_never_written_onto_an_input_read_after_it_was_declared(tmp_path: Path) -> None:
    """export declares `<out>.json` before the model is loaded; a weights file recorded in the checkpoint is
    read only then. The last check before the write (atomic_path) still finds it, and leaves it whole."""
    from vipamin_cli import iosafety
    from vipamin_cli.artifacts import atomic_path
    from vipamin_cli.errors import InputError

    side = tmp_path / "m.pt2.json"
    side.write_text("weights")
    with iosafety.command_scope():
        iosafety.declare_output(side, "--out", role="the metadata file", source="written beside --out")
        iosafety.check_input(side, "weights file")  # read later, as load_classifier reads the recorded weights
        with pytest.raises(InputError) as caught, atomic_path(side) as tmp:
            tmp.write_text("metadata")
    assert str(caught.value) == (f"the metadata file {side} (written beside --out) is the same file as the input "
                                 f"weights file {side}; writing it would destroy the input; choose another --out")
    assert side.read_text() == "weights" and sorted(os.listdir(tmp_path)) == ["m.pt2.json"]


def test_heat_map_default_names_its_file_and_png(w: SimpleNamespace, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "q.safetensors"
    shutil.copyfile(w.prompts, prompts)
    os.mkfifo(tmp_path / "q.matches.png")
    line = _one_line_error(*_run(["explain", prompts], capsys)[::2])
    assert line.startswith(f"error: the heat map {tmp_path}/q.matches.png (written beside the prompts file; choose "
                           "its path with --png) exists and is a FIFO"), line
    assert line.endswith("remove it or choose another --png")


# make-testbed deletes only what it can prove it made


def _tiny_testbed(dest: Path, tasks=("mnist",)) -> Path:
    from vipamin_cli.testbed.make import make_testbed

    return make_testbed(dest, seed=0, tasks=list(tasks), train_size=16, val_size=8, test_size=12)


def test_make_testbed_replaces_only_what_it_made(tmp_path: Path) -> None:
    from vipamin_cli.errors import InputError

    dest = tmp_path / "tb"
    _tiny_testbed(dest, ("mnist", "count"))
    old = tmp_path / ".tb.old"  # a user's folder that an older vipamin deleted blindly
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    _tiny_testbed(dest, ("mnist", "count"))  # every file was vipamin's: replaced
    assert (old / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tb.old", "tb"]  # no .vp-* folder left
    checks = [
        (lambda: (dest / "notes.txt").write_text("mine"), "notes.txt is not part of the testbed made before",
         ("mnist", "count")),
        (lambda: (dest / "mnist" / "test.txt").write_text("images/test/00000.png 7\n"), "mnist/test.txt was changed",
         ("mnist", "count")),
        (lambda: None, "holds the testbed task(s) count, which this call would delete", ("mnist",)),
    ]
    for make, expected, tasks in checks:
        make()
        snapshot = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            _tiny_testbed(dest, tasks)
        assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == snapshot
        shutil.rmtree(dest)
        _tiny_testbed(dest, ("mnist", "count"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "my project"}')
    with pytest.raises(InputError, match="is not a vipamin testbed manifest .* so .* is not a testbed vipamin made"):
        _tiny_testbed(foreign)
    assert (foreign / "manifest.json").read_text() == '{"name": "my project"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tb.old", "foreign", "tb"]


# ----------------------------------------------------------------------------------------------------------
# Class 2: nothing hangs


def test_a_fifo_in_place_of_any_input_never_hangs(w: SimpleNamespace, tmp_path: Path) -> None:
    """Every command x every file it reads, replaced by a FIFO in a copy of the inputs, plus benchmark's
    results.json: refused with one line naming the file (data check: reported, exit 2), all in one
    subprocess with a timeout, so a regression fails instead of hanging."""
    cases, expect = [], []
    for command, per in _cases(w, tmp_path / "cache").items():
        for case in per:
            for victim in case.reads:
                copy = tmp_path / f"c{len(cases)}"
                fifo = _copy_inputs(w, copy)[victim]
                fifo.unlink()
                os.mkfifo(fifo)
                cases.append([_swap(a, w, copy) for a in case.argv(_outputs(command, copy / "out"))])
                expect.append((command, fifo))
    bench = tmp_path / "bench"
    bench.mkdir()
    os.mkfifo(bench / "results.json")
    cases.append(_cases(w, tmp_path / "cache")["benchmark"][0].argv({"--out": bench}))
    expect.append(("benchmark", bench / "results.json"))
    # a cache entry replaced by a FIFO: the message says to delete the entry, not to pass another file
    cache = tmp_path / "entry-cache"
    embed = ["embed", "-b", "vit-tiny-test", "-d", w.task, "--split", "val200", "--calib-size", "4", "--device", "cpu",
             "--cache-dir", cache]
    entry = _run_quiet(embed)
    entry.unlink()
    os.mkfifo(entry)
    cases.append(embed)
    expect.append(("embed", entry))
    started = time.monotonic()
    results = _batch(cases, tmp_path, timeout=300)
    for (code, out, err), (command, fifo) in zip(results, expect, strict=True):
        if command == "data check" and fifo.suffix != ".json":  # a data problem is reported in the table, exit 2
            assert code == 2 and "FIFO" in out and fifo.name in out and "Traceback" not in err, (out, err)
            continue
        if command == "predict" and fifo.suffix == ".png":  # an unreadable image: its row says why, exit 3
            line = _one_line_error(code, err, expected=3)
            assert "FIFO" in line and fifo.name in line, line
            continue
        line = _one_line_error(code, err)
        assert "FIFO" in line and fifo.name in line, (command, line)
    assert line == (f"error: cache entry {entry} is a FIFO (named pipe), not a regular file; delete it; vipamin makes "
                    "the entry again on the next run"), line
    assert {c for c, _ in expect} >= {"embed", "init", "explain", "tune", "eval", "info", "benchmark", "data check",
                                      "data get", "predict", "export"}
    assert time.monotonic() - started < 300


def _copy_inputs(w: SimpleNamespace, dest: Path) -> dict[Path, Path]:
    """A copy of the testbed and the artifacts under ``dest``; old path -> new path for every file."""
    shutil.copytree(w.tb, dest / "tb")
    mapping = {p: dest / "tb" / p.relative_to(w.tb) for p in w.tb.rglob("*") if p.is_file()}
    for p in w.files:
        shutil.copyfile(p, dest / p.name)
        mapping[p] = dest / p.name
    return mapping


def _run_quiet(argv: list) -> Path:
    """Run a command in-process that must succeed; the path it prints."""
    import contextlib
    import io

    from vipamin_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert code == 0, err.getvalue()
    return Path(out.getvalue().strip())


def _swap(arg, w: SimpleNamespace, dest: Path):
    """An argument of a case with the module's inputs replaced by their copies under ``dest``."""
    if isinstance(arg, Path):
        if arg == w.tb or w.tb in arg.parents:
            return dest / "tb" / arg.relative_to(w.tb)
        if arg in w.files:
            return dest / arg.name
    return arg


# Ctrl-C ends every command at the first press


def _import_what_commands_import_lazily() -> None:
    """Import, uninterrupted, the modules the commands import on first use. A SIGINT that lands inside
    a module's first import leaves it half-registered in this process (torch.export's aot_autograd
    cache then refuses to register twice), which would break every later test in this process; a
    real user's Ctrl-C ends the process, so only the test needs this."""
    import datasets  # noqa: F401
    import huggingface_hub  # noqa: F401
    import timm  # noqa: F401
    import torch

    torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))  # loads export's whole import path


def test_ctrl_c_during_every_command(w: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command (its first case) interrupted by a real SIGINT after a short while, in-process: it ends
    at once with exit 130 and one line, or had already finished (exit 0); never a traceback, never a
    temporary file left."""
    import threading

    from vipamin_cli.cli import main

    _import_what_commands_import_lazily()
    codes = {}
    for i, (command, cases) in enumerate(_cases(w, tmp_path / "cache").items()):
        out = tmp_path / f"o{i}"
        out.mkdir()
        argv = [str(a) for a in cases[0].argv(_outputs(command, out))]
        capsys.readouterr()
        timer = threading.Timer(0.05 + 0.05 * (i % 4), os.kill, (os.getpid(), signal.SIGINT))
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            timer.start()
            code = main(argv)
            timer.join()
            time.sleep(0.05)  # a SIGINT that came after the command ended is raised here
        except KeyboardInterrupt:
            code = codes[command] = "late"
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        err = capsys.readouterr().err
        if code == "late":
            continue
        codes[command] = code
        assert code in (0, 130), (command, code, err)
        assert "Traceback" not in err, err
        if code == 130:
            assert err.strip().splitlines()[-1] == "error: interrupted" or "interrupted" in err, err
        assert not list(out.rglob(".vp-*")), list(out.rglob(".vp-*"))
    assert 130 in codes.values(), codes


def _slow_images(root: Path, n: int = 30) -> Path:
    """A VTAB-layout task whose images are large (13,000 x 13,000 1-bit PNGs, 169 Mpx, 25 KB each): 30 of
    them take about 6 s to decode on an idle 2-core machine, so `data check` is still reading them when
    Ctrl-C comes a second after it starts."""
    from PIL import Image

    task = root / "dtd"
    (task / "img").mkdir(parents=True)
    Image.new("1", (13000, 13000)).save(task / "img" / "0.png")
    for i in range(1, n):
        shutil.copyfile(task / "img" / "0.png", task / "img" / f"{i}.png")
    rows = "".join(f"img/{i}.png {i % 2}\n" for i in range(n))
    for name in ("train800", "val200", "train800val200", "test"):
        (task / f"{name}.txt").write_text(rows)
    return root


def test_first_ctrl_c_ends_a_busy_command(w: SimpleNamespace, tmp_path: Path) -> None:
    """Real processes, one SIGINT each while they work: `data check` decoding in its thread pool (the case
    that ignored the first Ctrl-C) and `tune` training; both end within seconds with exit 130."""
    root = _slow_images(tmp_path / "vtab")
    env = _env(VIPAMIN_QUIET="0", VIPAMIN_CACHE=str(tmp_path / "cache"))
    procs = {
        "data check": ["data", "check", "--suite", "vtab-1k", root, "--tasks", "dtd"],
        "tune": ["tune", "-e", w.emb["train800"], "--prompts", w.prompts, "--epochs", "100000", "--warmup-epochs", "0",
                 "--device", "cpu", "--out", tmp_path / "c.safetensors"],
    }
    started = {k: subprocess.Popen([sys.executable, "-m", "vipamin_cli", *map(str, v)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env) for k, v in procs.items()}
    partial = tmp_path / "c.partial.safetensors"  # written after tune's first epoch
    for name, proc in started.items():
        seen = ""
        deadline = time.monotonic() + 120
        if name == "data check":  # its note comes just before the images are read
            while "checking dtd" not in seen and time.monotonic() < deadline and proc.poll() is None:
                seen += proc.stderr.read(1)
        while name == "tune" and not partial.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, (name, seen, proc.stderr.read())
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            rest = proc.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name} did not end within 20 s of the first Ctrl-C")
        assert proc.returncode == 130, (name, proc.returncode, rest)
        # (a worker thread may still print its image note after the error line: the process ends anyway)
        assert any(line.startswith("error:") and "interrupted" in line for line in rest.splitlines()), rest
        assert "Traceback" not in rest, rest
        assert time.monotonic() - t0 < 20


# ----------------------------------------------------------------------------------------------------------
# Class 3: no internal errors


def test_full_disk_and_read_only_folder_for_every_output(w: SimpleNamespace, tmp_path: Path) -> None:
    """Every output option of every command on a real full tmpfs (exit 1, `no space left`) and on a read-only
    mount (exit 2), in a private mount namespace: one line naming the option, no temporary file left. In the
    same namespace, stdout redirected to the full disk (`eval --json > file`): one line naming stdout."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    prefix = _namespace_prefix(full)
    if prefix is None:
        pytest.skip("no small filesystem: tried `unshare -rm` and `unshare -m` with `mount -t tmpfs` (needs user "
                    "namespaces or root)")
    cases, expect = [], []
    for where, code in ((full, 1), (ro, 2)):
        for command, kinds in PATH_OPTIONS.items():
            if any(k in ("output", "output-dir") for k in kinds.values()):
                folder = where / command.replace(" ", "-")
                cases.append((_cases(w, tmp_path / "cache")[command][0].argv(_outputs(command, folder)), os.devnull))
                expect.append((command, code, [o for o, k in kinds.items() if k in ("output", "output-dir")]))
    cases.append((["explain", ro / "q.safetensors"], os.devnull))  # the default heat map, read-only
    expect.append(("explain-default", 2, ["--png"]))
    for argv in (["eval", "-c", w.ckpt, "-e", w.emb["test"], "--device", "cpu", "--json"],
                 ["info", w.emb["test"], "--json"], ["backbones", "--json"]):
        cases.append((argv, full / f"{argv[0]}.json"))
        expect.append(("stdout", 1, ["stdout"]))
    setup = (f"mount -t tmpfs -o size=64k tmpfs '{full}' && (head -c 70000 /dev/zero > '{full}/fill' 2>/dev/null; "
             f"true) && mount -t tmpfs -o size=1m tmpfs '{ro}' && cp '{w.prompts}' '{ro}/q.safetensors' && "
             f"mount -o remount,ro '{ro}' &&")
    work = tmp_path / "work"
    work.mkdir()
    results = _fd_batch(cases, work, prefix=prefix, setup=setup, after=f"find '{full}' '{ro}' > '{work}/listing'",
                        VIPAMIN_CACHE=str(tmp_path / "cache"))
    for (code, err), (command, want, opts) in zip(results, expect, strict=True):
        line = _one_line_error(code, err, expected=want)
        assert any(o in line for o in opts), (command, line)
        if command == "stdout":
            assert line == ("error: cannot write the output to stdout: No space left on device; free disk space "
                            "where stdout is redirected, or redirect it elsewhere"), line
        elif want == 1:
            assert "no space left on" in line and "free disk space" in line, line
        else:
            assert "Read-only file system" in line or "not writable" in line, line
        if command == "explain":
            assert "--out" not in line, line  # issue 21: explain --png into a read-only folder blamed --out
        if command == "explain-default":
            assert f"the heat map {ro}/q.matches.png" in line, line
    listing = (work / "listing").read_text().split()
    assert not [p for p in listing if "/.vp-" in p], listing


_FD_BATCH = """
import contextlib, io, json, os, sys
from vipamin_cli.cli import main
results = []
for argv, target in json.load(open(sys.argv[1])):
    sys.stdout.flush()
    saved = os.dup(1)
    if target == "pipe":
        r, wfd = os.pipe()
        os.close(r)
        os.dup2(wfd, 1)
        os.close(wfd)
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.close(fd)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os.dup2(saved, 1)
    os.close(saved)
    results.append([code, err.getvalue()])
json.dump(results, open(sys.argv[2], "w"))
"""


def _fd_batch(cases: list[tuple[list, str]], tmp: Path, prefix: list[str] | None = None, setup: str = "",
              after: str = "", timeout: float = 300, **env: str) -> list[tuple[int, str]]:
    """Commands in one interpreter with file descriptor 1 a closed pipe or a file (real OS errors)."""
    script, argv, res = tmp / "fd.py", tmp / "fd.json", tmp / "fd-results.json"
    script.write_text(_FD_BATCH)
    argv.write_text(json.dumps([[[str(a) for a in c], str(t)] for c, t in cases]))
    run = f"'{sys.executable}' '{script}' '{argv}' '{res}'"
    cmd = [*prefix, "sh", "-c", f"{setup} {run}; {after}"] if prefix else ["sh", "-c", run]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(res.read_text())]


def test_closed_stdout_ends_quietly_for_every_command(marked: dict[str, list],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`vipamin ... | head`: every command (its first case) with stdout a real pipe whose reader is gone ends
    with exit 141 (128 + SIGPIPE, as the shell reports a Unix tool ended by the pipe) and nothing on stderr."""
    import contextlib

    from vipamin_cli.cli import main

    for command, argv in marked.items():
        read, write = os.pipe()
        os.close(read)
        stream = open(write, "w")  # noqa: SIM115 - closed below
        capsys.readouterr()
        saved, sys.stdout = sys.stdout, stream
        try:
            code = main(argv)
        finally:
            sys.stdout = saved
            with contextlib.suppress(OSError):
                stream.close()
        err = capsys.readouterr().err
        assert code == 141 and err == "", (command, code, err)
    # the real entry point: no "Exception ignored" when the interpreter exits
    proc = subprocess.run(f"'{sys.executable}' -m vipamin_cli recipes --json | true; "
                          "echo ${PIPESTATUS[0]} >&2", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert proc.stderr.strip() == "141", proc.stderr


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: [], "not a vipamin benchmark results file (a JSON list, not an object)"),
    (lambda r: {k: v for k, v in r.items() if k != "cells"}, "'cells' is missing"),
    (lambda r: r | {"cells": {"mnist/linear": {"test_top1": 5}}}, "cell mnist/linear is damaged"),
    (lambda r: "{", "is damaged (not valid JSON"),
])
def test_damaged_results_json_is_one_line(edit, expected: str, w: SimpleNamespace, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "bench"
    argv = _cases(w, tmp_path / "cache")["benchmark"][0].argv({"--out": bench})
    bench.mkdir()
    header = {"schema": 1, "suite": "testbed", "root": str(w.tb), "backbone": "vit-tiny-test", "weights": None,
              "groups": [], "tasks": {}, "methods": [], "embeddings": {}, "cells": {}, "invocations": []}
    edited = edit(header)
    (bench / "results.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    line = _one_line_error(*_run(argv, capsys)[::2])
    assert f"{bench}/results.json" in line and expected in line, line
    assert "delete it" in line


def test_damaged_state_of_an_unfinished_cell_and_manifest(w: SimpleNamespace, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged signature.json or *.sweep.json of an unfinished benchmark cell, and a testbed manifest with
    wrong types or missing keys (data check and benchmark): one line naming the file and the fix."""
    cache = tmp_path / "cache"
    bench = tmp_path / "bench"
    argv = [a if a != "linear" else "random" for a in _cases(w, cache)["benchmark"][0].argv({"--out": bench})]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((bench / "results.json").read_text())
    del results["cells"]["mnist/random"]  # the cell is unfinished again; its files stay
    (bench / "results.json").write_text(json.dumps(results))
    cell = bench / "cells" / "mnist" / "random"
    (cell / "sweep0.sweep.json").write_text('{"chosen": []}')
    line = _one_line_error(*_run(argv, capsys)[::2])
    assert f"{cell}/sweep0.sweep.json is damaged" in line and "to run that step again" in line, line
    (cell / "signature.json").write_text("{")
    line = _one_line_error(*_run(argv, capsys)[::2])
    assert f"{cell}/signature.json is damaged" in line and f"delete the folder {cell}" in line, line

    tb = tmp_path / "tb"
    shutil.copytree(w.tb, tb)
    good = json.loads((tb / "manifest.json").read_text())
    for edit, expected in (
        (lambda m: m["tasks"][0].update(num_classes="ten"), "'num_classes' is 'ten'"),
        (lambda m: m["tasks"][0].pop("counts"), "'counts' is missing"),
        (lambda m: m.update(tasks=[{"name": 3}]), "task 0 has no valid 'name'"),
        (lambda m: m.update(files=[1]), "'files' is not a map"),
    ):
        m = json.loads(json.dumps(good))
        edit(m)
        (tb / "manifest.json").write_text(json.dumps(m))
        for args in (["data", "check", "--suite", "testbed", tb, "--fast"],
                     [a if a != w.tb else tb for a in _cases(w, cache)["benchmark"][0].argv(
                         {"--out": tmp_path / "b2"})]):
            line = _one_line_error(*_run(args, capsys)[::2])
            assert f"{tb}/manifest.json is not a valid vipamin testbed manifest" in line and expected in line, line
            assert "make-testbed" in line


@pytest.fixture(scope="module")
def marked(w: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """Every command's first case (but the SLOW ones), run on a copy of the inputs in a folder named `w[/y]`
    (rich would read `[/y]` as a closing tag) with the testbed task named `[red]t`; the tables, not --json.
    The closed-stdout and markup walks share it, so the second finds the benchmark's cells done."""
    root = tmp_path_factory.mktemp("marked") / "w[/y]"
    _copy_inputs(w, root)
    manifest = json.loads((root / "tb" / "manifest.json").read_text())
    manifest["tasks"][0]["name"] = "[red]t"
    manifest["files"] = {k.replace("mnist/", "[red]t/", 1): v for k, v in manifest["files"].items()}
    (root / "tb" / "mnist").rename(root / "tb" / "[red]t")
    (root / "tb" / "manifest.json").write_text(json.dumps(manifest))
    argvs = {}
    for command, per in _cases(w, root / "cache").items():
        if command in SLOW:
            continue
        argv = [_swap(a, w, root) for a in per[0].argv(_outputs(command, root / "out" / command.replace(" ", "-")))]
        argv = [Path(str(a).replace("/tb/mnist", "/tb/[red]t")) if isinstance(a, Path) else a for a in argv]
        argvs[command] = [str(a) for a in argv if a != "--json"]
    return argvs


def test_every_command_prints_markup_in_user_text_literally(marked: dict[str, list], monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every command run to the end with `w[/y]` in its paths and a task named `[red]t`, notes and progress
    on: exit 0, the brackets printed as they are."""
    monkeypatch.setenv("VIPAMIN_QUIET", "0")
    printed = {}
    for command, argv in marked.items():
        code, out, err = _run(argv, capsys)
        assert code == 0 and "Traceback" not in err, (command, out, err)
        printed[command] = out + err
    for command in ("embed", "init", "tune", "explain", "info", "data make-testbed", "data check", "data get",
                    "predict", "export"):
        assert "w[/y]" in printed[command].replace("\n", ""), (command, printed[command])
    assert "[red]t" in printed["data check"] and "[red]t" in printed["benchmark"]


# ----------------------------------------------------------------------------------------------------------
# Class 5: messages name what the user did


def test_options_of_folder_commands_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    line = _one_line_error(*_run(["data", "make-testbed", tmp_path / "tb", "--seed", "-1", "--tasks", "mnist"],
                                 capsys)[::2])
    assert line == "error: --seed -1 is outside the seed range [0, 2**63 - 1]; pass e.g. --seed 42", line
    line = _one_line_error(*_run(["demo", "--out", user, "--device", "cpu"], capsys)[::2])
    assert line == f"error: --out {user} is a file, not a folder; pass a folder (it is created if absent), or " \
                   f"remove {user}", line
    assert user.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_bare_vipamin_prints_usage_not_an_empty_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["data"]):
        code, out, err = _run(argv, capsys)
        assert code == 2 and "Usage: " in out + err and "COMMAND" in out + err and "error:" not in err, (out, err)


def test_batch_size_is_blamed_for_its_own_memory(w: SimpleNamespace, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A batch larger than the data set trains on the whole set (16 images here): it is not refused, and never
    blamed on --prompt-length; a batch that really cannot fit names --batch-size."""
    from vipamin_cli.errors import InputError
    from vipamin_cli.validate import available_memory, training_memory_fits

    tune = ["tune", "-e", w.emb["train800"], "--prompts", w.prompts, "--epochs", "1", "--warmup-epochs", "0",
            "--device", "cpu", "--lr-scaling", "none", "--out", tmp_path / "c.safetensors"]
    code, _, err = _run([*tune, "--batch-size", "99999999999"], capsys)
    assert code == 0 and "--prompt-length" not in err, err
    images = 10**9  # a data set large enough that the batch is real
    with pytest.raises(InputError, match=r"--batch-size 99999999999 needs about .* pass a smaller --batch-size"):
        training_memory_fits(4, 64, 1, 17, 99999999999, images, 4, 4)
    with pytest.raises(InputError, match=r"--prompt-length 10000000000 needs about .* pass a smaller --prompt-length"):
        training_memory_fits(10**10, 64, 1, 17, 1, images, 4, 4)
    assert available_memory() is not None


def test_recipe_values_are_checked_before_any_cell(w: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`--recipe vipamin` sweeps K up to 128; vit-tiny-test has 16 patches: refused before the first cell,
    naming the recipe, never `--k 32` (which the user did not pass). tune does the same before any init."""
    bench = tmp_path / "bench"
    argv = ["benchmark", "--suite", "testbed", "--root", w.tb, "-b", "vit-tiny-test", "--methods", "random,vipamin",
            "--recipe", "vipamin", "--epochs", "1", "--seeds", "1", "--no-plot", "--device", "cpu", "--calib-size", "4",
            "--cache-dir", tmp_path / "cache", "--out", bench]
    line = _one_line_error(*_run(argv, capsys)[::2])
    assert line.startswith("error: --recipe vipamin (docs/methods.md") and "sets K = 32" in line, line
    assert "16 patch positions" in line and "replaces the recipe's K grid" in line and "--k 32" not in line
    assert not bench.exists()
    tune = ["tune", "-b", "vit-tiny-test", "-d", w.task, "--split", "train800", "--val", "val200", "--recipe",
            "vipamin", "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.1", "--calib-size", "4", "--device", "cpu",
            "--cache-dir", tmp_path / "cache", "--out", tmp_path / "c.safetensors"]
    line = _one_line_error(*_run(tune, capsys)[::2])
    assert "--recipe vipamin" in line and "sets K = 32" in line and "--k 32" not in line, line
    assert not list(tmp_path.glob("c.*"))
    line = _one_line_error(*_run([*tune, "--k", "2,32"], capsys)[::2])
    assert line.startswith("error: --k 32 is out of range"), line


def test_a_long_legal_out_works_and_a_too_long_side_file_names_out(w: SimpleNamespace, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name = "x" * 240 + ".safetensors"  # 252 characters: legal; the temporary name must not be longer
    for argv in (["init", "-e", w.emb["train800"], "-p", "4", "--device", "cpu", "--out", tmp_path / name],
                 ["eval", "-c", w.ckpt, "-e", w.emb["test"], "--device", "cpu", "--out", tmp_path / name]):
        code, _, err = _run(argv, capsys)
        assert code == 0, err
    line = _one_line_error(*_run(["tune", "-e", w.emb["train800"], "--prompts", w.prompts, "--epochs", "1",
                                  "--warmup-epochs", "0", "--device", "cpu", "--out", tmp_path / name], capsys)[::2])
    assert "is 260 bytes, more than the 255 its file system allows; choose a shorter --out" in line, line
    assert sorted(os.listdir(tmp_path)) == [name]


def test_root_absolute_or_relative_is_one_benchmark(w: SimpleNamespace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(w.root)
    bench = tmp_path / "bench"
    argv = _cases(w, tmp_path / "cache")["benchmark"][0].argv({"--out": bench})
    code, table, err = _run([a if a != w.tb else Path("tb") for a in argv], capsys)
    assert code == 0, err
    first = json.loads((bench / "results.json").read_text())
    assert first["root"] == str(w.tb)  # recorded absolute
    code, again, err = _run(argv, capsys)  # the same folder, absolute
    assert code == 0 and again == table, err
    assert json.loads((bench / "results.json").read_text())["invocations"][-1]["skipped"] == ["mnist/linear"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest re-enables every warning in-process
def test_decompression_bomb_warning_is_our_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An image over PIL's warning size (89.5 Mpx; 100 Mpx here, 1-bit, 1.3 MB): vipamin's own note, and
    nothing at all under VIPAMIN_QUIET=1 (PIL's raw DecompressionBombWarning leaked there)."""
    from PIL import Image

    task = tmp_path / "vtab" / "dtd"
    (task / "img").mkdir(parents=True)
    Image.new("1", (10000, 10000)).save(task / "img" / "big.png")
    for name in ("train800", "val200", "train800val200", "test"):
        (task / f"{name}.txt").write_text("img/big.png 0\n")
    argv = ["data", "check", "--suite", "vtab-1k", tmp_path / "vtab", "--tasks", "dtd", "--fast"]
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "vipamin_cli", *map(str, argv)], capture_output=True,
                          text=True, env=_env(VIPAMIN_QUIET="1"), timeout=120)
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr  # exit 2: the counts are not VTAB's
    monkeypatch.setenv("VIPAMIN_QUIET", "0")
    code, _, err = _run(argv, capsys)
    err = err.replace("\n", "")  # rich wraps the note at the console width
    assert "note: image" in err and "big.png has 100,000,000 pixels" in err and "Warning" not in err, err
