"""The real CLI: help, embed -> info, backbones, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

COMMANDS = ["embed", "info", "backbones", "demo", "predict", "export"]


def _vipamin(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "vipamin_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_is_lazy_and_shows_examples() -> None:
    code = ("import sys\nfrom vipamin_cli.cli import main\n"
            f"for cmd in {COMMANDS!r}:\n    main([cmd, '--help'])\nmain(['--help'])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'timm', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert out.stdout.count("Example: vipamin") == len(COMMANDS) + 1


def test_embed_then_info(cli, digits_dir, tmp_path) -> None:
    out = tmp_path / "emb.safetensors"
    code, stdout, stderr = cli("embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "val",
                               "--out", out, "--calib-size", "20")
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    code, stdout, _ = cli("info", out, "--json", "--verify")
    summary = json.loads(stdout)
    assert code == 0 and summary["verified"]
    assert summary["metadata"]["kind"] == "embeddings"
    assert summary["metadata"]["backbone"]["name"] == "vit-tiny-test"
    assert summary["tensors"]["tokens"]["shape"] == [80, 17, 64]  # 10 classes x 8 val images
    assert summary["tensors"]["calib.key_mean"]["shape"] == [4, 17, 16]
    code, stdout, _ = cli("info", out)
    assert code == 0 and "calib.token_sample" in stdout and "vit-tiny-test" in stdout


def test_backbones_json(cli) -> None:
    code, stdout, _ = cli("backbones", "--json")
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert code == 0
    assert rows["mae-vit-b"]["width"] == 768 and rows["vit-tiny-test"]["patch"] == 8
    assert rows["moco-v3-vit-b"]["source"] == "local file (--weights)"


def _bad_cases(tmp_path):
    empty_class = tmp_path / "empty_class"
    (empty_class / "a").mkdir(parents=True)
    (empty_class / "b").mkdir()
    Image.new("RGB", (8, 8)).save(empty_class / "a" / "x.png")
    fake = tmp_path / "fake_png"
    (fake / "a").mkdir(parents=True)
    (fake / "a" / "img.png").write_text("this is text")
    good = tmp_path / "good"
    (good / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(good / "a" / "x.png")
    return [
        (["--data", tmp_path / "missing"], "data path not found"),
        (["--data", empty_class], "no images"),
        (["--data", fake], "img.png"),
        (["--data", good, "--backbone", "vit-nope"], "unknown backbone 'vit-nope'"),
        (["--data", good, "--backbone", "mae-vit-b"], "--weights"),
        (["--data", good, "--device", "cuda"] if not __import__("torch").cuda.is_available() else
         (["--data", good, "--device", "tpu"]), "--device"),
        (["--data", good, "--dtype", "int8"], "--dtype"),
    ]


def test_bad_input_gives_one_line_and_no_file(tmp_path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args, needle in _bad_cases(tmp_path):
        if "--backbone" not in args:
            args = [*args, "--backbone", "vit-tiny-test"]
        res = _vipamin("embed", *args, "--out", out_dir / "e.safetensors", "--cache-dir", tmp_path / "cache")
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr)
        assert needle in lines[0], (args, lines[0])
        assert "Traceback" not in res.stderr
        assert list(out_dir.iterdir()) == [], args


@pytest.mark.parametrize("args,needle", [
    (["embed", "--data", "x", "--bogus"], "No such option: --bogus"),
    (["embed", "--data", "x"], "Missing option '--backbone'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["info", "/nope.safetensors"], "artifact not found"),
])
def test_usage_errors_are_one_line(args, needle) -> None:
    res = _vipamin(*args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and needle in res.stderr and "Traceback" not in res.stderr


def test_info_refuses_foreign_and_truncated_files(cli, tmp_path, digits_dir) -> None:
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    code, _, stderr = cli("info", foreign)
    assert code == 2 and "no vipamin metadata" in stderr
    good = tmp_path / "e.safetensors"
    cli("embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "val", "--out", good,
        "--calib-size", "4")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, stderr = cli("info", truncated, "--verify")
    assert code == 2 and "t.safetensors" in stderr
