"""CIFAR-10 from the official python tarball or the image-folder zip, decoded once and cached.

Accepted copies, in order of preference (``<root>`` is the data root, see ``store``):

1. ``<root>/cifar10/cifar-10-batches-py/`` (the extracted official tarball, as torchvision leaves it);
2. ``<root>/cifar10/cifar-10-python.tar.gz`` (the official tarball; md5-checked);
3. ``<root>/cifar10/cifar10-jpeg.zip``: ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``
   (a JPEG re-encoding whose original order is lost: each split is shuffled with a fixed
   seed, so "the first N samples" is a deterministic, class-balanced-in-expectation subset);
4. otherwise the official tarball is downloaded into the cache.
"""
import io
import operator
import pickle
import tarfile
import zipfile
from pathlib import Path

import torch

from . import store

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
TRAIN_SIZE, TEST_SIZE = 50000, 10000
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_SHUFFLE_SEED = 0


def _jpeg_order():
    """What the JPEG copy's decoded order depends on besides the zip's content (part of its
    cache key, so that a change rebuilds the cached tensors)."""
    return f"classes in the order {','.join(CLASSES)}, names sorted, then torch.randperm seeded {_SHUFFLE_SEED}"


def _decode_batches(read_member, where):
    """Decode the pickled python batches; `read_member(name)` returns a file's bytes, and
    `where` (the archive or folder) names them in errors: a batch that does not unpickle, or
    splits without 50,000 / 10,000 images, raise DataError."""
    out = {}
    for split, names in _BATCHES.items():
        xs, ys = [], []
        for name in names:
            try:
                batch = pickle.loads(read_member(name), encoding="latin1")
                x = torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
                y = torch.as_tensor(batch["labels"], dtype=torch.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, RuntimeError) as e:
                raise store.DataError(f"{where}: {name} is not a readable CIFAR-10 batch "
                                      f"({type(e).__name__}: {e}); the file is truncated or corrupt") from e
            if len(x) != len(y):
                raise store.DataError(f"{where}: {name} holds {len(x)} images but {len(y)} labels")
            xs.append(x)
            ys.append(y)
        out[f"x_{split}"], out[f"y_{split}"] = torch.cat(xs), torch.cat(ys)
        expected = TRAIN_SIZE if split == "train" else TEST_SIZE
        if len(out[f"x_{split}"]) != expected:
            raise store.DataError(f"{where}: the {split} batches hold {len(out[f'x_{split}'])} "
                                  f"images, not CIFAR-10's {expected}")
    return out


def _decode_folder(folder: Path):
    missing = [n for names in _BATCHES.values() for n in names if not (folder / n).is_file()]
    if missing:
        raise store.DataError(f"{folder} is not an extracted CIFAR-10 python archive: "
                              f"missing {', '.join(missing)}")
    return _decode_batches(lambda name: (folder / name).read_bytes(), folder)


def _decode_tarball(path: Path):
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for names in _BATCHES.values() for n in names if n not in members]
            if missing:
                raise store.DataError(f"{path}: not the CIFAR-10 python archive "
                                      f"(missing {', '.join(missing)})")
            return _decode_batches(lambda name: tar.extractfile(members[name]).read(), path)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise store.DataError(f"{path}: unreadable or truncated tar.gz archive ({e})") from e


def _decode_jpeg_zip(path: Path):
    from PIL import Image
    import numpy as np

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise store.DataError(f"{path}: not a readable zip archive ({e}); "
                              "the file is truncated or corrupt") from e
    out = {}
    with archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        expected = {"train": TRAIN_SIZE, "test": TEST_SIZE}
        for split, size in expected.items():
            entries = [n for n in names if n.startswith(split + "/")]
            per_class = {c: [n for n in entries if n.split("/")[1] == c] for c in CLASSES}
            unknown = sorted({n.split("/")[1] for n in entries} - set(CLASSES))
            if len(entries) != size or unknown or any(len(v) == 0 for v in per_class.values()):
                raise store.DataError(
                    f"{path}: wrong layout for CIFAR-10. Expected {split}/<class>/<image>.jpg with "
                    f"{size} images over the classes {', '.join(CLASSES)}; found {len(entries)} "
                    f"images under {split}/" + (f" and unknown folders {unknown}" if unknown else ""))
            x = np.empty((size, 32, 32, 3), dtype=np.uint8)
            y = torch.empty(size, dtype=torch.int64)
            i = 0
            for label, cls in enumerate(CLASSES):
                for name in per_class[cls]:
                    try:
                        with Image.open(io.BytesIO(archive.read(name))) as img:
                            x[i] = np.asarray(img.convert("RGB"))
                    except Exception as e:
                        raise store.DataError(f"{path}: cannot decode {name} ({e})") from e
                    y[i] = label
                    i += 1
            order = torch.randperm(size, generator=torch.Generator().manual_seed(_SHUFFLE_SEED))
            out[f"x_{split}"] = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()[order]
            out[f"y_{split}"] = y[order]
    return out


