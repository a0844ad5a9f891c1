"""`embed`: one frozen pass that caches block-0 tokens and the calibration statistics `init` needs.

Every image only goes through the patch embedding (the cached ``tokens`` are the block-0 input,
which is all that prompt tuning needs as input). Only the calibration subset (``calib_size``
images, seeded) goes through all blocks, to record per block b: the mean block input, the mean
head-averaged key, the mean attention output before the output projection, and a seeded sample
of the block's input patch tokens for prototype (SPT) initialisation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import SCHEMA_VERSION
from .artifacts import atomic_path, load_artifact, read_metadata, save_artifact
from .cache import cache_option, checked_cache_root, content_key, embeddings_path, entry_lock
from .errors import ArtifactError, InputError, Interrupted, VipaminError, unwrap_worker_error
from .iosafety import command_scope, declare_input_set
from .ui import info, progress_bar

if TYPE_CHECKING:
    import torch

    from .backbones import Backbone
    from .data import ImageSet

DTYPES = ("bfloat16", "float32")
DEEP_STATS = ("prompt-free", "reference")
# The calibration statistics (and every init) are computed in full float32 whatever --dtype says:
# the init's pseudo-inverses and cosine rankings are sensitive to bf16 rounding of the statistics.
CALIB_PRECISION = "float32"


@dataclass
class EmbedConfig:
    """Options of the forward pass; all but ``batch_size``/``device``/``workers`` enter the cache key."""

    resize: str = "auto"
    dtype: str = "bfloat16"
    calib_size: int = 256
    sample_images: int = 32
    seed: int = 0
    deep_stats: str = "prompt-free"  # reference: keys and Xbar of blocks b >= 1 with random deep prompts inserted
    deep_stats_prompts: int | None = None  # prompts per block of the reference pass (default 20; deep init's P)
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    augment: str = "none"  # none | fgvc | auto (fgvc for FGVC json sources): V random training views
    views: int | None = None  # views per image with --augment (default data.augment.DEFAULT_VIEWS)

    def resolved_views(self, augment: str) -> int:
        """Views cached per image once ``augment`` is resolved (0: none)."""
        from .data.augment import DEFAULT_VIEWS

        return 0 if augment == "none" else (self.views or DEFAULT_VIEWS)

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Range checks of every option; ``names`` renames options (init's --data-seed is embed's --seed)."""
        from . import validate as v

        names = names or {}

        if self.dtype not in DTYPES:
            raise InputError(f"unknown --dtype '{self.dtype}'", f"use one of {', '.join(DTYPES)}")
        if self.deep_stats not in DEEP_STATS:
            raise InputError(f"unknown --deep-stats '{self.deep_stats}'",
                             f"use one of {', '.join(DEEP_STATS)} (e.g. --deep-stats reference)")
        v.integer(self.calib_size, names.get("calib_size", "--calib-size"), minimum=1, example=256)
        v.integer(self.batch_size, names.get("batch_size", "--batch-size"), minimum=1, example=64)
        v.integer(self.sample_images, "--sample-images", minimum=0, example=32)
        v.seed(self.seed, names.get("seed", "--seed"))
        v.integer(self.workers, "--workers", minimum=0, maximum=max(64, 4 * (os.cpu_count() or 1)), example=4,
                  optional=True)
        from .data.augment import AUGMENTS

        if self.augment not in AUGMENTS:
            raise InputError(f"unknown --augment '{self.augment}'", f"use one of {', '.join(AUGMENTS)}")
        v.integer(self.views, "--views", minimum=1, maximum=256, example=8, optional=True)
        v.integer(self.deep_stats_prompts, "--deep-stats-prompts", minimum=1, maximum=4096, example=20, optional=True)
        if self.deep_stats_prompts is not None and self.deep_stats != "reference":
            raise InputError(f"--deep-stats-prompts {self.deep_stats_prompts} needs --deep-stats reference "
                             "(the prompts of the reference calibration pass)",
                             "add --deep-stats reference, or drop --deep-stats-prompts")
        if self.views is not None and self.augment == "none":
            raise InputError(f"--views {self.views} needs --augment fgvc (views are augmented copies)",
                             "add --augment fgvc, or drop --views")


