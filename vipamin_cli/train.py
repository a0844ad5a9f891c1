"""Training prompts + a linear head on cached tokens, with the papers' recipe, sweeps and resume.

The frozen backbone never sees an image here: each step runs the blocks on cached block-0 tokens
with the prompts spliced in. Each epoch's shuffling and dropout draw from a generator seeded by
(seed, epoch), so a run resumed from epoch e continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .backbones import POOLS
from .errors import InputError, RuntimeFailure
from .prompted import PromptedViT

ARCHS = ("vpt-shallow", "vpt-deep", "vapt", "full")  # full: every weight after block 0 (full.py)
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_PROMPTS = {"vpt-shallow": 100, "vpt-deep": 20, "vapt": 10, "full": 0}
LR_SCALINGS = ("batch256", "none")  # lr * batch / 256 (VPT, VIPAMIN, VAPT) | the base lr as is (SPT)
SCHEDULE_STEPS = ("epoch", "iteration")
DECAY_GROUPS = ("matrices", "all-but-head-bias")
HEAD_INITS = ("kaiming", "zeros", "trunc-normal")
TIE_BREAKS = ("smaller-lr", "larger-lr")


@dataclass
class TuneConfig:
    """One training configuration; lists of lr / weight decay / seeds make a sweep of these."""

    arch: str = "vpt-shallow"
    pool: str | None = None  # None: the backbone's recipe
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1  # base lr; the optimiser gets lr * batch_size / 256
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    prompt_dropout: float = 0.0
    seed: int = 42
    vapt_hidden: int = 8
    vapt_kernel: int = 2
    vapt_first_block: int = 1
    vapt_per_channel: bool = False
    vapt_dropout: float = 0.1  # dropout in the projector's hidden layer (and Dropout2d, unless set below)
    vapt_conv_dropout: float | None = None  # Dropout2d rate after the conv; None: vapt_dropout
    vapt_scale: bool = False  # learnable scale of the projector's residual branch
    head_init: str = "kaiming"  # kaiming (normal, fan_out) | zeros | trunc-normal (std 0.02); bias 0
    val_every: int = 1
    # Recipe details (defaults: the VIPAMIN recipe; see recipes.py for every paper's values)
    recipe: str | None = None  # the named recipe these values came from (recorded only)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-6  # AdamW
    momentum: float = 0.9  # SGD
    lr_scaling: str = "batch256"
    schedule_step: str = "epoch"  # epoch: VPT's per-epoch cosine; iteration: SPT's per-step cosine
    lr_floor: float = 0.0  # the lr the cosine ends at (and warm-up starts from), absolute
    decay_groups: str = "matrices"  # matrices: prompts + weight matrices; all-but-head-bias: VAPT's
    head_weight_decay: float | None = None  # SPT: the head weight's own weight decay (None: weight_decay)
    ema: float = 0.0  # decay of a weight EMA (SPT 0.9999); > 0: validation and checkpoint use the EMA
    drop_last: bool = False  # drop the last partial batch of each epoch
    tie_break: str = "smaller-lr"  # selection ties between lrs

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"unknown --arch '{self.arch}'", f"use one of {', '.join(ARCHS)}")
        if self.pool is not None and self.pool not in POOLS:
            raise InputError(f"unknown --pool '{self.pool}'", f"use one of {', '.join(POOLS)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown --optimizer '{self.optimizer}'", "use adamw or sgd")
        from . import validate as v

        v.integer(self.epochs, "--epochs", minimum=1, example=100)
        v.integer(self.warmup_epochs, "--warmup-epochs", minimum=0, example=10)
        if self.warmup_epochs >= self.epochs:
            raise InputError(f"--warmup-epochs {self.warmup_epochs} must be below --epochs {self.epochs}",
                             f"pass --warmup-epochs {self.epochs // 10} (or anything from 0 to {self.epochs - 1})")
        v.integer(self.batch_size, "--batch-size", minimum=1, example=32)
        v.number(self.lr, "--lr", minimum=0, min_open=True, example=0.1)
        v.number(self.weight_decay, "--weight-decay", minimum=0, example=0.01)
        v.number(self.prompt_dropout, "--prompt-dropout", minimum=0, maximum=1, max_open=True, example=0.1)
        if self.arch == "full" and self.prompt_dropout > 0:
            raise InputError(f"--prompt-dropout {self.prompt_dropout} makes no sense with --arch full (it trains no "
                             "prompts)", "drop --prompt-dropout, or pick a prompt --arch")
        v.seed(self.seed, "--seed")
        v.integer(self.vapt_hidden, "--vapt-hidden", minimum=1, example=8)
        v.integer(self.vapt_kernel, "--vapt-kernel", minimum=1, example=2)
        v.integer(self.vapt_first_block, "--vapt-first-block", minimum=1, example=1)
        v.number(self.vapt_dropout, "--vapt-dropout", minimum=0, maximum=1, max_open=True, example=0.1)
        if self.vapt_conv_dropout is not None:
            v.number(self.vapt_conv_dropout, "--vapt-conv-dropout", minimum=0, maximum=1, max_open=True, example=0.1)
        v.integer(self.val_every, "--val-every", minimum=1, example=1)
        if self.head_init not in HEAD_INITS:
            raise InputError(f"unknown --head-init '{self.head_init}'", f"use one of {', '.join(HEAD_INITS)}")
        for value, allowed, option in ((self.lr_scaling, LR_SCALINGS, "--lr-scaling"),
                                       (self.schedule_step, SCHEDULE_STEPS, "--schedule-step"),
                                       (self.decay_groups, DECAY_GROUPS, "--decay-groups"),
                                       (self.tie_break, TIE_BREAKS, "--tie-break")):
            if value not in allowed:
                raise InputError(f"unknown {option} '{value}'", f"use one of {', '.join(allowed)}")
        v.number(self.ema, "--ema", minimum=0, maximum=1, max_open=True, example=0.9999)
        if self.head_weight_decay is not None:
            v.number(self.head_weight_decay, "--head-weight-decay", minimum=0, example=0.5)
        v.number(self.lr_floor, "--lr-floor", minimum=0, example=1e-8)
        self._check_floor()

    def _check_floor(self) -> None:
        """The cosine runs from the lr down to the floor: a floor above the lr would make it a ceiling
        (the lr would rise over training), so the floor may not exceed the lr the optimiser gets."""
        if self.lr_floor <= self.effective_lr:
            return
        scaled = (f" (--lr {self.lr:g} x --batch-size {self.batch_size} / 256 with --lr-scaling batch256)"
                  if self.lr_scaling == "batch256" else "")
        raise InputError(f"--lr-floor {self.lr_floor:g} is above the lr {self.effective_lr:g}{scaled} that the "
                         "schedule decays from, so it would be a ceiling", "pass an --lr-floor at most the lr "
                         "(e.g. --lr-floor 1e-8 or 0), or a larger --lr")

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256.0 if self.lr_scaling == "batch256" else self.lr

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The lr of ``step`` within ``epoch``: per epoch (VPT) or per iteration (SPT), with the floor."""
        if self.schedule_step == "epoch":
            factor = lr_factor(epoch, self.warmup_epochs, self.epochs)
        else:
            factor = lr_factor(epoch * steps_per_epoch + step, self.warmup_epochs * steps_per_epoch,
                               self.epochs * steps_per_epoch)
        return self.lr_floor + (self.effective_lr - self.lr_floor) * factor


