"""A Ctrl-C at every statement of the write paths: no temporary is left, and every destination is whole.

CI once caught a ``.vp-*.tmp`` left in the demo's image folder by a Ctrl-C that landed between the
creation of a temporary file and the ``try`` that removes it. A timer cannot hit such a window on
purpose, so these tests do: a trace function delivers a real SIGINT (``signal.raise_signal``) at the
n-th executed line of the write path's functions, for every n until a run ends without reaching it.
Each run must end cleanly (exit 130 or, if it got past its last write, 0), leave no temporary file or
folder, and leave each destination as it was or as the uninterrupted run makes it, never in between.
The write paths walked: one artifact (``init --out`` over an existing file), a folder of images
(the demo's digits export), a folder swap (``data make-testbed`` over an older testbed) and a task
unpacked over an older one (``data get --overwrite``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType

import pytest
from test_data_get import vtab_entries, write_zip

# The functions a write goes through (file name -> function names): the statements interrupted. Not
# command_scope: its first and last statements are single calls (push and pop of the scope), which a real
# signal cannot split but a line trace would interrupt before they run.
WRITE_PATH = {
    "iosafety.py": {"temp_file", "temp_dir", "_new_temp", "_temp_name", "<lambda>", "listed_temp", "settle",
                    "swap_folder", "remove_pending", "shielded", "remove_listed", "writing"},
    "artifacts.py": {"atomic_path", "save_artifact"},
    "staging.py": {"staging", "commit", "_write_record", "_cannot_create"},
    "make.py": {"make_testbed", "_swap_in", "_remove_listed"},
}
_TRACED: dict[CodeType, bool] = {}
TEMP_MARKS = (".vp-", ".vipamin-get.")


class SigintAt:
    """A trace function that sends this process a real SIGINT at the n-th distinct statement executed in
    WRITE_PATH. A statement is told apart by its line and its callers' lines, so a loop (one write per
    image, one removal per file) is walked once, and a function called from two places twice."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.where = n, 0, None
        self.seen: set[tuple] = set()

    def __call__(self, frame: FrameType, event: str, arg: object) -> Callable | None:
        code = frame.f_code
        traced = _TRACED.get(code)
        if traced is None:  # (a cache: this runs on every call the command makes, torch's included)
            traced = _TRACED[code] = code.co_name in WRITE_PATH.get(os.path.basename(code.co_filename), ())
        return self.line if traced else None

    def line(self, frame: FrameType, event: str, arg: object) -> Callable | None:
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno, *_callers(frame.f_back, 3))
            if key not in self.seen:
                self.seen.add(key)
                self.count += 1
                if self.count == self.n:
                    self.where = f"{frame.f_code.co_name}:{frame.f_lineno}"
                    signal.raise_signal(signal.SIGINT)
        return self.line


def _callers(frame: FrameType | None, depth: int) -> list[tuple[str, int]]:
    out = []
    while frame is not None and len(out) < depth:
        out.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return out


def _interrupted(run: Callable[[], int | None], n: int) -> tuple[int | str | None, SigintAt]:
    """``run()`` with a SIGINT at the n-th write-path line; its result, or "interrupted" if the
    KeyboardInterrupt came out of it (a library call)."""
    tracer = SigintAt(n)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.settrace(tracer)
    try:
        result = run()
        sum(range(10))  # a SIGINT raised on the last line is delivered by here at the latest
    except KeyboardInterrupt:
        result = "interrupted"
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGINT, previous)
    return result, tracer


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _task_tree(folder: Path) -> dict[str, object]:
    """A task folder of `data get`, its record without the time it was finished."""
    tree: dict[str, object] = dict(_tree(folder))
    record = json.loads(tree.pop(".vipamin-get.json"))
    del record["finished"]
    return {**tree, "record": record}


def _temporaries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.name.startswith(TEMP_MARKS) and p.name != ".vipamin-get.lock" and p.name != ".vipamin-get.json"]


def _walk(run: Callable[[], int | None], check: Callable[[object, str], None], limit: int = 300) -> int:
    """Interrupt ``run`` at statement 1, 2, ... of the write path until a run ends before its n-th;
    ``check(result, where)`` after each. Returns how many runs were interrupted."""
    for n in range(1, limit):
        result, tracer = _interrupted(run, n)
        if tracer.count < n:  # ran to its end: n is past the last write-path statement
            check(result, "nowhere (ran to the end)")
            return n - 1
        check(result, tracer.where)
    raise AssertionError(f"more than {limit} write-path statements: the walk would take too long")


