"""`vipamin data check`: each kind of defect is reported by task and name; exit 2 when anything is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vipamin_cli.data.check import check_data


def _vtab_task(folder: Path, num_classes: int, n_train: int = 800, n_val: int = 200,
              classes: int | None = None) -> None:
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "img.png")
    k = classes or num_classes
    train = [f"img.png {i % k}" for i in range(n_train)]
    val = [f"img.png {i % k}" for i in range(n_val)]
    (folder / "train800.txt").write_text("\n".join(train) + "\n")
    (folder / "val200.txt").write_text("\n".join(val) + "\n")
    (folder / "train800val200.txt").write_text("\n".join(train + val) + "\n")
    (folder / "test.txt").write_text("\n".join(f"img.png {i % k}" for i in range(20)) + "\n")


def _kinds(report) -> set[tuple[str, str]]:
    return {(p.task, p.kind) for p in report.errors}


def test_vtab_defects_are_named(tmp_path: Path, cli) -> None:
    _vtab_task(tmp_path / "svhn", 10)
    _vtab_task(tmp_path / "eurosat", 10, n_val=199)
    _vtab_task(tmp_path / "dtd", 47, classes=10)
    _vtab_task(tmp_path / "kitti", 4)
    (tmp_path / "kitti" / "bad.png").write_bytes(b"\x89PNG broken")
    with open(tmp_path / "kitti" / "test.txt", "a") as fh:
        fh.write("bad.png 1\nimg.png 7\n")
    tasks = ["svhn", "eurosat", "dtd", "kitti", "cifar"]
    report = check_data(tmp_path, "vtab-1k", tasks=tasks)
    assert _kinds(report) == {("eurosat", "wrong count"), ("dtd", "wrong class count"), ("kitti", "unreadable image"),
                              ("kitti", "label out of range"), ("kitti", "wrong class count"),
                              ("cifar", "missing task")}
    assert next(p for p in report.errors if p.task == "eurosat").detail == "val200.txt has 199 lines, expected 200"
    code, out, _ = cli("data", "check", "--suite", "vtab-1k", str(tmp_path), "--tasks", ",".join(tasks), "--json")
    assert code == 2 and not json.loads(out)["ok"]
    code, _, _ = cli("data", "check", "--suite", "vtab-1k", str(tmp_path), "--tasks", "svhn")
    assert code == 0


def test_fgvc_and_testbed_suites(tmp_path: Path) -> None:
    cub = tmp_path / "fgvc" / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cub / "images" / "a.png")
    for split in ("train", "val", "test"):
        (cub / f"{split}.json").write_text(json.dumps({"a.png": 3}))
    report = check_data(tmp_path / "fgvc", "fgvc", tasks=["cub", "dogs"])
    assert _kinds(report) == {("cub", "wrong class count"), ("dogs", "missing task")}

    from vipamin_cli.testbed.make import make_testbed

    make_testbed(tmp_path / "tb", tasks=["location"], train_size=40, val_size=8, test_size=40)
    assert check_data(tmp_path / "tb", "testbed").ok
    Image.fromarray(np.ones((64, 64), np.uint8)).save(tmp_path / "tb" / "location" / "images" / "test" / "00003.png")
    assert _kinds(check_data(tmp_path / "tb", "testbed")) == {("location", "digest mismatch")}
