"""Bad input through the real CLI: one line on stderr naming the input and the fix, the right exit code,
no traceback, and nothing new or changed in the output folder (0 = the odd-but-valid inputs that must work).

Most cases call ``vipamin_cli.cli.main`` in-process (fast); a few run ``python -m vipamin_cli`` to show the
installed entry point behaves the same. The observed results are collected in ``OBSERVED`` so that a small
script can print the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from entry_point import run_entry as _run_in_process
from PIL import Image

EMBED = ["embed", "--backbone", "vit-tiny-test", "--calib-size", "4"]
TRAIN = ["--epochs", "2", "--warmup-epochs", "1", "-p", "4"]

# One dict per executed case: id, argv, exit code, stderr, and the roots to shorten paths for the docs table.
OBSERVED: list[dict[str, Any]] = []


# ----------------------------------------------------------------------------------------------------------
# Tiny inputs


def _noise(size: tuple[int, int], channels: int, seed: int) -> np.ndarray:
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _rgb(path: Path, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(size, 3, seed), mode="RGB").save(path)
    return path


def _class_folders(root: Path, classes: str = "ab", per_class: int = 4) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _rgb(root / name / f"{i}.png", seed=100 * c + i)
    return root


def _with_odd_image(ctx: SimpleNamespace, name: str, write: Callable[[Path], Any]) -> Path:
    """A class-folder dataset of valid RGB images plus one odd file ``a/<name>`` beside them."""
    root = _class_folders(ctx.inp / "ds", per_class=2)
    write(root / "a" / name)
    return root


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _huge_png(path: Path, side: int) -> None:
    """A valid 1-bit ``side`` x ``side`` black PNG, a few KB on disk, written without holding it in memory."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
                     + _png_chunk(b"IEND", b""))


def _vtab(ctx: SimpleNamespace, lines: list[str]) -> Path:
    root = ctx.inp / "vtab"
    _rgb(root / "img" / "0.png")
    _rgb(root / "img" / "1.png", seed=1)
    (root / "train800.txt").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------------------------------------
# Shared valid artifacts, built once through the library


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import torch
    from safetensors.torch import load_file, save_file
    from timm.models.vision_transformer import VisionTransformer

    from vipamin_cli.artifacts import read_metadata
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.inits import InitConfig, init_prompts
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    art = tmp_path_factory.mktemp("bad_inputs_artifacts")
    data = _class_folders(art / "data")
    other = _class_folders(art / "other", classes="xyz", per_class=2)
    cfg = EmbedConfig(calib_size=4, device="cpu")

    def embed(backbone: str, source: Path, name: str) -> Path:
        return embed_data(backbone, str(source), config=cfg, out=art / name, use_cache=False,
                          show_progress=False).path

    def prompts(emb: Path, name: str) -> Path:
        return init_prompts(InitConfig(prompt_length=4, device="cpu"), embeddings=emb, out=art / name).path

    emb = embed("vit-tiny-test", data, "emb.safetensors")
    pr = prompts(emb, "prompts.safetensors")
    ckpt = tune(TuneInputs(embeddings=emb, prompts=pr), TuneConfig(epochs=2, warmup_epochs=1), [0.1], [0.01], [42],
                art / "ckpt.safetensors", device="cpu", show_progress=False).checkpoint
    reg_prompts = prompts(embed("vit-tiny-reg-test", data, "emb-reg.safetensors"), "prompts-reg.safetensors")
    emb_other = embed("vit-tiny-test", other, "emb-other.safetensors")

    truncated = art / "truncated.safetensors"
    truncated.write_bytes(emb.read_bytes()[: emb.stat().st_size // 2])
    foreign = art / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    newer = art / "newer.safetensors"
    meta = read_metadata(emb) | {"schema_version": 999}
    save_file(load_file(str(emb)), str(newer), metadata={"vipamin": json.dumps(meta, sort_keys=True)})
    narrow = art / "vit-width32.safetensors"
    vit32 = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit32.state_dict().items()}, str(narrow))
    return SimpleNamespace(root=art, data=data, emb=emb, prompts=pr, ckpt=ckpt, reg_prompts=reg_prompts,
                           emb_other=emb_other, truncated=truncated, foreign=foreign, newer=newer, narrow=narrow)


