"""`vipamin predict`: classify new images with a tuned checkpoint, streamed batch by batch.

Inputs are image files, folders (searched recursively), list files (one image path per line,
relative to the list's folder; ``-`` reads the list from stdin, relative to the working
directory) and ``hf:``/``hf-disk:`` datasets. Each image becomes one row: its path as the user
gave it, the top-k class names with probabilities, or the reason it could not be read. Rows come
out in input order while later batches are still being decoded, so memory is bounded by the batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from .errors import InputError
from .iosafety import command_scope
from .ui import progress_bar

FORMATS = ("auto", "text", "csv", "jsonl")
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
PARTIAL_EXIT = 3  # some images could not be read: their rows carry the error, the rest were predicted
_DATA_FIX = "pass an image file, a folder of images, a list file of image paths, hf:<owner>/<name> or hf-disk:<dir>"


@dataclass(frozen=True)
class Item:
    """One image to predict: ``path`` as shown in the output, ``source`` what to open (a file path, or
    the index of an hf dataset in the list of opened datasets and its row)."""

    path: str
    source: str | tuple[int, int]


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


@dataclass
class PredictSummary:
    images: int
    failed: int
    out: Path | None
    format: str


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _is_image_name(path: str) -> bool:
    from .data import IMAGE_EXTENSIONS

    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, links followed once, hidden entries skipped), sorted, each
    spelled as ``folder`` joined with its relative path."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_walk_error):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already read
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _is_image_name(f)]
    return sorted(found)


def _walk_error(exc: OSError) -> None:
    raise InputError(f"cannot list folder {exc.filename}: {exc.strerror}", "check the path and its permissions")


def _list_entries(text: str, base: str | None) -> list[Item]:
    """One image path per line (blank lines and # comments skipped; a VTAB-style trailing label is ignored)."""
    items = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = os.path.join(base, entry) if base else entry
        parts = entry.rsplit(None, 1)
        if not os.path.exists(target) and len(parts) == 2 and parts[1].lstrip("-").isdigit():
            entry = parts[0]
            target = os.path.join(base, entry) if base else entry
        items.append(Item(entry, target))
    return items


def _read_list(data: str, stdin: IO[str] | None) -> list[Item]:
    from .iosafety import check_input

    if data == "-":
        return _list_entries((stdin or sys.stdin).read(), None)
    check_input(data, "list file", _DATA_FIX)  # the one gate: a FIFO is refused before it could block
    try:
        text = Path(data).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"--data {data} is neither an image nor a text list of image paths", _DATA_FIX) from None
    except OSError as exc:
        raise InputError(f"cannot read list file {data}: {exc.strerror}",
                         "check the path and its permissions") from None
    items = _list_entries(text, os.path.dirname(data))
    if not items:
        raise InputError(f"list file {data} names no image", "put one image path per line")
    return items


def _open_hf(data: str, split: str | None) -> tuple[Any, str, str]:
    """(dataset, resolved split, image column) of an ``hf:`` / ``hf-disk:`` source; labels are not needed."""
    from .data.images import _reason
    from .data.splits import _resolve_split

    try:
        import datasets

        if data.startswith("hf-disk:"):
            loaded = datasets.load_from_disk(str(Path(data[len("hf-disk:"):]).expanduser()))
        else:
            loaded = datasets.load_dataset(data[len("hf:"):], split=split or "test")
    except Exception as exc:  # offline, unknown name or split, not a saved dataset: all bad input
        raise InputError(f"cannot load dataset {data}: {_reason(exc)}",
                         "check the name, --split and network access, or export the images to a folder") from None
    if isinstance(loaded, datasets.DatasetDict):
        name = _resolve_split(split, "test", list(loaded.keys()), data)
        loaded = loaded[name]
    else:
        name = str(loaded.split or "train")
        if split is not None and split != name:
            raise InputError(f"{data} holds one split ('{name}'), not '{split}'", "drop --split")
    return loaded, name, "image"


