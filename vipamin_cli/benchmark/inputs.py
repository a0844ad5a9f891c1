"""What a benchmark cell read: every split's data fingerprint and the --weights file's digest.

A finished cell is reused only while its signature is unchanged. The options alone are not enough:
edit a task's test labels, or replace the --weights file, and the same options would reprint the
old numbers. So a cell's signature also holds ``inputs``: the fingerprint of every split it reads
(the same digest `embed` keys its cache on: listed paths, labels and file bytes, few-shot draw
included) and a digest of the weights file. When only the inputs changed, the cell is recomputed
and a line says which input changed; when the options changed, the run is refused as before.
Computing the fingerprints reads every image of the selected tasks once per run (as embedding does).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .suites import Task

INPUTS_KEY = "inputs"


def task_splits(task: Task) -> list[str]:
    return list(dict.fromkeys((task.sweep_train, task.sweep_val, task.final_train, task.test)))


def task_inputs(task: Task, weights_file: str | None, seed: int = 0,
                memo: dict[tuple[Any, ...], str] | None = None) -> dict[str, Any]:
    """The fingerprint of each split ``task`` reads and ``weights_file`` (the weights file's
    :func:`file_digest`, computed once per run); a split with fewer
    than two classes (a cell on it could only report a meaningless top-1) is refused here, before any
    cell runs. ``memo`` keeps fingerprints across tasks that share a folder (FGVC few-shot: one
    dataset, four K), so each split is read once per run."""
    from ..data import open_dataset
    from ..data.labels import check_trainable

    memo = {} if memo is None else memo
    splits = {}
    for split in task_splits(task):
        shots = task.shots if split in (task.sweep_train, task.final_train) else None
        key = (str(task.path), split, shots, seed)
        if key not in memo:
            image_set = open_dataset(str(task.path), split=split, shots=shots, seed=seed)
            if split in (task.sweep_train, task.final_train):
                check_trainable([s.label for s in image_set.samples], len(image_set.class_names),
                                f"task {task.name}: split {split} of {task.path}")
            memo[key] = image_set.fingerprint()
        splits[split] = memo[key]
    return {"splits": splits, "weights_file": weights_file}


def file_digest(path: str | None) -> str | None:
    """BLAKE2b of a local weights file ('random', hub weights and None have no file)."""
    if path is None or str(path) == "random" or not Path(path).is_file():
        return None
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def without_inputs(signature: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in signature.items() if k != INPUTS_KEY}


def what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why a finished cell with the same options must be recomputed, in words."""
    before = old.get(INPUTS_KEY)
    if not isinstance(before, dict):
        return "its record predates data fingerprints (written by an older vipamin), so its data cannot be checked"
    now = new[INPUTS_KEY]
    old_splits = before.get("splits") if isinstance(before.get("splits"), dict) else {}
    changed = [s for s, fp in now["splits"].items() if old_splits.get(s) != fp]
    parts = [f"the data of split{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed"] if changed else []
    if before.get("weights_file") != now["weights_file"]:
        parts.append("the --weights file changed")
    return " and ".join(parts) or "its recorded inputs differ"
