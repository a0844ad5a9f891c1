"""`vipamin tune`: inputs, init on the fly, the sweep, resume state, selection and the checkpoint.

A checkpoint holds one or more runs (one per training seed of the selected configuration), each as
``run{j}.<parameter>`` tensors, and metadata with every option, per-epoch history, the best epoch,
the init's and embeddings' fingerprints and the backbone identity. While training, a
``<checkpoint>.partial.safetensors`` file holds finished runs and the current run's state after
every epoch; ``--resume`` continues from it and it is removed once the checkpoint is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .artifacts import Artifact, atomic_path, check_same_backbone, load_artifact, read_metadata, save_artifact
from .errors import ArtifactError, InputError, Interrupted
from .train import (
    DEFAULT_PROMPTS,
    RunState,
    TuneConfig,
    build_model,
    config_dict,
    optimizer_tensors,
    train_group,
    trainable_state,
)
from .ui import err_console, info, progress_bar


@dataclass
class TuneInputs:
    """Where the data, validation data and initial prompts come from."""

    embeddings: str | os.PathLike | None = None
    backbone: str | None = None
    data: str | None = None
    weights: str | None = None
    split: str | None = None
    shots: int | None = None
    val: str | None = None  # a split name of --data
    val_embeddings: str | os.PathLike | None = None
    prompts: str | os.PathLike | None = None
    init: Any = None  # an InitConfig when prompts are computed on the fly
    embed_config: Any = None
    cache_dir: str | os.PathLike | None = None


@dataclass
class TuneOutcome:
    checkpoint: Path
    sweep: dict[str, Any]
    models: list[Any]  # the selected runs trained in this call (not those restored by --resume)
    backbone: Any


def _embeddings(inputs: TuneInputs, split: str | None, explicit: str | os.PathLike | None, what: str) -> Artifact:
    from .embed import embed_data

    if explicit is not None:
        return load_artifact(explicit, "embeddings", what=what)
    if inputs.backbone is None or inputs.data is None:
        raise InputError(f"{what} needs --embeddings FILE, or --backbone and --data",
                         "pass --embeddings from `vipamin embed`, or --backbone B --data D")
    res = embed_data(inputs.backbone, inputs.data, weights=inputs.weights, split=split, shots=inputs.shots,
                     config=inputs.embed_config, cache_dir=inputs.cache_dir)
    return load_artifact(res.path, "embeddings", what=what)


def check_compatible(a: dict[str, Any], b: dict[str, Any], what_a: str, what_b: str) -> None:
    """Same backbone and weights, same preprocessing, same class list: else refuse."""
    check_same_backbone(a, b, what_a, what_b)
    if a.get("preprocessing") != b.get("preprocessing"):
        raise ArtifactError(f"{what_a} and {what_b} were preprocessed differently "
                            f"({a['preprocessing'].get('resize')} vs {b['preprocessing'].get('resize')})",
                            "embed both with the same --resize")
    ca, cb = a["data"]["class_names"], b["data"]["class_names"]
    if ca != cb:
        raise ArtifactError(f"{what_a} has {len(ca)} classes {ca[:4]}... but {what_b} has {len(cb)} {cb[:4]}...",
                            "use splits of the same dataset (same class list)")


def _initial_prompts(inputs: TuneInputs, train: Artifact, arch: str, out: Path) -> tuple[torch.Tensor, dict]:
    """Prompts from --prompts, or computed now with --init and saved beside the checkpoint."""
    from .inits import InitConfig, init_prompts

    if inputs.prompts is not None:
        art = load_artifact(inputs.prompts, "prompts", what="--prompts")
        check_same_backbone(train.meta, art.meta, "the training embeddings", f"--prompts {inputs.prompts}")
        source = {"file": str(inputs.prompts), "digest": art.meta["digest"], "method": art.meta["method"],
                  "config": art.meta["config"]}
        prompts = art["prompts"]
    else:
        cfg: InitConfig = inputs.init or InitConfig()
        cfg = replace(cfg, deep=arch == "vpt-deep", prompt_length=cfg.prompt_length or DEFAULT_PROMPTS[arch])
        dest = out.with_name(out.name.removesuffix(".safetensors") + ".prompts.safetensors")
        outcome = init_prompts(cfg, embeddings=train.path, out=dest)
        prompts = outcome.tensors["prompts"]
        source = {"file": str(dest), "digest": read_metadata(dest)["digest"], "method": cfg.method,
                  "config": outcome.meta["config"]}
    if arch == "vpt-deep" and prompts.dim() != 3:
        raise InputError("--arch vpt-deep needs deep prompts (one set per block)", "initialise with `init --deep`")
    if arch == "vpt-shallow" and prompts.dim() != 2:
        raise InputError("--arch vpt-shallow needs shallow prompts", "initialise without --deep")
    if arch == "vapt" and prompts.dim() == 3:
        prompts = prompts[0]  # a deep init seeds VAPT's static block-0 prompts only
    return prompts.float(), source


def _device_tokens(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep cached tokens resident on the GPU when they fit comfortably, else on the host."""
    if device.type != "cuda":
        return tokens
    free, _ = torch.cuda.mem_get_info(device)
    need = tokens.numel() * tokens.element_size()
    return tokens.to(device) if need < 0.5 * free else tokens.pin_memory()


