"""Interruption (SIGINT / SIGTERM / SIGKILL with resume) and concurrent cache use, with real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vipamin_cli.artifacts import load_artifact
from vipamin_cli.embed import EmbedConfig, embed_data
from vipamin_cli.inits import InitConfig, init_prompts


def _start(args: list, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", VIPAMIN_CACHE=str(cache), VIPAMIN_QUIET="1")
    return subprocess.Popen([sys.executable, "-m", "vipamin_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def inputs(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    emb = {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors", use_cache=False,
                         config=EmbedConfig(calib_size=16)).path for s in ("train", "val")}
    prompts = init_prompts(InitConfig(method="vipamin", prompt_length=5), embeddings=emb["train"],
                           out=root / "p.safetensors").path
    return emb, prompts


def _tune_args(emb, prompts, out, epochs=20):
    return ["tune", "--embeddings", emb["train"], "--val-embeddings", emb["val"], "--prompts", prompts,
            "--epochs", epochs, "--warmup-epochs", 2, "--prompt-dropout", 0.1, "--seeds", "42,44",
            "--device", "cpu", "--out", out]


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_artifact(a), load_artifact(b)
    assert x.tensors.keys() == y.tensors.keys()
    for k in x.tensors:
        assert torch.equal(x.tensors[k], y.tensors[k]), k


def test_sigterm_during_tune_keeps_last_epoch_and_resume_matches(inputs, tmp_path, cli) -> None:
    emb, prompts = inputs
    reference = tmp_path / "ref.safetensors"
    code, _, stderr = cli(*_tune_args(emb, prompts, reference))
    assert code == 0, stderr
    out = tmp_path / "cut.safetensors"
    partial = tmp_path / "cut.partial.safetensors"
    proc = _start(_tune_args(emb, prompts, out), tmp_path / "cache")
    assert _wait_for(partial, proc), proc.communicate()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: tune interrupted") and "--resume" in stderr
    assert "Traceback" not in stderr
    assert partial.exists() and not out.exists()
    assert load_artifact(partial).meta["current"]["states"][0]["epoch"] >= 1
    code, _, stderr = cli(*_tune_args(emb, prompts, out), "--resume")
    assert code == 0, stderr
    _same_tensors(reference, out)
    assert not partial.exists()


def test_fault_injection_kill_at_random_times_then_resume(inputs, tmp_path, cli) -> None:
    emb, prompts = inputs
    reference = tmp_path / "ref.safetensors"
    assert cli(*_tune_args(emb, prompts, reference, epochs=25))[0] == 0
    out = tmp_path / "k.safetensors"
    partial = tmp_path / "k.partial.safetensors"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        args = _tune_args(emb, prompts, out, epochs=25) + (["--resume"] if partial.exists() else [])
        left = set(tmp_path.glob(".*.tmp"))  # a SIGKILL (as attempt 0's) may leave its temporary file
        proc = _start(args, tmp_path / "cache")
        if not _wait_for(partial, proc) and proc.returncode is not None:
            break  # it finished before we could interrupt it
        time.sleep(rng.uniform(0.05, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if attempt % 2 == 0 else signal.SIGINT)
            kills += 1
        proc.communicate(timeout=120)
        new = set(tmp_path.glob(".*.tmp")) - left
        assert not new or proc.returncode == -signal.SIGKILL, (attempt, proc.returncode, new)
    assert kills >= 2
    code, _, stderr = cli(*_tune_args(emb, prompts, out, epochs=25), *(["--resume"] if partial.exists() else []))
    assert code == 0, stderr
    _same_tensors(reference, out)


def test_sigint_during_embed_leaves_nothing(tmp_path) -> None:
    from PIL import Image

    data = tmp_path / "many"
    for c in range(4):
        (data / str(c)).mkdir(parents=True)
        for i in range(1000):
            Image.new("RGB", (16, 16), (c * 60, i % 256, 0)).save(data / str(c) / f"{i}.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cache = tmp_path / "cache"
    # Batch size 1 and every image calibrated (all blocks, statistics): about 10 s of work.
    proc = _start(["embed", "--backbone", "vit-tiny-test", "--data", data, "--batch-size", "1", "--calib-size",
                   "4000", "--out", out_dir / "e.safetensors"], cache)
    lock_dir = cache / "embeddings"
    assert _wait_for(lock_dir, proc), proc.communicate()  # the cache entry's lock exists: the pass has begun
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.startswith("error: embed interrupted; nothing was written") and stderr.count("\n") == 1
    assert list(out_dir.iterdir()) == []
    assert not list(lock_dir.glob("*.safetensors")) and not list(lock_dir.glob(".*.tmp"))


def test_two_processes_embed_one_cache_entry(digits_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    args = ["embed", "--backbone", "vit-tiny-test", "--data", digits_dir, "--split", "train", "--calib-size", "32"]
    procs = [_start(args, cache) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    paths = {r[0].strip() for r in results}
    assert len(paths) == 1
    entries = list((cache / "embeddings").glob("*.safetensors"))
    assert [str(e) for e in entries] == list(paths)
    art = load_artifact(entries[0], "embeddings")  # verifies the digest: a whole, valid file
    assert art["tokens"].shape[0] == 240
    assert not list((cache / "embeddings").glob(".*.tmp"))
