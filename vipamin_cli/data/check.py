"""Validate a benchmark data folder before hours of GPU time: ``vipamin data check``.

Users of the papers' code lose days to a missing task folder, a list file with the wrong number of
lines, a dataset with the wrong label set or one truncated JPEG. This module looks at every task
folder of a suite (VTAB-1k under NOAH's folder names, FGVC under VPT's, or the project's testbed
through its manifest), reads every list file and decodes every listed image, and returns every
problem found, each named by task and kind, instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vipamin_cli.errors import InputError
from vipamin_cli.iosafety import check_input

from .fgvc import FGVC_SPLITS, _parse_fgvc_json
from .images import _reason, open_image
from .vtab import VTAB_LIST_FILES, _parse_vtab_list

# VTAB-1k's 19 tasks under the folder names of NOAH's release, with their number of classes.
VTAB_TASKS: dict[str, tuple[str, int]] = {
    "cifar": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37), "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_dist": ("structured", 6), "dmlab": ("structured", 6),
    "kitti": ("structured", 4), "dsprites_loc": ("structured", 16), "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18), "smallnorb_ele": ("structured", 9),
}
VTAB_COUNTS: dict[str, int | None] = {"train800": 800, "val200": 200, "train800val200": 1000, "test": None}

# FGVC's five datasets (VPT's json splits), with the folder names in use and their number of classes.
FGVC_TASKS: dict[str, tuple[tuple[str, ...], int]] = {
    "cub": (("CUB_200_2011", "CUB", "cub"), 200),
    "nabirds": (("nabirds", "NABirds"), 555),
    "flowers": (("OxfordFlower", "OxfordFlowers", "oxford_flowers", "flowers102"), 102),
    "dogs": (("Stanford-dogs", "StanfordDogs", "stanford_dogs"), 120),
    "cars": (("Stanford-cars", "StanfordCars", "stanford_cars"), 196),
}
SUITES = ("vtab-1k", "fgvc", "testbed")
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: ``kind`` is a fixed name (``missing task``, ``wrong count``, ...)."""

    task: str
    kind: str
    detail: str
    severity: str = ERROR


@dataclass
class TaskSummary:
    """What was found in one task folder (for the summary table)."""

    task: str
    folder: str | None
    counts: dict[str, int] = field(default_factory=dict)
    classes_found: int = 0
    classes_expected: int = 0
    images: int = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None