def _check_geometry(base: TuneConfig, vit: torch.nn.Module, grid: tuple[int, int], train: Artifact,
                    inputs: TuneInputs, dev: torch.device) -> None:
    """Checks that need the backbone's shape: VAPT's kernel and first block, the prompts' memory."""
    from . import validate as v

    depth = len(vit.blocks)
    if base.arch == "vapt":
        v.vapt_geometry(base.vapt_kernel, base.vapt_first_block, depth, grid)
    length = (inputs.init.prompt_length if inputs.init is not None and inputs.prompts is None else None)
    length = length or DEFAULT_PROMPTS[base.arch]
    tokens = int(train["tokens"].shape[1])
    need = v.prompt_memory(length, int(vit.embed_dim), depth if base.arch == "vpt-deep" else 1, tokens,
                           base.batch_size, int(vit.blocks[0].attn.num_heads), depth)
    v.memory_fits(need, "--prompt-length", length, dev, "pass a smaller --prompt-length or --batch-size")


def select(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """The (lr, wd) with the best mean last-epoch val top-1 over seeds; ties go to the smaller lr."""
    groups: dict[tuple[float, float], list[float]] = {}
    for r in runs:
        groups.setdefault((r["config"]["lr"], r["config"]["weight_decay"]), []).append(r["final_val_top1"])
    return max(groups, key=lambda k: (statistics.fmean(groups[k]), -k[0], -k[1]))


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".partial.safetensors")


def tune(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
         out: str | os.PathLike, device: str = "auto", resume: bool = False, show_progress: bool = True,
         on_epoch: Any = None, grid_batch: int | None = None, precision: str = "auto",
         compile_mode: str = "auto") -> TuneOutcome:
    """Train every (lr, weight decay, seed) configuration, select on validation, write the checkpoint.

    Configurations are trained ``grid_batch`` at a time in one loop over the frozen backbone
    (default: all at once); ``grid_batch=1`` trains them one after another.
    """
    out, dev, precision_used, compile_blocks, configs = check_tune_request(
        inputs, base, lrs, weight_decays, seeds, out, device, grid_batch, precision, compile_mode)
    with output_lock(out):
        return _tune(inputs, base, lrs, weight_decays, configs, out, dev, resume, show_progress, on_epoch,
                     grid_batch, precision_used, compile_blocks)


