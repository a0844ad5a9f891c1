"""`vipamin eval`: top-1, top-5, per-class and macro accuracy, the confusion matrix; mean +- std over seeds."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_path, load_artifact
from .errors import InputError
from .iosafety import command_scope


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Every metric from one run's logits; the confusion matrix is rows = true, columns = predicted."""
    pred = logits.argmax(1)
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(1)
    per_class = [float(confusion[c, c] / support[c]) * 100 if support[c] > 0 else None for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return {"top1": float((pred == labels).float().mean()) * 100, "top5": float(top5.float().mean()) * 100,
            "macro": statistics.fmean(present) if present else 0.0, "per_class": per_class,
            "support": support.tolist(), "confusion": confusion.tolist(), "num_samples": int(labels.numel())}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation over runs, as the papers report seeds."""
    out = {}
    for key in ("top1", "top5", "macro"):
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


@command_scope()
def evaluate(checkpoint: str | os.PathLike, embeddings: str | os.PathLike | None = None, backbone: str | None = None,
             data: str | None = None, weights: str | None = None, split: str | None = "test",
             embed_config: Any = None, cache_dir: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int = 256) -> dict[str, Any]:
    """Evaluate every run of ``checkpoint`` on cached embeddings of the evaluation split.

    The backbone (and its weights) is the one the checkpoint records unless ``backbone`` /
    ``weights`` are given; with ``data`` the split is embedded with it (cached).
    """
    from .backbones import load_backbone_from_identity
    from .embed import embed_data, resolve_device

    if embed_config is not None:
        embed_config.validate({"seed": "--data-seed", "batch_size": "--embed-batch-size"})
    ckpt = load_artifact(checkpoint, "checkpoint", what="--checkpoint")
    if ckpt.meta.get("partial"):
        raise InputError(f"{checkpoint} is an unfinished run's resume state", "finish it with `vipamin tune --resume`")
    if embeddings is None and data is None:
        raise InputError("eval needs --embeddings FILE, or --data (with --backbone)",
                         "pass --embeddings from `vipamin embed`, or --backbone B --data D --split test")
    from .tune import check_compatible

    dev = resolve_device(device)
    if embeddings is not None:  # the cheap checks first
        emb = load_artifact(embeddings, "embeddings", what="--embeddings")
        check_compatible(ckpt.meta, emb.meta, f"checkpoint {checkpoint}", f"embeddings {embeddings}")
    bb = load_backbone_from_identity(ckpt.meta["backbone"], backbone=backbone, weights=weights,
                                     what=f"--checkpoint {checkpoint}")
    if embeddings is None:
        embeddings = embed_data(bb, data, split=split, config=embed_config, cache_dir=cache_dir).path
        emb = load_artifact(embeddings, "embeddings", what="--embeddings")
    labels = emb["labels"]
    num_classes = ckpt.meta["num_classes"]
    runs = []
    for j, logits in enumerate(run_logits(ckpt, emb, bb.model, dev, batch_size, checkpoint, embeddings)):
        m = metrics_from_logits(logits, labels, num_classes)
        m["seed"] = ckpt.meta["runs"][j]["config"]["seed"]
        runs.append(m)
    return {"checkpoint": str(checkpoint), "embeddings": str(embeddings), "split": emb.meta["data"]["split"],
            "class_names": ckpt.meta["data"]["class_names"], "runs": runs, "summary": summarise(runs),
            "selection": ckpt.meta.get("selection")}


def run_logits(ckpt: Any, emb: Any, vit: torch.nn.Module, device: torch.device, batch_size: int = 256,
               checkpoint_name: object = "the checkpoint", embeddings_name: object = "the embeddings",
               ) -> list[torch.Tensor]:
    """Each run's logits (N, C) on the cached tokens of ``emb`` (float32, on CPU): what eval scores."""
    from .train import predict
    from .tune import check_compatible, load_runs

    check_compatible(ckpt.meta, emb.meta, f"checkpoint {checkpoint_name}", f"embeddings {embeddings_name}")
    out = []
    for model in load_runs(ckpt, vit):
        model.to(device)
        out.append(predict(model, emb["tokens"], device, batch_size))
    return out


def render_metrics(result: dict[str, Any]) -> None:
    from rich.table import Table

    from .ui import escape, out_console

    s = result["summary"]
    n = len(result["runs"])
    title = (f"eval on {escape(result['split'])} ({result['runs'][0]['num_samples']} images, "
             f"{n} run{'s' if n > 1 else ''})")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("mean" + (" +- std" if n > 1 else ""))
    for run in result["runs"]:
        table.add_column(f"seed {run['seed']}")
    for key, label in (("top1", "top-1 %"), ("top5", "top-5 %"), ("macro", "macro acc %")):
        cell = f"{s[key]['mean']:.2f}" + (f" +- {s[key]['std']:.2f}" if n > 1 else "")
        table.add_row(label, cell, *(f"{r[key]:.2f}" for r in result["runs"]))
    console = out_console()
    console.print(table)
    per = Table(title="per-class accuracy % (first run)")
    per.add_column("class")
    per.add_column("accuracy")
    per.add_column("images")
    for name, acc, sup in zip(result["class_names"], result["runs"][0]["per_class"], result["runs"][0]["support"],
                              strict=True):
        per.add_row(escape(name), "-" if acc is None else f"{acc:.1f}", str(sup))
    console.print(per)


def plot_confusion(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """The confusion matrix (summed over runs), row-normalised, drawn with Pillow."""
    from PIL import Image, ImageDraw

    from .explain import _colour

    if Path(path).suffix.lower() != ".png":
        raise InputError(f"--plot {path} must end in .png", "pass e.g. --plot confusion.png")
    conf = torch.tensor([r["confusion"] for r in result["runs"]]).sum(0).double()
    rows = conf / conf.sum(1, keepdim=True).clamp_min(1)
    c = conf.shape[0]
    cell = max(4, min(40, 640 // c))
    margin = 60
    img = Image.new("RGB", (margin + c * cell + 20, margin + c * cell + 20), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 8), f"confusion (rows: true, columns: predicted), {result['split']}", fill=(0, 0, 0))
    names = result["class_names"]
    for i in range(c):
        for j in range(c):
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_colour(float(rows[i, j])))
            if cell >= 24:
                draw.text((x + 3, y + cell // 3), f"{int(conf[i, j])}", fill=(255, 255, 255) if rows[i, j] < .6
                          else (0, 0, 0))
        if cell >= 10:
            draw.text((4, margin + i * cell + cell // 3), names[i][:8], fill=(0, 0, 0))
            draw.text((margin + i * cell + 2, margin - 14), names[i][:3], fill=(0, 0, 0))
    dest = Path(path)
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")
    return dest
