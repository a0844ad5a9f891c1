"""The offline demo: real handwritten digits (shipped inside scikit-learn) and the built-in tiny ViT."""

from __future__ import annotations

import os
import random
from pathlib import Path

from .errors import InputError
from .iosafety import command_scope

DEMO_BACKBONE = "vit-tiny-test"


@command_scope()
def export_digits(dest: str | os.PathLike, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.2),
                  per_class: int | None = None) -> Path:
    """Write scikit-learn's 1,797 8x8 digit images as PNGs in ``dest/{train,val,test}/<digit>/``.

    Stratified, seeded split: ``fractions`` are the train and val shares, test takes the rest.
    ``per_class`` caps the images per class (before splitting) for quick tests.
    Re-running on an existing complete export is a no-op.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the demo data needs scikit-learn", "pip install 'vipamin[demo]'") from None
    import numpy as np
    from PIL import Image

    from .artifacts import atomic_path

    root = Path(dest)
    marker = root / ".complete"
    if marker.is_file():
        return root
    digits = load_digits()
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(digits.target.tolist()):
        by_class.setdefault(int(y), []).append(i)
    rng = random.Random(seed)
    for label, idx in sorted(by_class.items()):
        rng.shuffle(idx)
        if per_class is not None:
            idx = idx[:per_class]
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        parts = {"train": idx[:n_train], "val": idx[n_train:n_train + n_val], "test": idx[n_train + n_val:]}
        for split, members in parts.items():
            folder = root / split / str(label)
            for i in members:
                pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                with atomic_path(folder / f"digit_{i:04d}.png", sync=False) as tmp:  # never through a link
                    Image.fromarray(pixels).save(tmp, format="PNG")
    with atomic_path(marker) as tmp:
        tmp.write_text("ok\n")
    return root


DEMO_METHODS = ("random", "spt", "vipamin")


@command_scope()
def run_demo(out_dir: str | os.PathLike = "demo-out", device: str = "auto", epochs: int = 20,
             prompt_length: int = 20, lr: float = 1.0, seed: int = 42) -> list[dict]:
    """embed -> init -> tune -> eval on the digits for each init method; prints one comparison table.

    Demo settings (shorter than the paper recipe so it runs in about a minute on a laptop CPU):
    shallow prompts, P = 20, 20 epochs with 2 warm-up epochs, AdamW, base lr 1.0 (x 32/256).
    """
    import json
    import time

    from .embed import EmbedConfig, embed_data
    from .evaluate import evaluate
    from .inits import InitConfig, init_prompts
    from .iosafety import declare_output_dir
    from .train import TuneConfig
    from .tune import TuneInputs, tune
    from .ui import escape, info

    out = declare_output_dir(out_dir, "--out")
    data = export_digits(out / "digits")
    info(f"demo: real handwritten digits (scikit-learn) exported to {escape(data)}; backbone {DEMO_BACKBONE}")
    start = time.perf_counter()
    emb = {split: embed_data(DEMO_BACKBONE, str(data), split=split, config=EmbedConfig(device=device),
                             cache_dir=out / "cache").path for split in ("train", "val", "test")}
    embed_seconds = time.perf_counter() - start
    rows = []
    for method in DEMO_METHODS:
        t0 = time.perf_counter()
        prompts = init_prompts(InitConfig(method=method, prompt_length=prompt_length, device=device),
                               embeddings=emb["train"], out=out / f"prompts-{method}.safetensors").path
        t1 = time.perf_counter()
        config = TuneConfig(epochs=epochs, warmup_epochs=max(1, epochs // 10), lr=lr, seed=seed)
        ckpt = tune(TuneInputs(embeddings=emb["train"], val_embeddings=emb["val"], prompts=prompts), config,
                    [lr], [config.weight_decay], [seed], out / f"checkpoint-{method}.safetensors",
                    device=device).checkpoint
        t2 = time.perf_counter()
        result = evaluate(ckpt, embeddings=emb["test"], device=device)
        t3 = time.perf_counter()
        from .artifacts import read_metadata

        run = read_metadata(ckpt)["runs"][0]
        rows.append({"init": method, "val_top1": run["final_val_top1"], "test_top1": result["summary"]["top1"]["mean"],
                     "init_s": t1 - t0, "tune_s": t2 - t1, "eval_s": t3 - t2})
    summary = {"embed_s": embed_seconds, "settings": {"backbone": DEMO_BACKBONE, "prompt_length": prompt_length,
                                                      "epochs": epochs, "lr": lr, "seed": seed}, "rows": rows}
    from .artifacts import atomic_path

    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    render_demo(summary)
    return rows


def render_demo(summary: dict) -> None:
    from rich.table import Table

    from .ui import out_console

    s = summary["settings"]
    table = Table(title=f"vipamin demo: digits, {s['backbone']}, shallow P={s['prompt_length']}, {s['epochs']} epochs "
                        f"(embed of all splits: {summary['embed_s']:.1f} s, once)")
    for col in ("init", "val top-1 %", "test top-1 %", "init s", "tune s", "eval s"):
        table.add_column(col, justify="right" if col != "init" else "left")
    for r in summary["rows"]:
        table.add_row(r["init"], f"{r['val_top1']:.2f}", f"{r['test_top1']:.2f}", f"{r['init_s']:.2f}",
                      f"{r['tune_s']:.1f}", f"{r['eval_s']:.2f}")
    out_console().print(table)