@dataclass
class EmbedResult:
    path: Path
    from_cache: bool
    meta: dict[str, Any]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear input error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available on this machine",
                             "use --device cpu or --device auto")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown --device '{device}'", "use auto, cpu or cuda")


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Plain float32 inside, whatever the caller set: no autocast (CPU or CUDA), no TF32 matmuls or
    convolutions. The calibration statistics and the inits depend on small differences (cosine
    rankings, pseudo-inverses), which bf16 or TF32 rounding would change."""
    import torch

    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def block0_tokens(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input of block 0: patch embedding, prefix tokens + position embedding, ``norm_pre``."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


class CalibrationRecorder:
    """Runs the blocks on calibration images and accumulates per-block statistics in float32.

    With ``deep_prompts`` (L, P, D) (``--deep-stats reference``), the block inputs and keys are
    recorded in a second pass that inserts ``deep_prompts[b]`` after the prefix tokens of block b
    (dropping block b-1's prompt outputs, as deep VPT does) and averages over the non-prompt rows,
    as the VIPAMIN authors compute them; the attention output and the SPT token sample still come
    from the prompt-free pass.
    """

    def __init__(self, model: torch.nn.Module, sample_dtype: torch.dtype,
                 deep_prompts: torch.Tensor | None = None) -> None:
        self.model = model
        self.blocks = list(model.blocks)
        self.prefix = int(model.num_prefix_tokens)
        self.sample_dtype = sample_dtype
        self.deep_prompts = deep_prompts
        depth = len(self.blocks)
        self.count = 0
        self.input_sum: list[torch.Tensor | None] = [None] * depth
        self.key_sum: list[torch.Tensor | None] = [None] * depth
        self.attn_sum: list[torch.Tensor | None] = [None] * depth
        self.samples: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        for blk in self.blocks:
            attn = blk.attn
            if not hasattr(attn, "qkv") or not hasattr(attn, "proj"):
                raise InputError(f"unsupported attention module {type(attn).__name__}",
                                 "use a timm VisionTransformer with fused qkv attention")

    @staticmethod
    def _add(acc: list[torch.Tensor | None], b: int, value: torch.Tensor) -> None:
        value = value.float().sum(0)
        acc[b] = value if acc[b] is None else acc[b] + value

    def _without_prompts(self, rows: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Drop the ``num_prompts`` rows that follow the prefix tokens (B, T + P, ...) -> (B, T, ...)."""
        import torch

        if num_prompts == 0:
            return rows
        return torch.cat([rows[:, : self.prefix], rows[:, self.prefix + num_prompts:]], dim=1)

    def run(self, x: torch.Tensor, sample_mask: torch.Tensor) -> None:
        """Forward calibration tokens ``x`` (B, T, D) through every block, recording statistics."""
        prompted = self.deep_prompts is not None
        self._pass(x, sample_mask, keys_and_inputs=not prompted, attn_and_samples=True)
        if prompted:
            self._pass(x, sample_mask, keys_and_inputs=True, attn_and_samples=False, prompts=self.deep_prompts)
        self.count += x.shape[0]

    def _pass(self, x: torch.Tensor, sample_mask: torch.Tensor, keys_and_inputs: bool, attn_and_samples: bool,
              prompts: torch.Tensor | None = None) -> None:
        import torch

        hooks = []
        current = {"b": 0}
        num_prompts = 0 if prompts is None else int(prompts.shape[1])

        def on_qkv(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
            blk = self.blocks[current["b"]]
            bsz, tokens, _ = out.shape
            qkv = out.reshape(bsz, tokens, 3, blk.attn.num_heads, blk.attn.head_dim)
            keys = blk.attn.k_norm(qkv[:, :, 1])  # (B, T [+ P], H, dh)
            self._add(self.key_sum, current["b"], self._without_prompts(keys.float().mean(2), num_prompts))

        def on_proj(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self._add(self.attn_sum, current["b"], args[0])

        for blk in self.blocks:
            if keys_and_inputs:
                hooks.append(blk.attn.qkv.register_forward_hook(on_qkv))
            if attn_and_samples:
                hooks.append(blk.attn.proj.register_forward_pre_hook(on_proj))
        try:
            for b, blk in enumerate(self.blocks):
                current["b"] = b
                if keys_and_inputs:
                    self._add(self.input_sum, b, x)
                if attn_and_samples and bool(sample_mask.any()):
                    self.samples[b].append(x[sample_mask, self.prefix:].to("cpu", self.sample_dtype))
                if prompts is None:
                    x = blk(x)
                else:
                    p = prompts[b].to(x.device, x.dtype).expand(x.shape[0], -1, -1)
                    y = blk(torch.cat([x[:, : self.prefix], p, x[:, self.prefix:]], dim=1))
                    x = self._without_prompts(y, num_prompts)
        finally:
            for h in hooks:
                h.remove()

    def tensors(self) -> dict[str, torch.Tensor]:
        import torch

        def stack(acc: list[torch.Tensor | None]) -> torch.Tensor:
            return torch.stack([a / self.count for a in acc]).cpu()

        out = {
            "calib.block_input_mean": stack(self.input_sum),
            "calib.key_mean": stack(self.key_sum),
            "calib.attn_out_mean": stack(self.attn_sum),
        }
        if self.samples[0]:
            out["calib.token_sample"] = torch.stack([torch.cat(s) for s in self.samples])
        if self.deep_prompts is not None:
            out["calib.deep_stats_prompts"] = self.deep_prompts.detach().float().cpu()
        return out


def deep_stats_prompts(config: EmbedConfig, depth: int, dim: int, patch: int) -> torch.Tensor | None:
    """The random deep prompts (L, P, D) of the ``--deep-stats reference`` pass, or None.

    VPT's uniform init (bound sqrt(6 / (3 p^2 + D))), P = ``--deep-stats-prompts`` (default 20), drawn
    in one call from a generator seeded with embed's ``--seed``, so the statistics are reproducible.
    Deep VIPAMIN takes block b's queries from them, as the authors' code does.
    """
    import torch

    from .inits.base import vpt_bound

    if config.deep_stats != "reference":
        return None
    bound = vpt_bound(patch, dim)
    gen = torch.Generator().manual_seed(config.seed)
    count = _deep_prompt_count(config)
    return torch.empty(depth, count, dim, dtype=torch.float32).uniform_(-bound, bound, generator=gen)


def embeddings_key(backbone: Backbone, data_fingerprint: str, preprocessing: dict[str, Any],
                   config: EmbedConfig, augment: dict[str, Any] | None = None) -> str:
    """The cache key; augmented views enter it (entries without views keep their keys)."""
    fields = {
        "schema": SCHEMA_VERSION, "artifact": "embeddings",
        "backbone": [backbone.spec.name, backbone.fingerprint, backbone.img_size],
        "data": data_fingerprint, "preprocessing": preprocessing,
        "dtype": config.dtype, "calib_size": config.calib_size, "sample_images": config.sample_images,
        "seed": config.seed, "calib_precision": CALIB_PRECISION,
        **({"deep_stats": config.deep_stats, "deep_stats_prompts": _deep_prompt_count(config)}
           if config.deep_stats != "prompt-free" else {}),  # the default adds nothing here
    }
    if augment is not None:
        fields["augment"] = augment
    return content_key(fields)


def _deep_prompt_count(config: EmbedConfig) -> int:
    """Prompts per block of the ``--deep-stats reference`` pass (0 without it); deep VIPAMIN uses them as
    its queries, so `init --deep` must ask for the same number."""
    from .inits.base import DEFAULT_DEEP_PROMPTS

    if config.deep_stats != "reference":
        return 0
    return config.deep_stats_prompts or DEFAULT_DEEP_PROMPTS


class _CalibrationSubset(NamedTuple):
    """The seeded calibration images and their SPT sample, as sorted indices and as per-image masks."""

    index: torch.Tensor
    sample_index: torch.Tensor
    is_calib: torch.Tensor
    is_sample: torch.Tensor


def _calibration_subset(n: int, config: EmbedConfig) -> _CalibrationSubset:
    """Draw the calibration subset, then its sample, from one generator seeded with ``--seed``, so the
    same images are picked whatever the batch size, device or number of processes."""
    import torch

    gen = torch.Generator().manual_seed(config.seed)
    calib_index = torch.randperm(n, generator=gen)[: min(config.calib_size, n)].sort().values
    sample_index = calib_index[torch.randperm(len(calib_index), generator=gen)[: config.sample_images]].sort().values
    is_calib = torch.zeros(n, dtype=torch.bool)
    is_calib[calib_index] = True
    is_sample = torch.zeros(n, dtype=torch.bool)
    is_sample[sample_index] = True
    return _CalibrationSubset(calib_index, sample_index, is_calib, is_sample)


def _loader_workers(config: EmbedConfig, device: torch.device) -> int:
    """DataLoader workers: ``config.workers`` if set, else none on CPU (the forward pass has the cores)
    and up to 8 feeding a GPU."""
    if config.workers is not None:
        return config.workers
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def _rank_range(n: int, batch_size: int, split: bool) -> tuple[int, int]:
    """Images [lo, hi) this process embeds: under torchrun a contiguous block of whole loader batches
    (so each rank's batches are the single-process ones), else all ``n``."""
    from . import distributed

    if not split:
        return 0, n
    first_batch, last_batch = distributed.block(-(-n // batch_size))
    return min(n, first_batch * batch_size), min(n, last_batch * batch_size)


def _token_loader(image_set: ImageSet, preprocessing: dict[str, Any], config: EmbedConfig, device: torch.device,
                  workers: int, rows: tuple[int, int] | None) -> Any:
    """An in-order DataLoader over the images (only rows [lo, hi) when ``rows`` is given), with the
    preprocessing recorded in the artifact."""
    from torch.utils.data import DataLoader

    from .data import TorchImages, make_transform

    transform = make_transform(preprocessing["resize"], preprocessing["img_size"], tuple(preprocessing["mean"]),
                               tuple(preprocessing["std"]), preprocessing["interpolation"])
    dataset = TorchImages(image_set, transform, indices=list(range(*rows)) if rows is not None else None)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                      num_workers=workers, pin_memory=device.type == "cuda")


def _embed_rows(model: torch.nn.Module, loader: Any, recorder: CalibrationRecorder, calib: _CalibrationSubset,
                rows: tuple[int, int], dtype: torch.dtype, device: torch.device, split: bool, bar: Any,
                ) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Block-0 tokens and labels of images [lo, hi). A single process feeds each batch's calibration
    images to ``recorder`` at once; under torchrun they are kept, full precision, as (global index, tokens)
    per batch for rank 0 to run in order."""
    import torch

    lo, hi = rows
    calib_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    tokens = None
    labels = torch.empty(hi - lo, dtype=torch.long)
    for images, batch_labels, index in _batches(loader):
        images = images.to(device, non_blocking=True)
        x = block0_tokens(model, images)
        if tokens is None:
            tokens = torch.empty((hi - lo, *x.shape[1:]), dtype=dtype)
        tokens[index - lo] = x.to("cpu", dtype)
        labels[index - lo] = batch_labels.long()
        mask = calib.is_calib[index]
        if bool(mask.any()):
            if split:
                calib_batches.append((index[mask].clone(), x[mask.to(device)].to("cpu").clone()))
            else:
                recorder.run(x[mask.to(device)], calib.is_sample[index][mask].to(device))
        bar.advance(len(index))
    return tokens, labels, calib_batches


def _gather_on_main(tokens: torch.Tensor | None, labels: torch.Tensor,
                    calib_batches: list[tuple[torch.Tensor, torch.Tensor]], recorder: CalibrationRecorder,
                    calib: _CalibrationSubset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Under torchrun: every rank's tokens and labels concatenated in rank order on rank 0, which also runs
    the calibration batches of all ranks in order, as one process would (None on other ranks)."""
    import torch

    from . import distributed

    distributed.sync()  # every rank embedded its block (else all stop with the failure)
    parts = distributed.gather_to_main((tokens, labels, calib_batches))
    if parts is None:
        return None
    tokens = torch.cat([p[0] for p in parts if p[0] is not None])
    labels = torch.cat([p[1] for p in parts])
    for part in parts:
        for index, x in part[2]:  # the single-process calibration batches, in order
            recorder.run(x.to(device), calib.is_sample[index].to(device))
    return tokens, labels


def compute_embeddings(backbone: Backbone, image_set: ImageSet, config: EmbedConfig, preprocessing: dict[str, Any],
                       show_progress: bool = True, views: int = 0) -> dict[str, torch.Tensor] | None:
    """The forward pass itself: block-0 tokens for all images, statistics for the calibration subset,
    and with ``views`` > 0 the block-0 tokens of that many seeded augmented views per image.

    Under torchrun each rank embeds a contiguous block of whole loader batches; rank 0 gathers the
    tokens in order and runs the calibration pass itself on the gathered full-precision calibration
    tokens, batch by batch as one process would, so the result is bitwise the single-process one.
    Augmented views are embedded by rank 0 alone. Ranks other than 0 get None.
    """
    import torch

    from . import distributed

    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    n = len(image_set)
    calib = _calibration_subset(n, config)
    workers = _loader_workers(config, device)
    split = distributed.launched()
    lo, hi = _rank_range(n, config.batch_size, split)
    loader = _token_loader(image_set, preprocessing, config, device, workers, (lo, hi) if split else None)
    model = backbone.model.to(device)
    recorder = CalibrationRecorder(model, dtype, deep_stats_prompts(config, len(model.blocks), int(model.embed_dim),
                                                                    int(model.patch_embed.patch_size[0])))
    # Everything runs in float32 (CALIB_PRECISION), on CUDA too: the patch embedding is cheap, and the
    # calibration statistics feed the inits; --dtype only sets how the tokens are stored.
    with torch.inference_mode(), full_float32(), progress_bar(f"embed {image_set.split}", hi - lo,
                                                              show_progress) as bar:
        tokens, labels, calib_batches = _embed_rows(model, loader, recorder, calib, (lo, hi), dtype, device, split,
                                                       bar)
        if split:
            gathered = _gather_on_main(tokens, labels, calib_batches, recorder, calib, device)
            if gathered is None:
                backbone.model.to("cpu")
                return None
            tokens, labels = gathered
    out = {"tokens": tokens, "labels": labels, "calib.index": calib.index, "calib.sample_index": calib.sample_index}
    out.update(recorder.tensors())
    if views > 0:
        out.update(_embed_views(model, image_set, config, preprocessing, views, device, workers, show_progress))
    backbone.model.to("cpu")
    return out


def _embed_views(model: torch.nn.Module, image_set: ImageSet, config: EmbedConfig, preprocessing: dict[str, Any],
                 views: int, device: torch.device, workers: int, show_progress: bool) -> dict[str, torch.Tensor]:
    """Block-0 tokens of ``views`` seeded random views per image (the calibration pass never sees them)."""
    import torch
    from torch.utils.data import DataLoader

    from .data.augment import TorchViews, ViewTransform, view_params

    n = len(image_set)
    dtype = getattr(torch, config.dtype)
    params = view_params(n, views, preprocessing["img_size"], config.seed)
    transform = ViewTransform(preprocessing["img_size"], tuple(preprocessing["mean"]), tuple(preprocessing["std"]),
                              preprocessing["interpolation"])
    loader = DataLoader(TorchViews(image_set, transform, params), batch_size=config.batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    out = None
    with torch.inference_mode(), full_float32(), progress_bar(f"embed {image_set.split} views", n * views,
                                                              show_progress) as bar:
        for images, _labels, flat in _batches(loader):
            x = block0_tokens(model, images.to(device, non_blocking=True))
            if out is None:
                out = torch.empty((n * views, *x.shape[1:]), dtype=dtype)
            out[flat] = x.to("cpu", dtype)
            bar.advance(len(flat))
    assert out is not None
    return {"views.tokens": out.view(n, views, *out.shape[1:]), "views.params": params}


def _batches(loader: Any) -> Iterator[Any]:
    """Iterate a DataLoader; an input error raised in a worker process comes out as its one line."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except VipaminError as exc:
            raise unwrap_worker_error(exc) from None
        yield batch


@command_scope()
def embed_dataset(backbone: Backbone, image_set: ImageSet, config: EmbedConfig | None = None,
                  out: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, show_progress: bool = True) -> EmbedResult:
    """Return embeddings for ``image_set``: from the cache when an entry matches, else computed once."""
    from .data import preprocessing_info, resolve_resize
    from .data.augment import augment_info, resolve_augment

    config = config or EmbedConfig()
    check_embed_request(config, out, cache_dir, use_cache)
    resolve_device(config.device)  # refuse --device cuda without a GPU even when the cache would answer
    if image_set.kind != "hf":
        declare_input_set(f"--data {image_set.root}", image_set.root, (s.key for s in image_set.samples))
    resize = resolve_resize(config.resize, image_set)
    spec = backbone.spec
    preprocessing = preprocessing_info(resize, backbone.img_size, spec.mean, spec.std, spec.interpolation)
    data_fingerprint = image_set.fingerprint()
    views = config.resolved_views(resolve_augment(config.augment, image_set))
    augment = augment_info(views, backbone.img_size, spec.interpolation) if views else None
    key = embeddings_key(backbone, data_fingerprint, preprocessing, config, augment)
    cached = embeddings_path(checked_cache_root(cache_dir), key) if use_cache else None

    from . import distributed

    if distributed.launched():
        return _embed_distributed(backbone, image_set, config, preprocessing, data_fingerprint, key, cached, out,
                                  cache_dir, show_progress, views, augment)
    lock = entry_lock(cached, cache_option(cache_dir)) if cached is not None else contextlib.nullcontext()
    with lock:
        hit = _cache_hit(cached, key, out)
        if hit is not None:
            return hit
        tensors = _compute(backbone, image_set, config, preprocessing, show_progress, views)
        dest = _write(backbone, image_set, config, preprocessing, data_fingerprint, key, cached, out, cache_dir,
                      tensors, augment)
    return EmbedResult(path=dest, from_cache=False, meta=read_metadata(dest))


def _compute(backbone: Backbone, image_set: ImageSet, config: EmbedConfig, preprocessing: dict[str, Any],
             show_progress: bool, views: int = 0) -> dict[str, torch.Tensor] | None:
    try:
        return compute_embeddings(backbone, image_set, config, preprocessing, show_progress, views)
    except KeyboardInterrupt:
        raise Interrupted("embed interrupted; nothing was written", "run the same command again") from None


def _write(backbone: Backbone, image_set: ImageSet, config: EmbedConfig, preprocessing: dict[str, Any],
           data_fingerprint: str, key: str, cached: Path | None, out: str | os.PathLike | None,
           cache_dir: str | os.PathLike | None, tensors: dict[str, torch.Tensor],
           augment: dict[str, Any] | None = None) -> Path:
    """Write the artifact (to --out and/or the cache entry) atomically; the destination."""
    from . import distributed

    meta = {
        "backbone": backbone.identity(),
        "preprocessing": preprocessing,
        "data": image_set.describe(data_fingerprint),
        "samples": [s.key for s in image_set.samples],
        "calibration": {"size": int(tensors["calib.index"].numel()),
                        "sample_images": int(tensors["calib.sample_index"].numel()), "seed": config.seed,
                        "deep_stats": config.deep_stats, "precision": CALIB_PRECISION,
                        "deep_stats_prompts": _deep_prompt_count(config)},
        "config": {k: v for k, v in asdict(config).items()
                   if k not in ("device", "workers", "batch_size", "augment", "views")},
        "augment": augment,
        "tokens_dtype": config.dtype,
        "cache_key": key,
    }
    if distributed.launched():
        meta["world_size"] = distributed.world_size()  # provenance only: outside the digest (artifacts.py)
    dest = Path(out) if out is not None else cached
    if dest is None:
        raise InputError("nowhere to write the embeddings", "pass --out FILE or enable the cache")
    save_artifact(dest, tensors, "embeddings", meta, what="--out" if out is not None else cache_option(cache_dir))
    if cached is not None and dest != cached:
        with atomic_path(cached, cache_option(cache_dir)) as tmp:
            shutil.copyfile(dest, tmp)
    return dest


def _embed_distributed(backbone: Backbone, image_set: ImageSet, config: EmbedConfig, preprocessing: dict[str, Any],
                       data_fingerprint: str, key: str, cached: Path | None, out: str | os.PathLike | None,
                       cache_dir: str | os.PathLike | None, show_progress: bool, views: int = 0,
                       augment: dict[str, Any] | None = None) -> EmbedResult:
    """embed under torchrun: rank 0 holds the cache lock, looks the entry up and writes the one artifact;
    every rank embeds its share of the images; the others learn the path (and metadata) from rank 0."""
    from . import distributed

    main = distributed.is_main()
    lock = entry_lock(cached, cache_option(cache_dir)) if cached is not None and main else contextlib.nullcontext()
    with lock:
        hit = _cache_hit(cached, key, out) if main else None
        found = distributed.broadcast_from_main(None if hit is None else (str(hit.path), hit.meta))
        if found is not None:
            return EmbedResult(path=Path(found[0]), from_cache=True, meta=found[1])
        tensors = _compute(backbone, image_set, config, preprocessing, show_progress and main, views)
        written = None
        if main:
            dest = _write(backbone, image_set, config, preprocessing, data_fingerprint, key, cached, out,
                          cache_dir, tensors, augment)
            written = (str(dest), read_metadata(dest))
        written = distributed.broadcast_from_main(written)  # the others wait here for the one artifact
    return EmbedResult(path=Path(written[0]), from_cache=False, meta=written[1])


def check_embed_request(config: EmbedConfig, out: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                        use_cache: bool, weights: str | None = None) -> None:
    """Every check that needs no image and no model, so a bad request is refused before any work."""
    from .validate import output_path

    config.validate()
    if not use_cache and out is None:
        raise InputError("--no-cache needs --out: the embeddings would be written nowhere",
                         "pass --out FILE, or drop --no-cache")
    if out is not None:
        output_path(out, "--out", [("--weights", weights if weights not in (None, "random") else None)])
    if use_cache:
        checked_cache_root(cache_dir)


def _cache_hit(cached: Path | None, key: str, out: str | os.PathLike | None) -> EmbedResult | None:
    """A verified cache entry for ``key`` (copied to ``out`` if given), or None."""
    if cached is None or not os.path.lexists(cached):
        return None
    from .iosafety import check_input

    check_input(cached, "cache entry", "delete it; vipamin makes the entry again on the next run", own=True)
    try:  # a damaged entry is recomputed, never served
        meta = load_artifact(cached, "embeddings", what="cache entry", own=True).meta
    except ArtifactError:
        return None
    if meta.get("cache_key") != key:
        return None
    info(f"cache hit: embeddings {cached}")
    dest = cached
    if out is not None:
        dest = Path(out)
        with atomic_path(dest) as tmp:
            shutil.copyfile(cached, tmp)
    return EmbedResult(path=dest, from_cache=True, meta=meta)


@command_scope()
def embed_data(backbone: str | Backbone, data: str, weights: str | None = None, split: str | None = None,
               shots: int | None = None, config: EmbedConfig | None = None, out: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, use_cache: bool = True, image_column: str = "image",
               label_column: str = "label", show_progress: bool = True) -> EmbedResult:
    """The library form of `vipamin embed`: names in, an embeddings file out (cached).

    ``backbone`` may also be a loaded :class:`Backbone` (e.g. the one a checkpoint records); then
    ``weights`` is ignored.
    """
    from .backbones import Backbone, load_backbone
    from .data import open_dataset

    config = config or EmbedConfig()
    check_embed_request(config, out, cache_dir, use_cache, weights)
    image_set = open_dataset(data, split=split, shots=shots, seed=config.seed, image_column=image_column,
                             label_column=label_column)
    model = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, weights=weights)
    return embed_dataset(model, image_set, config, out=out, cache_dir=cache_dir, use_cache=use_cache,
                         show_progress=show_progress)
