"""MNIST from the four IDX .gz files, read by the project itself (no torchvision)."""
import gzip
import struct

import torch

from . import store

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SIZES = {"train": 60000, "test": 10000}


def read_idx(path):
    """Read a (gzip-compressed) IDX file into a uint8 tensor of the shape in its header.

    Raises DataError for a bad magic number, a non-uint8 type or a truncated body.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise store.DataError(f"{path}: cannot read IDX file ({e}); truncated or corrupt") from e
    if len(raw) < 4:
        raise store.DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != 0x08 or ndim < 1:
        raise store.DataError(f"{path}: not a uint8 IDX file (header bytes {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise store.DataError(f"{path}: truncated IDX header ({len(raw)} bytes; {ndim} dimensions need "
                              f"{4 + 4 * ndim})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    expected = 1
    for s in shape:
        expected *= s
    if len(body) != expected:
        raise store.DataError(f"{path}: body has {len(body)} bytes, header {shape} needs {expected}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _decode(paths):
    out = {}
    for split, (images, labels) in FILES.items():
        x, y = read_idx(paths[images]), read_idx(paths[labels])
        if x.shape[0] != y.shape[0]:
            raise store.DataError(f"MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels")
        out[f"x_{split}"], out[f"y_{split}"] = x.unsqueeze(1).contiguous(), y.long()
    return out


def mnist(num_train=None, num_test=None, x_dtype=torch.float32):
    """Return MNIST as (x_train, y_train, x_test, y_test).

    x_*: (N, 1, 28, 28) of dtype `x_dtype` in [0, 1]; y_*: (N,) int64 digits. `num_train` /
    `num_test` keep the first N samples of the official order; None keeps all.
    """
    from .cifar import _check_num

    num_train = _check_num(num_train, SIZES["train"], "num_train")
    num_test = _check_num(num_test, SIZES["test"], "num_test")
    paths = {name: store.fetch("mnist", name) for pair in FILES.values() for name in pair}
    data = store.cached_tensors("mnist", lambda: _decode(paths), *paths.values())
    return (data["x_train"][:num_train].to(x_dtype).div_(255), data["y_train"][:num_train].clone(),
            data["x_test"][:num_test].to(x_dtype).div_(255), data["y_test"][:num_test].clone())
