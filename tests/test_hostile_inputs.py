"""Hostile inputs (issue 9): every numeric and list option with 0, -1 and absurd values, generated from the
commands' own option lists, plus one test per class of the probe with real objects: symlink loops, FIFOs,
hard links, a real full tmpfs, a read-only cache mount, markup in paths. No mocks of safetensors or the OS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from entry_point import one_line_error as _one_line_error
from entry_point import run_entry as _run
from PIL import Image

from vipamin_cli.validate import LIST_OPTIONS

ABSURD_INT = str(2**64)
INT_VALUES = ("0", "-1", ABSURD_INT)
FLOAT_VALUES = ("0", "-1", "1e308", "nan", "inf")
LIST_VALUES = ("", "1,,2", ",", "0", "-1", "1e308", "nan", ABSURD_INT)
# A divergence is a runtime failure (exit 1) by design, not an input error: huge lr / weight decay may give it.
NAN_LOSS = "the training loss became nan"


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr, mode="RGB").save(path)


def _folders(root: Path, classes: str = "ab", per_class: int = 3) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 10 * c + i)
    return root


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Tiny valid artifacts, built once through the library."""
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.inits import InitConfig, init_prompts
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    root = tmp_path_factory.mktemp("hostile")
    data = _folders(root / "data", per_class=2)
    emb = embed_data("vit-tiny-test", str(data), config=EmbedConfig(calib_size=4, device="cpu"),
                     out=root / "emb.safetensors", use_cache=False, show_progress=False).path
    prompts = init_prompts(InitConfig(prompt_length=4, device="cpu"), embeddings=emb,
                           out=root / "prompts.safetensors").path
    ckpt = tune(TuneInputs(embeddings=emb, prompts=prompts), TuneConfig(epochs=1, warmup_epochs=0), [0.1], [0.01],
                [42], root / "ckpt.safetensors", device="cpu", show_progress=False).checkpoint
    from vipamin_cli.testbed.make import make_testbed

    testbed = root / "testbed"
    make_testbed(testbed, seed=0, tasks=["mnist"], train_size=16, val_size=8, test_size=12)  # all 10 classes
    return SimpleNamespace(root=root, data=data, emb=emb, prompts=prompts, ckpt=ckpt, testbed=testbed)



def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", VIPAMIN_QUIET="1")
    env.update(extra)
    return env


def _subprocess(args: list, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``python -m vipamin_cli`` with a timeout, so a hang fails the test instead of freezing the suite."""
    return subprocess.run([sys.executable, "-m", "vipamin_cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(**env), timeout=timeout)


_BATCH = """
import contextlib, io, json, sys
from vipamin_cli.cli import main
results = []
for argv in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _batch(cases: list[list], tmp: Path, prefix: list[str] | None = None, setup: str = "", after: str = "",
           timeout: float = 180, **env: str) -> list[tuple[int, str, str]]:
    """Several commands in one fresh interpreter (one torch import), optionally inside ``prefix`` (a private
    mount namespace) after the shell ``setup``; the timeout turns a hang into a failure."""
    script, argv = tmp / "batch.py", tmp / "batch.json"
    script.write_text(_BATCH)
    argv.write_text(json.dumps([[str(a) for a in case] for case in cases]))
    run = f"'{sys.executable}' '{script}' '{argv}'"
    cmd = [*prefix, "sh", "-c", f"{setup} {run}; {after}"] if prefix else [sys.executable, str(script), str(argv)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=timeout)
    assert res.returncode == 0, res.stderr
    rows = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("[[")))
    script.unlink()
    argv.unlink()
    return [tuple(r) for r in rows]


# ----------------------------------------------------------------------------------------------------------
# The generated test: every numeric option and every list option of every command


