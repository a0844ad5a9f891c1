"""What a tune reads before it trains: the splits' embeddings, the backbone and the initial prompts.

Training never sees an image: every split arrives as cached block-0 tokens (given as files, or
embedded now through the cache). The initial prompts come from ``--prompts`` or are computed from
the training split by each init configuration of the sweep, and are saved beside the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Artifact, check_same_backbone, load_artifact, read_metadata
from ..errors import ArtifactError, InputError
from ..train import DEFAULT_PROMPTS, TuneConfig


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
class Splits:
    """The embeddings a tune trains and selects on: training, validation (optional) and final (optional)."""

    train: Artifact
    val: Artifact | None
    final: Artifact | None

    @property
    def identity(self) -> dict[str, Any]:
        """The backbone the training embeddings were made with."""
        return self.train.meta["backbone"]


@dataclass
class TuneData:
    """Everything the stages train from: the splits, the frozen backbone, the head's input and the
    initial prompts of each sweep init slot (one per init configuration and init seed, with where they
    came from; ``slots`` says which slot each sweep candidate starts from)."""

    splits: Splits
    backbone: Any
    grid: tuple[int, int]
    pool: str
    num_classes: int
    inits: list[Any]  # InitConfigs, one per init index of the plan
    prompts: list[torch.Tensor]  # per init slot
    sources: list[dict[str, Any]]  # per init slot: the prompts' file, digest, method and config
    slots: Any  # inits.seeding.InitSlots of the sweep
    follow: bool = True  # each run's init seed follows its training seed (False: pinned, or --prompts)
    init_seed_rule: str | None = None  # how the runs' init seeds were chosen, for the checkpoint (None: no init)

    def candidate_prompts(self) -> list[torch.Tensor]:
        """The prompts each sweep candidate starts from."""
        return [self.prompts[j] for j in self.slots.of_point]

    def candidate_source(self, init_index: int) -> dict[str, Any]:
        """The init that stands for an init candidate (its first slot)."""
        return self.sources[self.slots.first_slot(init_index)]


def load_split(inputs: TuneInputs, split: str | None, explicit: str | os.PathLike | None, what: str,
               augmented: bool = True) -> Artifact:
    """A split's embeddings: the given file, or embedded now (cached); ``augmented=False`` (validation)
    embeds the centre crop only, whatever --augment says."""
    from ..embed import EmbedConfig, embed_data

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


def read_splits(inputs: TuneInputs) -> Splits:
    """The training, validation and final-run embeddings, each checked against the training split."""
    from ..data.labels import check_trainable_embeddings

    train = load_split(inputs, inputs.split, inputs.embeddings, "tune")
    check_trainable_embeddings(train, "the training data")
    val = None
    if inputs.val_embeddings is not None or inputs.val is not None:
        val = load_split(inputs, inputs.val, inputs.val_embeddings, "validation", augmented=False)
        check_compatible(train.meta, val.meta, "the training embeddings", "the validation embeddings")
        if val["labels"].numel() == 0:
            raise InputError("the validation split is empty", "pass a non-empty --val split")
    final = None
    if inputs.has_final:
        final = load_split(inputs, inputs.final_split, inputs.final_embeddings, "the final runs (--final-split)")
        check_trainable_embeddings(final, "the final split")
        check_compatible(train.meta, final.meta, "the training embeddings", "the final-split embeddings")
    return Splits(train, val, final)


def init_configs(inputs: TuneInputs) -> list[Any]:
    """The init configurations to sweep: ``init_grid``, else the single ``init`` (default VIPAMIN)."""
    from ..inits import InitConfig

    if inputs.init_grid is not None:
        if not inputs.init_grid:
            raise InputError("the init grid is empty", "pass at least one value to each init option")
        return list(inputs.init_grid)
    return [inputs.init or InitConfig()]


def resolve_recipe(base: TuneConfig, recipe: Any, identity: dict[str, Any]) -> TuneConfig:
    """The values of a recipe that depend on the backbone family: SPT's head weight decay and MAE head."""
    from ..recipes import for_backbone

    if recipe is None:
        return base
    resolved = for_backbone(recipe, identity.get("family", ""))
    hwd = base.head_weight_decay if base.head_weight_decay is not None else resolved.head_weight_decay
    return replace(base, head_weight_decay=hwd, pool=base.pool or resolved.pool)