def check_tune_request(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float],
                       seeds: list[int], out: str | os.PathLike, device: str, grid_batch: int | None,
                       precision: str, compile_mode: str) -> tuple[Path, torch.device, str, bool, list[TuneConfig]]:
    """Every check that needs no data, before any work: options, the output path, the runtime settings."""
    from . import validate as v
    from .embed import resolve_device
    from .train import PRECISIONS

    if not lrs or not weight_decays or not seeds:
        raise InputError("--lr, --weight-decay and --seeds each need at least one value", "pass e.g. --lr 0.1")
    for lr in lrs:
        v.number(lr, "--lr", minimum=0, min_open=True, example=0.1)
    for wd in weight_decays:
        v.number(wd, "--weight-decay", minimum=0, example=0.01)
    for s in seeds:
        v.seed(s, "--seeds" if len(seeds) > 1 else "--seed")
    base.validate()
    configs = [replace(base, lr=lr, weight_decay=wd, seed=s) for lr in lrs for wd in weight_decays for s in seeds]
    for c in configs:
        c.validate()
    v.integer(grid_batch, "--grid-batch", minimum=1, example=4, optional=True)
    if inputs.init is not None:
        inputs.init.validate({"seed": "--init-seed"})
    if inputs.embed_config is not None:
        inputs.embed_config.validate({"seed": "--data-seed"})
    if inputs.shots is not None:
        v.integer(inputs.shots, "--shots", minimum=1, example=16)
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if compile_mode not in ("auto", "on", "off"):
        raise InputError(f"unknown --compile '{compile_mode}'", "use auto, on or off")
    dev = resolve_device(device)
    out = v.output_path(out, "--out", [("--embeddings", inputs.embeddings), ("--val-embeddings", inputs.val_embeddings),
                                       ("--prompts", inputs.prompts)])
    for extra in (_partial_path(out), out.with_name(out.name.removesuffix(".safetensors") + ".sweep.json")):
        v.output_path(extra, f"--out's {extra.name}", [("--embeddings", inputs.embeddings),
                                                        ("--val-embeddings", inputs.val_embeddings),
                                                        ("--prompts", inputs.prompts)])
    # Resolved now, so the resume signature and the checkpoint record what actually ran.
    precision_used = "bf16" if precision == "bf16" or (precision == "auto" and dev.type == "cuda") else "fp32"
    compile_blocks = compile_mode == "on" or (compile_mode == "auto" and dev.type == "cuda")
    return out, dev, precision_used, compile_blocks, configs


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Only one tune writes a given --out (and its resume state) at a time: ``<out>.lock`` is held with
    ``flock`` and names the holder's pid; it is removed when the run ends."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = out.with_name(out.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {lock.parent}: {exc.strerror}",
                         "choose a writable --out location") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the lock file {lock}: {exc.strerror}",
                             "choose a writable --out location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise InputError(f"another vipamin tune (pid {holder}) is writing {out} (lock {lock})",
                             "wait for it to finish, or choose another --out") from None
        try:  # the holder before us may have removed the file after we opened it: then retry
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _tune(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float],
          configs: list[TuneConfig], out: Path, dev: torch.device, resume: bool, show_progress: bool, on_epoch: Any,
          grid_batch: int | None, precision: str, compile_blocks: bool) -> TuneOutcome:
    from .backbones import load_backbone_from_identity

    train = _embeddings(inputs, inputs.split, inputs.embeddings, "tune")
    val = None
    if inputs.val_embeddings is not None or inputs.val is not None:
        val = _embeddings(inputs, inputs.val, inputs.val_embeddings, "validation")
        check_compatible(train.meta, val.meta, "the training embeddings", "the validation embeddings")
        if val["labels"].numel() == 0:
            raise InputError("the validation split is empty", "pass a non-empty --val split")
    sweeping = len(lrs) * len(weight_decays) > 1
    if sweeping and val is None:
        raise InputError("a sweep over several lr / weight decay values needs validation data",
                         "pass --val SPLIT or --val-embeddings FILE")
    identity = train.meta["backbone"]
    backbone = load_backbone_from_identity(identity)
    grid = (identity["img_size"] // identity["patch"],) * 2
    _check_geometry(base, backbone.model, grid, train, inputs, dev)
    prompts, init_source = _initial_prompts(inputs, train, base.arch, out)
    pool = base.pool or identity["pool"]
    num_classes = len(train.meta["data"]["class_names"])
    train_xy = (_device_tokens(train["tokens"], dev), train["labels"].to(dev if dev.type == "cuda" else "cpu"))
    val_xy = (val["tokens"], val["labels"]) if val is not None else None

    tolerate = len(configs) > 1
    grid_batch = max(1, min(grid_batch or len(configs), len(configs)))
    signature = {"configs": [config_dict(c) for c in configs], "train": train.meta["digest"],
                 "val": val.meta["digest"] if val is not None else None, "init": init_source["digest"],
                 "pool": pool, "grid_batch": grid_batch,
                 "runtime": {"precision": precision, "compile": compile_blocks, "device": dev.type}}
    partial = _partial_path(out)
    done: list[dict[str, Any]] = []
    done_tensors: dict[str, torch.Tensor] = {}
    current: dict[str, Any] | None = None
    current_tensors: dict[str, torch.Tensor] = {}
    if resume:
        if not partial.exists():
            raise InputError(f"nothing to resume: {partial} does not exist", "run without --resume")
        part = load_artifact(partial, "checkpoint", what="--resume state")
        if part.meta.get("signature") != signature:
            raise InputError(f"{partial} belongs to a run with other options or inputs",
                             "repeat the original command with --resume, or delete the file to start over")
        done = part.meta["done"]
        done_tensors = {k: v for k, v in part.tensors.items() if k.startswith("done")}
        current = part.meta.get("current")
        current_tensors = {k: v for k, v in part.tensors.items() if k.startswith("cur")}
        info(f"resuming: {len(done)} of {len(configs)} runs done, current group at epoch "
             f"{current['states'][0]['epoch'] if current else 0}")

    common_meta = {"backbone": identity, "preprocessing": train.meta["preprocessing"], "data": train.meta["data"],
                   "embeddings": {"train": train.meta["digest"], "val": val.meta["digest"] if val else None,
                                  "train_split": train.meta["data"]["split"],
                                  "val_split": val.meta["data"]["split"] if val else None},
                   "init": init_source, "arch": base.arch, "pool": pool, "grid": list(grid),
                   "runtime": {"precision": precision, "compile": compile_blocks, "device": dev.type},
                   "num_classes": num_classes}

    models: dict[int, Any] = {}
    steps_per_epoch = -(-train_xy[0].shape[0] // base.batch_size)
    total_steps = -(-len(configs) // grid_batch) * base.epochs * steps_per_epoch
    with progress_bar("tune", total_steps, show_progress) as bar:
        bar.advance((len(done) // grid_batch) * base.epochs * steps_per_epoch)
        for first in range(len(done), len(configs), grid_batch):
            indices = list(range(first, min(first + grid_batch, len(configs))))
            group_cfgs = [configs[i] for i in indices]
            group = [build_model(backbone.model, prompts, num_classes, c, pool, grid) for c in group_cfgs]
            states, opt_states = None, None
            if current is not None and current["indices"] == indices:
                states, opt_states = [], []
                for g, m in enumerate(group):
                    mine = {k[len(f"cur{g}."):]: v for k, v in current_tensors.items() if k.startswith(f"cur{g}.")}
                    m.load_state_dict({k: v for k, v in mine.items() if not k.startswith("optim.")}, strict=False)
                    opt_states.append({k[len("optim."):]: v for k, v in mine.items() if k.startswith("optim.")})
                    states.append(RunState(**current["states"][g]))
                bar.advance(states[0].epoch * steps_per_epoch)

            live: dict[str, str] = {}

            def save_progress(ms, opts, sts, indices=indices, live=live):
                last = sts[0].history[-1]
                live["lr"] = f"{last['lr']:.2e}"
                if "val_top1" in last:
                    live["val"] = f"{max(st.history[-1].get('val_top1', 0.0) for st in sts):.1f}%"
                tensors = dict(done_tensors)
                for g, (m, opt) in enumerate(zip(ms, opts, strict=True)):
                    tensors.update({f"cur{g}.{k}": v for k, v in trainable_state(m).items()})
                    tensors.update({f"cur{g}.optim.{k}": v for k, v in optimizer_tensors(opt).items()})
                meta = common_meta | {"partial": True, "signature": signature, "done": done,
                                      "current": {"indices": indices, "states": [vars(st) for st in sts]}}
                save_artifact(partial, tensors, "checkpoint", meta)
                if on_epoch is not None:
                    on_epoch(indices[0], sts[0])

            counter = {"steps": 0}

            def step(n, losses, cfgs=group_cfgs, counter=counter, live=live):
                counter["steps"] += 1
                if counter["steps"] % 10 == 0:  # reading the loss syncs the device: only now and then
                    label = (f"lr={cfgs[0].lr:g} wd={cfgs[0].weight_decay:g} seed={cfgs[0].seed}" if len(cfgs) == 1
                             else f"{len(cfgs)} configs")
                    bar.advance(10, run=label, loss=f"{float(losses.float().mean()):.3f}", **live)

            try:
                states = train_group(group, train_xy, val_xy, group_cfgs, dev, states=states,
                                     optimizer_states=opt_states, on_epoch=save_progress,
                                     on_step=step if show_progress else None, tolerate_divergence=tolerate,
                                     precision=precision, compile_blocks=compile_blocks)
            except KeyboardInterrupt:
                runs = (f"run {indices[0] + 1}" if len(indices) == 1
                        else f"runs {indices[0] + 1}-{indices[-1] + 1}")
                kept = (f"{partial} keeps {runs} of {len(configs)} at the last completed epoch"
                        if partial.exists() else "no epoch had completed, nothing was kept")
                raise Interrupted(f"tune interrupted; {kept}", "run the same command with --resume") from None
            if show_progress:
                bar.advance(counter["steps"] % 10)
            for i, m, st, c in zip(indices, group, states, group_cfgs, strict=True):
                done.append({"config": config_dict(c), "history": st.history, "best": st.best,
                             "final_val_top1": st.history[-1].get("val_top1") if st.history else None,
                             "final_train_loss": st.history[-1]["loss"],
                             "diverged": bool(st.history and st.history[-1].get("diverged"))})
                done_tensors.update({f"done{i}.{k}": v for k, v in trainable_state(m).items()})
                models[i] = m.cpu()
            current = None

    chosen = select(done) if val is not None else (configs[0].lr, configs[0].weight_decay)
    selected = [i for i, r in enumerate(done)
                if (r["config"]["lr"], r["config"]["weight_decay"]) == chosen]
    tensors: dict[str, torch.Tensor] = {}
    runs = []
    for j, i in enumerate(selected):
        tensors.update({f"run{j}.{k.split('.', 1)[1]}": v for k, v in done_tensors.items()
                        if k.startswith(f"done{i}.")})
        runs.append(done[i])
    sweep = {"criterion": "mean last-epoch val top-1 over seeds; ties to the smaller lr",
             "chosen": {"lr": chosen[0], "weight_decay": chosen[1]}, "runs": done}
    meta = common_meta | {"runs": runs, "selection": sweep["chosen"], "sweep_size": len(done)}
    save_artifact(out, tensors, "checkpoint", meta)
    sweep_path = out.with_name(out.name.removesuffix(".safetensors") + ".sweep.json")
    with atomic_path(sweep_path) as tmp:
        tmp.write_text(json.dumps(sweep, indent=2))
    partial.unlink(missing_ok=True)
    if len(done) > 1:
        render_sweep(sweep)
    return TuneOutcome(checkpoint=out, sweep=sweep, models=[models[i] for i in selected if i in models],
                       backbone=backbone)


def render_sweep(sweep: dict[str, Any]) -> None:
    from rich.table import Table

    from .ui import quiet

    if quiet():
        return
    validated = any(r["final_val_top1"] is not None for r in sweep["runs"])
    title = "sweep (* = selected on validation)" if validated else "runs (no validation data: nothing selected)"
    table = Table(title=title)
    for col in ("lr", "weight decay", "seed", "final val top-1", "best val top-1 (epoch)", "train loss"):
        table.add_column(col)
    chosen = sweep["chosen"]
    for r in sweep["runs"]:
        c = r["config"]
        picked = validated and (c["lr"], c["weight_decay"]) == (chosen["lr"], chosen["weight_decay"])
        mark = "[bold green]* " if picked else "  "
        best = f"{r['best']['val_top1']:.2f} ({r['best']['epoch']})" if r["best"] else "-"
        final = f"{r['final_val_top1']:.2f}" if r["final_val_top1"] is not None else "-"
        table.add_row(f"{mark}{c['lr']:g}", f"{c['weight_decay']:g}", str(c["seed"]), final, best,
                      f"{r['final_train_loss']:.4f}")
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
        model = build_model(vit, state["prompts"], meta["num_classes"], cfg, meta["pool"], tuple(meta["grid"]))
        model.load_state_dict(state, strict=False)
        models.append(model)
    return models
