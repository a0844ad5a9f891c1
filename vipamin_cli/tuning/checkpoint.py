"""The checkpoint a tune writes, and reading its runs back.

A checkpoint holds one or more runs (one per training seed of the selected configuration), each as
``run{j}.<parameter>`` tensors, and metadata with every option, per-epoch history, the best epoch,
the init's and embeddings' fingerprints, the backbone identity and the whole sweep (also written
as ``<out>.sweep.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Artifact, atomic_path, save_artifact
from ..train import TuneConfig, build_model, prompt_side_parameters
from ..ui import err_console
from .halving import rung_history, sweep_headline
from .inputs import TuneData
from .stage import Runtime


def sweep_json_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".sweep.json")


def checkpoint_meta(data: TuneData, base: TuneConfig, runtime: Runtime, recipe: Any) -> dict[str, Any]:
    """The metadata every checkpoint (and resume state) of this tune carries: where its inputs came
    from, the head's input, the prompt side's size, the runtime and the recipe."""
    from .. import distributed

    train, val, final = data.splits.train, data.splits.val, data.splits.final
    identity = data.splits.identity
    meta = {"backbone": identity, "preprocessing": train.meta["preprocessing"], "data": train.meta["data"],
            "embeddings": {"train": train.meta["digest"], "val": val.meta["digest"] if val else None,
                           "train_split": train.meta["data"]["split"],
                           "val_split": val.meta["data"]["split"] if val else None},
            "init": data.sources[0] if len(data.sources) == 1 else {"grid": data.sources}, "arch": base.arch,
            "init_seed": data.init_seed_rule,
            "pool": data.pool, "grid": list(data.grid), "num_classes": data.num_classes,
            "augment": {"sweep": train.meta.get("augment"),
                        "final": final.meta.get("augment") if final is not None else None},
            "prompt_side_parameters": prompt_side_parameters(base, int(identity["width"]), int(identity["depth"]),
                                                             data.grid, int(data.prompts[0].shape[-2]),
                                                             data.backbone.model, data.pool),
            "runtime": runtime.record(),
            "recipe": {"name": recipe.recipe, "values": recipe.resolved} if recipe is not None else None}
    if distributed.launched():
        meta["world_size"] = distributed.world_size()
    return meta


def as_runs(records: list[dict[str, Any]], tensors: dict[str, torch.Tensor],
            indices: list[int]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The finished runs ``indices`` (``done{i}.*``) as the checkpoint's runs 0, 1, ... (``run{j}.*``)."""
    runs, out = [], {}
    for j, i in enumerate(indices):
        out.update({f"run{j}.{k.split('.', 1)[1]}": v for k, v in tensors.items() if k.startswith(f"done{i}.")})
        runs.append(records[i])
    return runs, out


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], sweep: dict[str, Any],
                     partial: Path) -> None:
    """Write the checkpoint and ``<out>.sweep.json`` (rank 0), then drop the resume state (every rank)."""
    from .. import distributed

    if distributed.is_main():
        save_artifact(out, tensors, "checkpoint", meta)
        with atomic_path(sweep_json_path(out)) as tmp:
            tmp.write_text(json.dumps(sweep, indent=2))
    distributed.sync()  # the checkpoint is written: now every rank may drop its resume state
    partial.unlink(missing_ok=True)


def render_sweep(sweep: dict[str, Any]) -> None:
    """The sweep as a table on stderr, the selected configuration marked."""
    from rich.table import Table

    from ..ui import quiet

    if quiet():
        return
    validated = any(r["final_val_top1"] is not None for r in sweep["runs"])
    title = "sweep (* = selected on validation)" if validated else "runs (no validation data: nothing selected)"
    halving = sweep.get("mode") == "halving"
    table = Table(title=title, caption=sweep_headline(sweep) if halving else None)
    for col in ("lr", "weight decay", "seed", "final val top-1", "best val top-1 (epoch)", "train loss"):
        table.add_column(col)
    for col in ("epochs", "pruned at", "score at rungs (epoch:score)") if halving else ():
        table.add_column(col)
    chosen = sweep["chosen"]
    for r in sweep["runs"]:
        c = r["config"]
        picked = validated and (r.get("init_index", 0), c["lr"], c["weight_decay"]) == (
            chosen.get("init_index", 0), chosen["lr"], chosen["weight_decay"])
        mark = "* " if picked else "  "
        best = f"{r['best']['val_top1']:.2f} ({r['best']['epoch']})" if r["best"] else "-"
        final = f"{r['final_val_top1']:.2f}" if r["final_val_top1"] is not None else "-"
        table.add_row(f"{mark}{c['lr']:g}", f"{c['weight_decay']:g}", str(c["seed"]), final, best,
                      f"{r['final_train_loss']:.4f}", *(rung_history(r) if halving else ()))
    err_console().print(table)


def load_runs(checkpoint: Artifact, vit: torch.nn.Module) -> list[Any]:
    """Rebuild every run's prompted model from a checkpoint."""
    meta = checkpoint.meta
    models = []
    for j, run in enumerate(meta["runs"]):
        prefix = f"run{j}."
        state = {k[len(prefix):]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
        cfg_fields = {k: v for k, v in run["config"].items() if k in TuneConfig.__dataclass_fields__}
        cfg = TuneConfig(**cfg_fields)
        model = build_model(vit, state.get("prompts"), meta["num_classes"], cfg, meta["pool"], tuple(meta["grid"]))
        model.load_state_dict(state, strict=False)
        models.append(model)
    return models
