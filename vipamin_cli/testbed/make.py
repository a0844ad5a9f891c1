"""Make the offline mini-VTAB testbed: real digits, VTAB-1k list-file layout, a manifest of digests.

Tasks follow VTAB's three groups. Natural: MNIST-test digits and scikit-learn's 8 x 8 digits
(upscaled). Specialized: MNIST-test digits seen through a noisy, low-contrast "sensor" (a stand-in
for VTAB's medical / remote-sensing shift). Structured: real MNIST-test digits composed on a 64 x 64
canvas, after VTAB's CLEVR / dSprites / sNORB tasks: count, x location, orientation, scale and
distance. No MNIST *training* image is used (those pretrain the backbone). MNIST's 10,000 test
images are split once, by the seed, into two halves: every task draws its train800 / val200 images
from the first and its test images from the second, so no digit is seen in both. Each task folder
holds ``images/{train,test}/NNNNN.png`` and ``train800.txt``, ``val200.txt``, ``train800val200.txt``,
``test.txt`` (``relative/path label`` lines, as :mod:`vipamin_cli.data.vtab` reads them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vipamin_cli.errors import InputError
from vipamin_cli.iosafety import command_scope

MANIFEST = "manifest.json"
SUITE = "vipamin-testbed"
VERSION = 1
CANVAS = 64


@dataclass(frozen=True)
class TaskDef:
    name: str
    group: str  # natural | specialized | structured
    num_classes: int
    description: str


TASKS: tuple[TaskDef, ...] = (
    TaskDef("mnist", "natural", 10, "MNIST-test digit, 28 px padded to 32 px"),
    TaskDef("digits8x8", "natural", 10, "scikit-learn's 8 x 8 digits (UCI), upscaled to 24 px and padded to 32 px"),
    TaskDef("mnist-noise", "specialized", 10, "MNIST-test digit at low contrast under strong Gaussian sensor noise"),
    TaskDef("count", "structured", 6, "how many digits (1-6) are on the canvas (after clevr_count)"),
    TaskDef("location", "structured", 8, "x position of one digit, 8 bins (after dsprites_loc)"),
    TaskDef("orientation", "structured", 8, "rotation of one digit (2-7), 8 bins of 45 degrees (after dsprites_ori)"),
    TaskDef("scale", "structured", 6, "size of one centred digit, 6 bins from 12 to 60 px (after smallnorb_ele)"),
    TaskDef("distance", "structured", 6, "distance between two digits' centres, 6 bins (after clevr_dist)"),
)
TASK_NAMES = tuple(t.name for t in TASKS)
GROUPS = ("natural", "specialized", "structured")


class _Pools:
    """The seeded split of the source images: ``fit`` (train/val) and ``test`` halves."""

    def __init__(self, seed: int) -> None:
        from vipamin_cli.testbed.mnist import load_mnist

        images, labels = load_mnist("t10k")
        perm = np.random.default_rng([seed, 10_000]).permutation(len(images))
        half = len(perm) // 2
        self.mnist = {"fit": (images[perm[:half]], labels[perm[:half]]),
                      "test": (images[perm[half:]], labels[perm[half:]])}
        self._digits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.seed = seed

    def digits8x8(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._digits is None:
            try:
                from sklearn.datasets import load_digits
            except ImportError:
                raise InputError("the digits8x8 task needs scikit-learn", "pip install scikit-learn, or drop the "
                                 "task with --tasks") from None
            d = load_digits()
            imgs = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
            perm = np.random.default_rng([self.seed, 1797]).permutation(len(imgs))
            cut = 1000
            self._digits = {"fit": (imgs[perm[:cut]], d.target[perm[:cut]].astype(np.int64)),
                            "test": (imgs[perm[cut:]], d.target[perm[cut:]].astype(np.int64))}
        return self._digits


def _resize(digit: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR))


def _paste(canvas: np.ndarray, digit: np.ndarray, cy: float, cx: float) -> None:
    """Max-composite ``digit`` centred at (cy, cx), clipped at the canvas border."""
    h, w = digit.shape
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(canvas.shape[0], y0 + h), min(canvas.shape[1], x0 + w)
    if ye > ys and xe > xs:
        region = canvas[ys:ye, xs:xe]
        np.maximum(region, digit[ys - y0:ye - y0, xs - x0:xe - x0], out=region)


def _pad32(img: np.ndarray) -> np.ndarray:
    out = np.zeros((32, 32), np.uint8)
    o = (32 - img.shape[0]) // 2
    out[o:o + img.shape[0], o:o + img.shape[1]] = img
    return out


Maker = Callable[[np.random.Generator, tuple[np.ndarray, np.ndarray], int], tuple[np.ndarray, int]]


def _natural(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    images, labels = pool
    return _pad32(images[i]), int(labels[i])


def _digits8x8(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    images, labels = pool
    return _pad32(_resize(images[i], 24)), int(labels[i])


def _noise(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    images, labels = pool
    img = _pad32(images[i]).astype(np.float64) / 255.0
    contrast = rng.uniform(0.4, 0.8)
    noisy = 0.2 + contrast * img + rng.normal(0.0, 0.15, img.shape)
    return np.clip(noisy * 255.0, 0, 255).round().astype(np.uint8), int(labels[i])


def _pick(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], allowed: Sequence[int] | None = None
          ) -> np.ndarray:
    images, labels = pool
    if allowed is None:
        return images[int(rng.integers(len(images)))]
    idx = np.flatnonzero(np.isin(labels, allowed))
    return images[int(idx[rng.integers(len(idx))])]


def _count(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    label = int(rng.integers(6))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    centres: list[tuple[float, float]] = []
    size = 18
    while len(centres) < label + 1:  # rejection sampling; 6 digits of 18 px always fit on 64 px
        cy, cx = rng.uniform(size / 2, CANVAS - size / 2, 2)
        if all(math.hypot(cy - y, cx - x) >= size * 0.9 for y, x in centres):
            centres.append((cy, cx))
    for cy, cx in centres:
        _paste(canvas, _resize(_pick(rng, pool), size), cy, cx)
    return canvas, label


def _location(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    size = 24
    label = int(rng.integers(8))
    lo, hi = size / 2, CANVAS - size / 2
    width = (hi - lo) / 8
    cx = lo + width * (label + rng.uniform(0.1, 0.9))
    cy = rng.uniform(lo, hi)
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    _paste(canvas, _resize(_pick(rng, pool), size), cy, cx)
    return canvas, label


def _orientation(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    label = int(rng.integers(8))
    angle = 45.0 * (label + rng.uniform(0.1, 0.9))
    digit = Image.fromarray(_resize(_pick(rng, pool, allowed=(2, 3, 4, 5, 6, 7)), 40))
    rotated = np.asarray(digit.rotate(angle, resample=Image.Resampling.BILINEAR))  # counter-clockwise
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    _paste(canvas, rotated, CANVAS / 2 + rng.uniform(-4, 4), CANVAS / 2 + rng.uniform(-4, 4))
    return canvas, label


def _scale(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    label = int(rng.integers(6))
    size = int(round(12 + 8 * (label + rng.uniform(0.1, 0.9))))  # bins of 8 px from 12 to 60
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    room = (CANVAS - size) / 2
    _paste(canvas, _resize(_pick(rng, pool), size), CANVAS / 2 + rng.uniform(-room, room) * 0.5,
           CANVAS / 2 + rng.uniform(-room, room) * 0.5)
    return canvas, label


def _distance(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], i: int) -> tuple[np.ndarray, int]:
    size = 16
    label = int(rng.integers(6))
    lo, hi = 16.0, 46.0  # centre distances; 6 bins of 5 px
    dist = lo + (hi - lo) / 6 * (label + rng.uniform(0.1, 0.9))
    margin = size / 2
    while True:
        theta = rng.uniform(0, 2 * math.pi)
        dy, dx = dist * math.sin(theta), dist * math.cos(theta)
        y1 = rng.uniform(margin + max(0.0, -dy), CANVAS - margin - max(0.0, dy))
        x1 = rng.uniform(margin + max(0.0, -dx), CANVAS - margin - max(0.0, dx))
        if margin <= y1 + dy <= CANVAS - margin and margin <= x1 + dx <= CANVAS - margin:
            break
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    _paste(canvas, _resize(_pick(rng, pool), size), y1, x1)
    _paste(canvas, _resize(_pick(rng, pool), size), y1 + dy, x1 + dx)
    return canvas, label


_MAKERS: dict[str, Maker] = {"mnist": _natural, "digits8x8": _digits8x8, "mnist-noise": _noise, "count": _count,
                             "location": _location, "orientation": _orientation, "scale": _scale,
                             "distance": _distance}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_task(root: Path, task: TaskDef, pools: _Pools, seed: int, sizes: dict[str, int]) -> dict:
    source = pools.digits8x8() if task.name == "digits8x8" else pools.mnist
    maker = _MAKERS[task.name]
    lines: dict[str, list[str]] = {}
    counts: dict[str, list[int]] = {}
    for part, n in (("train", sizes["train800"] + sizes["val200"]), ("test", sizes["test"])):
        pool = source["fit" if part == "train" else "test"]
        rng = np.random.default_rng([seed, TASK_NAMES.index(task.name), 0 if part == "train" else 1])
        one_per_image = task.name in ("mnist", "digits8x8", "mnist-noise")
        if one_per_image and part == "test":
            n = min(n, len(pool[0]))  # digits8x8 has 797 test images: its test split is all of them
        if one_per_image and n > len(pool[0]):
            raise InputError(f"task {task.name}: {n} {part} images asked but only {len(pool[0])} source images",
                             f"pass a smaller size (at most {len(pool[0])})")
        order = rng.permutation(len(pool[0]))[:n] if one_per_image else np.zeros(n, np.int64)
        folder = root / task.name / "images" / part
        folder.mkdir(parents=True)
        rows = []
        for k in range(n):
            img, label = maker(rng, pool, int(order[k]))
            rel = f"images/{part}/{k:05d}.png"
            Image.fromarray(img).save(root / task.name / rel, optimize=False)
            rows.append(f"{rel} {label}")
        lines[part] = rows
    split_rows = {"train800": lines["train"][:sizes["train800"]], "val200": lines["train"][sizes["train800"]:],
                  "train800val200": lines["train"], "test": lines["test"]}
    for split, rows in split_rows.items():
        (root / task.name / f"{split}.txt").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        counts[split] = [int(r.rsplit(" ", 1)[1]) for r in rows]
    _check_every_class(task, counts, sizes)
    return {"name": task.name, "group": task.group, "num_classes": task.num_classes,
            "description": task.description,
            "counts": {s: len(v) for s, v in counts.items()},
            "class_counts": {s: np.bincount(v, minlength=task.num_classes).tolist() for s, v in counts.items()}}


def _check_every_class(task: TaskDef, counts: dict[str, list[int]], sizes: dict[str, int]) -> None:
    """Tiny sizes can leave a class without any image, which every reader refuses (data.labels): say so now."""
    present = set(counts["train800val200"]) | set(counts["test"])
    empty = [c for c in range(task.num_classes) if c not in present]
    if empty:
        raise InputError(f"task {task.name}: {sizes['train800']} train + {sizes['val200']} val + {sizes['test']} test "
                         f"images leave class {', '.join(map(str, empty))} of {task.num_classes} without any image",
                         "pass larger sizes")


@command_scope()
def make_testbed(dest: str | os.PathLike, seed: int = 0, tasks: Sequence[str] | None = None,
                 train_size: int = 800, val_size: int = 200, test_size: int = 1000,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Write the testbed under ``dest`` and return the manifest's path.

    Built in a temporary sibling folder and renamed into place, so an interrupted run leaves no
    half-made suite. ``dest`` must be absent, empty, or a testbed made before whose every file is
    listed, unchanged, in its manifest and whose tasks are all made again: vipamin replaces only
    what it can prove it made, and refuses otherwise, naming the file.
    """
    from vipamin_cli import iosafety
    from vipamin_cli.validate import seed as check_seed

    names = list(TASK_NAMES if tasks is None else tasks)
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown or not names:
        raise InputError(f"unknown testbed task(s): {', '.join(unknown) or '(none given)'}",
                         f"choose from {', '.join(TASK_NAMES)}")
    check_seed(seed, "--seed")
    for label, value, top in (("train size", train_size, None), ("val size", val_size, None),
                              ("test size", test_size, 2000)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (top and value > top):
            raise InputError(f"{label} must be an integer from 1 to {top or 'the pool size'}, got {value!r}",
                             "pass a positive size" + (f" of at most {top}" if top else ""))
    dest = iosafety.declare_output_dir(Path(dest).expanduser(), "DEST", replace=True)
    previous = _previous_testbed(dest, names)
    sizes = {"train800": train_size, "val200": val_size, "test": test_size}
    with iosafety.writing(iosafety.Output(dest, "DEST")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = iosafety.temp_dir(dest.parent)
        try:
            manifest = _build(tmp, names, seed, sizes, progress)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            _swap_in(tmp, dest, previous)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a folder this call created, with only its own files
            iosafety.settle(tmp)
            raise
    return dest / MANIFEST


def _build(tmp: Path, names: list[str], seed: int, sizes: dict[str, int],
           progress: Callable[[str], None] | None) -> dict:
    pools = _Pools(seed)
    entries = []
    for name in names:
        if progress:
            progress(name)
        entries.append(_write_task(tmp, next(t for t in TASKS if t.name == name), pools, seed, sizes))
    files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    return {"suite": SUITE, "version": VERSION, "seed": seed, "sizes": sizes,
            "sources": {"mnist_t10k": "vipamin_cli/testbed/data (sha256 in vipamin_cli.testbed.mnist)",
                        "digits8x8": "sklearn.datasets.load_digits"},
            "tasks": entries, "files": files}


_NOT_OURS = "move it away, or choose a new DEST folder"


def _listing(root: Path) -> tuple[list[str], list[str]]:
    from vipamin_cli.iosafety import listing

    return listing(root)


def _previous_testbed(dest: Path, names: list[str]) -> dict | None:
    """The manifest of the testbed in ``dest`` when every entry there is one vipamin made (listed in
    the manifest with its digest, unchanged), None when ``dest`` is absent or empty; else refuse."""
    if not dest.exists() or not any(dest.iterdir()):
        return None
    if not os.path.lexists(dest / MANIFEST):
        raise InputError(f"{dest} is not empty and holds no {MANIFEST}: it is not a testbed vipamin made, so "
                         "vipamin will not replace it", _NOT_OURS)
    from vipamin_cli.iosafety import read_json

    manifest = read_json(dest / MANIFEST, "testbed manifest", _NOT_OURS, own=True)
    problem = manifest_problem(manifest)
    if problem is not None:
        raise InputError(f"{dest / MANIFEST} is not a vipamin testbed manifest ({problem}), so {dest} is not a "
                         "testbed vipamin made; vipamin will not replace it", _NOT_OURS)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise InputError(f"{dest / MANIFEST} lists no files, so vipamin cannot tell which files there it made",
                         _NOT_OURS)
    files, _ = _listing(dest)
    for rel in sorted(files):
        path = dest / rel
        if rel == MANIFEST:
            continue
        if rel not in listed or os.path.islink(path) or not path.is_file():
            raise InputError(f"{path} is not part of the testbed made before (not in its {MANIFEST}); vipamin "
                             "replaces only what it made", _NOT_OURS)
        if _sha256(path) != listed[rel]:
            raise InputError(f"{path} was changed after the testbed was made (its digest differs from "
                             f"{MANIFEST}); vipamin will not delete an edited file", _NOT_OURS)
    dropped = [t["name"] for t in manifest["tasks"] if t["name"] not in names]
    if dropped:
        keep = ",".join(dict.fromkeys([*names, *dropped]))
        raise InputError(f"{dest} holds the testbed task(s) {', '.join(dropped)}, which this call would delete",
                         f"pass --tasks {keep} to make them again too, or choose a new DEST folder")
    return manifest


def _swap_in(tmp: Path, dest: Path, previous: dict | None) -> None:
    """Rename the new testbed into place; the old one (all files vipamin made) is removed file by file.
    The two renames are one step for Ctrl-C, so DEST always holds a whole testbed, old or new."""
    from vipamin_cli import iosafety

    if previous is None:
        iosafety.swap_folder(tmp, dest)  # absent, or an empty folder (which a rename replaces)
        return
    files, _ = _listing(dest)
    stray = [f for f in files if f != MANIFEST and f not in previous["files"]]
    if stray:
        raise InputError(f"{dest / stray[0]} appeared while the testbed was being made; vipamin replaces only "
                         "what it made", _NOT_OURS)
    old = iosafety.temp_dir(dest.parent, ".old", empty=True)  # the old testbed is renamed onto it
    iosafety.swap_folder(tmp, dest, old, functools.partial(_remove_listed, old, [*previous["files"], MANIFEST]))


def _remove_listed(root: Path, files: list[str]) -> None:
    """Delete the listed files, then the folders they leave empty; anything else stays (and says so)."""
    from vipamin_cli.iosafety import remove_listed

    remove_listed(root, files, "the previous testbed")


def read_manifest(root: str | os.PathLike, own: bool = False) -> dict:
    """The manifest of a testbed folder (made by :func:`make_testbed`), checked field by field so a
    damaged or edited one is one line naming the file, never a crash later."""
    from vipamin_cli.iosafety import check_input, read_json

    path = Path(root) / MANIFEST
    fix = "re-make the testbed with `vipamin data make-testbed`"
    check_input(path, "testbed manifest", fix, own=own,
                missing_fix="make the testbed with `vipamin data make-testbed DEST`")
    manifest = read_json(path, "testbed manifest", fix, own=own)
    problem = manifest_problem(manifest)
    if problem is not None:
        raise InputError(f"{path} is not a valid vipamin testbed manifest: {problem}", fix)
    return manifest


def manifest_problem(manifest: object) -> str | None:
    """What is wrong with a parsed manifest (None: nothing): its type, or the first bad field."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    if manifest.get("suite") != SUITE:
        return f"'suite' is {manifest.get('suite')!r}, not {SUITE!r}"
    tasks = manifest.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return "'tasks' is missing or not a non-empty list"
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            return f"task {i} is not an object"
        name = t.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or name.startswith("."):
            return f"task {i} has no valid 'name' (a folder name)"
        num = t.get("num_classes")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            return f"task {name}: 'num_classes' is {num!r}, not a positive integer"
        counts = t.get("counts")
        if not isinstance(counts, dict) or not all(isinstance(k, str) and isinstance(v, int) and not
                                                   isinstance(v, bool) and v >= 0 for k, v in counts.items()):
            return f"task {name}: 'counts' is missing or not a map of split -> number of images"
        if not isinstance(t.get("group", ""), str):
            return f"task {name}: 'group' is not a string"
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return "'files' is not a map of file -> sha256"
    return None