def _commands() -> dict:
    """Every command of the tree by its full name ("tune", "data get"): sub-commands are walked too."""
    import typer

    from vipamin_cli.cli import app

    def walk(command, prefix: str = ""):
        for name, sub in getattr(command, "commands", {}).items():
            full = f"{prefix} {name}".strip()
            if getattr(sub, "commands", None):
                yield from walk(sub, full)
            else:
                yield full, sub

    return dict(walk(typer.main.get_command(app)))


def _kind(param) -> str | None:
    """'int', 'float' or 'str' for an option (click types or typer's annotations), else None."""
    if getattr(param, "is_flag", False):
        return None
    click_type = getattr(param, "type", None)
    name = getattr(click_type, "name", "") if click_type is not None else ""
    if name in ("integer", "integer range"):
        return "int"
    if name in ("float", "float range"):
        return "float"
    bare = param.bare_type() if callable(getattr(param, "bare_type", None)) else None
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None) or bare
    if annotation in (int, "int") or str(bare) == "int":
        return "int"
    if annotation in (float, "float") or str(bare) == "float":
        return "float"
    if annotation in (str, "str") or str(bare) == "str":
        return "str"
    return None


def _is_list_option(param) -> bool:
    """Options documented as comma lists; the registry in validate.py must list exactly these."""
    return _kind(param) == "str" and "comma" in (param.help or "").lower()


def _option_cases() -> list[tuple[str, str, str]]:
    cases = []
    for name, command in _commands().items():
        for param in command.params:
            if not getattr(param, "opts", None) or not param.opts[0].startswith("--"):
                continue
            option = param.opts[0]
            kind = _kind(param)
            if _is_list_option(param) or option in LIST_OPTIONS.get(name, {}):
                cases += [(name, option, v) for v in LIST_VALUES]
            elif kind == "int":
                cases += [(name, option, v) for v in INT_VALUES]
            elif kind == "float":
                cases += [(name, option, v) for v in FLOAT_VALUES]
    return cases


def test_list_option_registry_matches_the_commands() -> None:
    found = {(name, p.opts[0]) for name, c in _commands().items() for p in c.params if _is_list_option(p)}
    registered = {(name, opt) for name, opts in LIST_OPTIONS.items() for opt in opts}
    assert found == registered


def _base(name: str, art: SimpleNamespace, out: Path) -> list[str]:
    """The cheapest valid invocation of each command; the option under test is appended (click keeps the last)."""
    if name == "embed":
        return ["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--calib-size", "4", "--device", "cpu",
                "--no-cache", "--out", out / "e.safetensors"]
    if name == "init":
        return ["init", "--embeddings", art.emb, "-p", "4", "--device", "cpu", "--out", out / "p.safetensors"]
    if name == "tune":  # VAPT, so the --vapt-* options are live; validation data, so --val-every is
        return ["tune", "--embeddings", art.emb, "--val-embeddings", art.emb, "--prompts", art.prompts,
                "--arch", "vapt", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--device", "cpu",
                "--compile", "off", "--out", out / "c.safetensors"]
    if name == "eval":
        return ["eval", "--checkpoint", art.ckpt, "--embeddings", art.emb, "--device", "cpu", "--out",
                out / "m.json"]
    if name == "predict":
        return ["predict", "--checkpoint", art.ckpt, "--data", art.data, "--device", "cpu", "--out", out / "p.csv"]
    if name == "export":
        return ["export", "--checkpoint", art.ckpt, "--out", out / "m.pt2"]
    if name == "data make-testbed":  # one task, the smallest test split
        return ["data", "make-testbed", out / "tb", "--tasks", "mnist", "--test-size", "4"]
    if name == "data check":
        return ["data", "check", "--suite", "testbed", art.testbed, "--fast"]
    if name == "data get":  # a dry run from a local archive: nothing is downloaded or written
        archive = art.root / "vtab-1k.zip"
        if not archive.exists():
            import zipfile

            with zipfile.ZipFile(archive, "w") as zf:
                zf.writestr("vtab-1k/kitti/train800.txt", "images/train800/000000.png 0\n")
        return ["data", "get", "vtab-1k", "--root", out / "root", "--tasks", "kitti", "--from", archive, "--dry-run"]
    if name == "benchmark":  # the linear probe only: the cheapest cell
        return ["benchmark", "--suite", "testbed", "--root", art.testbed, "--backbone", "vit-tiny-test", "--methods",
                "linear", "--preset", "quick", "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.5", "--seeds", "1",
                "--calib-size", "4", "--no-plot", "--device", "cpu", "--cache-dir", art.root / "bench-cache",
                "--out", out / "bench"]  # a shared cache: the cases after the first reuse its embeddings
    raise AssertionError(f"command '{name}' has numeric or list options but no base invocation here: add one to "
                         "tests/test_hostile_inputs.py::_base")


