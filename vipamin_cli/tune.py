"""`vipamin tune`: inputs, init on the fly, the sweep, resume state, selection and the checkpoint.

A checkpoint holds one or more runs (one per training seed of the selected configuration), each as
``run{j}.<parameter>`` tensors, and metadata with every option, per-epoch history, the best epoch,
the init's and embeddings' fingerprints and the backbone identity. While training, a
``<checkpoint>.partial.safetensors`` file holds finished runs and the current run's state after
every epoch; ``--resume`` continues from it and it is removed once the checkpoint is written.
"""

from __future__ import annotations

import contextlib
import inspect
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
    prompt_side_parameters,
    train_group,
    trainable_state,
)
from .ui import err_console, info, progress_bar


@dataclass
class TuneInputs:
    """Where the data, validation data, final-run data and initial prompts come from."""

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
    init_grid: list[Any] | None = None  # several InitConfigs swept with the lr / wd grid (overrides init)
    embed_config: Any = None
    cache_dir: str | os.PathLike | None = None
    final_split: str | None = None  # a split of --data the selected configuration is retrained on
    final_embeddings: str | os.PathLike | None = None  # or its embeddings file
    follow_seed: bool = True  # each run's init seed is its training seed (inits.seeding); False: init.seed

    @property
    def has_final(self) -> bool:
        return self.final_split is not None or self.final_embeddings is not None


@dataclass
class GridPoint:
    """One configuration of the grid: which init configuration seeds it and how it trains.

    The grid is a plain list of these (init-major, then lr, weight decay, seed), so it can be
    split into shards that train independently.
    """

    init_index: int
    config: TuneConfig


@dataclass
class TuneOutcome:
    checkpoint: Path
    sweep: dict[str, Any]
    models: list[Any]  # the checkpoint's runs trained in this call (not those restored by --resume)
    backbone: Any


def _embeddings(inputs: TuneInputs, split: str | None, explicit: str | os.PathLike | None, what: str,
                augmented: bool = True) -> Artifact:
    """A split's embeddings: the given file, or embedded now (cached); ``augmented=False`` (validation)
    embeds the centre crop only, whatever --augment says."""
    from .embed import EmbedConfig, embed_data

    if explicit is not None:
        return load_artifact(explicit, "embeddings", what=what)
    if inputs.backbone is None or inputs.data is None:
        raise InputError(f"{what} needs --embeddings FILE, or --backbone and --data",
                         "pass --embeddings from `vipamin embed`, or --backbone B --data D")
    config = inputs.embed_config or EmbedConfig()
    if not augmented:
        config = replace(config, augment="none", views=None)
    res = embed_data(inputs.backbone, inputs.data, weights=inputs.weights, split=split, shots=inputs.shots,
                     config=config, cache_dir=inputs.cache_dir)
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


def init_configs(inputs: TuneInputs) -> list[Any]:
    """The init configurations to sweep: ``init_grid``, else the single ``init`` (default VIPAMIN)."""
    from .inits import InitConfig

    if inputs.init_grid is not None:
        if not inputs.init_grid:
            raise InputError("the init grid is empty", "pass at least one value to each init option")
        return list(inputs.init_grid)
    return [inputs.init or InitConfig()]


