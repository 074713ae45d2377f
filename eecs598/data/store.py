"""Where datasets live, how they are fetched and verified.

Two folders, each chosen by an environment variable:

* the **data root** (``EECS598_DATA``, default ``~/.cache/eecs598/data``) holds datasets
  laid out as ``<root>/<dataset>/<file>`` (see ``REGISTRY``). It may be read-only:
  nothing is ever written there. CI points it at ``../shared/data``.
* the **cache** (``EECS598_CACHE``, default ``~/.cache/eecs598/cache``) is writable. It
  receives downloads (``<cache>/downloads/<dataset>/<file>``) and decoded tensors, so a
  second load is fast.

``fetch(dataset, file)`` returns a verified local path: from the data root if present,
else from the download cache, else downloaded from the official URL (with a progress bar
and a checksum check) unless ``EECS598_OFFLINE=1``. Every failure raises ``DataError``
with what is missing, where to put it and where to get it.
"""
import gzip
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

DATA_ENV = "EECS598_DATA"
CACHE_ENV = "EECS598_CACHE"
OFFLINE_ENV = "EECS598_OFFLINE"


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or laid out wrongly. The message says how to fix it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    name: file name inside ``<root>/<dataset>/`` (may contain '/').
    urls: official download locations, tried in order (empty: cannot be downloaded).
    sha256 / md5: checksum of the file as stored; ``content_md5`` is the md5 of the
        gunzipped content for .gz files, so that a re-compressed copy with identical
        content is accepted too.
    mismatch_hint: what to do when a local copy fails the checksum, where "delete it and
        fetch it again" does not apply (e.g. a file with no URL that pins one particular copy);
        for a file with no URL it is also part of the message when the file is missing.
    """

    name: str
    urls: Tuple[str, ...] = ()
    sha256: Optional[str] = None
    md5: Optional[str] = None
    content_md5: Optional[str] = None
    size: Optional[int] = None
    mismatch_hint: Optional[str] = None


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    homepage: str
    files: Dict[str, RemoteFile] = field(default_factory=dict)


def _files(*files):
    return {f.name: f for f in files}


_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MNIST_LECUN = "http://yann.lecun.com/exdb/mnist/"


def _mnist_file(name, md5, content_md5, size):
    return RemoteFile(name, urls=(_MNIST_MIRROR + name, _MNIST_LECUN + name), md5=md5,
                      content_md5=content_md5, size=size)


REGISTRY: Dict[str, Dataset] = {
    "cifar10": Dataset(
        "cifar10",
        "CIFAR-10: 50,000 train + 10,000 test 32x32 colour images, 10 classes",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        _files(
            RemoteFile("cifar-10-python.tar.gz",
                       urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                       md5="c58f30108f718f92721af3b95e74349a", size=170498071),
            # Offline image-folder copy (JPEG re-encoded, train/<class>/NNNN.jpg); no URL.
            RemoteFile("cifar10-jpeg.zip",
                       sha256="ce962c3636592f547756899545a76d9da96b647fe7452affc10474e033f56311"),
        ),
    ),
    "mnist": Dataset(
        "mnist",
        "MNIST: 60,000 train + 10,000 test 28x28 handwritten digits (IDX format)",
        "http://yann.lecun.com/exdb/mnist/",
        _files(
            _mnist_file("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        "6bbc9ace898e44ae57da46a324031adb", 9912422),
            _mnist_file("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                        "a25bea736e30d166cdddb491f175f624", 28881),
            _mnist_file("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                        "2646ac647ad5339dbf082846283269ea", 1648877),
            _mnist_file("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                        "27ae3e4e09519cfbb04c329615203637", 4542),
        ),
    ),
    "voc2007": Dataset(
        "voc2007",
        "PASCAL VOC 2007 trainval (5,011 images, 20 classes) with the course's JSON splits",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
        _files(
            RemoteFile("voc07_train.json",
                       urls=("https://web.eecs.umich.edu/~justincj/data/voc07_train.json",)),
            RemoteFile("voc07_val.json",
                       urls=("https://web.eecs.umich.edu/~justincj/data/voc07_val.json",)),
            # md5 of the official archive (as torchvision and others record it); the course's
            # mirror serves the same file under the same name, and the official host is tried next.
            RemoteFile("VOCtrainval_06-Nov-2007.tar",
                       urls=("https://web.eecs.umich.edu/~justincj/data/VOCtrainval_06-Nov-2007.tar",
                             "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar"),
                       md5="c52e279531787c972589f7e41ab4ae64"),
        ),
    ),
    "arithmetic": Dataset(
        "arithmetic",
        "The course's two-digit add/subtract toy set for the Transformer (5,000 pairs)",
        "https://web.eecs.umich.edu/~justincj/teaching/eecs498/",
        _files(
            RemoteFile("two_digit_op.json",
                       sha256="7fcd4a95351bb3c8b9ce0c9ca853068ab5c030603e95d537e351da7bf6602602",
                       size=322300),
        ),
    ),
    "coco_captions": Dataset(
        "coco_captions",
        "The course's COCO Captions 2014 subset (10,000 train + 500 val images at 112x112)",
        "https://cocodataset.org/",
        _files(
            RemoteFile("coco.pt",
                       urls=("http://web.eecs.umich.edu/~justincj/teaching/eecs498/coco.pt",),
                       size=396583632),
        ),
    ),
    "flickr8k-1k": Dataset(
        "flickr8k-1k",
        "1,000 Flickr8k photos with 5 captions each (Images/*.jpg + captions.txt); offline only",
        "https://www.kaggle.com/datasets/adityajn105/flickr8k",
        _files(
            RemoteFile("captions.txt",
                       sha256="2e68c3e276f88a5193bf14b6dfac49db12a449fb7f988405875d9d16fed7d608",
                       mismatch_hint=(
                           "The dataset name 'flickr8k-1k' expects the project's 1,000-image subset of "
                           "Flickr8k (its captions.txt, 5,000 captions), not the full Kaggle Flickr8k or "
                           "another copy; it has no download URL. To use another image folder (e.g. all "
                           "8,091 Flickr8k photos), put its Images/*.jpg and captions.txt (CSV header "
                           "'image,caption') under a different name, $EECS598_DATA/<name>/, and load it "
                           "with eecs598.data.caption_dataset('<name>') (unregistered names are not "
                           "checksummed).")),
        ),
    ),
}


def data_root() -> Path:
    """The (possibly read-only) folder that holds datasets: $EECS598_DATA or ~/.cache/eecs598/data."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eecs598" / "data"


