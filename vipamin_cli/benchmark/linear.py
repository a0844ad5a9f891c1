"""The linear-probe baseline: a linear head on the frozen backbone's pooled features, no prompts.

The features are computed once per split by running the frozen blocks on the cached block-0
tokens (a :class:`PromptedViT` with zero prompts, so the pooling is exactly the prompted
methods'); the head is then trained with the same recipe (optimizer, lr scaling, warm-up +
cosine schedule, batch size, epochs, seeded shuffling) as the prompt tuners, which makes it the
"prompts add nothing" row of the table. The head starts as tune's does (``--head-init`` kaiming, zeros
or SPT's trunc-normal 0.02, bias 0), SPT's separate head weight decay applies to its weight, and SPT's
per-iteration schedule with its floor and its dropped last batch are followed; only the EMA is not kept.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..artifacts import load_artifact
from ..train import TuneConfig, config_dict, epoch_steps, top1


@torch.no_grad()
def pooled_features(embeddings: str | os.PathLike, pool: str | None = None, device: str = "cpu",
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(features, labels, metadata) of a cached split: the frozen backbone's pooled output."""
    from ..backbones import load_backbone_from_identity
    from ..embed import resolve_device
    from ..prompted import PromptedViT

    art = load_artifact(embeddings, "embeddings", what="linear probe embeddings")
    identity = art.meta["backbone"]
    dev = resolve_device(device)
    model = PromptedViT(load_backbone_from_identity(identity).model, None, pool=pool or identity["pool"]).to(dev)
    model.eval()
    tokens = art["tokens"]
    feats = [model(tokens[i: i + batch_size].to(dev)).float().cpu() for i in range(0, tokens.shape[0], batch_size)]
    return torch.cat(feats), art["labels"], art.meta


def _head(dim: int, num_classes: int, config: TuneConfig) -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = nn.Linear(dim, num_classes)
        if config.head_init == "zeros":
            nn.init.zeros_(head.weight)
        elif config.head_init == "trunc-normal":  # SPT's recipe
            nn.init.trunc_normal_(head.weight, std=0.02)
        else:
            nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
        nn.init.zeros_(head.bias)
    return head


def train_linear(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
                 num_classes: int, config: TuneConfig, on_epoch: Any = None) -> tuple[nn.Linear, dict[str, Any]]:
    """Train one head; returns it and a run record shaped like tune's (config, history, best, final)."""
    x, y = train
    head = _head(x.shape[1], num_classes, config)
    weight_decay = config.head_weight_decay if config.head_weight_decay is not None else config.weight_decay
    groups = [{"params": [head.weight], "weight_decay": weight_decay}, {"params": [head.bias], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.effective_lr, momentum=config.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=config.effective_lr, betas=tuple(config.betas), eps=config.eps)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best = None
    n = x.shape[0]
    steps = epoch_steps(n, config)  # SPT's drop_last leaves out the last partial batch
    for epoch in range(config.epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        total, seen = 0.0, 0
        head.train()
        for step in range(steps):
            lr = config.lr_at(epoch, step, steps)  # per epoch (VPT) or per iteration with a floor (SPT)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order[step * config.batch_size: (step + 1) * config.batch_size]
            seen += len(idx)
            loss = loss_fn(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        lr = config.lr_at(epoch, 0, steps)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": total / max(1, seen),
                                  "seconds": time.perf_counter() - start}
        if val is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            with torch.no_grad():
                record["val_top1"] = top1(head.eval()(val[0]), val[1])
            if best is None or record["val_top1"] > best["val_top1"]:
                best = {"epoch": epoch + 1, "val_top1": record["val_top1"]}
        history.append(record)
        if on_epoch is not None:
            on_epoch()
    run = {"config": config_dict(config), "history": history, "best": best,
           "final_val_top1": history[-1].get("val_top1"), "final_train_loss": history[-1]["loss"],
           "diverged": not torch.isfinite(head.weight).all().item()}
    return head.eval(), run


def linear_sweep(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, base: TuneConfig, lrs: list[float], weight_decays: list[float],
                 seeds: list[int], on_epoch: Any = None) -> dict[str, Any]:
    """Every (lr, wd, seed) head, selected as tune selects (mean last-epoch val top-1, ties to smaller lr)."""
    from ..tune import select

    runs = []
    for lr in lrs:
        for wd in weight_decays:
            for s in seeds:
                cfg = replace(base, lr=lr, weight_decay=wd, seed=s)
                cfg.validate()
                runs.append(train_linear(train, val, num_classes, cfg, on_epoch)[1])
    _, lr, wd = select(runs)
    return {"criterion": "mean last-epoch val top-1 over seeds; ties to the smaller lr",
            "chosen": {"lr": lr, "weight_decay": wd}, "runs": runs}