def _initial_prompts(inputs: TuneInputs, train: Artifact, arch: str, out: Path, init: Any,
                     suffix: str = "") -> tuple[torch.Tensor, dict]:
    """Prompts from --prompts, or computed now from ``init`` and saved beside the checkpoint."""
    from .inits import init_prompts

    if inputs.prompts is not None:
        art = load_artifact(inputs.prompts, "prompts", what="--prompts")
        check_same_backbone(train.meta, art.meta, "the training embeddings", f"--prompts {inputs.prompts}")
        source = {"file": str(inputs.prompts), "digest": art.meta["digest"], "method": art.meta["method"],
                  "config": art.meta["config"], "precision": art.meta.get("precision")}
        prompts = art["prompts"]
    else:
        cfg = replace(init, deep=arch == "vpt-deep", prompt_length=init.prompt_length or DEFAULT_PROMPTS[arch])
        dest = out.with_name(out.name.removesuffix(".safetensors") + f".prompts{suffix}.safetensors")
        outcome = init_prompts(cfg, embeddings=train.path, out=dest, show_progress=False)
        prompts = outcome.tensors["prompts"]
        source = {"file": str(dest), "digest": read_metadata(dest)["digest"], "method": cfg.method,
                  "config": outcome.meta["config"], "embeddings": train.meta["digest"],
                  "precision": outcome.meta["precision"]}
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
    length = (max(init.prompt_length or 0 for init in init_configs(inputs)) if inputs.prompts is None else 0)
    length = length or DEFAULT_PROMPTS[base.arch]
    tokens = int(train["tokens"].shape[1])
    need = v.prompt_memory(length, int(vit.embed_dim), depth if base.arch == "vpt-deep" else 1, tokens,
                           base.batch_size, int(vit.blocks[0].attn.num_heads), depth)
    v.memory_fits(need, "--prompt-length", length, dev, "pass a smaller --prompt-length or --batch-size")


def _init_key(r: dict[str, Any]) -> int:
    return int(r.get("init_index", 0))


def select(runs: list[dict[str, Any]], tie_break: str = "smaller-lr") -> tuple[int, float, float]:
    """The (init config, lr, wd) with the best mean last-epoch val top-1 over seeds.

    Ties go to the smaller lr (``larger-lr``: the larger, as VAPT), then the smaller weight decay,
    then the earlier init configuration.
    """
    groups: dict[tuple[int, float, float], list[float]] = {}
    for r in runs:
        key = (_init_key(r), r["config"]["lr"], r["config"]["weight_decay"])
        groups.setdefault(key, []).append(r["final_val_top1"])
    sign = 1.0 if tie_break == "larger-lr" else -1.0
    return max(groups, key=lambda k: (statistics.fmean(groups[k]), sign * k[1], -k[2], -k[0]))


def grid_points(base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
                num_inits: int = 1) -> list[GridPoint]:
    """The sweep as an explicit list: init configuration x lr x weight decay x seed."""
    for what, values in (("--lr", lrs), ("--weight-decay", weight_decays), ("--seeds", seeds)):
        if not values:
            raise InputError(f"{what} is empty", f"pass at least one value to {what}")
    return [GridPoint(i, replace(base, lr=lr, weight_decay=wd, seed=s))
            for i in range(num_inits) for lr in lrs for wd in weight_decays for s in seeds]


def _partial_path(out: Path) -> Path:
    """The resume state beside ``out``; under torchrun one per rank (``<out>.rank{r}.partial.safetensors``)."""
    from . import distributed

    tag = f".rank{distributed.rank()}" if distributed.launched() else ""
    return out.with_name(out.name.removesuffix(".safetensors") + f"{tag}.partial.safetensors")


def has_resume_state(out: str | os.PathLike) -> bool:
    """Whether ``--resume`` has something to continue (under torchrun: on any rank)."""
    from . import distributed

    return any(distributed.exchange(_partial_path(Path(out)).exists()))


def _groups(n: int, grid_batch: int) -> list[list[int]]:
    """The grid-batch groups of a stage's points, as in one process: consecutive runs of ``grid_batch``."""
    return [list(range(first, min(first + grid_batch, n))) for first in range(0, n, grid_batch)]