def cache_dir(create=True) -> Path:
    """The writable cache folder for downloads and decoded tensors: $EECS598_CACHE or
    ~/.cache/eecs598/cache (created unless `create` is false)."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "eecs598" / "cache"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    from ..utils import env_flag

    return env_flag(OFFLINE_ENV)


def dataset_dir(dataset: str) -> Path:
    """``<data root>/<dataset>``: where a user puts the files of `dataset` by hand."""
    return data_root() / dataset


def file_digest(path, algorithm="sha256", gunzip=False) -> str:
    """Hex digest of a file (of its decompressed content when `gunzip`), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified_stamp(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "verified" / f"{key}.json"


def _fingerprint(path: Path, spec: RemoteFile) -> dict:
    """What a verified stamp records: the file's size and mtime, and the checksums it passed
    (a stamp written under other expected checksums does not count)."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime": stat.st_mtime_ns,
            "expected": [spec.size, spec.sha256, spec.content_md5, spec.md5]}


def verify_file(path, spec: RemoteFile, remember=True):
    """Raise DataError unless `path` matches the checksums in `spec` (a truncated file fails too).

    A successful check is remembered in the cache (keyed by path, size, mtime and the expected
    checksums), so large files are hashed once, not at every load; `remember=False` skips that.
    """
    path = Path(path)
    stamp = _verified_stamp(path)
    try:
        if json.loads(stamp.read_text()) == _fingerprint(path, spec):
            return
    except (OSError, ValueError):
        pass

    stat = path.stat()
    checks = []
    if spec.size is not None and stat.st_size != spec.size and spec.content_md5 is None:
        raise DataError(f"{path}: size {stat.st_size} bytes, expected {spec.size} "
                        "(truncated or wrong file)")
    if spec.sha256:
        checks.append(("sha256", spec.sha256, file_digest(path, "sha256")))
    elif spec.content_md5 and spec.name.endswith(".gz"):  # path may be a download's .part file
        try:
            found = file_digest(path, "md5", gunzip=True)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: not a valid gzip file ({e}); the file is truncated or corrupt") from e
        checks.append(("md5 of the decompressed content", spec.content_md5, found))
    elif spec.md5:
        checks.append(("md5", spec.md5, file_digest(path, "md5")))
    for what, expected, found in checks:
        if expected != found:
            advice = spec.mismatch_hint or ("The file is corrupt, truncated or a different version; "
                                            + ("delete it and fetch it again." if spec.urls else
                                               "replace it with the right copy (it has no download URL)."))
            raise DataError(f"{path}: {what} mismatch: expected {expected}, found {found}. {advice}")
    if remember:
        _remember_verified(path, spec)


def _remember_verified(path: Path, spec: RemoteFile):
    stamp = _verified_stamp(path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(_fingerprint(path, spec)))


DOWNLOAD_TIMEOUT_S = 15


def _download(url: str, dest: Path, spec: RemoteFile):
    """Download `url` to `dest` through a temporary file; keep it only if it verifies."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp)
    print(f"Downloading {dest.name} from {url}", flush=True)  # before a connection that may stall
    try:
        # the timeout bounds each socket operation (connecting, every read): a network that drops
        # packets fails in DOWNLOAD_TIMEOUT_S per URL instead of hanging
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {dest.name}") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        verify_file(tmp, spec, remember=False)  # raises on mismatch; the bad file is removed below
        tmp.replace(dest)
        _remember_verified(dest, spec)  # the final file's stamp, so the next fetch does not re-hash it
    finally:
        if tmp.exists():
            tmp.unlink()


def _missing_message(dataset: str, spec: RemoteFile, reason: str) -> str:
    where = dataset_dir(dataset) / spec.name
    source = (", ".join(spec.urls) if spec.urls
              else f"no public URL; see {REGISTRY[dataset].homepage} and the project README")
    return (f"{dataset}: file {spec.name!r} is not available ({reason}).\n"
            f"  Put it at {where}\n"
            f"  (or point ${DATA_ENV} at a folder that holds {dataset}/{spec.name}).\n"
            f"  Get it from: {source}"
            + (f"\n  {spec.mismatch_hint}" if spec.mismatch_hint and not spec.urls else ""))


def local_path(dataset: str, name: str) -> Optional[Path]:
    """Existing copy of a registered file in the data root or download cache, unverified; else None."""
    for candidate in (dataset_dir(dataset) / name, cache_dir() / "downloads" / dataset / name):
        if candidate.is_file():
            return candidate
    return None


def fetch(dataset: str, name: str, download: bool = True) -> Path:
    """Return a verified local path to file `name` of `dataset`, downloading it if needed.

    Looks in ``<data root>/<dataset>/<name>`` then ``<cache>/downloads/<dataset>/<name>``;
    downloads into the cache when `download` is true, the file has a URL and
    EECS598_OFFLINE is not set. Raises DataError (never returns partial data).
    """
    try:
        spec = REGISTRY[dataset].files[name]
    except KeyError:
        raise DataError(f"unknown dataset file {dataset}/{name}; registered: "
                        f"{ {d: list(s.files) for d, s in REGISTRY.items()} }") from None
    found = local_path(dataset, name)
    if found is not None:
        verify_file(found, spec)
        return found
    if not download or offline() or not spec.urls:
        reason = ("offline mode ($EECS598_OFFLINE is set)" if offline() and spec.urls
                  else "downloads disabled" if not download and spec.urls
                  else "not found on disk")
        raise DataError(_missing_message(dataset, spec, reason))
    dest = cache_dir() / "downloads" / dataset / name
    errors = []
    for url in spec.urls:
        try:
            _download(url, dest, spec)
            return dest
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # e.g. IncompleteRead
            errors.append(f"{url}: {type(e).__name__}: {e}")
        except DataError as e:
            errors.append(str(e))
    raise DataError(_missing_message(dataset, spec, "download failed: " + "; ".join(errors)))


def cached_tensors(key: str, build, *sources, version=None):
    """Load tensors saved under ``<cache>/<key>.pt``, or build them with `build()` and save.

    The cache entry is tied to the content (size and sha256) of the files `sources`: when one
    changes, the entry is rebuilt; a copy of the same files elsewhere or with new timestamps
    (a fresh checkout of the data, a re-mounted data root) reuses it. `version` (a string):
    what else the built tensors depend on (a decoder's settings, such as a shuffling seed);
    an entry built under another version is rebuilt. Writes go through a temporary file, so an
    interrupted write never leaves a half-written cache entry.
    """
    import torch

    identity = [[Path(s).stat().st_size, file_digest(s, "sha256")] for s in sources]
    if version is not None:
        identity.append(["version", str(version)])
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            if saved.get("sources") == identity:
                return saved["data"]
        except Exception:  # unreadable or stale entry: rebuild it
            pass
    data = build()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"sources": identity, "data": data}, tmp)
    shutil.move(tmp, path)
    return data