# ----------------------------------------------------------------------------------------------------------
# Cases: build(ctx) makes the inputs and returns (argv, strings the message must contain to name the input)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[SimpleNamespace], tuple[list[str], list[str]]]
    code: int | None  # None: either 0 (works) or 2 (one-line input error) is acceptable
    hint: str  # part of the fix the message must give (unused when the command must work)
    kept: frozenset[str] = field(default_factory=frozenset)  # files a failure may leave in the output folder
    subprocess: bool = False
    traceback: bool = False  # --debug: a traceback is expected


def _embed(ctx: SimpleNamespace, data: Path | str, *extra: str) -> list[str]:
    return [*EMBED, "--data", str(data), "--out", str(ctx.out / "e.safetensors"), *extra]


def _init(ctx: SimpleNamespace, emb: Path, *extra: str) -> list[str]:
    return ["init", "--embeddings", str(emb), "--out", str(ctx.out / "p.safetensors"), *extra]


def _tune(ctx: SimpleNamespace, emb: Path, prompts: Path, *extra: str) -> list[str]:
    return ["tune", "--embeddings", str(emb), "--prompts", str(prompts), *TRAIN,
            "--out", str(ctx.out / "c.safetensors"), *extra]


def _missing_data(ctx):
    return _embed(ctx, ctx.inp / "missing"), [str(ctx.inp / "missing")]


def _empty_folder(ctx):
    (ctx.inp / "empty").mkdir()
    return _embed(ctx, ctx.inp / "empty"), [str(ctx.inp / "empty")]


def _class_without_images(ctx):
    root = _class_folders(ctx.inp / "ds", classes="a")
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no images here")
    return _embed(ctx, root), [str(root / "b")]


def _truncated_jpeg(ctx):
    def write(path: Path) -> None:
        Image.fromarray(_noise((32, 32), 3, 7), mode="RGB").save(path, format="JPEG", quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    root = _with_odd_image(ctx, "cut.jpg", write)
    return _embed(ctx, root), [str(root / "a" / "cut.jpg")]


def _text_png(ctx):
    root = _with_odd_image(ctx, "notes.png", lambda p: p.write_text("this is text, not a PNG"))
    return _embed(ctx, root), [str(root / "a" / "notes.png")]


def _works_with(mode: str, size: tuple[int, int] = (16, 16), fmt: str = "PNG", name: str = "odd.png"):
    def build(ctx):
        def write(path: Path) -> None:
            if mode == "I;16":
                arr = np.random.default_rng(3).integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
                img = Image.fromarray(arr)
            elif mode == "RGBA":
                img = Image.fromarray(_noise(size, 4, 3), mode="RGBA")
            elif mode == "L":
                img = Image.fromarray(_noise(size, 1, 3), mode="L")
            else:
                img = Image.fromarray(_noise(size, 3, 3), mode="RGB").convert(mode)
            img.save(path, format=fmt)
            with Image.open(path) as check:  # the file really has the mode under test
                assert check.mode == mode or (mode == "I;16" and check.mode.startswith("I")), check.mode
                assert check.size == size

        root = _with_odd_image(ctx, name, write)
        return _embed(ctx, root), []

    return build


def _huge_image(ctx):
    root = _with_odd_image(ctx, "huge.png", lambda p: _huge_png(p, 14_000))  # 196 Mpx > PIL's 2x bomb limit
    return _embed(ctx, root), [str(root / "a" / "huge.png")]


def _vtab_bad_label(ctx):
    root = _vtab(ctx, ["img/0.png 0", "img/1.png cat"])
    return _embed(ctx, root), [str(root / "train800.txt"), "line 2", "cat"]


def _vtab_missing_image(ctx):
    root = _vtab(ctx, ["img/0.png 0", "img/gone.png 1"])
    return _embed(ctx, root), [str(root / "img" / "gone.png"), "train800.txt"]


def _vtab_escape(ctx):
    root = _vtab(ctx, ["img/0.png 0", "../../etc/passwd 1"])
    return _embed(ctx, root), ["../../etc/passwd", str(root / "train800.txt")]


def _unknown_backbone(ctx):
    args = _embed(ctx, ctx.shared.data)
    args[args.index("vit-tiny-test")] = "vit-nope"
    return args, ["vit-nope"]


def _weights_missing(ctx):
    path = ctx.inp / "nope.pth"
    return _embed(ctx, ctx.shared.data, "--weights", str(path)), [str(path)]


def _weights_not_checkpoint(ctx):
    path = ctx.inp / "weights.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hello, I am not a checkpoint\n")
    return _embed(ctx, ctx.shared.data, "--weights", str(path)), [str(path)]