def _plain(obj: Any) -> Any:
    """What a value looks like after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


@dataclass
class _Stage:
    """One training stage (the sweep, or the final runs) and its resume state."""

    name: str
    points: list[GridPoint]
    prompts: list[torch.Tensor]  # per grid point (the init it starts from)
    train_xy: tuple[torch.Tensor, ...]  # tokens, labels (, augmented views)
    val_xy: tuple[torch.Tensor, torch.Tensor] | None
    done: list[dict[str, Any]]
    done_tensors: dict[str, torch.Tensor]
    current: dict[str, Any] | None = None
    current_tensors: dict[str, torch.Tensor] | None = None
    done_index: list[int] | None = None  # the point index of each ``done`` entry (default: 0, 1, ...)


def _run_stage(stage: _Stage, backbone: Any, num_classes: int, pool: str, grid: tuple[int, int], dev: torch.device,
               grid_batch: int, partial: Path, partial_meta: dict[str, Any], show_progress: bool, on_epoch: Any,
               precision: str, compile_blocks: bool, tolerate: bool, groups: list[list[int]] | None = None,
               data_parallel: bool = False) -> dict[int, Any]:
    """Train the stage's remaining points ``grid_batch`` at a time, saving resume state every epoch.

    ``groups`` (default: all, ``grid_batch`` consecutive points each) are the groups this process
    trains: under torchrun, its share of the sweep; ``data_parallel`` trains them over all ranks.
    """
    from . import distributed
    from .train import epoch_steps, evaluation_state

    configs = [pt.config for pt in stage.points]
    base = configs[0]
    models: dict[int, Any] = {}
    per_epoch = epoch_steps(stage.train_xy[0].shape[0], base)
    groups = _groups(len(configs), grid_batch) if groups is None else groups
    total_steps = len(groups) * base.epochs * per_epoch
    done, done_tensors = stage.done, stage.done_tensors
    if stage.done_index is None:
        stage.done_index = list(range(len(done)))
    finished = set(stage.done_index)
    wants_stage = on_epoch is not None and len(inspect.signature(on_epoch).parameters) >= 3
    current, current_tensors = stage.current, stage.current_tensors or {}
    launched = distributed.launched()
    who: dict[str, Any] = ({"rank": "all" if data_parallel else distributed.rank()} if launched else {})

    def state_meta(current_meta: dict[str, Any] | None) -> dict[str, Any]:
        meta = partial_meta | {"partial": True, "stage": stage.name, "done": done, "current": current_meta}
        return meta | ({"done_index": stage.done_index} if launched else {})

    with progress_bar(f"tune ({stage.name})", total_steps, show_progress) as bar:
        bar.advance(sum(set(g) <= finished for g in groups) * base.epochs * per_epoch)
        for indices in groups:
            if set(indices) <= finished:
                continue
            group_cfgs = [configs[i] for i in indices]
            group = [build_model(backbone.model, stage.prompts[i], num_classes, c, pool,
                                 grid) for i, c in zip(indices, group_cfgs, strict=True)]
            states, opt_states, ema_states = None, None, None
            if data_parallel:  # every rank must continue from the same epoch
                starts = distributed.exchange(current["states"][0]["epoch"] if current is not None else 0)
                if len(set(starts)) > 1:
                    raise InputError(f"the ranks' resume states of {stage.name} stop at different epochs {starts}",
                                     "delete the <out>.rank*.partial.safetensors files and run again")
            if current is not None and current["indices"] == indices:
                states, opt_states, ema_states = [], [], []
                for g, m in enumerate(group):
                    mine = {k[len(f"cur{g}."):]: v for k, v in current_tensors.items() if k.startswith(f"cur{g}.")}
                    m.load_state_dict({k: v for k, v in mine.items() if not k.startswith(("optim.", "ema."))},
                                      strict=False)
                    opt_states.append({k[len("optim."):]: v for k, v in mine.items() if k.startswith("optim.")})
                    ema_states.append({k[len("ema."):]: v for k, v in mine.items() if k.startswith("ema.")})
                    states.append(RunState(**current["states"][g]))
                bar.advance(states[0].epoch * per_epoch)

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
                    if m.ema is not None:
                        tensors.update({f"cur{g}.ema.{k}": v for k, v in m.ema.state().items()})
                meta = state_meta({"indices": indices, "states": [vars(st) for st in sts]})
                save_artifact(partial, tensors, "checkpoint", meta)
                if on_epoch is not None:
                    on_epoch(indices[0], sts[0], *([stage.name] if wants_stage else []))

            counter = {"steps": 0}

            def step(n, losses, cfgs=group_cfgs, counter=counter, live=live):
                counter["steps"] += 1
                if counter["steps"] % 10 == 0:  # reading the loss syncs the device: only now and then
                    label = (f"lr={cfgs[0].lr:g} wd={cfgs[0].weight_decay:g} seed={cfgs[0].seed}" if len(cfgs) == 1
                             else f"{len(cfgs)} configs")
                    bar.advance(10, run=label, loss=f"{float(losses.float().mean()):.3f}", **live)

            try:
                states = train_group(group, stage.train_xy, stage.val_xy, group_cfgs, dev, states=states,
                                     optimizer_states=opt_states, on_epoch=save_progress,
                                     on_step=step if show_progress else None, tolerate_divergence=tolerate,
                                     precision=precision, compile_blocks=compile_blocks, ema_states=ema_states,
                                     data_parallel=data_parallel)
            except KeyboardInterrupt:
                runs = (f"run {indices[0] + 1}" if len(indices) == 1
                        else f"runs {indices[0] + 1}-{indices[-1] + 1}")
                kept = (f"{partial} keeps {runs} of {len(configs)} ({stage.name}) at the last completed epoch"
                        if partial.exists() else "no epoch had completed, nothing was kept")
                raise Interrupted(f"tune interrupted; {kept}", "run the same command with --resume") from None
            if show_progress:
                bar.advance(counter["steps"] % 10)
            for i, m, st, c in zip(indices, group, states, group_cfgs, strict=True):
                done.append({"config": config_dict(c), "init_index": stage.points[i].init_index,
                             "history": st.history, "best": st.best,
                             "final_val_top1": st.history[-1].get("val_top1") if st.history else None,
                             "final_train_loss": st.history[-1]["loss"],
                             "diverged": bool(st.history and st.history[-1].get("diverged")), **who})
                stage.done_index.append(i)
                final_state = evaluation_state(m)  # the EMA weights when the recipe keeps an EMA
                done_tensors.update({f"done{i}.{k}": v for k, v in final_state.items()})
                m.load_state_dict(final_state, strict=False)
                models[i] = m.cpu()
            current = None
            if launched:  # this rank's finished groups must survive a peer's interruption
                save_artifact(partial, done_tensors, "checkpoint", state_meta(None))
    return models


def tune(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
         out: str | os.PathLike, device: str = "auto", resume: bool = False, show_progress: bool = True,
         on_epoch: Any = None, grid_batch: int | None = None, precision: str = "auto",
         compile_mode: str = "auto", final_seeds: list[int] | None = None, recipe: Any = None) -> TuneOutcome:
    """Train every (init config, lr, weight decay, seed) point, select on validation, write the checkpoint.

    Points are trained ``grid_batch`` at a time in one loop over the frozen backbone (default: all
    at once; 1 = one after another). The init configurations are ``inputs.init_grid`` (or the single
    ``inputs.init``); each one's prompts are computed once. With ``inputs.final_split`` (or
    ``final_embeddings``) the selected point is then retrained on that split once per seed of
    ``final_seeds`` (default ``seeds``), its init recomputed from the final split's statistics, and
    those runs become the checkpoint (the sweep stays in its metadata). ``recipe`` (a
    ``recipes.TunePlan``) records the recipe and resolves backbone-dependent values (SPT's head
    weight decay). ``on_epoch(first_index, state, stage)`` is called after each saved epoch.
    """
    if inputs.prompts is not None and inputs.init_grid is not None and len(inputs.init_grid) > 1:
        raise InputError("--prompts and an init grid exclude each other", "drop --prompts or pass one init value")
    if final_seeds is not None and not final_seeds:
        raise InputError("--seeds for the final runs is empty", "pass e.g. --seeds 42,44,82")
    out, dev, precision_used, compile_blocks, _ = check_tune_request(
        inputs, base, lrs, weight_decays, seeds, out, device, grid_batch, precision, compile_mode, final_seeds)
    from . import distributed

    # Under torchrun rank 0 alone holds the lock: it writes the checkpoint; each rank has its own partial.
    with output_lock(out) if distributed.is_main() else contextlib.nullcontext():
        return _tune(inputs, base, lrs, weight_decays, seeds, out, dev, resume, show_progress, on_epoch, grid_batch,
                     precision_used, compile_blocks, final_seeds, recipe)


def check_tune_request(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float],
                       seeds: list[int], out: str | os.PathLike, device: str, grid_batch: int | None,
                       precision: str, compile_mode: str, final_seeds: list[int] | None = None,
                       ) -> tuple[Path, torch.device, str, bool, list[TuneConfig]]:
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
    for init in ([inputs.init] if inputs.init is not None else []) + list(inputs.init_grid or []):
        init.validate({"seed": "--init-seed"})
    for s in final_seeds or []:
        v.seed(s, "--seeds")
    if inputs.embed_config is not None:
        inputs.embed_config.validate({"seed": "--data-seed", "batch_size": "--embed-batch-size"})
    if inputs.shots is not None:
        v.integer(inputs.shots, "--shots", minimum=1, example=16)
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if compile_mode not in ("auto", "on", "off"):
        raise InputError(f"unknown --compile '{compile_mode}'", "use auto, on or off")
    dev = resolve_device(device)
    out = v.output_path(out, "--out", [("--embeddings", inputs.embeddings), ("--val-embeddings", inputs.val_embeddings),
                                       ("--prompts", inputs.prompts),
                                       ("--final-embeddings", inputs.final_embeddings)])
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


def _tune(inputs: TuneInputs, base: TuneConfig, lrs: list[float], weight_decays: list[float], seeds: list[int],
          out: Path, dev: torch.device, resume: bool, show_progress: bool, on_epoch: Any, grid_batch: int | None,
          precision: str, compile_blocks: bool, final_seeds: list[int] | None, recipe: Any) -> TuneOutcome:
    from .backbones import load_backbone_from_identity
    from .recipes import for_backbone

    inits = init_configs(inputs)
    train = _embeddings(inputs, inputs.split, inputs.embeddings, "tune")
    identity = train.meta["backbone"]
    if recipe is not None:  # values that depend on the backbone family (SPT's head weight decay and MAE head)
        resolved = for_backbone(recipe, identity.get("family", ""))
        hwd = base.head_weight_decay if base.head_weight_decay is not None else resolved.head_weight_decay
        base = replace(base, head_weight_decay=hwd, pool=base.pool or resolved.pool)
    points = grid_points(base, lrs, weight_decays, seeds, len(inits))
    for pt in points:
        pt.config.validate()
    val = None
    if inputs.val_embeddings is not None or inputs.val is not None:
        val = _embeddings(inputs, inputs.val, inputs.val_embeddings, "validation", augmented=False)
        check_compatible(train.meta, val.meta, "the training embeddings", "the validation embeddings")
        if val["labels"].numel() == 0:
            raise InputError("the validation split is empty", "pass a non-empty --val split")
    final = None
    if inputs.has_final:
        final = _embeddings(inputs, inputs.final_split, inputs.final_embeddings, "the final runs (--final-split)")
        check_compatible(train.meta, final.meta, "the training embeddings", "the final-split embeddings")
    sweeping = len(lrs) * len(weight_decays) * len(inits) > 1
    if sweeping and val is None:
        raise InputError("a sweep over several init / lr / weight decay values needs validation data",
                         "pass --val SPLIT or --val-embeddings FILE")
    backbone = load_backbone_from_identity(identity)
    grid = (identity["img_size"] // identity["patch"],) * 2
    _check_geometry(base, backbone.model, grid, train, inputs, dev)
    from . import distributed

    distributed.sync()  # every rank has its inputs (a rank that could not read them stops all here)
    from .inits.seeding import init_slots

    follow = inputs.follow_seed and inputs.prompts is None
    slots = init_slots(inits, [pt.init_index for pt in points], [pt.config.seed for pt in points], follow,
                       numbered=len(inits) > 1)
    made = [_main_prompts(inputs, train, base.arch, out, c, s) for c, s in slots.named()]
    prompts, sources = [m[0] for m in made], [m[1] for m in made]
    pool = base.pool or identity["pool"]
    grid = (identity["img_size"] // identity["patch"],) * 2
    num_classes = len(train.meta["data"]["class_names"])

    def on_device(art: Artifact) -> tuple[torch.Tensor, ...]:
        """Tokens and labels (and the augmented views, when cached) where training reads them."""
        xy = (_device_tokens(art["tokens"], dev), art["labels"].to(dev if dev.type == "cuda" else "cpu"))
        return xy + (_device_tokens(art["views.tokens"], dev),) if "views.tokens" in art.tensors else xy

    configs = [pt.config for pt in points]
    grid_batch = max(1, min(grid_batch or len(configs), len(configs)))
    final_seed_list = list(final_seeds) if final_seeds is not None else list(seeds)
    signature = _plain({"configs": [config_dict(c) for c in configs], "init_index": [pt.init_index for pt in points],
                        "train": train.meta["digest"], "val": val.meta["digest"] if val is not None else None,
                        "init": [s["digest"] for s in sources], "pool": pool, "grid_batch": grid_batch,
                        "final": final.meta["digest"] if final is not None else None,
                        "final_seeds": final_seed_list if final is not None else None,
                        "runtime": {"precision": precision, "compile": compile_blocks, "device": dev.type}})
    if distributed.launched():  # another world size shards the groups differently: no resume across it
        signature["world_size"] = distributed.world_size()
    partial = _partial_path(out)
    stage_name, done, done_tensors, current, current_tensors = "sweep", [], {}, None, {}
    done_index: list[int] | None = None
    sweep_done: list[dict[str, Any]] | None = None
    if resume:
        if not any(distributed.exchange(partial.exists())):
            raise InputError(f"nothing to resume: {partial} does not exist", "run without --resume")
        if partial.exists():
            part = load_artifact(partial, "checkpoint", what="--resume state")
            if part.meta.get("signature") != signature:
                raise InputError(f"{partial} belongs to a run with other options or inputs",
                                 "repeat the original command with --resume, or delete the file to start over")
            stage_name = part.meta.get("stage", "sweep")
            sweep_done = part.meta.get("sweep_done")
            done = part.meta["done"]
            done_index = part.meta.get("done_index")
            done_tensors = {k: v for k, v in part.tensors.items() if k.startswith("done")}
            current = part.meta.get("current")
            current_tensors = {k: v for k, v in part.tensors.items() if k.startswith("cur")}
        if distributed.launched():  # one rank already in the final stage: the sweep is done everywhere
            stages = distributed.exchange((stage_name, sweep_done))
            final_stage = next((st for st in stages if st[0] == "final"), None)
            if final_stage is not None and stage_name != "final":
                stage_name, sweep_done = final_stage
                done, done_tensors, current, current_tensors, done_index = [], {}, None, {}, None
        info(f"resuming the {stage_name}: {len(done)} runs done, current group at epoch "
             f"{current['states'][0]['epoch'] if current else 0}")

    common_meta = {"backbone": identity, "preprocessing": train.meta["preprocessing"], "data": train.meta["data"],
                   "embeddings": {"train": train.meta["digest"], "val": val.meta["digest"] if val else None,
                                  "train_split": train.meta["data"]["split"],
                                  "val_split": val.meta["data"]["split"] if val else None},
                   "init": sources[0] if len(sources) == 1 else {"grid": sources}, "arch": base.arch, "pool": pool,
                   "init_seed": slots.rule(inputs.prompts is not None),
                   "grid": list(grid), "num_classes": num_classes,
                   "augment": {"sweep": train.meta.get("augment"),
                               "final": final.meta.get("augment") if final is not None else None},
                   "prompt_side_parameters": prompt_side_parameters(base, int(identity["width"]),
                                                                    int(identity["depth"]), grid,
                                                                    int(prompts[0].shape[-2])),
                   "runtime": {"precision": precision, "compile": compile_blocks, "device": dev.type},
                   "recipe": {"name": recipe.recipe, "values": recipe.resolved} if recipe is not None else None}
    run_kw = {"backbone": backbone, "num_classes": num_classes, "pool": pool, "grid": grid, "dev": dev,
              "grid_batch": grid_batch, "partial": partial, "show_progress": show_progress, "on_epoch": on_epoch,
              "precision": precision, "compile_blocks": compile_blocks}
    if distributed.launched():
        common_meta["world_size"] = distributed.world_size()
    models: dict[int, Any] = {}
    if stage_name == "sweep":
        stage = _Stage("sweep", points, [prompts[j] for j in slots.of_point], on_device(train),
                       (val["tokens"], val["labels"]) if val else None,
                       done, done_tensors, current, current_tensors, done_index)
        models = _run_stage(stage, partial_meta=common_meta | {"signature": signature}, tolerate=len(points) > 1,
                            **run_kw, **_share(len(points), grid_batch))
        done, done_tensors = _gather_stage(stage)
        slots.record(done, stage.done_index, sources)
        sweep_done = done
    tie_break = base.tie_break
    chosen = select(sweep_done, tie_break) if val is not None else (0, configs[0].lr, configs[0].weight_decay)
    criterion = (f"mean last-epoch val top-1 over seeds; ties to the {tie_break.split('-')[0]} lr, "
                 "then the smaller weight decay, then the earlier init config")
    sweep = {"criterion": criterion,
             "chosen": {"init_index": chosen[0], "lr": chosen[1], "weight_decay": chosen[2],
                        "init": sources[slots.first_slot(chosen[0])]["config"]},
             "inits": sources, "runs": sweep_done}
    tensors: dict[str, torch.Tensor] = {}
    runs = []
    if final is None:
        selected = [i for i, r in enumerate(sweep_done)
                    if (_init_key(r), r["config"]["lr"], r["config"]["weight_decay"]) == chosen]
        for j, i in enumerate(selected):
            tensors.update({f"run{j}.{k.split('.', 1)[1]}": v for k, v in done_tensors.items()
                            if k.startswith(f"done{i}.")})
            runs.append(sweep_done[i])
        out_models = [models[i] for i in selected if i in models]
        final_meta: dict[str, Any] = {}
    else:
        # Stage 2: the selected point, retrained on the final split per seed, init from that split.
        chosen_cfg = next(pt.config for pt in points if (pt.init_index, pt.config.lr, pt.config.weight_decay)
                          == chosen)
        fslots = init_slots([inits[chosen[0]]], [0] * len(final_seed_list), final_seed_list, follow, "-final")
        made = [_main_prompts(inputs, final, base.arch, out, c, s) for c, s in fslots.named()]
        final_source = made[0][1]
        final_points = [GridPoint(0, replace(chosen_cfg, seed=s)) for s in final_seed_list]
        if stage_name == "sweep":
            done, done_tensors, current, current_tensors, done_index = [], {}, None, {}, None
        stage = _Stage("final", final_points, [made[j][0] for j in fslots.of_point], on_device(final), None, done,
                       done_tensors, current, current_tensors, done_index)
        final_batch = max(1, min(grid_batch, len(final_points)))
        final_models = _run_stage(stage, partial_meta=common_meta | {"signature": signature,
                                                                     "sweep_done": sweep_done},
                                  tolerate=False, **{**run_kw, "grid_batch": final_batch},
                                  **_share(len(final_points), final_batch))
        done, done_tensors = _gather_stage(stage)
        fslots.record(done, stage.done_index, [m[1] for m in made])
        for j, r in enumerate(done):
            tensors.update({f"run{j}.{k.split('.', 1)[1]}": v for k, v in done_tensors.items()
                            if k.startswith(f"done{j}.")})
            runs.append(r)
        out_models = [final_models[j] for j in range(len(done)) if j in final_models]
        final_meta = {"final": {"split": final.meta["data"]["split"], "embeddings": final.meta["digest"],
                                "num_images": int(final["labels"].numel()), "seeds": final_seed_list,
                                "init": final_source}}
        common_meta = common_meta | {"init": final_source}
    meta = common_meta | final_meta | {"runs": runs, "selection": sweep["chosen"], "sweep_size": len(sweep_done),
                                       "sweep": sweep}
    if distributed.is_main():
        save_artifact(out, tensors, "checkpoint", meta)
        sweep_path = out.with_name(out.name.removesuffix(".safetensors") + ".sweep.json")
        with atomic_path(sweep_path) as tmp:
            tmp.write_text(json.dumps(sweep, indent=2))
    distributed.sync()  # the checkpoint is written: now every rank may drop its resume state
    partial.unlink(missing_ok=True)
    if len(sweep_done) > 1 and show_progress:  # the benchmark runs many tunes quietly
        render_sweep(sweep)
    return TuneOutcome(checkpoint=out, sweep=sweep, models=out_models, backbone=backbone)


def _main_prompts(inputs: TuneInputs, train: Artifact, arch: str, out: Path, init: Any,
                  suffix: str = "") -> tuple[torch.Tensor, dict]:
    """``_initial_prompts`` on rank 0 only (it writes the prompts file), shared with the other ranks so
    every rank starts from the very same tensor."""
    from . import distributed

    if not distributed.launched():
        return _initial_prompts(inputs, train, arch, out, init, suffix)
    mine = _initial_prompts(inputs, train, arch, out, init, suffix) if distributed.is_main() else None
    return distributed.broadcast_from_main(mine)


def _share(points: int, grid_batch: int) -> dict[str, Any]:
    """This rank's share of a stage: whole grid-batch groups dealt round-robin over the ranks (each
    point trains in the same group as in one process), or a lone point data-parallel on every rank."""
    from . import distributed

    if not distributed.launched():
        return {}
    if points == 1:
        return {"groups": [[0]], "data_parallel": True}
    return {"groups": distributed.shard(_groups(points, grid_batch))}


def _gather_stage(stage: _Stage) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Under torchrun, every rank's finished runs: the records (on every rank, in point order) and the
    tensors (on rank 0; a data-parallel run, the same on every rank, is taken from rank 0)."""
    from . import distributed

    if not distributed.launched():
        return stage.done, stage.done_tensors
    index = stage.done_index or []
    shared = distributed.exchange([(i, r) for i, r in zip(index, stage.done, strict=True)])
    records: dict[int, dict[str, Any]] = {}
    for entries in shared:
        for i, r in entries:
            records.setdefault(i, r)
    done = [records[i] for i in sorted(records)]
    parts = distributed.gather_to_main(stage.done_tensors)
    tensors: dict[str, torch.Tensor] = {}
    for part in parts or []:
        for k, v in part.items():
            tensors.setdefault(k, v)
    stage.done, stage.done_tensors, stage.done_index = done, tensors, sorted(records)
    return done, tensors


def tune_plan(inputs: TuneInputs, plan: Any, out: str | os.PathLike, **kwargs: Any) -> TuneOutcome:
    """`tune` driven by a resolved recipe (``recipes.plan(...)``): its grids, init sweep and final seeds."""
    from .inits import InitConfig

    if inputs.init_grid is None and inputs.prompts is None:
        template = inputs.init or InitConfig(method=plan.init_method)
        template = replace(template, method=plan.init_method, prompt_length=template.prompt_length
                           or plan.prompt_length)
        inputs = replace(inputs, init_grid=[replace(template, **g) for g in plan.init_grid])
    return tune(inputs, plan.base, plan.lrs, plan.weight_decays, plan.seeds, out,
                final_seeds=plan.final_seeds if inputs.has_final else None, recipe=plan, **kwargs)


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
