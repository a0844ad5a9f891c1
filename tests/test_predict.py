"""Issue 23: `vipamin predict`, `load_classifier`, `vipamin export`, and artifacts that remember their backbone.

Everything runs on the real digits with the tiny seeded ViT. Embeddings are cached in float32 so that
predict (which runs the backbone on the images) and eval (which reads the cached tokens) see the same
numbers; the logits are compared against the function eval itself uses (``evaluate.run_logits``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from entry_point import one_line_error as _one_line_error
from entry_point import run_entry as _run

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.data import load_rgb


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> SimpleNamespace:
    """float32 embeddings of the digits, and one checkpoint per architecture (shallow: two seeds)."""
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.inits import InitConfig
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    root = tmp_path_factory.mktemp("predict")
    config = EmbedConfig(dtype="float32", calib_size=16, device="cpu")
    emb = {s: embed_data("vit-tiny-test", str(digits_dir), split=s, config=config, out=root / f"{s}.safetensors",
                         use_cache=False, show_progress=False).path for s in ("val", "test")}
    ckpt = {}
    for arch, seeds in (("vpt-shallow", [42, 44]), ("vpt-deep", [42]), ("vapt", [42])):  # trained on val: small
        inputs = TuneInputs(embeddings=emb["val"], init=InitConfig(method="random", prompt_length=4, device="cpu"))
        ckpt[arch] = tune(inputs, TuneConfig(arch=arch, epochs=2, warmup_epochs=0, batch_size=16), [0.5], [0.01],
                          seeds, root / f"{arch}.safetensors", device="cpu", show_progress=False).checkpoint
    test = load_artifact(emb["test"], "embeddings")
    paths = [str(digits_dir / key) for key in test.meta["samples"]]
    return SimpleNamespace(root=root, emb=emb, ckpt=ckpt, test=test, paths=paths, digits=digits_dir)


def _eval_logits(ckpt: Path, test) -> list[torch.Tensor]:
    """Each run's logits on the cached test tokens: what `vipamin eval` scores."""
    from vipamin_cli.backbones import load_backbone_from_identity
    from vipamin_cli.evaluate import run_logits

    art = load_artifact(ckpt, "checkpoint")
    vit = load_backbone_from_identity(art.meta["backbone"]).model
    return run_logits(art, test, vit, torch.device("cpu"))


def _rows_by_path(path: Path) -> dict[str, dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return {r["path"]: r for r in csv.DictReader(fh)}
    return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}


# ----------------------------------------------------------------------------------------------------------
# predict against eval