def load_cifar10_uint8():
    """All of CIFAR-10 as uint8 tensors plus a description of the copy used.

    Returns a dict with x_train (50000,3,32,32) uint8, y_train (50000,) int64,
    x_test (10000,3,32,32), y_test (10000,), and "source" (a string naming the copy).
    """
    folder = store.dataset_dir("cifar10") / "cifar-10-batches-py"
    batches = [folder / n for names in _BATCHES.values() for n in names]
    incomplete = None  # an extracted folder with batch files missing (an interrupted tar xzf)
    if folder.is_dir():
        if all(b.is_file() for b in batches):
            data = store.cached_tensors("cifar10-batches", lambda: _decode_folder(folder), *batches)
            return {**data, "source": "CIFAR-10 official python archive (extracted)"}
        incomplete = (f"{folder} is an incomplete extracted archive (missing "
                      f"{', '.join(b.name for b in batches if not b.is_file())}); delete it or complete it")
    for name, decode, source in (
        ("cifar-10-python.tar.gz", _decode_tarball, "CIFAR-10 official python archive"),
        ("cifar10-jpeg.zip", _decode_jpeg_zip, "CIFAR-10 JPEG image-folder copy (q75 re-encoded, seeded shuffle)"),
    ):
        path = store.local_path("cifar10", name)
        if path is not None:
            store.verify_file(path, store.REGISTRY["cifar10"].files[name])
            data = store.cached_tensors(f"cifar10-{Path(name).stem}", lambda: decode(path), path,
                                        version=_jpeg_order() if decode is _decode_jpeg_zip else None)
            return {**data, "source": source}
    try:
        path = store.fetch("cifar10", "cifar-10-python.tar.gz")
    except store.DataError as err:
        raise store.DataError(f"{err}\n  Accepted instead: the extracted archive {folder}/, or the "
                              f"project's JPEG copy {store.dataset_dir('cifar10') / 'cifar10-jpeg.zip'}."
                              + (f"\n  Found: {incomplete}." if incomplete else "")) from None
    data = store.cached_tensors("cifar10-cifar-10-python.tar", lambda: _decode_tarball(path), path)
    return {**data, "source": "CIFAR-10 official python archive"}


def _check_num(num, total, name):
    if num is None:
        return total
    try:  # any integer (Python, numpy or a one-element integer tensor), as the course's range check took
        value = operator.index(num)
    except TypeError:
        value = None
    if value is None or isinstance(num, bool) or not 1 <= value <= total:
        raise ValueError(f"Invalid value {name}={num!r}; must be an int in [1, {total}]")
    return value


def cifar10(num_train=None, num_test=None, x_dtype=torch.float32):
    """Return CIFAR-10 as (x_train, y_train, x_test, y_test).

    x_*: (N, 3, 32, 32) tensors of dtype `x_dtype`, values in [0, 1]; y_*: (N,) int64 in [0, 10).
    `num_train` / `num_test` keep the first N samples (deterministic); None keeps all.
    Raises ValueError when N is outside [1, 50000] / [1, 10000].
    """
    num_train = _check_num(num_train, TRAIN_SIZE, "num_train")
    num_test = _check_num(num_test, TEST_SIZE, "num_test")
    data = load_cifar10_uint8()
    x_train = data["x_train"][:num_train].to(x_dtype).div_(255)
    x_test = data["x_test"][:num_test].to(x_dtype).div_(255)
    return x_train, data["y_train"][:num_train].clone(), x_test, data["y_test"][:num_test].clone()


def preprocess_cifar10(cuda=None, show_examples=True, bias_trick=False, flatten=True,
                       validation_ratio=0.2, dtype=torch.float32, device=None,
                       num_train=None, num_test=None):
    """Load and preprocess CIFAR-10 the way the course's classifiers expect.

    1. load `num_train` / `num_test` samples (None: all) with `cifar10`;
    2. move to `device` (None: CUDA if `cuda` is true or, when `cuda` is None, if available;
       else CPU) and cast to `dtype`;
    3. optionally show a grid of examples;
    4. subtract the per-channel mean RGB of the `num_train` training images (computed before
       the validation split, so it includes the validation images, as in the course) from
       all of them and from the test images;
    5. optionally flatten each image to 3072 values and append a ones column (bias trick, D=3073);
    6. split the tail `validation_ratio` of the training set off as validation.

    Returns a dict with X_train, y_train, X_val, y_val, X_test, y_test. With the defaults,
    40,000 / 10,000 / 10,000 samples; X is (N, 3072) when flattened, else (N, 3, 32, 32).
    """
    if not 0 <= validation_ratio < 1:
        raise ValueError(f"validation_ratio must be in [0, 1), got {validation_ratio}")
    if device is None:
        device = "cuda" if cuda else ("cpu" if cuda is False else None)
    from ..utils import get_device
    device = get_device(device)

    x_train, y_train, x_test, y_test = cifar10(num_train, num_test, x_dtype=dtype)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    if show_examples:
        import matplotlib.pyplot as plt
        from ..vis import visualize_dataset
        plt.imshow(visualize_dataset(x_train, y_train, 12, CLASSES))
        plt.axis("off")
        plt.show()

    mean_image = x_train.mean(dim=(0, 2, 3), keepdim=True)
    x_train = x_train - mean_image
    x_test = x_test - mean_image
    if flatten:
        x_train = x_train.reshape(x_train.shape[0], -1)
        x_test = x_test.reshape(x_test.shape[0], -1)
    if bias_trick:
        if not flatten:
            raise ValueError("bias_trick=True needs flatten=True")
        x_train = torch.cat([x_train, torch.ones_like(x_train[:, :1])], dim=1)
        x_test = torch.cat([x_test, torch.ones_like(x_test[:, :1])], dim=1)

    num_val = int(x_train.shape[0] * validation_ratio)
    num_keep = x_train.shape[0] - num_val
    return {
        "X_train": x_train[:num_keep], "y_train": y_train[:num_keep],
        "X_val": x_train[num_keep:], "y_val": y_train[num_keep:],
        "X_test": x_test, "y_test": y_test,
    }
