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

ARCHS = ("vpt-shallow", "vpt-deep", "vapt")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_PROMPTS = {"vpt-shallow": 100, "vpt-deep": 20, "vapt": 10}


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
    vapt_dropout: float = 0.1  # Dropout2d after the conv and dropout in the projector's hidden layer
    head_init: str = "kaiming"  # kaiming (normal, fan_out) | zeros; bias 0 either way
    val_every: int = 1

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
            raise InputError(f"--warmup-epochs {self.warmup_epochs} must be in [0, epochs)", "pass e.g. 10")
        v.integer(self.batch_size, "--batch-size", minimum=1, example=32)
        v.number(self.lr, "--lr", minimum=0, min_open=True, example=0.1)
        v.number(self.weight_decay, "--weight-decay", minimum=0, example=0.01)
        v.number(self.prompt_dropout, "--prompt-dropout", minimum=0, maximum=1, max_open=True, example=0.1)
        v.seed(self.seed, "--seed")
        v.integer(self.vapt_hidden, "--vapt-hidden", minimum=1, example=8)
        v.integer(self.vapt_kernel, "--vapt-kernel", minimum=1, example=2)
        v.integer(self.vapt_first_block, "--vapt-first-block", minimum=1, example=1)
        v.number(self.vapt_dropout, "--vapt-dropout", minimum=0, maximum=1, max_open=True, example=0.1)
        v.integer(self.val_every, "--val-every", minimum=1, example=1)
        if self.head_init not in ("kaiming", "zeros"):
            raise InputError(f"unknown --head-init '{self.head_init}'", "use kaiming or zeros")

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256.0