def test_predict_top1_and_probabilities_equal_eval(tuned: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from vipamin_cli.evaluate import evaluate

    ckpt = tuned.ckpt["vpt-shallow"]
    logits = _eval_logits(ckpt, tuned.test)
    labels = tuned.test["labels"]
    folder = tuned.digits / "test"
    # one run, as CSV: top-1 is eval's argmax, the probabilities its softmax, the accuracy eval's top-1
    code, out, err = _run(["predict", "-c", ckpt, "-d", folder, "--run", "1", "--top-k", "3", "--batch-size", "16",
                           "--device", "cpu", "--out", tmp_path / "p.csv"], capsys)
    assert (code, out, err) == (0, f"{tmp_path / 'p.csv'}\n", "")  # the file written, as embed and export print
    rows = _rows_by_path(tmp_path / "p.csv")
    assert sorted(rows) == sorted(tuned.paths) and len(rows) == 80
    probs = logits[1].softmax(-1)
    hits = 0
    for i, path in enumerate(tuned.paths):
        row = rows[path]
        top = probs[i].topk(3)
        assert [row[f"class_{j}"] for j in (1, 2, 3)] == [str(int(c)) for c in top.indices]
        assert [float(row[f"prob_{j}"]) for j in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert row["error"] == ""
        hits += int(row["class_1"]) == int(labels[i])
    result = evaluate(ckpt, embeddings=tuned.emb["test"], device="cpu")
    assert result["runs"][1]["top1"] == pytest.approx(100.0 * hits / 80)
    assert len({r["class_1"] for r in rows.values()}) > 2  # a model that tells images apart
    # default: both seeds, averaged softmax, as JSON lines
    code, _, err = _run(["predict", "-c", ckpt, "-d", folder, "--top-k", "10", "--device", "cpu",
                         "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 0, err
    rows = _rows_by_path(tmp_path / "p.jsonl")
    averaged = (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2
    for i, path in enumerate(tuned.paths):
        got = {t["class"]: t["prob"] for t in rows[path]["top"]}
        assert list(got)[0] == str(int(averaged[i].argmax()))
        assert [got[str(c)] for c in range(10)] == pytest.approx(averaged[i].tolist(), abs=1e-6)


def test_stdout_rows_list_files_stdin_and_hf_disk(tuned: SimpleNamespace, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from PIL import Image

    from vipamin_cli.predict import predict

    ckpt = tuned.ckpt["vpt-shallow"]
    reference = {}
    code, out, _ = _run(["predict", "-c", ckpt, "-d", tuned.paths[0], "-d", tuned.paths[1], "-k", "2", "--run", "0",
                         "--device", "cpu"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == tuned.paths[:2]  # one line per image, in order
    for line in lines:
        path, c1, p1, c2, p2 = line.split("\t")
        reference[path] = (c1, float(p1))
        assert float(p1) >= float(p2) and c1 != c2
    # a list file: paths relative to its folder, VTAB-style labels ignored, comments skipped
    monkeypatch.chdir(tuned.digits)
    keys = [os.path.relpath(p, tuned.digits) for p in tuned.paths[:2]]
    listing = tmp_path / "list.txt"
    shutil.copytree(tuned.digits / "test", tmp_path / "test")
    listing.write_text(f"# two images\n{keys[0]} 7\n\n{keys[1]}\n")
    code, out, _ = _run(["predict", "-c", ckpt, "-d", listing, "-k", "1", "--run", "0", "--device", "cpu"], capsys)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == keys
    for line, path in zip(out.splitlines(), tuned.paths[:2], strict=True):
        assert line.split("\t")[1] == reference[path][0]
    # '-': the list on stdin, relative to the working directory
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(keys) + "\n"))
    predict(ckpt, "-", top_k=1, run=0, device="cpu", show_progress=False, fmt="jsonl")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == keys
    assert [r["top"][0]["prob"] for r in rows] == pytest.approx([reference[p][1] for p in tuned.paths[:2]], abs=1e-4)
    # an hf-disk dataset without labels
    import datasets

    images = [Image.open(p).convert("RGB") for p in tuned.paths[:3]]
    datasets.Dataset.from_dict({"image": images}).save_to_disk(str(tmp_path / "hf"))
    code, out, err = _run(["predict", "-c", ckpt, "-d", f"hf-disk:{tmp_path / 'hf'}", "-k", "1", "--run", "0",
                           "--device", "cpu", "--format", "csv"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [f"hf-disk:{tmp_path / 'hf'}:train:{i}" for i in range(3)]
    assert [r["class_1"] for r in rows[:2]] == [reference[p][0] for p in tuned.paths[:2]]
    # the reader of stdout goes away (`vipamin predict ... | head -n 1`): a quiet stop, exit 141 (128 + SIGPIPE,
    # as the shell reports for a Unix tool ended by the pipe: the choice of issue 21 for every command)
    from vipamin_cli.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["predict", "-c", ckpt, "-d", tuned.digits / "test", "--device", "cpu"]) == 141
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------------------
# load_classifier and export against eval

_LOAD_EXPORTED = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vipamin_cli", "timm"):
            raise ImportError("blocked import of " + name)
        return None
sys.meta_path.insert(0, Block())
import torch
images = torch.load(sys.argv[1])
result = {}
for path in sys.argv[2:]:
    extra = {"vipamin.json": ""}
    program = torch.export.load(path, extra_files=extra).module()
    whole = program(images)
    ones = torch.cat([program(images[i:i + 1]) for i in range(3)])
    torch.save({"whole": whole, "ones": ones}, path + ".logits")
    result[path] = json.loads(extra["vipamin.json"])
result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vipamin_cli", "timm"))
print(json.dumps(result))
"""


def test_load_classifier_and_export_equal_eval_logits(tuned: SimpleNamespace, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from vipamin_cli import load_classifier
    from vipamin_cli.export import export_classifier

    classifiers = {}
    for arch, ckpt in tuned.ckpt.items():
        logits = _eval_logits(ckpt, tuned.test)
        for j, expected in enumerate(logits):
            model = load_classifier(ckpt, run=j)
            assert model.class_names == [str(c) for c in range(10)] and model.config["arch"] == arch
            images = torch.stack([model.transform(load_rgb(p)) for p in tuned.paths])
            with torch.no_grad():
                assert torch.allclose(model(images), expected, atol=1e-5, rtol=0), arch
            with torch.no_grad():  # one image at a time, as the example writes it
                one = model(model.transform(load_rgb(tuned.paths[5]))[None])
            assert torch.allclose(one[0], expected[5], atol=1e-5, rtol=0)
        classifiers[arch] = load_classifier(ckpt)  # shallow: both seeds
    with torch.no_grad():
        ensemble = classifiers["vpt-shallow"](images).softmax(-1)
    averaged = sum(lg.softmax(-1) for lg in _eval_logits(tuned.ckpt["vpt-shallow"], tuned.test)) / 2
    assert torch.allclose(ensemble, averaged, atol=1e-6, rtol=0)

    out = {arch: tmp_path / f"{arch}.pt2" for arch in tuned.ckpt}
    code, stdout, err = _run(["export", "-c", tuned.ckpt["vpt-shallow"], "--out", out["vpt-shallow"]], capsys)
    assert code == 0 and stdout.strip() == str(out["vpt-shallow"]), err
    for arch in ("vpt-deep", "vapt"):
        result = export_classifier(tuned.ckpt[arch], out[arch])
        assert result.max_abs_diff <= 1e-4 and result.sidecar == Path(f"{out[arch]}.json")
    batch = images[:3]
    torch.save(batch, tmp_path / "images.pt")
    res = subprocess.run([sys.executable, "-c", _LOAD_EXPORTED, str(tmp_path / "images.pt"),
                          *map(str, out.values())], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta.pop("loaded") == []  # neither vipamin nor timm was imported to load and run them
    for arch, path in out.items():
        got = torch.load(f"{path}.logits")
        with torch.no_grad():
            expected = classifiers[arch](batch)
        assert torch.allclose(got["whole"], expected, atol=1e-4, rtol=0), arch
        assert torch.allclose(got["ones"], expected, atol=1e-4, rtol=0), arch  # batch size 1 too
        info = meta[str(path)]
        assert info == json.loads(Path(f"{path}.json").read_text())
        assert info["class_names"] == classifiers[arch].class_names and info["arch"] == arch
        assert info["preprocessing"] == tuned.test.meta["preprocessing"]
        assert info["input"]["shape"] == ["batch", 3, 32, 32]
    assert [r["seed"] for r in meta[str(out["vpt-shallow"])]["runs"]] == [42, 44]
    assert "averaged" in meta[str(out["vpt-shallow"])]["output"]["meaning"]
    with torch.no_grad():  # the exported ensemble is eval's hand-averaged softmax too
        assert torch.allclose(torch.load(f"{out['vpt-shallow']}.logits")["whole"].softmax(-1), averaged[:3],
                              atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# artifacts remember their backbone


def test_commands_take_the_backbone_and_weights_from_the_artifact(tuned: SimpleNamespace, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from safetensors.torch import save_file

    from vipamin_cli.backbones import load_backbone, load_backbone_from_identity
    from vipamin_cli.errors import Interrupted
    from vipamin_cli.inits import InitConfig
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    # seeded weights of a non-test backbone: rebuilt without --weights random
    seeded = load_backbone("mae-vit-tiny-mnist", weights="random")
    assert load_backbone_from_identity(seeded.identity()).fingerprint == seeded.fingerprint
    # a local weights file, recorded at tune time
    weights = tmp_path / "w" / "tiny.safetensors"
    weights.parent.mkdir()
    save_file(load_backbone("vit-tiny-test").model.state_dict(), str(weights))
    data = ["--data", tuned.digits, "--calib-size", "8", "--dtype", "float32", "--device", "cpu",
            "--cache-dir", tmp_path / "cache"]
    out = tmp_path / "c.safetensors"

    def stop(run_index, state):
        raise KeyboardInterrupt

    inputs = TuneInputs(backbone="vit-tiny-test", data=str(tuned.digits), split="val", weights=str(weights),
                        init=InitConfig(method="random", prompt_length=4, device="cpu"), cache_dir=tmp_path / "cache")
    with pytest.raises(Interrupted):
        tune(inputs, TuneConfig(epochs=2, warmup_epochs=0), [0.5], [0.01], [42], out, device="cpu",
             show_progress=False, on_epoch=stop)
    # --resume with --data alone (no --backbone, no --weights): both from the resume state
    resumed = replace(inputs, backbone=None, weights=None)
    tune(resumed, TuneConfig(epochs=2, warmup_epochs=0), [0.5], [0.01], [42], out, device="cpu", show_progress=False,
         resume=True)
    ckpt = load_artifact(out, "checkpoint")
    assert ckpt.meta["runs"][0]["history"][-1]["epoch"] == 2
    assert ckpt.meta["backbone"]["weights_source"] == f"file:{weights.resolve()}"
    # eval --data and predict without --backbone / --weights
    code, stdout, err = _run(["eval", "-c", out, *data, "--split", "test", "--json"], capsys)
    assert code == 0, err
    top1 = json.loads(stdout)["runs"][0]["top1"]
    code, _, err = _run(["predict", "-c", out, "-d", tuned.paths[0], "--device", "cpu"], capsys)
    assert code == 0, err
    # the recorded file is gone: one line naming it and --weights; a copy passed with --weights works
    moved = tmp_path / "moved.safetensors"
    weights.rename(moved)
    cached = next((tmp_path / "cache").rglob("*.safetensors"))  # embedded with the weights file
    for args in (["eval", "-c", out, *data, "--split", "test"],
                 ["predict", "-c", out, "-d", tuned.paths[0], "--device", "cpu"],
                 ["export", "-c", out, "--out", tmp_path / "m.pt2"],
                 ["init", "--embeddings", cached, "-p", "4", "--device", "cpu", "--out", tmp_path / "p.safetensors"]):
        line = _one_line_error(*_run(args, capsys)[::2])
        assert f"the backbone weights file {weights} recorded in --" in line and "is gone" in line, line
        assert "pass --weights PATH" in line, line
    # init --embeddings honours --weights too
    line = _one_line_error(*_run(["init", "--embeddings", tuned.emb["val"], "-p", "4", "--device", "cpu", "--weights",
                                  weights, "--out", tmp_path / "p.safetensors"], capsys)[::2])
    assert f"weights file not found: {weights}" in line, line
    code, stdout, err = _run(["eval", "-c", out, *data, "--split", "test", "--json", "--weights", moved], capsys)
    assert code == 0 and json.loads(stdout)["runs"][0]["top1"] == top1, err
    # the recorded file changed: named, with the option; other weights given with --weights: refused
    state = load_backbone("vit-tiny-test").model.state_dict()
    save_file({k: v + 0.01 for k, v in state.items()}, str(weights))
    line = _one_line_error(*_run(["eval", "-c", out, *data, "--weights", weights], capsys)[::2])
    assert f"--weights {weights} are not the weights --checkpoint {out} was made with" in line, line
    line = _one_line_error(*_run(["predict", "-c", out, "-d", tuned.paths[0], "--device", "cpu"], capsys)[::2])
    assert f"the backbone weights file {weights} recorded in --checkpoint {out} changed" in line, line
    assert "pass --weights PATH" in line
    # another --backbone than the recorded one
    line = _one_line_error(*_run(["predict", "-c", out, "-d", tuned.paths[0], "-b", "vit-tiny-reg-test"], capsys)[::2])
    assert "made with backbone 'vit-tiny-test', not 'vit-tiny-reg-test'" in line
    assert not (tmp_path / "m.pt2").exists() and not (tmp_path / "p.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------
# bad inputs: one line each, no traceback, no output left behind


def test_bad_inputs_are_one_line_and_leave_nothing(tuned: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ck.safetensors"
    shutil.copyfile(tuned.ckpt["vpt-shallow"], ckpt)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(tuned.paths[:3]):
        shutil.copyfile(p, folder / "sub" / f"{i}.png")
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    before = ckpt.read_bytes()
    predict = ["predict", "-c", ckpt, "-d", folder, "--device", "cpu"]
    cases = [
        (["predict", "-c", tmp_path / "missing.safetensors", "-d", folder], ["artifact not found", "missing"]),
        (["predict", "-c", tuned.emb["test"], "-d", folder], ["is an embeddings file", "--checkpoint"]),
        (["predict", "-c", ckpt, "-d", empty], ["folder", "has no images"]),
        (["predict", "-c", ckpt, "-d", tmp_path / "nowhere"], ["--data", "does not exist"]),
        (["predict", "-c", ckpt, "-d", ckpt], ["neither an image nor a text list"]),
        ([*predict, "--out", blocker / "p.csv"], ["a-file", "writable --out"]),
        ([*predict, "--out", ckpt, "--format", "csv"], ["same file as the input --checkpoint"]),
        ([*predict, "--out", out / "p.txt"], ["must end in .csv or .jsonl"]),
        ([*predict, "--out", folder / "sub" / "0.png", "--format", "csv"], ["same file as the input image"]),
        ([*predict, "--run", "2"], ["--run 2", "2 runs", "seed 44"]),
        ([*predict, "--top-k", "0"], ["--top-k 0"]),
        ([*predict, "--format", "xml"], ["--format 'xml'"]),
        (["export", "-c", ckpt, "--out", out / "m.onnx"], ["must end in .pt2"]),
        (["export", "-c", tuned.emb["test"], "--out", out / "m.pt2"], ["is an embeddings file"]),
    ]
    for args, names in cases:
        line = _one_line_error(*_run(args, capsys)[::2])
        for name in names:
            assert name in line, (name, line)
    assert os.listdir(out) == [] and ckpt.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a-file", "ck.safetensors", "empty", "imgs", "out"]
    assert sorted(os.listdir(folder / "sub")) == ["0.png", "1.png", "2.png"]
    # a corrupt image in the folder: one stderr line, an error row, the others predicted, exit 3
    (folder / "sub" / "1.png").write_bytes(b"not a png")
    code, stdout, err = _run([*predict, "--out", out / "p.jsonl"], capsys)
    assert code == 3 and stdout == f"{out / 'p.jsonl'}\n", err  # the file written, like embed and export
    assert err.strip().splitlines() == [f"error: cannot read image {folder / 'sub' / '1.png'}: cannot identify image "
                                        f"file '{folder / 'sub' / '1.png'}'; remove or replace the file"]
    rows = [json.loads(line) for line in (out / "p.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(folder / "sub" / f"{i}.png") for i in range(3)]
    assert rows[1]["top"] == [] and "cannot identify image file" in rows[1]["error"]
    assert len(rows[0]["top"]) == len(rows[2]["top"]) == 5 and "error" not in rows[0]
    assert os.listdir(out) == ["p.jsonl"]  # no temporary file left