def test_ctrl_c_at_every_line_of_an_artifact_write(tmp_path: Path, digits_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`init --out` over an existing artifact: the file is the old one or the new one, and nothing else is
    left in the folder, whichever statement the Ctrl-C lands on."""
    from vipamin_cli.cli import main

    emb = tmp_path / "e.safetensors"
    assert main(["embed", "-b", "vit-tiny-test", "-d", str(digits_dir), "--split", "train", "--calib-size", "4",
                 "--device", "cpu", "--no-cache", "--out", str(emb)]) == 0
    base = ["init", "-e", str(emb), "-p", "4", "--device", "cpu"]
    out = tmp_path / "out" / "p.safetensors"
    assert main([*base, "--seed", "1", "--out", str(out)]) == 0
    old = out.read_bytes()
    assert main([*base, "--seed", "2", "--out", str(tmp_path / "new.safetensors")]) == 0
    new = (tmp_path / "new.safetensors").read_bytes()
    assert new != old
    capsys.readouterr()

    def check(code: object, where: str) -> None:
        err = capsys.readouterr().err
        assert code in (0, 130), (where, code, err)
        assert "Traceback" not in err, (where, err)
        assert _temporaries(out.parent) == [], where
        assert out.read_bytes() in ((new,) if code == 0 else (old, new)), where
        out.write_bytes(old)  # the next run replaces the old file again

    lines = _walk(lambda: main([*base, "--seed", "2", "--out", str(out)]), check)
    assert lines >= 20  # atomic_path, temp_file and save_artifact were walked


def test_ctrl_c_at_every_line_of_a_folder_export(tmp_path: Path) -> None:
    """The demo's digits export (one atomic write per image): an interrupted export leaves only whole
    images and no temporary; the export finished afterwards equals one never interrupted."""
    from vipamin_cli.demo import export_digits

    reference = _tree(export_digits(tmp_path / "ref", per_class=1))
    dest = tmp_path / "digits"

    def check(result: object, where: str) -> None:
        assert result in (dest, "interrupted"), where
        assert _temporaries(tmp_path) == [], where
        tree = _tree(dest) if dest.exists() else {}
        assert all(reference[name] == data for name, data in tree.items()), where
        assert export_digits(dest, per_class=1) == dest
        assert _tree(dest) == reference, where
        (dest / ".complete").unlink()  # the next run writes every image again

    assert _walk(lambda: export_digits(dest, per_class=1), check) >= 60


def test_ctrl_c_at_every_line_of_a_testbed_swap(tmp_path: Path) -> None:
    """`data make-testbed` over an older testbed: DEST always holds one whole testbed, the old or the
    new, and no temporary folder is left beside it."""
    from vipamin_cli.testbed.make import make_testbed

    sizes = {"tasks": ["mnist"], "train_size": 16, "val_size": 8, "test_size": 12}  # every class present
    dest = tmp_path / "tb"
    make_testbed(tmp_path / "new", seed=1, **sizes)
    new = _tree(tmp_path / "new")
    make_testbed(dest, seed=0, **sizes)
    old = _tree(dest)
    assert old != new

    def check(result: object, where: str) -> None:
        assert result in (dest / "manifest.json", "interrupted"), where
        assert _temporaries(tmp_path) == [], (where, _temporaries(tmp_path))
        tree = _tree(dest)
        assert tree in ((new,) if result != "interrupted" else (old, new)), where
        if tree == new:
            make_testbed(dest, seed=0, **sizes)  # back to the old one for the next run

    assert _walk(lambda: make_testbed(dest, seed=1, **sizes), check) >= 30


def test_ctrl_c_at_every_line_of_a_task_unpack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`data get --overwrite` over a task it unpacked before: the task folder is the old one or the new
    one, whole, and no staging or moved-aside folder is left in the root."""
    from vipamin_cli.cli import main

    def get(archive: Path, root: Path) -> int:
        return main(["data", "get", "vtab-1k", "--root", str(root), "--tasks", "kitti", "--from", str(archive),
                     "--overwrite"])

    old_zip = write_zip(tmp_path / "old.zip", vtab_entries("kitti", 4), "vtab-1k/")
    new_zip = write_zip(tmp_path / "new.zip", vtab_entries("kitti", 4, test=13), "vtab-1k/")
    root = tmp_path / "root"
    assert get(new_zip, tmp_path / "ref") == 0
    folder = next(p.name for p in (tmp_path / "ref").iterdir() if p.is_dir())
    new = _task_tree(tmp_path / "ref" / folder)
    assert get(old_zip, root) == 0
    old = _task_tree(root / folder)
    assert old != new
    capsys.readouterr()

    def check(code: object, where: str) -> None:
        err = capsys.readouterr().err
        assert code in (0, 130), (where, code, err)
        assert "Traceback" not in err, (where, err)
        assert _temporaries(root) == [], (where, _temporaries(root))
        tree = _task_tree(root / folder)
        assert tree in ((new,) if code == 0 else (old, new)), where
        if tree == new:
            assert get(old_zip, root) == 0
            capsys.readouterr()

    assert _walk(lambda: get(new_zip, root), check) >= 30