OPTION_CASES = _option_cases()


def test_generated_cases_cover_the_probe_options() -> None:
    ids = {(c, o) for c, o, _ in OPTION_CASES}
    for needed in [("tune", "--val-every"), ("embed", "--workers"), ("tune", "--seeds"), ("embed", "--seed"),
                   ("tune", "--vapt-first-block"), ("tune", "--vapt-kernel"), ("init", "--prompt-length")]:
        assert needed in ids


@pytest.mark.parametrize(("command", "option", "value"), OPTION_CASES,
                         ids=[f"{c}{o}={v or 'empty'}" for c, o, v in OPTION_CASES])
def test_every_numeric_and_list_option(command: str, option: str, value: str, art: SimpleNamespace,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)  # a default output path would land here and be seen
    code, _, err = _run([*_base(command, art, out), option, value], capsys)
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 1:
        assert NAN_LOSS in err and option in ("--lr", "--weight-decay", "--head-weight-decay", "--lr-floor"), err
    else:
        assert code in (0, 2), (code, err)
    if code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert sorted(os.listdir(out)) == [], f"a failed run left {os.listdir(out)}"


# ----------------------------------------------------------------------------------------------------------
# Class 1: the probe's range checks, with their messages


@pytest.mark.parametrize(("args", "names"), [
    (["tune", "--val-every", "0"], ["--val-every 0", "at least 1"]),
    (["embed", "--workers", "-1"], ["--workers -1"]),
    (["embed", "--seed", str(2**64)], ["--seed", "seed range"]),
    (["embed", "--seed", str(2**63)], ["--seed", "seed range"]),
    (["tune", "--seeds", f"1,{2**64}"], ["--seeds", "seed range"]),
    (["tune", "--vapt-first-block", "4"], ["--vapt-first-block 4", "4 blocks"]),
    (["tune", "--vapt-kernel", "5"], ["--vapt-kernel 5", "4x4 patch grid"]),
    (["tune", "--weight-decay", "nan"], ["--weight-decay 'nan' is not a number"]),
    (["tune", "--lr", "0.1,,0.2"], ["--lr", "empty item"]),
    (["tune", "--k", "2,z"], ["--k '2,z': 'z' is not an integer", "pass e.g. --k 2,8,32"]),
    (["tune", "--lambda", "0,x"], ["--lambda '0,x': 'x' is not a number", "pass e.g. --lambda 0,0.5"]),
    (["tune", "--seeds", "1,s"], ["--seeds '1,s': 's' is not an integer", "pass e.g. --seeds 42,44,82"]),
])
def test_range_checks_name_the_option(args: list[str], names: list[str], art: SimpleNamespace, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(*_run([*_base(args[0], art, tmp_path), *args[1:]], capsys)[::2])
    for n in names:
        assert n in line, line
    assert os.listdir(tmp_path) == []


def test_prompt_length_memory_is_estimated_before_allocating(art: SimpleNamespace, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["init", "--embeddings", art.emb, "-p", 10**12, "--out", tmp_path / "p.safetensors"],
                 [*_base("tune", art, tmp_path), "--prompts", art.prompts, "-p", 10**12]):
        if args[0] == "tune":  # the length tune initialises with; --prompts would fix it, so init on the fly
            args = [a for a in args if a not in ("--prompts", art.prompts)]
        line = _one_line_error(*_run(args, capsys)[::2])
        assert "--prompt-length 1000000000000 needs about" in line and "is available" in line, line
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------
# Class 0 (a): an output that is one of the command's own inputs


def test_out_that_is_an_input_is_refused(art: SimpleNamespace, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    copies = {}
    for name in ("emb", "prompts", "ckpt"):
        src = getattr(art, name)
        copies[name] = tmp_path / src.name
        shutil.copyfile(src, copies[name])
    emb, prompts, ckpt = copies["emb"], copies["prompts"], copies["ckpt"]
    hard = tmp_path / "hardlink.safetensors"
    os.link(emb, hard)
    soft = tmp_path / "softlink.safetensors"
    soft.symlink_to(prompts)
    before = {p: p.read_bytes() for p in copies.values()}
    cases = [
        ["init", "--embeddings", emb, "-p", "4", "--out", emb],
        ["init", "--embeddings", emb, "-p", "4", "--out", hard],  # a hard link to the input
        ["init", "--embeddings", tmp_path / "." / emb.name, "-p", "4", "--out", emb],  # another spelling
        ["tune", "--embeddings", emb, "--prompts", prompts, "--epochs", "1", "--warmup-epochs", "0", "--out", prompts],
        ["tune", "--embeddings", emb, "--prompts", soft, "--epochs", "1", "--warmup-epochs", "0", "--out", prompts],
        ["eval", "--checkpoint", ckpt, "--embeddings", emb, "--device", "cpu", "--out", ckpt],
    ]
    for args in cases:
        line = _one_line_error(*_run(args, capsys)[::2])
        assert "is the same file as the input" in line, line
    for p, data in before.items():
        assert p.read_bytes() == data, p
    # embed --out onto one of the images (through a hard link)
    data = _folders(tmp_path / "data")
    image = tmp_path / "img-link.png"
    os.link(data / "a" / "0.png", image)
    png = image.read_bytes()
    line = _one_line_error(*_run(["embed", "--backbone", "vit-tiny-test", "--data", data, "--calib-size", "4",
                                  "--no-cache", "--out", image], capsys)[::2])
    assert "same file as the input image a/0.png" in line
    assert image.read_bytes() == png


# Class 0 (d): --out onto a FIFO, a device node or a symlink


def test_out_onto_non_regular_targets_is_refused(art: SimpleNamespace, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "target.safetensors"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    folder = tmp_path / "folder"
    folder.mkdir()
    for out, kind in ((fifo, "FIFO"), (Path(os.devnull), "device node"), (link, "symbolic link"),
                      (folder, "is a directory")):
        line = _one_line_error(*_run(["init", "--embeddings", art.emb, "-p", "4", "--out", out], capsys)[::2])
        assert kind in line and str(out) in line, line
    assert fifo.is_fifo() and link.is_symlink() and target.read_bytes() == b"keep me"


# Class 0 (b): symlink loops, links to a parent or a sibling class, links out of the dataset root


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: (root / "a" / "loop").symlink_to(root / "a"), "leads back to a folder already read"),
    (lambda root: (root / "a" / "up").symlink_to(".."), "leads back to a folder already read"),
    (lambda root: (root / "b" / "other").symlink_to(root / "a"), "linked twice"),
    (lambda root: (root / "b" / "x.png").symlink_to(root / "a" / "0.png"), "linked twice"),
    (lambda root: os.link(root / "a" / "0.png", root / "b" / "hard.png"), "linked twice"),
    (lambda root: (root / "a" / "out").symlink_to(root.parent / "elsewhere"), "outside the dataset root"),
])
def test_folder_links_never_duplicate_or_escape(make, expected: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = _folders(tmp_path / "ds")
    _folders(tmp_path / "elsewhere", classes="z")
    make(root)
    from vipamin_cli.data import open_dataset
    from vipamin_cli.errors import InputError

    with pytest.raises(InputError, match=expected):
        open_dataset(str(root))
    line = _one_line_error(*_run(["embed", "--backbone", "vit-tiny-test", "--data", root, "--calib-size", "4",
                                  "--no-cache", "--out", tmp_path / "e.safetensors"], capsys)[::2])
    assert expected in line
    assert not (tmp_path / "e.safetensors").exists()


def test_links_inside_the_root_that_add_nothing_twice_still_work(tmp_path: Path) -> None:
    from vipamin_cli.data import open_dataset

    root = _folders(tmp_path / "ds")
    _folders(root / ".store", classes="c")  # hidden: not a class of its own
    (root / "c").symlink_to(root / ".store" / "c")
    image_set = open_dataset(str(root))
    assert image_set.class_names == ["a", "b", "c"]
    assert len(image_set.samples) == 9 and len({s.key for s in image_set.samples}) == 9


# Class 0 (c): the digest covers the metadata; older schema; corrupt-but-parseable metadata


def _resave(src: Path, dest: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["vipamin"])
    save_file(load_file(str(src)), str(dest), metadata={"vipamin": json.dumps(edit(meta))})
    return dest


def test_edited_metadata_fails_verification(art: SimpleNamespace, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from vipamin_cli.artifacts import artifact_digest, load_artifact, tensor_digest

    good = load_artifact(art.emb)
    assert good.meta["digest"] == artifact_digest(good.tensors, good.meta) != tensor_digest(good.tensors)

    def rename_classes(m):
        m["data"]["class_names"] = ["b", "a"]
        return m

    def repool(m):
        m["backbone"]["pool"] = "mean-all"
        return m

    for i, edit in enumerate((rename_classes, repool)):
        bad = _resave(art.emb, tmp_path / f"edited{i}.safetensors", edit)
        line = _one_line_error(*_run(["info", bad, "--verify"], capsys)[::2])
        assert "failed its integrity check" in line
        line = _one_line_error(*_run(["init", "--embeddings", bad, "-p", "4", "--out", tmp_path / "p"], capsys)[::2])
        assert "failed its integrity check" in line
    old = _resave(art.emb, tmp_path / "old.safetensors", lambda m: m | {"schema_version": 1})
    line = _one_line_error(*_run(["info", old, "--verify"], capsys)[::2])
    assert "older vipamin (schema 1)" in line
    assert _run(["info", old], capsys)[0] == 0  # the header alone can still be shown


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: [m], "wrong form (list"),
    (lambda m: {k: v for k, v in m.items() if k != "backbone"}, "lacks 'backbone'"),
    (lambda m: m | {"data": "x"}, "malformed 'data'"),
    (lambda m: m | {"kind": "pizza"}, "unknown artifact kind"),
    (lambda m: m | {"schema_version": "2"}, "schema version 2"),
])
def test_corrupt_but_parseable_metadata_is_one_line(edit, expected: str, art: SimpleNamespace, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = _resave(art.emb, tmp_path / "bad.safetensors", edit)
    for args in (["info", bad], ["info", bad, "--json"], ["init", "--embeddings", bad, "-p", "4", "--out",
                                                          tmp_path / "p.safetensors"]):
        line = _one_line_error(*_run(args, capsys)[::2])
        assert expected in line, line
    assert not (tmp_path / "p.safetensors").exists()


# Class 0 (e): every result-changing runtime setting is in the resume signature and the checkpoint


def test_resume_refuses_another_precision_and_records_the_runtime(art: SimpleNamespace, tmp_path: Path) -> None:
    from vipamin_cli.artifacts import read_metadata
    from vipamin_cli.errors import InputError, Interrupted
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    out = tmp_path / "c.safetensors"
    inputs = TuneInputs(embeddings=art.emb, prompts=art.prompts)
    cfg = TuneConfig(epochs=3, warmup_epochs=0)

    def stop(index, state):
        if state.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        tune(inputs, cfg, [0.1], [0.01], [42], out, device="cpu", show_progress=False, on_epoch=stop,
             precision="fp32")
    partial = tmp_path / "c.partial.safetensors"
    assert read_metadata(partial)["signature"]["runtime"] == {"precision": "fp32", "compile": False, "device": "cpu"}
    with pytest.raises(InputError, match="belongs to a run with other options"):
        tune(inputs, cfg, [0.1], [0.01], [42], out, device="cpu", show_progress=False, resume=True, precision="bf16")
    with pytest.raises(InputError, match="belongs to a run with other options"):
        tune(inputs, cfg, [0.1], [0.01], [42], out, device="cpu", show_progress=False, resume=True, precision="fp32",
             compile_mode="on")
    done = tune(inputs, cfg, [0.1], [0.01], [42], out, device="cpu", show_progress=False, resume=True,
                precision="auto")  # auto resolves to fp32 on the CPU: the same run
    assert read_metadata(done.checkpoint)["runtime"]["precision"] == "fp32"


# Class 0 (f): two tunes writing one --out


def test_second_tune_on_a_locked_out_is_refused(art: SimpleNamespace, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from vipamin_cli.tune import output_lock

    out = tmp_path / "c.safetensors"
    args = ["tune", "--embeddings", art.emb, "--prompts", art.prompts, "--epochs", "1", "--warmup-epochs", "0",
            "--device", "cpu", "--out", out]
    with output_lock(out):
        line = _one_line_error(*_run(args, capsys)[::2])  # flock conflicts between two open files, even here
        assert f"another vipamin tune (pid {os.getpid()}) is writing {out}" in line
        proc = _subprocess(args)  # and from another process
        assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stderr
    assert not out.exists()
    assert _run(args, capsys)[0] == 0
    assert out.exists() and not (tmp_path / "c.safetensors.lock").exists()


# Class 0 (g): FIFO inputs are refused before they are opened (a subprocess with a timeout: no hang)


def test_fifo_inputs_never_hang(art: SimpleNamespace, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    ds = _folders(tmp_path / "ds")
    os.mkfifo(ds / "a" / "pipe.png")
    vtab = tmp_path / "vtab"
    _png(vtab / "img" / "0.png", 0)
    os.mkfifo(vtab / "train800.txt")
    weights = tmp_path / "w.pth"
    os.mkfifo(weights)
    embed = ["embed", "--backbone", "vit-tiny-test", "--calib-size", "4", "--no-cache", "--out",
             tmp_path / "e.safetensors"]
    cases = [
        (["info", fifo], "FIFO"),
        (["init", "--embeddings", fifo, "--out", tmp_path / "p.safetensors"], "FIFO"),
        (["tune", "--embeddings", fifo, "--prompts", art.prompts, "--out", tmp_path / "c.safetensors"], "FIFO"),
        ([*embed, "--data", ds], "pipe.png is a FIFO (named pipe), not a regular file"),
        ([*embed, "--data", vtab], "FIFO"),
        ([*embed, "--data", art.data, "--weights", weights], "FIFO"),
    ]
    for (code, _, err), (_, expected) in zip(_batch([c for c, _ in cases], tmp_path, timeout=120), cases,
                                             strict=True):
        line = _one_line_error(code, err)
        assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "pipe.safetensors", "vtab", "w.pth"]


# Class 0 (h): a real full disk (a small tmpfs in a private mount namespace)


def _namespace_prefix(probe: Path) -> list[str] | None:
    """A command prefix that runs a shell with a private tmpfs mounted on ``probe``, or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        try:
            res = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{probe}'"],
                                 capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if res.returncode == 0:
            return prefix
    return None


def test_full_disk_on_a_real_tmpfs(art: SimpleNamespace, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = _namespace_prefix(mnt)
    if prefix is None:
        pytest.skip("no small filesystem: tried `unshare -rm` and `unshare -m` with `mount -t tmpfs` (needs user "
                    "namespaces or root)")
    fill = f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && head -c 57344 /dev/zero > '{mnt}/fill' &&"
    work = tmp_path / "work"
    work.mkdir()
    results = _batch([["init", "--embeddings", art.emb, "-p", "200", "--device", "cpu", "--out", mnt / "p.safetensors"],
                      ["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--calib-size", "4", "--device",
                       "cpu"]], work, prefix=prefix, setup=fill, after=f"ls -A '{mnt}' '{mnt}/cache/embeddings' > "
                     f"'{work}/listing'", VIPAMIN_CACHE=str(mnt / "cache"))
    (code_out, _, err_out), (code_cache, _, err_cache) = results
    line = _one_line_error(code_out, err_out, expected=1)
    assert line.startswith(f"error: no space left on {mnt} (writing {mnt}/p.safetensors)"), line
    assert "choose another --out location" in line
    line = _one_line_error(code_cache, err_cache, expected=1)
    assert line.startswith(f"error: no space left on {mnt}/cache/embeddings"), line
    assert "point VIPAMIN_CACHE at another directory" in line  # the cache is blamed, not --out
    listing = (work / "listing").read_text().split()  # taken inside the namespace, before the tmpfs went away
    assert "fill" in listing
    assert not any(n.endswith((".tmp", ".safetensors")) for n in listing), listing  # no temporary file left


# Class 2: the cache directory


def test_cache_dir_that_is_a_file_or_cannot_be_made(art: SimpleNamespace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    embed = ["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--calib-size", "4", "--device", "cpu"]
    monkeypatch.setenv("VIPAMIN_CACHE", str(blocker))
    line = _one_line_error(*_run(embed, capsys)[::2])
    assert f"VIPAMIN_CACHE {blocker} is not a directory" in line
    line = _one_line_error(*_run([*embed, "--cache-dir", blocker / "sub"], capsys)[::2])
    assert f"--cache-dir {blocker / 'sub'} cannot be created" in line
    line = _one_line_error(*_run(["init", "--backbone", "vit-tiny-test", "--data", art.data, "--out",
                                  tmp_path / "p.safetensors"], capsys)[::2])
    assert "VIPAMIN_CACHE" in line and not (tmp_path / "p.safetensors").exists()


def test_read_only_cache_serves_its_entry(art: SimpleNamespace, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    embed = ["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--calib-size", "4", "--device", "cpu"]
    from vipamin_cli.embed import EmbedConfig, embed_data

    first = embed_data("vit-tiny-test", str(art.data), config=EmbedConfig(calib_size=4, device="cpu"),
                       cache_dir=cache, show_progress=False).path
    for lock in cache.rglob("*.lock"):
        lock.unlink()  # a shared cache filled elsewhere: no lock files, and none can be made
    (tmp_path / "probe").mkdir()
    prefix = _namespace_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("cannot make a read-only mount: tried `unshare -rm` / `unshare -m` (needs user namespaces or root)")
    ro = f"mount --bind '{cache}' '{cache}' && mount -o remount,bind,ro '{cache}' && ! touch '{cache}/x' 2>/dev/null &&"
    work = tmp_path / "work"
    work.mkdir()
    ((code, out, err),) = _batch([embed], work, prefix=prefix, setup=ro, VIPAMIN_CACHE=str(cache))
    assert code == 0, err
    assert out.strip() == str(first)


# Class 3: user text shown through rich is never markup


def test_markup_in_paths_and_class_names_is_shown_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = _folders(tmp_path / "d[/x]", per_class=2)
    (data / "a").rename(data / "[red]a")
    (data / "b").rename(data / "[bold]b")
    monkeypatch.setenv("VIPAMIN_CACHE", str(tmp_path / "c[/y]"))
    monkeypatch.setenv("VIPAMIN_QUIET", "0")  # the notes and progress bars are what rich renders
    embed = ["embed", "--backbone", "vit-tiny-test", "--data", data, "--calib-size", "4", "--device", "cpu"]
    code, out, err = _run(embed, capsys)
    assert code == 0, err
    code, out, err = _run(embed, capsys)  # the cache-hit note prints the entry's path
    assert code == 0, err
    assert any("cache hit: embeddings" in line and "c[/y]" in line for line in err.splitlines()), err  # one line
    emb = Path(out.strip())
    code, out, err = _run(["info", emb], capsys)
    assert code == 0 and "[red]a" in out and "d[/x]" in out, err
    p, c = tmp_path / "p.safetensors", tmp_path / "c.safetensors"
    assert _run(["init", "--embeddings", emb, "-p", "4", "--device", "cpu", "--out", p], capsys)[0] == 0
    code, out, err = _run(["tune", "--embeddings", emb, "--prompts", p, "--epochs", "1", "--warmup-epochs", "0",
                           "--device", "cpu", "--seeds", "1,2", "--out", c], capsys)
    assert code == 0, err
    code, out, err = _run(["eval", "--checkpoint", c, "--embeddings", emb, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "[red]a" in out and "[bold]b" in out


# Class 4: late or misleading checks


def test_checks_come_before_the_work(art: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIPAMIN_CACHE", str(cache))
    tune = ["tune", "--backbone", "vit-tiny-test", "--data", art.data, "--epochs", "1", "--warmup-epochs", "0",
            "--device", "cpu", "-p", "4", "--out", work / "c.safetensors"]
    for args, expected in (
        ([*tune, "--precision", "fp8"], "unknown --precision 'fp8'"),
        ([*tune, "--compile", "maybe"], "unknown --compile"),
        ([*tune, "--init-seed", "-1"], "--init-seed -1"),
        ([*tune, "--data-seed", str(2**64)], "--data-seed"),
        (["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--no-cache"], "--no-cache needs --out"),
        (["embed", "--backbone", "vit-tiny-test", "--data", art.data, "--out", work], "is a directory"),
        ([*tune[:-1], work], "is a directory"),
    ):
        line = _one_line_error(*_run(args, capsys)[::2])
        assert expected in line, line
        # nothing was computed: no cache entry, no prompts file beside the checkpoint
        assert os.listdir(work) == [] and not list(cache.rglob("*.safetensors")), os.listdir(work)


def test_bom_in_list_files_is_stripped(tmp_path: Path) -> None:
    from vipamin_cli.data import open_dataset

    root = tmp_path / "vtab"
    for i in range(2):
        _png(root / "img" / f"{i}.png", i)
    (root / "train800.txt").write_bytes("\ufeffimg/0.png 0\nimg/1.png 1\n".encode())
    image_set = open_dataset(str(root), split="train800")
    assert [s.key for s in image_set.samples] == ["img/0.png", "img/1.png"]
    fgvc = tmp_path / "fgvc"
    _png(fgvc / "images" / "0.png", 0)
    _png(fgvc / "images" / "1.png", 1)
    (fgvc / "train.json").write_bytes('\ufeff{"images/0.png": 0, "images/1.png": 1}'.encode())
    assert [s.key for s in open_dataset(str(fgvc), split="train").samples] == ["images/0.png", "images/1.png"]


# Class 5: worker processes give the same one line as the single process


def test_corrupt_image_with_workers_gives_the_same_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _folders(tmp_path / "ds")
    (data / "a" / "bad.png").write_text("not a png")
    embed = ["embed", "--backbone", "vit-tiny-test", "--data", data, "--calib-size", "4", "--device", "cpu",
             "--no-cache", "--batch-size", "2", "--out", tmp_path / "e.safetensors"]
    lines = {}
    for workers in ("0", "1", "2"):
        lines[workers] = _one_line_error(*_run([*embed, "--workers", workers], capsys)[::2])
    assert lines["0"] == lines["1"] == lines["2"], lines
    assert "cannot read image" in lines["0"] and "bad.png" in lines["0"]
    assert not (tmp_path / "e.safetensors").exists()