def prepare(inputs: TuneInputs, splits: Splits, base: TuneConfig, inits: list[Any], out: Path,
            dev: torch.device, points: list[Any]) -> TuneData:
    """Load the backbone, check the prompts fit it, and make the prompts of every init slot of the
    sweep ``points`` (one per init configuration, and per training seed when the init seed follows it)."""
    from .. import distributed
    from ..backbones import load_backbone_from_identity
    from ..inits.seeding import init_slots

    identity = splits.identity
    backbone = load_backbone_from_identity(identity, weights=inputs.weights, what="the training embeddings")
    grid = (identity["img_size"] // identity["patch"],) * 2
    check_geometry(base, backbone.model, grid, splits.train, inputs, dev)
    distributed.sync()  # every rank has its inputs (a rank that could not read them stops all here)
    follow = follows_seed(inputs, base)
    slots = init_slots(inits, [pt.init_index for pt in points], [pt.config.seed for pt in points], follow,
                       numbered=len(inits) > 1)
    made = [shared_prompts(inputs, splits.train, base.arch, out, c, s) for c, s in slots.named()]
    return TuneData(splits, backbone, grid, base.pool or identity["pool"],
                    len(splits.train.meta["data"]["class_names"]), inits, [m[0] for m in made],
                    [m[1] for m in made], slots, follow,
                    None if base.arch == "full" else slots.rule(inputs.prompts is not None))


def follows_seed(inputs: TuneInputs, base: TuneConfig) -> bool:
    """Whether each run draws its own init with its training seed: by default, not with --init-seed,
    --prompts (a file is never redrawn) or --arch full (no prompts)."""
    return inputs.follow_seed and inputs.prompts is None and base.arch != "full"


def check_geometry(base: TuneConfig, vit: torch.nn.Module, grid: tuple[int, int], train: Artifact,
                   inputs: TuneInputs, dev: torch.device) -> None:
    """Checks that need the backbone's shape: VAPT's kernel and first block, the prompts' memory."""
    from .. import validate as v

    depth = len(vit.blocks)
    if base.arch == "full":  # weights, gradients, optimiser state and activations of every block
        from ..full import check_memory

        return check_memory(vit, base.pool or train.meta["backbone"]["pool"], int(train["tokens"].shape[1]), base, dev)
    if base.arch == "vapt":
        v.vapt_geometry(base.vapt_kernel, base.vapt_first_block, depth, grid)
    length = (max(init.prompt_length or 0 for init in init_configs(inputs)) if inputs.prompts is None else 0)
    length = length or DEFAULT_PROMPTS[base.arch]
    tokens = int(train["tokens"].shape[1])
    v.training_memory_fits(length, int(vit.embed_dim), depth if base.arch == "vpt-deep" else 1, tokens,
                           base.batch_size, int(train["tokens"].shape[0]), int(vit.blocks[0].attn.num_heads), depth,
                           dev)


def check_init_k(inputs: TuneInputs, recipe: Any, patches: int) -> None:
    """Every VIPAMIN K of the init grid against the patch count, before the first init is computed; a
    value from a recipe is blamed on the recipe, not on a --k the user never typed."""
    from ..inits.vipamin import check_k_grid, k_origin

    if inputs.prompts is not None:
        return
    ks = [c.k for c in init_configs(inputs) if c.method == "vipamin"]
    source = (recipe.resolved.get("init_grid") or {}).get("source") if recipe is not None else None
    given = recipe is None or (source == "option" and any("k" in g for g in recipe.init_grid))
    check_k_grid(ks, patches, k_origin(getattr(recipe, "recipe", None), source, given))


def initial_prompts(inputs: TuneInputs, train: Artifact, arch: str, out: Path, init: Any,
                    suffix: str = "") -> tuple[torch.Tensor, dict]:
    """Prompts from --prompts, or computed now from ``init`` and saved beside the checkpoint."""
    from ..full import no_prompts
    from ..inits import init_prompts

    if arch == "full":  # full fine-tuning trains no prompts (full.py)
        return no_prompts(int(train["tokens"].shape[-1]))
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


def shared_prompts(inputs: TuneInputs, train: Artifact, arch: str, out: Path, init: Any,
                   suffix: str = "") -> tuple[torch.Tensor, dict]:
    """``initial_prompts`` on rank 0 only (it writes the prompts file), shared with the other ranks so
    every rank starts from the very same tensor."""
    from .. import distributed

    if not distributed.launched():
        return initial_prompts(inputs, train, arch, out, init, suffix)
    mine = initial_prompts(inputs, train, arch, out, init, suffix) if distributed.is_main() else None
    return distributed.broadcast_from_main(mine)


def device_tokens(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep cached tokens resident on the GPU when they fit comfortably, else on the host."""
    if device.type != "cuda":
        return tokens
    free, _ = torch.cuda.mem_get_info(device)
    need = tokens.numel() * tokens.element_size()
    return tokens.to(device) if need < 0.5 * free else tokens.pin_memory()


def on_device(art: Artifact, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Tokens and labels (and the augmented views, when cached) where training reads them."""
    xy = (device_tokens(art["tokens"], dev), art["labels"].to(dev if dev.type == "cuda" else "cpu"))
    return xy + (device_tokens(art["views.tokens"], dev),) if "views.tokens" in art.tensors else xy
