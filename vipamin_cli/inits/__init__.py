"""Prompt initialisation: one small module per method behind one interface (see ``base``).

``run_init`` is the pure computation (context in, tensors out); ``init_prompts`` is the library
form of `vipamin init`: it finds or makes the embeddings, runs a method, and writes a prompts file
holding the prompts and, for inspection, the intermediate tensors.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..iosafety import command_scope
from .base import BlockInit, InitConfig, InitContext, InitMethod, uniform_prompts, vpt_bound
from .random_init import RandomInit
from .spt import SptInit
from .vipamin import VipaminInit

INIT_PRECISION = "float32"  # run_init disables autocast and TF32 (VIPAMIN's span algebra is float64)
METHODS: dict[str, InitMethod] = {m.name: m for m in (RandomInit(), SptInit(), VipaminInit())}

__all__ = ["METHODS", "BlockInit", "InitConfig", "InitContext", "InitMethod", "init_prompts", "run_init",
           "uniform_prompts", "vpt_bound", "context_from_embeddings"]


def get_method(name: str) -> InitMethod:
    if name not in METHODS:
        raise InputError(f"unknown init method '{name}'", f"use one of {', '.join(METHODS)}")
    return METHODS[name]


def run_init(ctx: InitContext, config: InitConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Initialise shallow (block 0) or deep (every block) prompts; returns (tensors, info)."""
    method = get_method(config.method)
    config.validate()
    if config.num_prompts < 1:
        raise InputError(f"--prompt-length {config.num_prompts} must be at least 1", "pass e.g. --prompt-length 100")
    method.validate(config, ctx)
    from ..embed import full_float32

    generator = torch.Generator().manual_seed(config.seed)
    blocks = range(len(ctx.vit.blocks)) if config.deep else [0]
    with torch.no_grad(), full_float32():  # never under a caller's autocast (tune's --precision bf16)
        results = [method.init_block(ctx, b, config, generator) for b in blocks]

    def combine(items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items) if config.deep else items[0]

    tensors = {"prompts": combine([r.prompts.float() for r in results])}
    for name in results[0].extras:
        tensors[f"{method.name}.{name}"] = combine([r.extras[name] for r in results])
    info = {"blocks": [r.info for r in results]} if config.deep else results[0].info
    return tensors, info


def context_from_embeddings(embeddings: Any, vit: torch.nn.Module, device: torch.device) -> InitContext:
    """Build an InitContext from a loaded embeddings artifact and its (rebuilt) backbone."""
    stats = {k: v for k, v in embeddings.tensors.items() if k.startswith("calib.")}
    identity = embeddings.meta["backbone"]
    return InitContext(vit=vit, tokens=embeddings.tensors["tokens"], stats=stats,
                       num_prefix=int(identity["num_prefix_tokens"]), patch=int(identity["patch"]), device=device)


@dataclass
class InitOutcome:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def default_prompts_name(config: InitConfig) -> str:
    return f"prompts-{config.method}{'-deep' if config.deep else ''}.safetensors"


@command_scope()
def init_prompts(config: InitConfig, embeddings: str | os.PathLike | None = None, backbone: str | None = None,
                 data: str | None = None, weights: str | None = None, split: str | None = None,
                 shots: int | None = None, embed_config: Any = None, out: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, show_progress: bool = True) -> InitOutcome:
    """The library form of `vipamin init`.

    Either ``embeddings`` (a file from `embed`) or ``backbone`` + ``data`` (found in the cache, or
    embedded first) supply the calibration statistics. Writes the prompts file atomically.
    """
    from .. import validate as v
    from ..artifacts import load_artifact, save_artifact
    from ..backbones import load_backbone_from_identity
    from ..embed import embed_data, resolve_device

    config.validate()
    get_method(config.method)
    if embed_config is not None:
        embed_config.validate({"seed": "--data-seed", "batch_size": "--embed-batch-size"})
    if shots is not None:
        v.integer(shots, "--shots", minimum=1, example=16)
    device = resolve_device(config.device)
    dest = Path(out) if out is not None else Path(default_prompts_name(config))
    v.output_path(dest, "--out", [("--embeddings", embeddings),
                                  ("--weights", weights if weights != "random" else None)])
    if embeddings is None:
        if backbone is None or data is None:
            raise InputError("init needs --embeddings FILE, or --backbone and --data",
                             "pass --embeddings from `vipamin embed`, or --backbone B --data D")
        embeddings = embed_data(backbone, data, weights=weights, split=split, shots=shots, config=embed_config,
                                cache_dir=cache_dir, show_progress=show_progress).path
    art = load_artifact(embeddings, "embeddings", what="--embeddings")
    identity = art.meta["backbone"]
    bb = load_backbone_from_identity(identity, backbone=backbone, weights=weights, what=f"--embeddings {embeddings}")
    blocks = len(bb.model.blocks) if config.deep else 1
    v.memory_fits(v.prompt_memory(config.num_prompts, int(bb.model.embed_dim), blocks) * 4, "--prompt-length",
                  config.num_prompts, device)
    ctx = context_from_embeddings(art, bb.model, device)
    tensors, info = run_init(ctx, config)
    meta = {
        "method": config.method,
        "config": asdict(config) | {"prompt_length": config.num_prompts},
        "deep": config.deep,
        "precision": INIT_PRECISION,
        "prompt_shape": list(tensors["prompts"].shape),
        "info": info,
        "backbone": identity,
        "preprocessing": art.meta["preprocessing"],
        "data": art.meta["data"],
        "embeddings": {"digest": art.meta["digest"], "cache_key": art.meta.get("cache_key"),
                       "calibration": art.meta.get("calibration")},
    }
    meta["config"].pop("device", None)
    save_artifact(dest, tensors, "prompts", meta)
    return InitOutcome(path=dest, tensors=tensors, meta=meta)