def resolve_inputs(data: list[str], split: str | None = None, image_column: str = "image",
                   stdin: IO[str] | None = None) -> tuple[list[Item], list[Any]]:
    """Every ``--data`` value as a list of images (and the hf datasets they refer to), in the given order."""
    items: list[Item] = []
    datasets_: list[Any] = []
    if not data:
        raise InputError("predict needs --data", _DATA_FIX)
    for value in data:
        value = str(value)
        if value.startswith(("hf:", "hf-disk:")):
            ds, name, _ = _open_hf(value, split)
            if image_column not in ds.column_names:
                raise InputError(f"image column '{image_column}' not found in {value}; available columns: "
                                 f"{', '.join(ds.column_names)}", "pass --image-column")
            import datasets

            if isinstance(ds.features.get(image_column), datasets.Image):  # decoded by us: errors name the row
                ds = ds.cast_column(image_column, datasets.Image(decode=False))
            datasets_.append(ds)
            items += [Item(f"{value}:{name}:{row}", (len(datasets_) - 1, row)) for row in range(len(ds))]
        elif value != "-" and os.path.isdir(value):
            found = walk_images(value)
            if not found:
                from .data import IMAGE_EXTENSIONS

                raise InputError(f"folder {value} has no images", "add images "
                                 f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or pass another --data")
            items += [Item(p, p) for p in found]
        elif value != "-" and not os.path.lexists(value):
            raise InputError(f"--data {value} does not exist", _DATA_FIX)
        elif value != "-" and _is_image_name(value):
            items.append(Item(value, value))
        else:
            items += _read_list(value, stdin)
    if split is not None and not any(str(v).startswith(("hf:", "hf-disk:")) for v in data):
        raise InputError("--split applies to hf: and hf-disk: sources only", "drop --split")
    return items, datasets_


class ImageItems:
    """A DataLoader dataset: (tensor or None, index, error text or None), never raising on a bad image."""

    def __init__(self, items: list[Item], datasets_: list[Any], transform: Callable[[Any], torch.Tensor],
                 image_column: str = "image") -> None:
        self.items, self.datasets, self.transform, self.image_column = items, datasets_, transform, image_column

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Any:
        from .data.images import _hf_value_to_rgb, load_rgb

        source = self.items[index].source
        if isinstance(source, tuple):
            ds, row = source
            where = self.items[index].path
            try:
                value = self.datasets[ds][row][self.image_column]
            except Exception as exc:  # any datasets failure is this image's problem
                raise InputError(f"cannot read image {where}: {exc}", "remove or replace the image") from None
            return _hf_value_to_rgb(value, where)
        return load_rgb(source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return self.transform(self.load(index)), index, None
        except InputError as exc:
            return None, index, str(exc)
        except Exception as exc:  # a decoder or transform failure on one image must not stop the others
            return None, index, f"cannot read image {self.items[index].path}: {type(exc).__name__}: {exc}"


def collate(batch: list[tuple[torch.Tensor | None, int, str | None]]) -> tuple[torch.Tensor | None, list[int],
                                                                              dict[int, str]]:
    """Stack the readable images; keep every index in order and the errors by index."""
    good = [b[0] for b in batch if b[0] is not None]
    images = torch.stack(good) if good else None
    return images, [b[1] for b in batch], {b[1]: b[2] for b in batch if b[0] is None}


# ----------------------------------------------------------------------------------------------------------
# Prediction


def stream_predictions(model: torch.nn.Module, dataset: ImageItems, top_k: int, batch_size: int = 64,
                       workers: int = 0, device: torch.device | None = None,
                       precision: str = "auto") -> Iterator[Prediction]:
    """Predictions in input order, one batch at a time (bf16 autocast on CUDA with precision auto)."""
    from torch.utils.data import DataLoader

    from .train import precision_context

    device = device or torch.device("cpu")
    names = model.class_names
    k = min(top_k, len(names))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    model.eval()
    with torch.inference_mode():
        for images, indices, errors in loader:
            probs = None
            if images is not None:
                with precision_context(precision, device):
                    logits = model(images.to(device, non_blocking=True))
                probs = logits.float().softmax(-1).cpu()
                values, picks = probs.topk(k, dim=1)
            row = 0
            for index in indices:
                path = dataset.items[index].path
                if index in errors:
                    yield Prediction(path, error=errors[index])
                    continue
                yield Prediction(path, [(names[int(c)], float(p)) for p, c in zip(values[row], picks[row],
                                                                                  strict=True)])
                row += 1


# ----------------------------------------------------------------------------------------------------------
# Output


def output_format(out: str | os.PathLike | None, fmt: str = "auto") -> str:
    """The row format: ``fmt``, or by --out's suffix (.csv, .jsonl), or text on stdout."""
    if fmt not in FORMATS:
        raise InputError(f"unknown --format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if out is None:
        return "text"
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise InputError(f"--out {out} must end in .csv or .jsonl (the format follows the suffix)",
                         "pass e.g. --out preds.csv, or --format csv")
    return SUFFIX_FORMATS[suffix]


def _prob(p: float) -> float:
    return round(p, 6)


def format_rows(fmt: str, top_k: int) -> tuple[str | None, Callable[[Prediction], str]]:
    """(header line or None, a function that renders one prediction as one line)."""
    import csv

    if fmt == "jsonl":
        def jsonl(p: Prediction) -> str:
            row: dict[str, Any] = {"path": p.path, "top": [{"class": c, "prob": _prob(v)} for c, v in p.top]}
            if p.error is not None:
                row["error"] = p.error
            return json.dumps(row, ensure_ascii=False)
        return None, jsonl

    def csv_line(cells: list[Any], delimiter: str = ",") -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(cells)
        return buf.getvalue()

    def cells(p: Prediction) -> list[Any]:
        flat: list[Any] = []
        for c, v in p.top:
            flat += [c, f"{_prob(v):.6f}"]
        flat += [""] * (2 * top_k - len(flat))
        return [p.path, *flat, p.error or ""]

    if fmt == "csv":
        header = ["path"] + [f"{x}_{i}" for i in range(1, top_k + 1) for x in ("class", "prob")] + ["error"]
        return csv_line(header), lambda p: csv_line(cells(p))
    # text: tab-separated path, then class and probability pairs (or "error" and the reason)
    return None, lambda p: "\t".join([p.path, "error", p.error] if p.error is not None
                                     else [p.path] + [f"{c}\t{v:.4f}" for c, v in p.top])


@contextlib.contextmanager
def _sink(out: str | os.PathLike | None) -> Iterator[IO[str]]:
    """stdout as it is now (the guarded stream of the CLI: a closed pipe ends the command quietly), or a
    temporary file renamed onto ``out`` only when every row is written."""
    from .artifacts import atomic_path

    if out is None:
        yield sys.stdout
        return
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh


def check_predict_request(checkpoint: str | os.PathLike, data: list[str], out: str | os.PathLike | None,
                          fmt: str, top_k: int, batch_size: int, workers: int | None) -> str:
    """Every check that needs neither the model nor an image; returns the output format."""
    from . import validate as v

    v.integer(top_k, "--top-k", minimum=1, example=5)
    v.integer(batch_size, "--batch-size", minimum=1, example=64)
    v.integer(workers, "--workers", minimum=0, maximum=max(64, 4 * (os.cpu_count() or 1)), example=4, optional=True)
    resolved = output_format(out, fmt)
    if out is not None:
        v.output_path(out, "--out", [("--checkpoint", checkpoint)] + [("--data", d) for d in data
                                                                       if not str(d).startswith(("hf:", "hf-"))])
    return resolved


def declare_images(items: list[Item]) -> None:
    """The image files are the command's inputs (iosafety compares every output with them by identity;
    each is opened through the gate, which refuses a FIFO, when its batch is decoded)."""
    from .iosafety import declare_input_set

    declare_input_set("--data", "", [item.source for item in items if isinstance(item.source, str)])


@command_scope()
def predict(checkpoint: str | os.PathLike, data: list[str] | str, out: str | os.PathLike | None = None,
            top_k: int = 5, fmt: str = "auto", run: int | None = None, device: str = "auto",
            batch_size: int = 64, workers: int | None = None, split: str | None = None,
            image_column: str = "image", backbone: str | None = None, weights: str | None = None,
            precision: str = "auto", show_progress: bool = True,
            on_error: Callable[[str], None] | None = None) -> PredictSummary:
    """The library form of `vipamin predict`: every image's top-k classes, to ``out`` (atomically) or stdout.

    ``on_error`` gets one line per unreadable image (default: printed on stderr); their rows carry
    the error and the other images are still predicted.
    """
    from .classifier import load_classifier
    from .embed import resolve_device

    data = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    fmt = check_predict_request(checkpoint, data, out, fmt, top_k, batch_size, workers)
    dev = resolve_device(device)
    items, datasets_ = resolve_inputs(data, split=split, image_column=image_column)
    declare_images(items)  # before the model is built: --out onto an image is refused at once
    model = load_classifier(checkpoint, device=dev, run=run, backbone=backbone, weights=weights)
    if workers is None:
        workers = 0 if dev.type == "cpu" else min(8, os.cpu_count() or 1)
    report = on_error or (lambda line: sys.stderr.write(f"error: {line}\n"))
    header, render = format_rows(fmt, min(top_k, len(model.class_names)))
    failed = 0
    dataset = ImageItems(items, datasets_, model.transform, image_column)
    with _sink(out) as fh, progress_bar("predict", len(items), show_progress) as bar:
        if header is not None:
            fh.write(header + "\n")
        for n, pred in enumerate(stream_predictions(model, dataset, top_k, batch_size, workers, dev, precision), 1):
            if pred.error is not None:
                failed += 1
                report(pred.error)
            fh.write(render(pred) + "\n")
            if n % batch_size == 0 or n == len(items):
                fh.flush()
                bar.advance(batch_size if n % batch_size == 0 else n % batch_size)
    return PredictSummary(images=len(items), failed=failed, out=Path(out) if out is not None else None, format=fmt)