def lr_factor(epoch: int, warmup: int, total: int) -> float:
    """VPT's schedule: linear warm-up from 0, then half a cosine to 0 (units: epochs or iterations)."""
    if epoch < warmup:
        return epoch / max(1, warmup)
    progress = (epoch - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def epoch_steps(n: int, config: TuneConfig) -> int:
    """Optimiser steps per epoch over ``n`` images."""
    return n // config.batch_size if config.drop_last else -(-n // config.batch_size)


def build_model(vit: nn.Module, prompts: torch.Tensor | None, num_classes: int, config: TuneConfig, pool: str,
                grid: tuple[int, int]) -> PromptedViT:
    """The model of ``config.arch`` (prompted, or ``full``: a fine-tuned copy of ``vit`` that ignores
    ``prompts``), head initialised from ``config.seed``."""
    from .full import build_full_model
    from .inits.base import vpt_bound
    from .vapt import VaptPromptGenerator

    with torch.random.fork_rng(devices=[]):  # every random init below depends on config.seed alone
        torch.manual_seed(config.seed)
        adaptive = None
        if config.arch == "vapt":
            adaptive = VaptPromptGenerator(int(vit.embed_dim), len(vit.blocks), grid, int(prompts.shape[-2]),
                                           hidden=config.vapt_hidden, kernel=config.vapt_kernel,
                                           first_block=config.vapt_first_block,
                                           per_channel=config.vapt_per_channel, dropout=config.vapt_dropout,
                                           conv_dropout=config.vapt_conv_dropout,
                                           learnable_scale=config.vapt_scale,
                                           static_bound=vpt_bound(int(vit.patch_embed.patch_size[0]),
                                                                  int(vit.embed_dim)))
        if config.arch == "full":
            model = build_full_model(vit, num_classes, pool)
        else:
            model = PromptedViT(vit, prompts, pool=pool, prompt_dropout=config.prompt_dropout,
                                num_classes=num_classes, adaptive=adaptive)
        if config.head_init == "zeros":
            nn.init.zeros_(model.head.weight)
        elif config.head_init == "trunc-normal":
            nn.init.trunc_normal_(model.head.weight, std=0.02)
        else:
            nn.init.kaiming_normal_(model.head.weight, a=0, mode="fan_out")
        nn.init.zeros_(model.head.bias)
    return model


def prompt_side_parameters(config: TuneConfig, dim: int, depth: int, grid: tuple[int, int],
                           num_prompts: int, vit: nn.Module | None = None, pool: str = "cls") -> int:
    """Trainable parameters besides the head (prompts, and VAPT's generator with its options; for
    ``full``, the trained backbone weights of ``vit`` with head input ``pool``)."""
    from .full import trainable_backbone_parameters
    from .vapt import vapt_parameter_count

    if config.arch == "full":
        if vit is None:
            raise ValueError("--arch full counts the backbone's weights: pass vit")
        return trainable_backbone_parameters(vit, pool)
    if config.arch == "vapt":
        return vapt_parameter_count(dim, depth, grid[0], num_prompts, config.vapt_hidden, config.vapt_kernel,
                                    config.vapt_first_block, config.vapt_per_channel, config.vapt_scale)
    return (depth if config.arch == "vpt-deep" else 1) * num_prompts * dim


def decay_groups(model: PromptedViT, config: TuneConfig) -> dict[str, list[str]]:
    """Names of the trainable tensors per weight decay group: ``decay``, ``head`` and ``no_decay``.

    ``matrices`` (VPT/VIPAMIN): prompts and weight matrices decay, biases and norms do not.
    ``all-but-head-bias`` (VAPT): every trainable tensor but the head bias decays.
    ``head`` holds the head weight when SPT's separate head weight decay is set.
    """
    groups: dict[str, list[str]] = {"decay": [], "head": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if config.head_weight_decay is not None and name == "head.weight":
            groups["head"].append(name)
        elif config.decay_groups == "all-but-head-bias":
            groups["no_decay" if name == "head.bias" else "decay"].append(name)
        else:
            groups["decay" if p.dim() >= 2 else "no_decay"].append(name)
    return groups


def make_optimizer(model: PromptedViT, config: TuneConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``decay_groups``; ``fused`` selects PyTorch's fused CUDA kernel."""
    params = dict(model.named_parameters())
    names = decay_groups(model, config)
    wds = {"decay": config.weight_decay, "head": config.head_weight_decay, "no_decay": 0.0}
    groups = [{"params": [params[n] for n in names[g]], "weight_decay": wds[g]} for g in ("decay", "head", "no_decay")]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.effective_lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.effective_lr, betas=tuple(config.betas), eps=config.eps,
                             **({"fused": True} if fused else {}))


class WeightEma:
    """An exponential moving average of a model's trainable tensors (SPT's EMA), updated per step."""

    def __init__(self, model: PromptedViT, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: (state[n].to(p.device) if state else p.detach().clone()) for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self.shadow.items()}

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for n, p in self.params.items():
            tmp = p.detach().clone()
            p.copy_(self.shadow[n])
            self.shadow[n].copy_(tmp)


def trainable_state(model: PromptedViT) -> dict[str, torch.Tensor]:
    """The trained tensors, what a checkpoint stores: prompt-side parameters and the head (never the
    frozen backbone); for full fine-tuning, the trained blocks, norm and head (never the embedding)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def evaluation_state(model: PromptedViT) -> dict[str, torch.Tensor]:
    """The weights a finished run is evaluated with: the EMA weights when the recipe keeps an EMA."""
    state = trainable_state(model)
    ema = getattr(model, "ema", None)
    if ema is not None:
        state.update(ema.state())
    return state


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimizer state flattened to named tensors, for safetensors."""
    out: dict[str, torch.Tensor] = {}
    for i, st in opt.state_dict()["state"].items():  # i: the parameter's index across groups
        for k, v in st.items():
            out[f"{i}.{k}"] = v.detach().cpu().clone() if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        i, k = name.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


PRECISIONS = ("auto", "bf16", "fp32")


def precision_context(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast (auto: on CUDA only) or plain fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown --precision '{precision}'", "use auto, bf16 or fp32")
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def compile_backbone(vit: nn.Module) -> None:
    """torch.compile each block in place (once); the prompt splicing stays eager."""
    for blk in vit.blocks:
        if getattr(blk, "_compiled_call_impl", None) is None:
            blk.compile()


@torch.no_grad()
def predict(model: PromptedViT, tokens: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Logits for all cached ``tokens`` (on CPU, float32)."""
    model.eval()
    out = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        for i in range(0, tokens.shape[0], batch_size):
            out.append(model(tokens[i: i + batch_size].to(device, non_blocking=True)).float().cpu())
    return torch.cat(out)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) * 100.0


@dataclass
class RunState:
    """Where one configuration's training stands; enough to resume it exactly."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


def view_choice(n: int, views: int, seed: int, epoch: int) -> torch.Tensor:
    """Which cached augmented view each image trains with in ``epoch``: seeded by (seed, epoch) only,
    so a run is reproducible, a resumed run draws the same views, and epochs differ."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) ^ 0x71E75)
    return torch.randint(views, (n,), generator=gen)


def train_group(models: list[PromptedViT], train: tuple[torch.Tensor, ...],
                val: tuple[torch.Tensor, torch.Tensor] | None, configs: list[TuneConfig], device: torch.device,
                states: list[RunState] | None = None, optimizer_states: list[dict[str, torch.Tensor] | None] | None
                = None, on_epoch: Callable[[list[PromptedViT], list[torch.optim.Optimizer], list[RunState]], None]
                | None = None, on_step: Callable[[int, torch.Tensor], None] | None = None,
                tolerate_divergence: bool = False, precision: str = "auto", compile_blocks: bool = False,
                ema_states: list[dict[str, torch.Tensor] | None] | None = None,
                data_parallel: bool = False, stop_epoch: int | None = None) -> list[RunState]:
    """Train several configurations in one loop over one frozen backbone (grid batching).

    Each configuration keeps its own prompts, head, optimizer, schedule, batch order and seed; the
    backbone runs once per step on the stacked batches of all of them. A configuration trained in
    a group of one is exactly a solo run. Models that own their backbone (full fine-tuning) run
    one after another within each step instead. With ``tolerate_divergence`` (a sweep) a configuration
    whose loss or weights become non-finite stops updating and is recorded as diverged; otherwise
    that is an error. With ``config.ema`` > 0 each model carries a ``WeightEma`` as ``model.ema``
    (restored from ``ema_states``); validation uses the averaged weights.

    ``data_parallel`` (under torchrun): every rank trains the same group; each step's batch (the
    same seeded order as one process) is split across ranks by stride, and the gradients of the
    prompt side and head are summed over ranks (weighted so the sum is the whole batch's mean-loss
    gradient), as DistributedDataParallel would. Every rank then holds identical weights; they equal
    one process's up to float summation order (prompt dropout draws differ, as each rank draws
    its own mask for its part of the batch).

    ``stop_epoch`` (a halving sweep's rung) pauses training after that epoch, validated; the schedule
    stays the one over ``config.epochs``, so a run continued later from its saved state is the run
    that was never paused.
    """
    _check_shared_schedule(configs)
    states = states or [RunState() for _ in models]
    run = _start_group(models, train, configs, device, states, optimizer_states, ema_states, precision,
                       compile_blocks, data_parallel)
    try:
        for epoch in range(states[0].epoch, stop_epoch or configs[0].epochs):
            lrs, mean_losses, seconds = _train_epoch(run, epoch, on_step)
            _record_epoch(run, states, val, epoch, (lrs, mean_losses, seconds), tolerate_divergence, stop_epoch)
            if tolerate_divergence and not any(run.alive):
                raise RuntimeFailure(f"every configuration diverged by epoch {epoch + 1}", "lower the --lr values")
            if on_epoch is not None:
                on_epoch(models, run.opts, states)
    finally:  # the data-parallel signal handlers never outlive training
        if run.sync is not None:
            run.sync.close()
    return states


@dataclass
class _GroupRun:
    """What every epoch and step of one group's training reads and updates, kept in one place so the
    loop's pieces stay small functions."""

    models: list[PromptedViT]
    configs: list[TuneConfig]
    opts: list[torch.optim.Optimizer]
    device: torch.device
    tokens: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor | None  # (n, V, T, D) augmented views: one per image per epoch
    steps: int  # optimizer steps per epoch
    used: int  # images one epoch trains on
    alive: list[bool]  # False once a configuration diverged: it stops updating
    loss_fn: nn.Module
    autocast: torch.autocast
    sync: _GradientSync | None

    @property
    def base(self) -> TuneConfig:
        """The first configuration: the one whose shared fields (epochs, batch, schedule) the group follows."""
        return self.configs[0]


def _check_shared_schedule(configs: list[TuneConfig]) -> None:
    """Refuse a group whose configurations disagree on what the one shared loop runs over."""
    shared = ("epochs", "warmup_epochs", "batch_size", "drop_last")
    base = configs[0]
    if any(tuple(getattr(c, f) for f in shared) != tuple(getattr(base, f) for f in shared) for c in configs):
        raise ValueError("a training group shares epochs, warm-up, batch size and drop_last")


def _place_models(models: list[PromptedViT], device: torch.device, compile_blocks: bool) -> None:
    """Move the models to ``device`` and compile each distinct backbone once (shared ones are one)."""
    for m in models:
        m.to(device)
    if compile_blocks:
        for vit in {id(m.vit): m.vit for m in models}.values():
            compile_backbone(vit)


def _build_optimizers(models: list[PromptedViT], configs: list[TuneConfig], device: torch.device,
                      optimizer_states: list[dict[str, torch.Tensor] | None] | None) -> list[torch.optim.Optimizer]:
    """One optimizer per configuration, with a resumed run's moments restored so it continues exactly."""
    opts = [make_optimizer(m, c, fused=device.type == "cuda") for m, c in zip(models, configs, strict=True)]
    for opt, st in zip(opts, optimizer_states or [None] * len(models), strict=True):
        if st:
            load_optimizer_tensors(opt, st)
    return opts


def _attach_emas(models: list[PromptedViT], configs: list[TuneConfig],
                 ema_states: list[dict[str, torch.Tensor] | None] | None) -> None:
    """Give each model its ``WeightEma`` (restored when resuming) or None when its recipe keeps none."""
    for m, c, st in zip(models, configs, ema_states or [None] * len(models), strict=True):
        m.ema = WeightEma(m, c.ema, st or None) if c.ema > 0 else None


def _epoch_size(n: int, base: TuneConfig) -> tuple[int, int]:
    """Steps per epoch and images used per epoch; an input error when drop_last leaves no batch."""
    steps = epoch_steps(n, base)
    if steps < 1:
        raise InputError(f"{n} training images make no full batch of {base.batch_size} with drop_last",
                         "lower --batch-size or pass --no-drop-last")
    return steps, (steps * base.batch_size if base.drop_last else n)


def _start_group(models: list[PromptedViT], train: tuple[torch.Tensor, ...], configs: list[TuneConfig],
                 device: torch.device, states: list[RunState],
                 optimizer_states: list[dict[str, torch.Tensor] | None] | None,
                 ema_states: list[dict[str, torch.Tensor] | None] | None, precision: str, compile_blocks: bool,
                 data_parallel: bool) -> _GroupRun:
    """Everything the loop needs before its first epoch: models placed, optimizers and EMAs (restored
    when resuming), which configurations are still alive, the epoch's size, precision and gradient sync."""
    _place_models(models, device, compile_blocks)
    opts = _build_optimizers(models, configs, device, optimizer_states)
    _attach_emas(models, configs, ema_states)
    alive = [not (st.history and st.history[-1].get("diverged")) for st in states]
    steps, used = _epoch_size(train[0].shape[0], configs[0])
    loss_fn = nn.CrossEntropyLoss()
    autocast = precision_context(precision, device)
    sync = _GradientSync(models) if data_parallel else None
    return _GroupRun(models, configs, opts, device, train[0], train[1], train[2] if len(train) > 2 else None,
                     steps, used, alive, loss_fn, autocast, sync)


def _set_lrs(run: _GroupRun, epoch: int, step: int) -> list[float]:
    """Set every optimizer's lr from its configuration's schedule at (epoch, step); the lrs set."""
    lrs = [c.lr_at(epoch, step, run.steps) for c in run.configs]
    for opt, lr in zip(run.opts, lrs, strict=True):
        for param_group in opt.param_groups:
            param_group["lr"] = lr
    return lrs


def _seed_epoch(run: _GroupRun, epoch: int) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """This epoch's batch orders and drawn views per configuration, and the global seed for dropout:
    all from (seed, epoch) only, so a resumed run draws what the uninterrupted run drew."""
    n = run.tokens.shape[0]
    orders = [torch.randperm(n, generator=torch.Generator().manual_seed(c.seed * 1_000_003 + epoch))
              for c in run.configs]
    picks = [view_choice(n, run.views.shape[1], c.seed, epoch).to(run.views.device) for c in run.configs] \
        if run.views is not None else None
    torch.manual_seed(run.base.seed * 1_000_003 + epoch)  # dropout draws (a solo run: its own seed)
    return orders, picks


def _train_epoch(run: _GroupRun, epoch: int, on_step: Callable[[int, torch.Tensor], None] | None
                 ) -> tuple[list[float], list[float], float]:
    """One pass over the training images for every configuration: the lrs at its start, each
    configuration's mean loss and the seconds it took."""
    lrs = _set_lrs(run, epoch, 0)
    orders, picks = _seed_epoch(run, epoch)
    for m in run.models:
        m.train()
    start = time.perf_counter()
    totals = torch.zeros(len(run.models), device=run.device)
    batch_size = run.base.batch_size
    for step_index, i in enumerate(range(0, run.used, batch_size)):
        if step_index and run.base.schedule_step == "iteration":
            _set_lrs(run, epoch, step_index)
        idx = [o[i: i + batch_size] for o in orders]
        losses, local = _train_step(run, idx, picks)
        totals += losses.detach() * len(idx[0])
        if on_step is not None:
            on_step(local, losses.detach())
    mean_losses = (totals / run.used).tolist()  # one host sync per epoch
    return lrs, mean_losses, time.perf_counter() - start


def _train_step(run: _GroupRun, idx: list[torch.Tensor], picks: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, int]:
    """One optimizer step of every live configuration on its batch ``idx`` (this rank's stride of it
    under data parallel): the step's losses (summed over ranks) and the number of images this rank ran."""
    batch = len(idx[0])
    if run.sync is not None:
        idx = [j[run.sync.rank::run.sync.world] for j in idx]
    for opt in run.opts:
        opt.zero_grad(set_to_none=True)
    if len(idx[0]):
        losses = _forward_backward(run, idx, picks, batch)
    else:  # a rank with no image of this (last, small) batch adds nothing
        losses = torch.zeros(len(run.models), device=run.device)
    if run.sync is not None:
        losses = run.sync.all_reduce(losses.detach())
    for m, opt, ok in zip(run.models, run.opts, run.alive, strict=True):
        if ok:
            opt.step()
            if m.ema is not None:
                m.ema.update()
    return losses, len(idx[0])


def _step_inputs(run: _GroupRun, idx: list[torch.Tensor], picks: list[torch.Tensor] | None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each configuration's batch of tokens (each image's drawn view when augmenting) and labels on the device."""
    if picks is None:
        xs = [run.tokens[j.to(run.tokens.device)].to(run.device, non_blocking=True) for j in idx]
    else:  # each image's drawn view of this epoch
        views = run.views
        xs = [views[j.to(views.device), pk[j.to(views.device)]].to(run.device, non_blocking=True)
              for j, pk in zip(idx, picks, strict=True)]
    ys = [run.labels[j.to(run.labels.device)].to(run.device, non_blocking=True) for j in idx]
    return xs, ys


def _forward_backward(run: _GroupRun, idx: list[torch.Tensor], picks: list[torch.Tensor] | None,
                      batch: int) -> torch.Tensor:
    """Forward every configuration's batch (one backbone pass when they share it) and backpropagate the
    summed losses; under data parallel each rank's loss is weighted by its share of the ``batch``."""
    from .prompted import grid_forward

    xs, ys = _step_inputs(run, idx, picks)
    models = run.models
    with run.autocast:
        logits = (grid_forward(models, xs) if len(models) > 1 and _share_backbone(models)
                  else [m(x) for m, x in zip(models, xs, strict=True)])
    losses = torch.stack([run.loss_fn(lg.float(), y) for lg, y in zip(logits, ys, strict=True)])
    if run.sync is not None:
        losses = losses * (len(idx[0]) / batch)  # this rank's share of the batch mean
    losses.sum().backward()
    return losses


def _record_epoch(run: _GroupRun, states: list[RunState], val: tuple[torch.Tensor, torch.Tensor] | None,
                  epoch: int, result: tuple[list[float], list[float], float], tolerate_divergence: bool,
                  stop_epoch: int | None) -> None:
    """Append each configuration's record of the epoch (lr, loss, seconds, validation when due or
    diverged) to its history and best, so the saved state says how far and how well it trained."""
    lrs, mean_losses, seconds = result
    for g, (m, c, st) in enumerate(zip(run.models, run.configs, states, strict=True)):
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lrs[g], "loss": mean_losses[g], "seconds": seconds}
        _check_divergence(run, g, epoch, lrs[g], mean_losses[g], tolerate_divergence)
        if not run.alive[g]:
            record.update(diverged=True, loss=float("nan"))
            if val is not None:
                record["val_top1"] = 0.0
        elif val is not None and ((epoch + 1) % c.val_every == 0 or epoch + 1 in (c.epochs, stop_epoch)):
            record["val_top1"] = _validate(m, val, run.device)
            if st.best is None or record["val_top1"] > st.best["val_top1"]:
                st.best = {"epoch": epoch + 1, "val_top1": record["val_top1"]}
        st.history.append(record)
        st.epoch = epoch + 1


def _check_divergence(run: _GroupRun, g: int, epoch: int, lr: float, mean_loss: float,
                      tolerate_divergence: bool) -> None:
    """Mark configuration ``g`` diverged when its loss or weights went non-finite this epoch; outside a
    sweep (no ``tolerate_divergence``) that is a runtime failure instead."""
    finite = math.isfinite(mean_loss) and all(
        bool(torch.isfinite(p).all()) for p in run.models[g].parameters() if p.requires_grad)
    if run.alive[g] and not finite:
        if not tolerate_divergence:
            raise _divergence_failure(run.configs[g], epoch, lr)
        run.alive[g] = False


def _divergence_failure(c: TuneConfig, epoch: int, lr: float) -> RuntimeFailure:
    """The error for a diverged solo run, naming the lr it diverged at and how the batch size scaled it."""
    scaled = c.lr_scaling == "batch256" and c.batch_size != 256
    return RuntimeFailure(f"the training loss became nan in epoch {epoch + 1} (lr {lr:.3g}, "
                          f"base lr {c.lr}" + (f" x --batch-size {c.batch_size} / 256" if scaled else "") + ")",
                          "lower --lr" + (" (or --batch-size, which scales it)" if scaled and c.batch_size > 256
                                          else "") + "; the last good checkpoint is kept")


def _validate(m: PromptedViT, val: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> float:
    """Validation top-1 of ``m``, with its averaged (EMA) weights when it keeps an EMA."""
    if m.ema is not None:
        m.ema.swap()
    top = top1(predict(m, val[0], device), val[1])
    if m.ema is not None:
        m.ema.swap()
    return top


def _share_backbone(models: list[PromptedViT]) -> bool:
    """Whether the models run one frozen backbone (grid batching); full fine-tunes each own theirs."""
    return all(m.vit is models[0].vit for m in models)


class _GradientSync:
    """Data-parallel training under torchrun: one flat all-reduce per step of every trainable
    gradient, the per-config losses and an interrupt flag. Ctrl-C / SIGTERM only sets the flag, and
    every rank raises KeyboardInterrupt after the same step, so no rank is left alone in a collective."""

    def __init__(self, models: list[PromptedViT]) -> None:
        import signal
        import threading

        from . import distributed

        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.params = [p for m in models for p in m.parameters() if p.requires_grad]
        self.stop = False
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop = True

    def all_reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """Sum gradients and losses over ranks in place; the summed losses."""
        from . import distributed

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [losses.float(),
                                                                  losses.new_full((1,), float(self.stop))])
        distributed.all_reduce_sum_(flat)
        if float(flat[-1]) > 0:
            self.close()
            raise KeyboardInterrupt
        offset = 0
        for p, g in zip(self.params, grads, strict=True):
            p.grad = flat[offset: offset + g.numel()].view_as(p).to(p.dtype)
            offset += g.numel()
        return flat[offset: offset + losses.numel()]

    def close(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def config_dict(config: TuneConfig) -> dict[str, Any]:
    return asdict(config) | {"effective_lr": config.effective_lr}
