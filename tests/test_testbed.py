"""The offline testbed: MNIST idx reading, make-testbed determinism and layout, the built-in MAE backbone."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vipamin_cli.errors import InputError
from vipamin_cli.testbed.mnist import PACKAGE_DATA, load_mnist, parse_idx

SMALL = dict(train_size=16, val_size=8, test_size=12)  # every class gets an image


def test_parse_idx_reads_an_independently_written_file() -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = gzip.compress(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 2, 3, 4) + data.tobytes())
    assert np.array_equal(parse_idx(raw, "x"), data)
    with pytest.raises(InputError, match="truncated"):
        parse_idx(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 5) + b"abc"), "x")


def test_mnist_test_split_and_digest_check(tmp_path: Path) -> None:
    images, labels = load_mnist("t10k")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist()[:3] == [980, 1135, 1032]  # MNIST's published test class sizes
    for f in PACKAGE_DATA.glob("t10k-*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"t10k-labels-idx1-ubyte.gz .*sha256"):
        load_mnist("t10k", tmp_path)
    with pytest.raises(InputError, match="not shipped"):
        load_mnist("train")


def test_make_testbed_is_deterministic_and_vtab_readable(tmp_path: Path) -> None:
    from vipamin_cli.data import open_dataset
    from vipamin_cli.testbed.make import make_testbed

    tasks = ["mnist", "digits8x8", "count", "orientation"]
    m1 = make_testbed(tmp_path / "a", seed=0, tasks=tasks, **SMALL)
    m2 = make_testbed(tmp_path / "b", seed=0, tasks=tasks, **SMALL)
    assert m1.read_bytes() == m2.read_bytes()
    manifest = json.loads(m1.read_text())
    assert [t["name"] for t in manifest["tasks"]] == tasks
    assert {t["group"] for t in manifest["tasks"]} == {"natural", "structured"}
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files and len(files) == 4 * (4 + 16 + 8 + 12)
    m3 = make_testbed(tmp_path / "c", seed=1, tasks=["mnist"], **SMALL)
    assert json.loads(m3.read_text())["files"]["mnist/test.txt"] != manifest["files"]["mnist/test.txt"]

    root = tmp_path / "a" / "mnist"
    lines = (root / "train800.txt").read_text().splitlines()
    assert len(lines) == 16 and all(re.fullmatch(r"images/train/\d{5}\.png \d", line) for line in lines)
    assert (root / "train800val200.txt").read_text() == (root / "train800.txt").read_text() + \
        (root / "val200.txt").read_text()
    train = open_dataset(str(root), split="train800")
    test = open_dataset(str(root), split="test")
    assert len(train) == 16 and len(test) == 12 and train.load_image(0).size == (32, 32)
    count = open_dataset(str(tmp_path / "a" / "count"), split="val200")
    assert count.load_image(0).size == (64, 64) and max(s.label for s in count.samples) < 6
    # no digit of a task's test split appears among its train/val images
    fit = {np.asarray(open_dataset(str(root), split="train800val200").load_image(i)).tobytes() for i in range(18)}
    assert not fit & {np.asarray(test.load_image(i)).tobytes() for i in range(12)}


def test_count_task_labels_match_the_digits_drawn(tmp_path: Path) -> None:
    from scipy import ndimage

    from vipamin_cli.data import open_dataset
    from vipamin_cli.testbed.make import make_testbed

    make_testbed(tmp_path / "tb", tasks=["count"], train_size=20, val_size=2, test_size=2)
    ds = open_dataset(str(tmp_path / "tb" / "count"), split="train800")
    agree = 0
    for i, s in enumerate(ds.samples):
        blobs = ndimage.label(np.asarray(ds.load_image(i).convert("L")) > 60)[1]
        agree += blobs == s.label + 1
    assert agree >= 14  # touching digits merge and broken strokes split; most counts must match


def test_make_testbed_refuses_bad_input(tmp_path: Path) -> None:
    from vipamin_cli.testbed.make import make_testbed

    with pytest.raises(InputError, match="unknown testbed task"):
        make_testbed(tmp_path / "x", tasks=["cifar"])
    with pytest.raises(InputError, match="test size"):
        make_testbed(tmp_path / "x", test_size=5000)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and holds no manifest.json"):
        make_testbed(tmp_path / "full", tasks=["mnist"], **SMALL)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _mnist_probe_data(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    from vipamin_cli.data import make_transform

    images, labels = load_mnist("t10k")
    spec = backbone.spec
    tf = make_transform("vtab", backbone.img_size, spec.mean, spec.std, spec.interpolation)
    x = torch.stack([tf(Image.fromarray(np.pad(im, 2)).convert("RGB")) for im in images[:500]])
    return x, torch.from_numpy(labels[:500])


def test_mae_backbone_loads_offline_and_beats_random_weights() -> None:
    from vipamin_cli.backbones import load_backbone
    from vipamin_cli.testbed.probe import pooled_features, ridge_probe

    torch.set_num_threads(1)
    mae = load_backbone("mae-vit-tiny-mnist")
    assert mae.weights_source == "builtin:mae-vit-tiny-mnist.safetensors"
    assert (mae.grid, len(mae.model.blocks), mae.spec.pool) == ((8, 8), 6, "mean-all")
    rand = load_backbone("mae-vit-tiny-mnist", weights="random")
    assert rand.fingerprint != mae.fingerprint
    acc = {}
    for name, bb in (("mae", mae), ("random", rand)):
        x, y = _mnist_probe_data(bb)
        f = pooled_features(bb, x)
        acc[name] = ridge_probe(f[:300], y[:300], f[300:400], y[300:400], f[400:], y[400:], 10)["test_top1"]
    assert acc["mae"] >= acc["random"] + 10, acc


def test_corrupt_builtin_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vipamin_cli import backbones

    (tmp_path / "mae-vit-tiny-mnist.safetensors").write_bytes(b"not weights")
    monkeypatch.setattr(backbones, "BUILTIN_WEIGHTS_DIR", tmp_path)
    with pytest.raises(InputError, match=r"built-in backbone 'mae-vit-tiny-mnist'.*sha256"):
        backbones.load_backbone("mae-vit-tiny-mnist")


def test_save_encoder_writes_the_same_bytes_every_time(tmp_path: Path) -> None:
    """safetensors orders metadata differently from run to run; save_encoder fixes the order, so the
    shipped weights re-saved through it keep their recorded sha256 and every save is byte-identical."""
    import hashlib

    from safetensors import safe_open

    from vipamin_cli.backbones import MAE_MNIST_SHA256
    from vipamin_cli.testbed import mae

    shipped = Path(mae.__file__).parent / "weights" / "mae-vit-tiny-mnist.safetensors"
    with safe_open(str(shipped), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    model = mae.MaskedAutoencoder()
    model.encoder.load_state_dict({k: v.float() for k, v in state.items()})
    digests = {mae.save_encoder(model, tmp_path / f"w{i}.safetensors", meta) for i in range(5)}
    assert digests == {MAE_MNIST_SHA256}
    assert hashlib.sha256((tmp_path / "w0.safetensors").read_bytes()).hexdigest() == MAE_MNIST_SHA256
    raw = (tmp_path / "w0.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(header["__metadata__"]) == list(mae.META_ORDER)
    extra = {**meta, "zeta": "1", "alpha": "2"}  # keys outside META_ORDER follow it, sorted
    mae.save_encoder(model, tmp_path / "x.safetensors", extra)
    raw = (tmp_path / "x.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(header["__metadata__"]) == [*mae.META_ORDER, "alpha", "zeta"]
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == extra and torch.equal(f.get_tensor("cls_token"), state["cls_token"])
