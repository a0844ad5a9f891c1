"""How often `predict` and `eval` disagree on an image's top-1 with the default bfloat16 token cache.

Run: ``python -m bench.predict_agreement [--work DIR] [--out result.json]`` (offline; about 15 minutes
on 2 shared CPU cores). `eval` scores the blocks on cached block-0 tokens, stored in bfloat16 by
default; `predict` computes those tokens in float32 from the image. For three small tasks (testbed
mnist and count with the built-in MAE backbone, the scikit-learn digits with the tiny test ViT) it
tunes a 3-seed shallow VIPAMIN checkpoint (P = 10, lr 1.0, a few epochs) on the default cache, then
counts the test images whose top-1 differs between the two paths, per seed and for the seed
ensemble, with a bfloat16 and a float32 test cache.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

TASKS = (  # name, backbone, data (under --work), train split, test split, epochs
    ("testbed mnist", "mae-vit-tiny-mnist", "testbed/mnist", "train800val200", "test", 3),
    ("testbed count", "mae-vit-tiny-mnist", "testbed/count", "train800val200", "test", 3),
    ("digits", "vit-tiny-test", "digits", "train", "test", 10),
)
SEEDS = [42, 44, 82]


def predict_logits(model: Any, data: str, split: str) -> torch.Tensor:
    """Each run's logits (runs, N, C) computed from the images, as `predict` does (float32 on CPU)."""
    from vipamin_cli.data import open_dataset
    from vipamin_cli.embed import block0_tokens

    images = open_dataset(data, split=split)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 128):
            x = torch.stack([model.transform(images.load_image(j))
                             for j in range(start, min(len(images), start + 128))])
            tokens = block0_tokens(model.backbone, x)
            out.append(torch.stack([m(tokens) for m in model.runs]))
    return torch.cat(out, 1)


def compare(eval_logits: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    ensemble = eval_logits.softmax(-1).mean(0).argmax(1) != pred.softmax(-1).mean(0).argmax(1)
    return {"images": int(labels.numel()),
            "disagree_per_run": [int((e.argmax(1) != p.argmax(1)).sum()) for e, p in zip(eval_logits, pred,
                                                                                      strict=True)],
            "disagree_ensemble": int(ensemble.sum()),
            "max_abs_logit_diff": float((eval_logits - pred).abs().max()),
            "top1_eval": [float((e.argmax(1) == labels).float().mean() * 100) for e in eval_logits],
            "top1_predict": [float((p.argmax(1) == labels).float().mean() * 100) for p in pred]}


def task(work: Path, name: str, backbone: str, data: str, train: str, test: str, epochs: int) -> dict[str, Any]:
    from vipamin_cli import load_classifier
    from vipamin_cli.artifacts import load_artifact
    from vipamin_cli.embed import EmbedConfig, embed_data
    from vipamin_cli.evaluate import run_logits
    from vipamin_cli.inits import InitConfig
    from vipamin_cli.train import TuneConfig
    from vipamin_cli.tune import TuneInputs, tune

    cache = work / "cache"
    inputs = TuneInputs(backbone=backbone, data=data, split=train, cache_dir=cache,
                        init=InitConfig(method="vipamin", prompt_length=10, device="cpu"))
    ckpt = tune(inputs, TuneConfig(epochs=epochs, warmup_epochs=1, lr=1.0), [1.0], [0.01], SEEDS,
                work / f"{name.replace(' ', '-')}.safetensors", device="cpu", show_progress=False).checkpoint
    model = load_classifier(ckpt)
    pred = predict_logits(model, data, test)
    art = load_artifact(ckpt, "checkpoint")
    result = {}
    for dtype in ("bfloat16", "float32"):
        emb = load_artifact(embed_data(backbone, data, split=test, cache_dir=cache, show_progress=False,
                                       config=EmbedConfig(dtype=dtype)).path)
        logits = torch.stack(run_logits(art, emb, model.backbone, torch.device("cpu")))
        result[dtype] = compare(logits, pred, emb["labels"])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="predict-agreement", help="folder for the data, cache and checkpoints")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("VIPAMIN_QUIET", "1")
    from vipamin_cli.demo import export_digits
    from vipamin_cli.testbed.make import make_testbed

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "testbed" / "manifest.json").exists():
        make_testbed(work / "testbed", seed=0, tasks=["mnist", "count"])
    export_digits(work / "digits")
    results = {}
    for name, backbone, data, train, test, epochs in TASKS:
        results[name] = task(work, name, backbone, str(work / data), train, test, epochs)
        for dtype, r in results[name].items():
            print(f"{name} ({backbone}), {dtype} cache: {r['images']} test images, top-1 differs for "
                  f"{r['disagree_per_run']} (per seed), {r['disagree_ensemble']} (seed ensemble); max |logit "
                  f"diff| {r['max_abs_logit_diff']:.3g}; top-1 eval {[round(x, 1) for x in r['top1_eval']]}, "
                  f"predict {[round(x, 1) for x in r['top1_predict']]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