@dataclass
class CheckReport:
    suite: str
    root: str
    problems: list[Problem] = field(default_factory=list)
    tasks: list[TaskSummary] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _examples(items: list[str], k: int = 3) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _inspect_image(path: Path, decode: bool) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) or the reason the file cannot be read; decoding catches truncated files. A FIFO
    or device is refused by the input gate before it is opened (it would block)."""
    try:
        if not os.path.lexists(path):
            return None, "missing"
        check_input(path, "image", own=True)
        with open_image(path, str(path), decode) as img:
            return img.size, None
    except InputError as exc:
        return None, exc.message.replace(f"image {path} is ", "").replace(f"cannot read image {path}: ", "")
    except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
        return None, _reason(exc)


def _check_images(task: str, root: Path, rels: Iterable[str], summary: TaskSummary, decode: bool,
                  problems: list[Problem]) -> None:
    rels = sorted(set(rels))
    workers = max(1, min(8, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)  # PIL decodes outside the GIL
    try:
        results = list(pool.map(lambda r: _inspect_image(root / r, decode), rels))
    except BaseException:  # Ctrl-C: stop at once, do not wait for the images being read
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    missing = [r for r, (_, why) in zip(rels, results, strict=True) if why == "missing"]
    bad = [f"{r} ({why})" for r, (_, why) in zip(rels, results, strict=True) if why and why != "missing"]
    sizes = [s for s, _ in results if s is not None]
    summary.images = len(rels)
    if sizes:
        summary.min_size = (min(w for w, _ in sizes), min(h for _, h in sizes))
        summary.max_size = (max(w for w, _ in sizes), max(h for _, h in sizes))
    if missing:
        problems.append(Problem(task, "missing image", f"{_plural(len(missing), 'listed image')} not found: "
                                f"{_examples(missing)}"))
    if bad:
        problems.append(Problem(task, "unreadable image", f"{_plural(len(bad), 'image')} cannot be read: "
                                f"{_examples(bad, 2)}"))
    tiny = [s for s in sizes if min(s) < 8]
    if tiny:
        problems.append(Problem(task, "image size", f"{_plural(len(tiny), 'image')} smaller than 8 px "
                                f"(e.g. {tiny[0][0]}x{tiny[0][1]})", WARNING))


def _check_labels(task: str, splits: dict[str, list[int]], num_classes: int, one_k: str | None,
                  summary: TaskSummary, problems: list[Problem]) -> None:
    summary.classes_expected = num_classes
    every = [label for labels in splits.values() for label in labels]
    out = sorted({label for label in every if label >= num_classes})
    if out:
        problems.append(Problem(task, "label out of range", f"labels {_examples([str(x) for x in out], 5)} "
                                f"are >= {num_classes} (labels must be 0..{num_classes - 1})"))
    found = {label for label in every if label < num_classes}
    summary.classes_found = len(found | set(out))
    if len(found) + len(out) != num_classes:
        problems.append(Problem(task, "wrong class count", f"{len(found) + len(out)} distinct labels in the "
                                f"split files, {task} has {num_classes} classes"))
    if one_k is not None and one_k in splits and found:
        absent = sorted(found - set(splits[one_k]))
        if absent:
            problems.append(Problem(task, "class absent", f"{_plural(len(absent), 'class')} never in {one_k}: "
                                    f"{_examples([str(x) for x in absent], 5)}", WARNING))


def check_vtab_task(task: str, folder: Path, num_classes: int, counts: dict[str, int | None],
                    decode: bool = True) -> tuple[list[Problem], TaskSummary]:
    """Check one VTAB-1k-layout task folder: list files, their counts, labels and every image."""
    problems: list[Problem] = []
    summary = TaskSummary(task, str(folder))
    splits: dict[str, list[int]] = {}
    rels: list[str] = []
    entries: dict[str, list[tuple[str, int]]] = {}
    for split, fname in VTAB_LIST_FILES.items():
        path = folder / fname
        if not os.path.lexists(path):  # a FIFO or folder in its place is reported by the parser's gate
            problems.append(Problem(task, "missing list file", f"{fname} not found in {folder}"))
            continue
        try:
            parsed = _parse_vtab_list(path)
        except InputError as exc:
            problems.append(Problem(task, "bad list file", exc.message))
            continue
        entries[split] = [(rel, label) for rel, label, _ in parsed]
        splits[split] = [label for _, label, _ in parsed]
        rels += [rel for rel, _, _ in parsed]
        summary.counts[split] = len(parsed)
        want = counts.get(split)
        if want is not None and len(parsed) != want:
            problems.append(Problem(task, "wrong count", f"{fname} has {_plural(len(parsed), 'line')}, "
                                    f"expected {want}"))
        elif want is None and not parsed:
            problems.append(Problem(task, "wrong count", f"{fname} is empty"))
    if {"train800", "val200", "train800val200"} <= set(entries) and \
            sorted(entries["train800"] + entries["val200"]) != sorted(entries["train800val200"]):
        problems.append(Problem(task, "split mismatch", "train800val200.txt is not train800.txt + val200.txt",
                                WARNING))
    if splits:
        _check_labels(task, splits, num_classes, "train800val200", summary, problems)
    _check_images(task, folder, rels, summary, decode, problems)
    return problems, summary


def check_fgvc_task(task: str, folder: Path, num_classes: int, decode: bool = True
                    ) -> tuple[list[Problem], TaskSummary]:
    """Check one FGVC folder (VPT's ``{train,val,test}.json`` mapping relative path -> label)."""
    problems: list[Problem] = []
    summary = TaskSummary(task, str(folder))
    splits: dict[str, list[int]] = {}
    rels: list[str] = []
    for split in FGVC_SPLITS:
        path = folder / f"{split}.json"
        if not os.path.lexists(path):
            problems.append(Problem(task, "missing list file", f"{split}.json not found in {folder}"))
            continue
        try:
            parsed = _parse_fgvc_json(path)
        except InputError as exc:
            problems.append(Problem(task, "bad list file", exc.message))
            continue
        if not parsed:
            problems.append(Problem(task, "wrong count", f"{split}.json lists no images"))
        splits[split] = [label for _, label in parsed]
        summary.counts[split] = len(parsed)
        for rel, _ in parsed:  # the FGVC reader also looks under images/
            rels.append(rel if (folder / rel).exists() or not (folder / "images" / rel).exists()
                        else f"images/{rel}")
    if splits:
        _check_labels(task, splits, num_classes, "train", summary, problems)
    _check_images(task, folder, rels, summary, decode, problems)
    return problems, summary


def _check_testbed(root: Path, decode: bool, progress: Callable[[str], None] | None) -> CheckReport:
    from vipamin_cli.parsing import json_int
    from vipamin_cli.testbed.make import read_manifest

    report = CheckReport("testbed", str(root))
    manifest = read_manifest(root)
    files = manifest.get("files", {})
    for entry in manifest["tasks"]:
        name = entry["name"]
        if progress:
            progress(name)
        folder = root / name
        if not folder.is_dir():
            report.problems.append(Problem(name, "missing task", f"folder {folder} not found"))
            report.tasks.append(TaskSummary(name, None, classes_expected=entry["num_classes"]))
            continue
        classes = json_int(entry["num_classes"], f"num_classes of task {name} in {root / 'manifest.json'}",
                           "re-make the testbed with `vipamin data make-testbed`")
        problems, summary = check_vtab_task(name, folder, classes, dict(entry["counts"]),
                                            decode)
        changed = [rel for rel, digest in files.items() if rel.startswith(name + "/")
                   and (root / rel).is_file() and hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest]
        if changed:
            problems.append(Problem(name, "digest mismatch", f"{_plural(len(changed), 'file')} differ from the "
                                    f"manifest: {_examples(changed)}"))
        report.problems += problems
        report.tasks.append(summary)
    return report


def _find_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    lower = {n.lower() for n in names}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in lower:
            return child
    return None


def check_data(root: str | os.PathLike, suite: str, decode: bool = True, tasks: Iterable[str] | None = None,
               progress: Callable[[str], None] | None = None) -> CheckReport:
    """Check every task of ``suite`` under ``root``; never raises for data problems, only reports them.

    ``decode`` fully decodes each image (catches truncated files; slower); otherwise only headers
    are read. ``tasks`` restricts the check to some task names.
    """
    if suite not in SUITES:
        raise InputError(f"unknown suite '{suite}'", f"use one of: {', '.join(SUITES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"data root not found or not a folder: {root}", "pass the folder holding the task folders")
    if suite == "testbed":
        return _check_testbed(root, decode, progress)
    table = VTAB_TASKS if suite == "vtab-1k" else FGVC_TASKS
    wanted = list(table) if tasks is None else list(tasks)
    unknown = [t for t in wanted if t not in table]
    if unknown:
        raise InputError(f"unknown {suite} task(s): {', '.join(unknown)}", f"choose from {', '.join(table)}")
    report = CheckReport(suite, str(root))
    for name in wanted:
        if progress:
            progress(name)
        if suite == "vtab-1k":
            num_classes = VTAB_TASKS[name][1]
            folder = root / name if (root / name).is_dir() else None
            names = (name,)
        else:
            names, num_classes = FGVC_TASKS[name]
            folder = _find_folder(root, names)
        if folder is None:
            report.problems.append(Problem(name, "missing task", f"no folder {' or '.join(names)} in {root}"))
            report.tasks.append(TaskSummary(name, None, classes_expected=num_classes))
            continue
        if suite == "vtab-1k":
            problems, summary = check_vtab_task(name, folder, num_classes, VTAB_COUNTS, decode)
        else:
            problems, summary = check_fgvc_task(name, folder, num_classes, decode)
        report.problems += problems
        report.tasks.append(summary)
    return report


def render_report(report: CheckReport, console: object | None = None) -> None:
    """Print the problems table (if any) and a per-task summary."""
    from rich.table import Table
    from rich.text import Text

    from vipamin_cli.ui import out_console

    con = console or out_console()
    summary = Table(title=f"{report.suite} data under {report.root}")
    for col in ("task", "lists (lines)", "classes", "images", "sizes (w x h)", "status"):
        summary.add_column(col)
    bad_tasks = {p.task for p in report.errors}
    warn_tasks = {p.task for p in report.warnings}
    for t in report.tasks:
        lists = ", ".join(f"{k} {v}" for k, v in t.counts.items()) or "-"
        sizes = "-" if t.min_size is None else (
            f"{t.min_size[0]}x{t.min_size[1]}" if t.min_size == t.max_size
            else f"{t.min_size[0]}x{t.min_size[1]} .. {t.max_size[0]}x{t.max_size[1]}")
        status = (Text("error", style="red") if t.task in bad_tasks else Text("warning", style="yellow")
                  if t.task in warn_tasks else Text("ok", style="green"))
        classes = f"{t.classes_found}/{t.classes_expected}" if t.folder else f"-/{t.classes_expected}"
        summary.add_row(t.task, lists, classes, str(t.images), sizes, status)
    con.print(summary)
    if report.problems:
        table = Table(title="what is wrong")
        for col in ("task", "problem", "severity", "detail"):
            table.add_column(col, overflow="fold")
        for p in report.problems:
            sev = Text("error", style="red") if p.severity == ERROR else Text("warning", style="yellow")
            table.add_row(p.task, p.kind, sev, p.detail)
        con.print(table)
    n_err, n_warn = len(report.errors), len(report.warnings)
    con.print(f"{_plural(n_err, 'error')}, {_plural(n_warn, 'warning')}" +
              ("" if n_err else " - the data looks ready"))
