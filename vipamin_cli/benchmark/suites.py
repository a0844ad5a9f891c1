"""Benchmark suites: which task folders make a suite, their groups, and which splits each step reads.

A task is one dataset folder plus the split names of the protocol: the sweep trains on
``sweep_train`` and selects on ``sweep_val``; the final runs train on ``final_train`` and are
tested on ``test``. Counts are not checked here (that is `vipamin data check`), so tiny folders
in the same layout work for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

# VTAB-1k under the folder names of NOAH's release, in the papers' column order.
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "Natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"),
}
# FGVC under VPT's folder names (images + train.json / val.json / test.json).
FGVC_DATASETS: dict[str, str] = {
    "cub": "CUB_200_2011", "nabirds": "nabirds", "flowers": "OxfordFlower", "dogs": "Stanford-dogs",
    "cars": "Stanford-cars",
}
FEWSHOT_K = (1, 2, 4, 8)
VTAB_SPLITS = {"sweep_train": "train800", "sweep_val": "val200", "final_train": "train800val200", "test": "test"}


@dataclass(frozen=True)
class Task:
    """One column of the table: a dataset folder and the splits each protocol step reads."""

    name: str
    group: str
    path: Path
    sweep_train: str = "train800"
    sweep_val: str = "val200"
    final_train: str = "train800val200"
    test: str = "test"
    shots: int | None = None  # few-shot: K images per class drawn from the training splits

    def describe(self) -> dict:
        return {"name": self.name, "group": self.group, "path": str(self.path), "shots": self.shots,
                "splits": {"sweep_train": self.sweep_train, "sweep_val": self.sweep_val,
                           "final_train": self.final_train, "test": self.test}}


@dataclass(frozen=True)
class Suite:
    name: str
    root: Path
    groups: tuple[str, ...]  # column order of the group means
    tasks: tuple[Task, ...]


SUITES = ("testbed", "vtab-1k", "fgvc-fewshot")


def _vtab(root: Path) -> list[Task]:
    return [Task(name, group, root / name) for group, names in VTAB_GROUPS.items() for name in names]


def _fgvc_fewshot(root: Path) -> list[Task]:
    # Few-shot FGVC: K shots per class for the sweep and the final runs, selected on the full val split.
    return [Task(f"{short}-k{k}", f"{k}-shot", root / folder, sweep_train="train", sweep_val="val",
                 final_train="train", test="test", shots=k)
            for k in FEWSHOT_K for short, folder in FGVC_DATASETS.items()]


def _is_vtab_folder(path: Path) -> bool:
    return path.is_dir() and (path / "train800.txt").is_file()


def _testbed(root: Path) -> list[Task]:
    """Tasks from the manifest written by `vipamin data make-testbed`, else every VTAB-layout folder."""
    from ..iosafety import read_json

    manifest = root / "manifest.json"
    if os.path.lexists(manifest):
        fix = "re-make it with `vipamin data make-testbed`, or remove it to use every VTAB-layout folder"
        obj = read_json(manifest, "testbed manifest", fix)
        if isinstance(obj, dict) and obj.get("suite") == "vipamin-testbed":
            from ..testbed.make import manifest_problem

            problem = manifest_problem(obj)
            if problem is not None:
                raise InputError(f"{manifest} is not a valid vipamin testbed manifest: {problem}", fix)
        entries = obj.get("tasks", obj) if isinstance(obj, dict) else obj
        if isinstance(entries, dict):
            entries = [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in entries.items()]
        if not isinstance(entries, list):
            raise InputError(f"{manifest} lists no tasks (its 'tasks' is a {type(entries).__name__})", fix)
        tasks = []
        for e in entries:
            folder = e.get("folder", e.get("path", e.get("name"))) if isinstance(e, dict) else None
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(folder, str):
                raise InputError(f"{manifest} has a task entry without a name: {str(e)[:60]}", fix)
            tasks.append(Task(e["name"], str(e.get("group", "Testbed")).capitalize(), root / folder))
        if tasks:
            return tasks
    found = sorted(p.name for p in root.iterdir() if _is_vtab_folder(p)) if root.is_dir() else []
    return [Task(name, "Testbed", root / name) for name in found]


def resolve_suite(name: str, root: str | Path, tasks: list[str] | None = None) -> Suite:
    """The suite's tasks under ``root`` (optionally the subset ``tasks``); missing folders are refused."""
    root = Path(os.path.abspath(Path(root).expanduser()))  # one benchmark, however --root is spelled
    if name not in SUITES:
        raise InputError(f"unknown --suite '{name}'", f"use one of {', '.join(SUITES)}")
    if not root.is_dir():
        raise InputError(f"--root {root} is not a directory", "pass the folder that holds the suite's task folders")
    every = {"testbed": _testbed, "vtab-1k": _vtab, "fgvc-fewshot": _fgvc_fewshot}[name](root)
    if not every:
        raise InputError(f"no tasks found under {root} for suite {name}",
                         "make one with `vipamin data make-testbed DIR`, or pass the right --root")
    chosen = every
    if tasks:
        known = {t.name: t for t in every}
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise InputError(f"unknown task(s) {', '.join(unknown)} in suite {name}",
                             f"pick --tasks from {', '.join(known)}")
        chosen = [t for t in every if t.name in tasks]
    missing = [t for t in chosen if not t.path.is_dir()]
    if missing:
        names = ", ".join(f"{t.name} ({t.path})" for t in missing[:5])
        raise InputError(f"{len(missing)} task folder(s) missing: {names}",
                         "check the data with `vipamin data check`, or pick present ones with --tasks")
    groups = tuple(dict.fromkeys(t.group for t in every))
    return Suite(name, root, groups, tuple(chosen))