def _weights_other_arch(ctx):
    path = ctx.shared.narrow
    return _embed(ctx, ctx.shared.data, "--weights", str(path)), [str(path), "vit-tiny-test"]


def _truncated_info(ctx):
    return ["info", str(ctx.shared.truncated), "--verify"], [str(ctx.shared.truncated)]


def _truncated_init(ctx):
    return _init(ctx, ctx.shared.truncated), [str(ctx.shared.truncated)]


def _truncated_tune(ctx):
    return _tune(ctx, ctx.shared.truncated, ctx.shared.prompts), [str(ctx.shared.truncated)]


def _foreign(ctx):
    return _init(ctx, ctx.shared.foreign), [str(ctx.shared.foreign)]


def _newer_schema(ctx):
    return _init(ctx, ctx.shared.newer), [str(ctx.shared.newer), "999"]


def _other_backbone(ctx):
    s = ctx.shared
    return _tune(ctx, s.emb, s.reg_prompts), [str(s.reg_prompts), "vit-tiny-reg-test"]


def _prompts_as_embeddings(ctx):
    return _init(ctx, ctx.shared.prompts), [str(ctx.shared.prompts), "--embeddings"]


def _eval_other_classes(ctx):
    s = ctx.shared
    args = ["eval", "--checkpoint", str(s.ckpt), "--embeddings", str(s.emb_other), "--out", str(ctx.out / "m.json"),
            "--device", "cpu"]
    return args, [str(s.ckpt), str(s.emb_other)]


def _init_option(option: str, value: str, names: list[str]):
    def build(ctx):
        extra = [option, value] if option in ("-p", "--prompt-length") else [option, value, "-p", "4"]
        return _init(ctx, ctx.shared.emb, *extra), names

    return build


def _too_many_shots(ctx):
    return _embed(ctx, ctx.shared.data, "--shots", "99"), ["--shots 99"]


def _nan_lr(warmup: str):
    def build(ctx):
        args = _tune(ctx, ctx.shared.emb, ctx.shared.prompts, "--lr", "1e32", "--batch-size", "4")
        args[args.index("--warmup-epochs") + 1] = warmup
        return args, ["1e+32", "--lr"]

    return build


def _out_parent_is_file(ctx):
    blocker = ctx.out / "blocker"
    blocker.write_text("a regular file where a directory should be\n")
    return ["init", "--embeddings", str(ctx.shared.emb), "-p", "4", "--out", str(blocker / "p.safetensors")], \
        [str(blocker)]


def _out_read_only(ctx):
    if os.geteuid() == 0:
        pytest.skip("running as root, which ignores permission bits (out_parent_is_a_file covers this)")
    ro = ctx.out / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    ctx.cleanup.append(lambda: ro.chmod(0o700))
    return ["init", "--embeddings", str(ctx.shared.emb), "-p", "4", "--out", str(ro / "p.safetensors")], [str(ro)]