def lr_factor(epoch: int, warmup: int, total: int) -> float:
    """VPT's schedule, stepped per epoch: linear warm-up from 0, then half a cosine to 0."""
    if epoch < warmup:
        return epoch / max(1, warmup)
    progress = (epoch - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_model(vit: nn.Module, prompts: torch.Tensor, num_classes: int, config: TuneConfig, pool: str,
                grid: tuple[int, int]) -> PromptedViT:
    """The prompted model of ``config.arch``, head initialised from ``config.seed``."""
    from .vapt import VaptPromptGenerator

    with torch.random.fork_rng(devices=[]):  # every random init below depends on config.seed alone
        torch.manual_seed(config.seed)
        adaptive = None
        if config.arch == "vapt":
            adaptive = VaptPromptGenerator(int(vit.embed_dim), len(vit.blocks), grid, int(prompts.shape[-2]),
                                           hidden=config.vapt_hidden, kernel=config.vapt_kernel,
                                           first_block=config.vapt_first_block,
                                           per_channel=config.vapt_per_channel, dropout=config.vapt_dropout)
        model = PromptedViT(vit, prompts, pool=pool, prompt_dropout=config.prompt_dropout,
                            num_classes=num_classes, adaptive=adaptive)
        if config.head_init == "zeros":
            nn.init.zeros_(model.head.weight)
        else:
            nn.init.kaiming_normal_(model.head.weight, a=0, mode="fan_out")
        nn.init.zeros_(model.head.bias)
    return model


def make_optimizer(model: PromptedViT, config: TuneConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Weight decay on prompts, head weight and VAPT weights; none on biases and norms.

    ``fused`` selects PyTorch's fused CUDA kernel (one launch for all parameters).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.effective_lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.effective_lr, betas=(0.9, 0.999), eps=1e-6,
                             **({"fused": True} if fused else {}))


def trainable_state(model: PromptedViT) -> dict[str, torch.Tensor]:
    """Prompt-side parameters and the head: what a checkpoint stores (never the backbone)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not n.startswith("vit.")}


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
    """torch.compile each frozen block in place (once); the prompt splicing stays eager."""
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


def train_group(models: list[PromptedViT], train: tuple[torch.Tensor, torch.Tensor],
                val: tuple[torch.Tensor, torch.Tensor] | None, configs: list[TuneConfig], device: torch.device,
                states: list[RunState] | None = None, optimizer_states: list[dict[str, torch.Tensor] | None] | None
                = None, on_epoch: Callable[[list[PromptedViT], list[torch.optim.Optimizer], list[RunState]], None]
                | None = None, on_step: Callable[[int, torch.Tensor], None] | None = None,
                tolerate_divergence: bool = False, precision: str = "auto", compile_blocks: bool = False
                ) -> list[RunState]:
    """Train several configurations in one loop over one frozen backbone (grid batching).

    Each configuration keeps its own prompts, head, optimizer, schedule, batch order and seed; the
    backbone runs once per step on the stacked batches of all of them. A configuration trained in
    a group of one is exactly a solo run. With ``tolerate_divergence`` (a sweep) a configuration
    whose loss or weights become non-finite stops updating and is recorded as diverged; otherwise
    that is an error.
    """
    from .prompted import grid_forward

    group = len(models)
    base = configs[0]
    if any((c.epochs, c.warmup_epochs, c.batch_size) != (base.epochs, base.warmup_epochs, base.batch_size)
           for c in configs):
        raise ValueError("a training group shares epochs, warm-up and batch size")
    states = states or [RunState() for _ in models]
    for m in models:
        m.to(device)
    if compile_blocks:
        compile_backbone(models[0].vit)
    opts = [make_optimizer(m, c, fused=device.type == "cuda") for m, c in zip(models, configs, strict=True)]
    for opt, st in zip(opts, optimizer_states or [None] * group, strict=True):
        if st:
            load_optimizer_tensors(opt, st)
    alive = [not (st.history and st.history[-1].get("diverged")) for st in states]
    tokens, labels = train
    n = tokens.shape[0]
    loss_fn = nn.CrossEntropyLoss()
    autocast = precision_context(precision, device)
    for epoch in range(states[0].epoch, base.epochs):
        lrs = [c.effective_lr * lr_factor(epoch, base.warmup_epochs, base.epochs) for c in configs]
        for opt, lr in zip(opts, lrs, strict=True):
            for param_group in opt.param_groups:
                param_group["lr"] = lr
        orders = [torch.randperm(n, generator=torch.Generator().manual_seed(c.seed * 1_000_003 + epoch))
                  for c in configs]
        torch.manual_seed(base.seed * 1_000_003 + epoch)  # dropout draws (a solo run: its own seed)
        for m in models:
            m.train()
        start = time.perf_counter()
        totals = torch.zeros(group, device=device)
        for i in range(0, n, base.batch_size):
            idx = [o[i: i + base.batch_size] for o in orders]
            xs = [tokens[j.to(tokens.device)].to(device, non_blocking=True) for j in idx]
            ys = [labels[j.to(labels.device)].to(device, non_blocking=True) for j in idx]
            with autocast:
                logits = grid_forward(models, xs) if group > 1 else [models[0](xs[0])]
            losses = torch.stack([loss_fn(lg.float(), y) for lg, y in zip(logits, ys, strict=True)])
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            for opt, ok in zip(opts, alive, strict=True):
                if ok:
                    opt.step()
            totals += losses.detach() * len(idx[0])
            if on_step is not None:
                on_step(len(idx[0]), losses.detach())
        mean_losses = (totals / n).tolist()  # one host sync per epoch
        seconds = time.perf_counter() - start
        for g, (m, c, st) in enumerate(zip(models, configs, states, strict=True)):
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lrs[g], "loss": mean_losses[g], "seconds": seconds}
            finite = math.isfinite(mean_losses[g]) and all(
                bool(torch.isfinite(p).all()) for p in m.parameters() if p.requires_grad)
            if alive[g] and not finite:
                if not tolerate_divergence:
                    raise RuntimeFailure(f"the training loss became nan in epoch {epoch + 1} (lr {lrs[g]:.3g}, "
                                         f"base lr {c.lr})", "lower --lr; the last good checkpoint is kept")
                alive[g] = False
            if not alive[g]:
                record.update(diverged=True, loss=float("nan"))
                if val is not None:
                    record["val_top1"] = 0.0
            elif val is not None and ((epoch + 1) % c.val_every == 0 or epoch + 1 == c.epochs):
                record["val_top1"] = top1(predict(m, val[0], device), val[1])
                if st.best is None or record["val_top1"] > st.best["val_top1"]:
                    st.best = {"epoch": epoch + 1, "val_top1": record["val_top1"]}
            st.history.append(record)
            st.epoch = epoch + 1
        if tolerate_divergence and not any(alive):
            raise RuntimeFailure(f"every configuration diverged by epoch {epoch + 1}", "lower the --lr values")
        if on_epoch is not None:
            on_epoch(models, opts, states)
    return states


def config_dict(config: TuneConfig) -> dict[str, Any]:
    return asdict(config) | {"effective_lr": config.effective_lr}
