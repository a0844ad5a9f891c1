"""Label sanity for list-file data sets: classes 0..C-1, each with at least one image.

VTAB list files and FGVC json splits give labels as bare integers, and the class count is the
largest label plus one. A typo (label 7 in a 3-class task) would silently add empty classes that the
head still predicts, and a label such as 10**12 would allocate a trillion class names. So the labels
of all split files together must cover 0..max without a gap; this is checked on the set of labels,
before anything of the class count's size is allocated, and the refusal names the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable

from vipamin_cli.errors import InputError

# (label, where): where is "<file> line <n>" or "<file> (<image path>)"
Labelled = tuple[int, str]


def class_count(labelled: Iterable[Labelled], source: str) -> int:
    """The number of classes the labels define (max + 1), refusing labels that leave a class empty."""
    first: dict[int, str] = {}
    for label, where in labelled:
        first.setdefault(label, where)
    if not first:
        return 0
    top = max(first)
    if top + 1 == len(first):
        return top + 1
    gap = next(c for c in range(len(first) + 1) if c not in first)  # at most len(first) probes
    above = min(label for label in first if label > gap)
    empty = top + 1 - len(first)
    raise InputError(
        f"{first[above]}: label {above} leaves class {gap} without any image ({empty:,} of the {top + 1:,} "
        f"classes 0..{top} would have none; the split files of {source} use {len(first):,} distinct labels)",
        f"correct that label, or renumber the classes 0..{len(first) - 1} without gaps (`vipamin data check` "
        "reports the labels)")


def check_trainable(labels: Iterable[int], num_classes: int, what: str) -> None:
    """Refuse to train on data of fewer than two classes: the head could only learn a constant, and
    the top-1 of a one-class task is 100% whatever the prompts are."""
    present = set(labels)
    if num_classes < 2:
        raise InputError(f"{what} has {num_classes} class; classification needs at least two",
                         "use a data set with two or more classes")
    if len(present) < 2:
        raise InputError(f"{what} holds images of {len(present)} class only (of {num_classes}); training on it "
                         "can only learn a constant", "use a training split with images of two or more classes")


def check_trainable_embeddings(artifact: object, what: str) -> None:
    """:func:`check_trainable` for an embeddings artifact, naming its data set, split and file."""
    meta = getattr(artifact, "meta", {}).get("data", {})
    where = f"{what} ({meta.get('root', '?')}, split {meta.get('split', '?')}; {getattr(artifact, 'path', '?')})"
    check_trainable(artifact["labels"].tolist(), len(meta.get("class_names", [])), where)  # type: ignore[index]