def _no_cuda(ctx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here, so --device cuda is valid input")
    return _embed(ctx, ctx.shared.data, "--device", "cuda"), ["--device cuda"]


def _unknown_option(ctx):
    return [*_embed(ctx, ctx.shared.data), "--bogus"], ["--bogus"]


def _debug(ctx):
    return ["--debug", *_embed(ctx, ctx.inp / "missing")], [str(ctx.inp / "missing")]


DATA_FIX = "pass an image folder"
IMAGE_FIX = "remove or replace the file"
ARTIFACT_FIX = "re-create"
BACKBONE_FIX = "pick the matching --backbone"

CASES = [
    # data sources
    Case("missing_data_path", _missing_data, 2, DATA_FIX),
    Case("missing_data_path_subprocess", _missing_data, 2, DATA_FIX, subprocess=True),
    Case("empty_folder", _empty_folder, 2, "one subfolder per class"),
    Case("class_folder_without_images", _class_without_images, 2, "add images"),
    Case("truncated_jpeg", _truncated_jpeg, 2, IMAGE_FIX),
    Case("text_file_named_png", _text_png, 2, IMAGE_FIX),
    Case("grayscale_works", _works_with("L"), 0, ""),
    Case("rgba_works", _works_with("RGBA"), 0, ""),
    Case("16bit_works", _works_with("I;16"), 0, ""),
    Case("cmyk_works", _works_with("CMYK", fmt="JPEG", name="odd.jpg"), 0, ""),
    Case("1x1_works", _works_with("RGB", size=(1, 1)), 0, ""),
    Case("huge_image", _huge_image, None, IMAGE_FIX),
    # VTAB list files
    Case("vtab_non_integer_label", _vtab_bad_label, 2, "non-negative integer label"),
    Case("vtab_missing_image", _vtab_missing_image, 2, "fix the list file"),
    Case("vtab_path_escapes_root", _vtab_escape, 2, "relative to the dataset folder"),
    # backbones and weights
    Case("unknown_backbone", _unknown_backbone, 2, "vipamin backbones"),
    Case("weights_missing", _weights_missing, 2, "check the --weights path"),
    Case("weights_not_a_checkpoint", _weights_not_checkpoint, 2, "state dict"),
    Case("weights_other_architecture", _weights_other_arch, 2, BACKBONE_FIX),
    # artifacts
    Case("truncated_safetensors_info_verify", _truncated_info, 2, ARTIFACT_FIX),
    Case("truncated_safetensors_init", _truncated_init, 2, ARTIFACT_FIX),
    Case("truncated_safetensors_tune", _truncated_tune, 2, ARTIFACT_FIX),
    Case("foreign_safetensors", _foreign, 2, "pass a file written by vipamin"),
    Case("newer_schema_version", _newer_schema, 2, "upgrade vipamin"),
    Case("embeddings_and_prompts_of_other_backbones", _other_backbone, 2, "same backbone"),
    Case("prompts_file_as_embeddings", _prompts_as_embeddings, 2, "embeddings file"),
    Case("eval_checkpoint_and_data_other_classes", _eval_other_classes, 2, "same class list"),
    # option values
    Case("prompt_length_0", _init_option("--prompt-length", "0", ["--prompt-length 0"]), 2, "--prompt-length 100"),
    Case("prompt_length_minus_3", _init_option("-p", "-3", ["--prompt-length -3"]), 2, "--prompt-length 100"),
    Case("k_out_of_range", _init_option("--k", "17", ["--k 17"]), 2, "1 <= K <= 16"),
    Case("k_zero", _init_option("--k", "0", ["--k 0"]), 2, "1 <= K <= 16"),
    Case("lambda_1_5", _init_option("--lambda", "1.5", ["--lambda 1.5"]), 2, "lambda in [0, 1]"),
    Case("shots_more_than_smallest_class", _too_many_shots, 2, "--shots 4 or less"),
    Case("nan_loss_absurd_lr_no_warmup", _nan_lr("0"), 1, "lower --lr"),
    # after a good first epoch, the resume state of that epoch is kept on purpose ("the last good checkpoint")
    Case("nan_loss_absurd_lr_after_good_epoch", _nan_lr("1"), 1, "lower --lr", frozenset({"c.partial.safetensors"})),
    # output location
    Case("out_parent_is_a_file", _out_parent_is_file, 2, "choose a writable --out location"),
    Case("out_dir_read_only", _out_read_only, 2, "choose a writable --out location"),
    # device, usage, --debug
    Case("device_cuda_without_gpu", _no_cuda, 2, "--device cpu"),
    Case("unknown_option", _unknown_option, 2, "--help"),
    Case("unknown_option_subprocess", _unknown_option, 2, "--help", subprocess=True),
    Case("debug_shows_traceback", _debug, 2, DATA_FIX, subprocess=True, traceback=True),
]


def _case_id(case: Any) -> str:
    return case.id if isinstance(case, Case) else case.values[0].id


# ----------------------------------------------------------------------------------------------------------
# Running the CLI and checking the result


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (hidden ones too): relative path -> (type, size, mtime in ns)."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entries[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return entries



def _run_subprocess(args: list[str], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", VIPAMIN_QUIET="1")
    res = subprocess.run([sys.executable, "-m", "vipamin_cli", *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case: Case, shared: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    ctx = SimpleNamespace(inp=tmp_path / "in", out=tmp_path / "out", shared=shared, monkeypatch=monkeypatch,
                          cleanup=[])
    ctx.inp.mkdir()
    ctx.out.mkdir()
    monkeypatch.chdir(ctx.out)  # a default output path (no --out) would land in the snapshot too
    args, names = case.build(ctx)
    before = _snapshot(ctx.out)
    try:
        if case.subprocess:
            code, stdout, stderr = _run_subprocess(args, ctx.out)
        else:
            code, stdout, stderr = _run_in_process(args, capsys)
        after = _snapshot(ctx.out)
    finally:
        for undo in ctx.cleanup:
            undo()
    OBSERVED.append({"id": case.id, "args": args, "code": code, "stderr": stderr, "subprocess": case.subprocess,
                     "roots": {"in": str(ctx.inp), "out": str(ctx.out), "art": str(shared.root)}})

    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"files changed or removed in the output folder: {changed}"
    assert not [n for n in new if n.endswith(".tmp")], f"temporary files left behind: {new}"

    expected_code = case.code
    if expected_code is None:  # either outcome is acceptable; docs/reliability.md records which one happens
        assert code in (0, 2), stderr
        expected_code = code
    assert code == expected_code, stderr

    if case.traceback:
        lines = stderr.strip().splitlines()
        assert "Traceback (most recent call last)" in stderr
        assert lines[-1].startswith("vipamin_cli.errors."), lines[-1]
        assert all(n in lines[-1] for n in names) and case.hint in lines[-1], lines[-1]
        assert new == [], f"new files in the output folder: {new}"
        return

    assert "Traceback" not in stderr, stderr
    if expected_code == 0:  # every case that must work is an embed into e.safetensors
        from vipamin_cli.artifacts import load_artifact

        assert "error" not in stderr.lower(), stderr
        assert new == ["e.safetensors"], new
        out_file = ctx.out / "e.safetensors"
        assert stdout.strip().splitlines()[-1] == str(out_file)
        art = load_artifact(out_file, "embeddings")
        assert art["tokens"].shape[0] == len(art.meta["samples"]) == 5  # 2 + 2 valid + the odd image
        return

    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    message = lines[0]
    assert message.startswith("error: "), message
    missing = [n for n in names if n not in message]
    assert not missing, f"the message does not name {missing}: {message}"
    assert case.hint in message, f"the message gives no fix ({case.hint!r}): {message}"
    assert set(new) == set(case.kept), f"new files in the output folder: {new}"
    for name in case.kept:  # only a documented, valid artifact may be left (tune's resume state)
        from vipamin_cli.artifacts import load_artifact

        kept = load_artifact(ctx.out / name, "checkpoint")
        assert kept.meta["partial"] and kept.meta["current"]["states"][0]["epoch"] == 1
