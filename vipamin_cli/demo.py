"""The offline demo: real handwritten digits (shipped inside scikit-learn) and the built-in tiny ViT."""

from __future__ import annotations

import os
import random
from pathlib import Path

from .errors import InputError

DEMO_BACKBONE = "vit-tiny-test"


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

    root = Path(dest)
    marker = root / ".complete"
    if marker.exists():
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
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"digit_{i:04d}.png")
    marker.write_text("ok\n")
    return root


def run_demo(out_dir: str | os.PathLike = "demo-out", device: str = "auto") -> dict[str, Path]:
    """Export the digits and embed every split with the tiny backbone; returns the embeddings paths."""
    from .embed import EmbedConfig, embed_data
    from .summary import artifact_summary, render_summary
    from .ui import info

    out = Path(out_dir)
    data = export_digits(out / "digits")
    info(f"[bold]demo[/]: real handwritten digits (scikit-learn) exported to {data}")
    paths: dict[str, Path] = {}
    for split in ("train", "val", "test"):
        result = embed_data(DEMO_BACKBONE, str(data), split=split, config=EmbedConfig(device=device),
                            out=out / f"embeddings-{split}.safetensors", cache_dir=out / "cache")
        paths[split] = result.path
    render_summary(artifact_summary(paths["train"]))
    return paths
