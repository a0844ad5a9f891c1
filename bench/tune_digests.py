"""Digests of the checkpoints a fixed set of small `vipamin tune` commands writes, to prove a refactor
of the tune engine changes no byte.

Run: ``python -m bench.tune_digests --work DIR [--out digests.json]``. Every command trains on a
VTAB-style list-file folder made of scikit-learn's digits (5 train + 2 val images per class, seed 0)
with the built-in tiny ViT ``vit-tiny-test``: a 2-lr x 2-seed sweep with VIPAMIN's init computed on
the fly, for vpt-shallow, vpt-deep and VAPT, with grid batching on (all four configurations in one
group) and with ``--grid-batch 1``, and a ``--final-split`` case. ``--init-seed 0`` is passed
explicitly so the commands keep their meaning if the default init seed changes. Runs on one thread,
so the bytes do not depend on how a CPU's cores split a matmul.

The printed JSON maps each case to the tensor digest of its checkpoint (``tensors``, what
``tests/test_tune_digests.py`` compares), a digest of its metadata (``meta``: every field but the
epochs' wall times; it holds the artifact digests of the embeddings and prompts, which cover the data
folder's path, so it compares only between runs in the same ``--work`` folder) and the init prompts
file's tensor digest. To check code against another commit, run this file from both
trees (``PYTHONPATH=<tree> python <tree>/bench/tune_digests.py --work DIR``) with the same DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

# The sweep every case shares: 2 lrs x 2 seeds, VIPAMIN's init computed now with an explicit seed.
SWEEP = ["--lr", "0.5,1", "--seeds", "42,44", "--init", "vipamin", "--init-seed", "0", "--k", "4", "--epochs", "2",
         "--warmup-epochs", "1", "--batch-size", "16", "-p", "4", "--prompt-dropout", "0.1", "--device", "cpu",
         "--compile", "off", "--calib-size", "32", "--sample-images", "4"]
DATA = ["--backbone", "vit-tiny-test", "--split", "train800", "--val", "val200"]
CASES: dict[str, list[str]] = {
    "shallow-grid": ["--arch", "vpt-shallow"],
    "shallow-gb1": ["--arch", "vpt-shallow", "--grid-batch", "1"],
    "deep-grid": ["--arch", "vpt-deep"],
    "deep-gb1": ["--arch", "vpt-deep", "--grid-batch", "1"],
    "vapt-grid": ["--arch", "vapt"],
    "vapt-gb1": ["--arch", "vapt", "--grid-batch", "1"],
    "final-split": ["--arch", "vpt-shallow", "--final-split", "train800val200"],
}


def make_data(root: Path) -> Path:
    """A VTAB-1k style folder (train800 / val200 / train800val200 list files) of real digits."""
    from vipamin_cli.demo import export_digits

    digits = export_digits(root / "digits", per_class=40)
    vtab = root / "vtab"
    lines: dict[str, list[str]] = {"train800": [], "val200": []}
    for split, name, n in (("train", "train800", 5), ("val", "val200", 2)):
        for c in range(10):
            for f in sorted((digits / split / str(c)).glob("*.png"))[:n]:
                rel = f"images/{split}-{c}-{f.name}"
                (vtab / "images").mkdir(parents=True, exist_ok=True)
                (vtab / rel).write_bytes(f.read_bytes())
                lines[name].append(f"{rel} {c}")
    for name, rows in (("train800", lines["train800"]), ("val200", lines["val200"]),
                       ("train800val200", lines["train800"] + lines["val200"])):
        (vtab / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return vtab


def command(case: str, data: Path, out: Path) -> list[str]:
    """The `vipamin tune` arguments of ``case``."""
    return ["tune", *DATA, "--data", str(data), *SWEEP, *CASES[case], "--out", str(out)]


def _timeless(obj: object, work: str) -> object:
    """Metadata without what differs between two identical runs: epoch wall times (``seconds``) and
    the checkpoint's digest over them (the work folder's path is replaced for readability only)."""
    if isinstance(obj, dict):
        return {k: _timeless(v, work) for k, v in obj.items() if k not in ("seconds", "digest")}
    if isinstance(obj, list):
        return [_timeless(v, work) for v in obj]
    return obj.replace(work, "<work>") if isinstance(obj, str) else obj


def digests(checkpoint: Path, work: Path) -> dict[str, str]:
    import hashlib

    from vipamin_cli.artifacts import load_artifact, tensor_digest

    art = load_artifact(checkpoint, "checkpoint")
    prompts = checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".prompts.safetensors")
    meta = json.dumps(_timeless(art.meta, str(work)), sort_keys=True).encode()
    out = {"tensors": tensor_digest(art.tensors), "meta": hashlib.blake2b(meta, digest_size=16).hexdigest()}
    if prompts.exists():
        out["prompts"] = tensor_digest(load_artifact(prompts, "prompts").tensors)
    return out


def run_cases(work: Path, cases: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Run each case's command in this process (one thread) and return its digests."""
    import torch

    from vipamin_cli.cli import main

    data = make_data(work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for case in cases or list(CASES):
            folder = work / "runs" / case
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            out = folder / "ck.safetensors"
            with contextlib.redirect_stdout(io.StringIO()):  # the checkpoint path tune prints
                code = main(command(case, data, out))
            if code != 0:
                raise SystemExit(f"{case}: vipamin tune exited with {code}")
            result[case] = digests(out, work)
        return result
    finally:
        torch.set_num_threads(threads)


def platform_key() -> dict[str, str]:
    """What the bytes depend on besides the code: torch's version and the CPU kernels it picks."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the data, cache and checkpoints.")
    parser.add_argument("--out", type=Path, help="Also write the digests JSON here.")
    parser.add_argument("--cases", help="Comma list of cases (default: all).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["VIPAMIN_QUIET"] = "1"
    os.environ["VIPAMIN_CACHE"] = str(args.work / "cache")
    result = {"platform": platform_key(), "cases": run_cases(args.work, args.cases.split(",") if args.cases
                                                             else None)}
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
