"""Tests for vipamin_cli.data: dataset sources, few-shot, fingerprints, RGB conversion and transforms."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vipamin_cli.data import (
    IMAGE_EXTENSIONS,
    ImageSet,
    Sample,
    TorchImages,
    load_rgb,
    make_transform,
    open_dataset,
    preprocessing_info,
    resolve_resize,
)
from vipamin_cli.errors import InputError

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def save_img(
    path: Path, color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (12, 10)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for ci, (cls, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            save_img(root / cls / f"img{i:02d}.png", COLORS[ci % len(COLORS)])
    return root


# ------------------------------------------------------------------------------------------------ folder


def test_folder_classes_labels_sorted_recursive_and_non_images_ignored(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save_img(root / "dog" / "b.png")
    save_img(root / "dog" / "a.JPG")
    save_img(root / "dog" / "nested" / "deep" / "c.bmp")
    save_img(root / "cat" / "z.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "labels.csv").write_text("a,b")
    save_img(root / "cat" / ".hidden.png")
    save_img(root / ".cache" / "x.png")  # hidden dir is not a class
    (root / "README.md").write_text("top-level file")

    ds = open_dataset(str(root))
    assert ds.kind == "folder"
    assert ds.split == "all"
    assert ds.root == str(root.resolve())
    assert ds.class_names == ["cat", "dog"]
    assert ds.samples == [
        Sample("cat/z.png", 0),
        Sample("dog/a.JPG", 1),
        Sample("dog/b.png", 1),
        Sample("dog/nested/deep/c.bmp", 1),
    ]
    assert len(ds) == 4
    assert open_dataset(str(root), split="all").samples == ds.samples
    img = ds.load_image(1)
    assert img.mode == "RGB" and img.size == (12, 10)


def test_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="data path not found") as e:
        open_dataset(str(missing))
    assert str(missing) in e.value.message
    assert "hf:<owner>/<name>" in e.value.fix

    with pytest.raises(InputError, match="empty"):
        open_dataset("")

    f = save_img(tmp_path / "single.png")
    with pytest.raises(InputError, match="not a directory"):
        open_dataset(str(f))

    flat = tmp_path / "flat"
    save_img(flat / "a.png")
    with pytest.raises(InputError, match="no class folders"):
        open_dataset(str(flat))

    root = make_folder(tmp_path / "ds", {"a": 2})
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="empty_class"):
        open_dataset(str(root))

    ok = make_folder(tmp_path / "ok", {"a": 1, "b": 1})
    with pytest.raises(InputError, match="unknown split 'train'") as e:
        open_dataset(str(ok), split="train")
    assert "all" in e.value.fix


def test_extensions_constant() -> None:
    assert {".jpg", ".png", ".webp", ".pgm"} <= IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------ folder-splits


def test_folder_splits_share_label_indices(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save_img(root / "train" / "bird" / "1.png")
    save_img(root / "train" / "cat" / "1.png")
    save_img(root / "train" / "cat" / "2.png")
    save_img(root / "val" / "cat" / "1.png")
    save_img(root / "val" / "dog" / "1.png")  # class only in val
    save_img(root / "test" / "bird" / "9.png")

    train = open_dataset(str(root))
    assert train.kind == "folder-splits"
    assert train.split == "train"
    assert train.class_names == ["bird", "cat", "dog"]
    assert train.samples == [
        Sample("train/bird/1.png", 0),
        Sample("train/cat/1.png", 1),
        Sample("train/cat/2.png", 1),
    ]

    val = open_dataset(str(root), split="val")
    assert val.class_names == train.class_names
    assert val.samples == [Sample("val/cat/1.png", 1), Sample("val/dog/1.png", 2)]
    assert open_dataset(str(root), split="test").samples == [Sample("test/bird/9.png", 0)]
    assert val.load_image(0).size == (12, 10)

    with pytest.raises(InputError, match="unknown split 'all'") as e:
        open_dataset(str(root), split="all")
    assert "train, val, test" in e.value.fix


# ---------------------------------------------------------------------------------------------------- VTAB


def make_vtab(root: Path) -> Path:
    save_img(root / "images" / "a.jpg", (255, 0, 0))
    save_img(root / "images" / "b.jpg", (0, 255, 0))
    save_img(root / "images" / "my cat 1.jpg", (0, 0, 255))
    save_img(root / "images" / "d.jpg")
    (root / "train800.txt").write_text("images/a.jpg 0\nimages/my cat 1.jpg 1\n\n")
    (root / "val200.txt").write_text("images/b.jpg 2\n")
    (root / "train800val200.txt").write_text("images/a.jpg 0\nimages/my cat 1.jpg 1\nimages/b.jpg 2\n")
    (root / "test.txt").write_text("images/d.jpg 3\n  images/a.jpg   0  \n")
    return root


def test_vtab_splits_and_aliases(tmp_path: Path) -> None:
    root = make_vtab(tmp_path / "vtab")
    ds = open_dataset(str(root))
    assert ds.kind == "vtab"
    assert ds.split == "train800"
    assert ds.samples == [Sample("images/a.jpg", 0), Sample("images/my cat 1.jpg", 1)]
    # max label over all list files is 3 (in test.txt): classes 0..3, each with an image somewhere
    assert ds.class_names == ["0", "1", "2", "3"]
    assert ds.load_image(1).getpixel((0, 0))[2] > 200  # the blue "my cat" image

    assert open_dataset(str(root), split="train").samples == ds.samples
    val = open_dataset(str(root), split="val")
    assert val.split == "val200"
    assert val.samples == [Sample("images/b.jpg", 2)]
    assert open_dataset(str(root), split="val200").samples == val.samples
    tv = open_dataset(str(root), split="trainval")
    assert tv.split == "train800val200"
    assert len(tv) == 3
    test = open_dataset(str(root), split="test")
    assert test.samples == [Sample("images/d.jpg", 3), Sample("images/a.jpg", 0)]

    with pytest.raises(InputError, match="unknown split 'bogus'") as e:
        open_dataset(str(root), split="bogus")
    assert "train800" in e.value.fix and "test" in e.value.fix


def test_vtab_bad_label_line(tmp_path: Path) -> None:
    root = make_vtab(tmp_path / "vtab")
    (root / "val200.txt").write_text("images/b.jpg 2\nimages/a.jpg cat\n")
    with pytest.raises(InputError) as e:
        open_dataset(str(root), split="val")
    assert "val200.txt" in e.value.message
    assert "line 2" in e.value.message

    (root / "val200.txt").write_text("justonefield\n")
    with pytest.raises(InputError, match="line 1"):
        open_dataset(str(root), split="val")


def test_vtab_missing_image_and_escape(tmp_path: Path) -> None:
    root = make_vtab(tmp_path / "vtab")
    (root / "val200.txt").write_text("images/b.jpg 2\nimages/gone.jpg 1\n")
    with pytest.raises(InputError) as e:
        open_dataset(str(root), split="val")
    assert "gone.jpg" in e.value.message and "val200.txt" in e.value.message

    save_img(tmp_path / "outside.jpg")
    (root / "val200.txt").write_text("../outside.jpg 1\n")
    with pytest.raises(InputError, match="outside the dataset root"):
        open_dataset(str(root), split="val")
    (root / "val200.txt").write_text("images/../../outside.jpg 1\n")
    with pytest.raises(InputError, match="outside the dataset root"):
        open_dataset(str(root), split="val")
    (root / "val200.txt").write_text(f"{tmp_path / 'outside.jpg'} 1\n")
    with pytest.raises(InputError, match="outside the dataset root"):
        open_dataset(str(root), split="val")


def test_vtab_empty_split(tmp_path: Path) -> None:
    root = make_vtab(tmp_path / "vtab")
    (root / "val200.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no images"):
        open_dataset(str(root), split="val")


# ---------------------------------------------------------------------------------------------------- FGVC


def test_fgvc_json_with_images_subfolder(tmp_path: Path) -> None:
    root = tmp_path / "cub"
    save_img(root / "images" / "001.Bird" / "x.jpg", (255, 0, 0))
    save_img(root / "images" / "002.Other" / "y.jpg", (0, 255, 0))
    save_img(root / "direct" / "z.jpg", (0, 0, 255))
    (root / "train.json").write_text(json.dumps({"001.Bird/x.jpg": 0, "direct/z.jpg": 1}))
    (root / "val.json").write_text(json.dumps({"002.Other/y.jpg": 1}))
    (root / "test.json").write_text(json.dumps({"002.Other/y.jpg": 2}))

    ds = open_dataset(str(root))
    assert ds.kind == "fgvc"
    assert ds.split == "train"
    assert ds.samples == [Sample("images/001.Bird/x.jpg", 0), Sample("direct/z.jpg", 1)]
    assert ds.class_names == [str(i) for i in range(3)]
    assert ds.load_image(0).getpixel((3, 3))[0] > 200
    val = open_dataset(str(root), split="val")
    assert val.samples == [Sample("images/002.Other/y.jpg", 1)]
    assert resolve_resize("auto", ds) == "fgvc"
    assert resolve_resize("auto", val) == "fgvc"

    (root / "val.json").write_text(json.dumps({"missing.jpg": 0}))
    with pytest.raises(InputError, match="missing.jpg"):
        open_dataset(str(root), split="val")
    (root / "val.json").write_text(json.dumps({"../../etc/passwd": 0}))
    with pytest.raises(InputError, match="outside the dataset root"):
        open_dataset(str(root), split="val")
    (root / "val.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        open_dataset(str(root), split="val")
    (root / "val.json").write_text("{broken")
    with pytest.raises(InputError, match="val.json"):
        open_dataset(str(root), split="val")


# ------------------------------------------------------------------------------------------ Hugging Face


def _save_hf(path: Path, dict_splits: bool = False) -> Path:
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    imgs = [Image.new("RGB", (6, 5), COLORS[i % 3]) for i in range(6)]
    imgs[1] = Image.new("L", (6, 5), 77)
    labels = [0, 1, 0, 1, 0, 1]
    ds = datasets.Dataset.from_dict({"image": imgs, "label": labels}, features=features)
    if dict_splits:
        ds = datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])})
    ds.save_to_disk(str(path))
    return path


def test_hf_disk_dataset(tmp_path: Path) -> None:
    path = _save_hf(tmp_path / "hf")
    ds = open_dataset(f"hf-disk:{path}")
    assert ds.kind == "hf"
    assert ds.split == "train"
    assert ds.root.startswith("hf-disk:")
    assert ds.class_names == ["cat", "dog"]
    assert ds.samples == [Sample(f"hf:{i}", i % 2) for i in range(6)]
    img = ds.load_image(0)
    assert img.mode == "RGB" and img.size == (6, 5) and img.getpixel((0, 0)) == (255, 0, 0)
    assert ds.load_image(1).getpixel((2, 2)) == (77, 77, 77)
    assert resolve_resize("auto", ds) == "vtab"

    fp = ds.fingerprint()
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert open_dataset(f"hf-disk:{path}").fingerprint() == fp
    few = open_dataset(f"hf-disk:{path}", shots=2, seed=1)
    assert len(few) == 4 and few.fingerprint() != fp
    assert open_dataset(f"hf-disk:{path}", shots=2, seed=2).fingerprint() != few.fingerprint()
    desc = ds.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["num_samples"] == 6 and desc["num_classes"] == 2 and desc["fingerprint"] == fp

    with pytest.raises(InputError, match="unknown split 'test'"):
        open_dataset(f"hf-disk:{path}", split="test")
    with pytest.raises(InputError) as e:
        open_dataset(f"hf-disk:{path}", image_column="img")
    assert "'img'" in e.value.message and "image, label" in e.value.message
    with pytest.raises(InputError, match="'target'"):
        open_dataset(f"hf-disk:{path}", label_column="target")
    with pytest.raises(InputError, match="not found"):
        open_dataset(f"hf-disk:{tmp_path / 'nothing'}")


def test_hf_disk_dataset_dict_and_torch(tmp_path: Path) -> None:
    import torch

    path = _save_hf(tmp_path / "hfdict", dict_splits=True)
    test = open_dataset(f"hf-disk:{path}", split="test")
    assert test.split == "test" and len(test) == 2
    assert open_dataset(f"hf-disk:{path}").split == "train"
    loader = torch.utils.data.DataLoader(
        TorchImages(test, make_transform("vtab", 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))), batch_size=2
    )
    x, y, idx = next(iter(loader))
    assert x.shape == (2, 3, 4, 4)
    assert y.tolist() == [0, 1] and idx.tolist() == [0, 1]
    assert torch.allclose(x[1], torch.full((3, 4, 4), 77 / 255))


def test_hf_hub_offline_is_input_error() -> None:
    with pytest.raises(InputError) as e:
        open_dataset("hf:no-such-owner/no-such-dataset-vipamin")
    assert "hf:no-such-owner/no-such-dataset-vipamin" in e.value.message
    assert "image folder" in e.value.fix


# ---------------------------------------------------------------------------------------------- few-shot


def test_few_shot(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": 6, "b": 5, "c": 7})
    full = open_dataset(str(root))
    few = open_dataset(str(root), shots=3, seed=0)
    assert few.shots == 3 and few.seed == 0
    assert len(few) == 9
    for label in range(3):
        assert sum(s.label == label for s in few.samples) == 3
    assert set(few.samples) <= set(full.samples)
    assert few.samples == sorted(few.samples, key=lambda s: (s.label, s.key))
    assert open_dataset(str(root), shots=3, seed=0).samples == few.samples
    draws = {tuple(open_dataset(str(root), shots=3, seed=s).samples) for s in range(1, 6)}
    assert len(draws | {tuple(few.samples)}) > 1
    assert open_dataset(str(root), shots=5).samples.count(Sample("b/img00.png", 1)) == 1

    with pytest.raises(InputError) as e:
        open_dataset(str(root), shots=6)
    assert "'b'" in e.value.message and "5" in e.value.message
    with pytest.raises(InputError, match="positive"):
        open_dataset(str(root), shots=0)
    with pytest.raises(InputError, match="positive"):
        open_dataset(str(root), shots=-2)


# ------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint(tmp_path: Path) -> None:
    root = make_vtab(tmp_path / "vtab")
    fp = open_dataset(str(root)).fingerprint()
    assert len(fp) == 32
    assert open_dataset(str(root)).fingerprint() == fp
    assert open_dataset(str(root), split="val").fingerprint() != fp
    assert open_dataset(str(root), seed=1).fingerprint() != fp
    # train800 has no image of class '2', so few-shot is refused with a clear message
    with pytest.raises(InputError, match="class '2' has \\(0 images") as e:
        open_dataset(str(root), shots=1)
    assert "every class" in e.value.fix

    # Change one byte of an image, keeping its size.
    img = root / "images" / "a.jpg"
    data = bytearray(img.read_bytes())
    data[-3] ^= 0xFF
    size = img.stat().st_size
    img.write_bytes(bytes(data))
    assert img.stat().st_size == size
    assert open_dataset(str(root)).fingerprint() != fp

    folder = make_folder(tmp_path / "f", {"x": 3, "y": 3})
    ffp = open_dataset(str(folder)).fingerprint()
    shot1 = open_dataset(str(folder), shots=1, seed=0).fingerprint()
    assert shot1 != ffp
    assert open_dataset(str(folder), shots=1, seed=0).fingerprint() == shot1
    assert open_dataset(str(folder), shots=2, seed=0).fingerprint() != shot1
    assert open_dataset(str(folder), seed=3).fingerprint() != ffp
    d = open_dataset(str(folder)).describe()
    assert d["kind"] == "folder" and d["split"] == "all" and d["num_samples"] == 6
    assert d["class_names"] == ["x", "y"] and d["shots"] is None and d["seed"] == 0
    assert json.loads(json.dumps(d)) == d


def test_imageset_is_a_dataclass_with_expected_fields(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": 1})
    ds = open_dataset(str(root))
    assert isinstance(ds, ImageSet)
    assert "_hf_dataset" not in repr(ds)


# ------------------------------------------------------------------------------------------ RGB loading


def test_rgb_conversion_of_modes(tmp_path: Path) -> None:
    p = tmp_path / "l.png"
    Image.new("L", (4, 3), 77).save(p)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (77, 77, 77)

    p = tmp_path / "p.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).convert("P").save(p)
    assert Image.open(p).mode == "P"
    assert load_rgb(p).getpixel((0, 0)) == (255, 0, 0)

    p = tmp_path / "rgba.png"
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent -> white
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.save(p)
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (0, 0, 255)

    p = tmp_path / "la.png"
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (100, 255))
    la.save(p)
    img = load_rgb(p)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (100, 100, 100)

    p = tmp_path / "cmyk.tif"
    Image.new("CMYK", (3, 3), (0, 0, 0, 0)).save(p)
    assert Image.open(p).mode == "CMYK"
    assert load_rgb(p).getpixel((1, 1)) == (255, 255, 255)

    p = tmp_path / "i16.png"
    arr = np.array([[0, 25700, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I;16")
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert [img.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0),
        (100, 100, 100),
        (255, 255, 255),
        (4, 4, 4),
    ]

    # 32-bit float is min-max scaled
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)).save(p)
    img = load_rgb(p)
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_unreadable_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=95)
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        load_rgb(bad)
    assert str(bad) in e.value.message and "cannot read image" in e.value.message
    assert e.value.fix == "remove or replace the file"

    fake = tmp_path / "fake.png"
    fake.write_text("hello, I am text")
    with pytest.raises(InputError) as e:
        load_rgb(fake)
    assert str(fake) in e.value.message

    with pytest.raises(InputError, match="gone.png"):
        load_rgb(tmp_path / "gone.png")

    # The same errors come through ImageSet.load_image.
    root = tmp_path / "ds"
    save_img(root / "a" / "ok.png")
    (root / "a" / "broken.png").write_text("nope")
    ds = open_dataset(str(root))
    with pytest.raises(InputError, match="broken.png"):
        ds.load_image(0)


# ---------------------------------------------------------------------------------------------- transforms


def test_transform_shapes_and_normalisation() -> None:
    import torch

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    img = Image.new("RGB", (30, 17), (10, 20, 30))
    for mode in ("vtab", "fgvc"):
        t = make_transform(mode, 16, mean, std)
        x = t(img)
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert tuple(x.shape) == (3, 16, 16)
        for c, v in enumerate((10, 20, 30)):
            assert torch.allclose(x[c], torch.full((16, 16), (v / 255 - mean[c]) / std[c]), atol=1e-5)
    tall = make_transform("fgvc", 224, mean, std, interpolation="bilinear")(Image.new("RGB", (100, 300)))
    assert tuple(tall.shape) == (3, 224, 224)
    # non-RGB input is converted
    assert tuple(make_transform("vtab", 8, mean, std)(Image.new("L", (5, 9), 3)).shape) == (3, 8, 8)


def test_vtab_squash_vs_fgvc_crop() -> None:
    # 40x20 image, left quarter red, rest blue.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    vtab = make_transform("vtab", 8, zero, one, interpolation="nearest")(img)
    fgvc = make_transform("fgvc", 8, zero, one, interpolation="nearest")(img)
    red_cols_vtab = int((vtab[0] > 0.5).all(dim=0).sum())
    red_cols_fgvc = int((fgvc[0] > 0.5).any(dim=0).sum())
    assert red_cols_vtab == 2  # a quarter of 8 columns survives the squash
    assert red_cols_fgvc == 0  # resize shorter side to 9 (18x9), centre crop 8 from x=5: all blue
    assert bool((fgvc[2] == 1.0).all())


def test_preprocessing_info_and_resolve_resize(tmp_path: Path) -> None:
    info = preprocessing_info("fgvc", 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert info["resize_shorter_side"] == 256 and info["center_crop"] == 224
    assert info["mean"] == [0.5, 0.5, 0.5] and info["interpolation"] == "bicubic"
    assert json.loads(json.dumps(info)) == info
    vinfo = preprocessing_info("vtab", 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    assert vinfo["resize"] == "vtab" and "center_crop" not in vinfo

    ds = open_dataset(str(make_folder(tmp_path / "ds", {"a": 1})))
    assert resolve_resize("auto", ds) == "vtab"
    assert resolve_resize("fgvc", ds) == "fgvc"
    assert resolve_resize("vtab", ds) == "vtab"
    with pytest.raises(InputError, match="squash"):
        resolve_resize("squash", ds)
    with pytest.raises(InputError, match="interpolation"):
        make_transform("vtab", 8, (0, 0, 0), (1, 1, 1), interpolation="lanczos9")
    with pytest.raises(InputError):
        make_transform("auto", 8, (0, 0, 0), (1, 1, 1))
    with pytest.raises(InputError):
        make_transform("vtab", 0, (0, 0, 0), (1, 1, 1))


def test_torch_images_dataloader(tmp_path: Path) -> None:
    import torch

    root = make_folder(tmp_path / "ds", {"a": 2, "b": 3})
    ds = open_dataset(str(root))
    t = make_transform("vtab", 6, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    data = TorchImages(ds, t)
    assert len(data) == 5
    batches = list(torch.utils.data.DataLoader(data, batch_size=2))
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 6, 6), (2, 3, 6, 6), (1, 3, 6, 6)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 1, 1, 1]
    assert torch.cat([b[2] for b in batches]).tolist() == [0, 1, 2, 3, 4]
    # class a is red, class b green
    assert batches[0][0][0, 0].min() == 1.0 and batches[2][0][0, 1].max() == 1.0

    sub = TorchImages(ds, t, indices=[4, 0])
    x, y, idx = sub[0]
    assert (y, idx) == (1, 4) and tuple(x.shape) == (3, 6, 6)
