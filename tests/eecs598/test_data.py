"""The data layer: registry, data root / cache, downloads, checksums, bad inputs, loaders.

Error-path tests build tiny fake files in a temporary, offline data root (`isolated_data`).
Tests on the real copies skip when $EECS598_DATA does not hold them (CI has them).
"""
import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from eecs598.data import store
from eecs598.data import cifar as cifar_mod
from eecs598.data import text as text_mod
from eecs598.data import (DataError, VOC2007Detection, arithmetic_expressions, caption_folder,
                          cifar10, mnist, preprocess_cifar10, read_idx)
from eecs598.testing import requires_cifar, shared_data_available

requires_mnist = pytest.mark.skipif(not shared_data_available("mnist"), reason="MNIST not in $EECS598_DATA")


# ---------------------------------------------------------------- roots, registry, fetch

def test_roots_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EECS598_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "c"))
    assert store.data_root() == tmp_path / "d"
    assert store.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert store.dataset_dir("mnist") == tmp_path / "d" / "mnist"


def test_every_registered_file_has_a_checksum_or_url():
    for dataset in store.REGISTRY.values():
        for spec in dataset.files.values():
            assert spec.urls or spec.sha256 or spec.md5, f"{dataset.name}/{spec.name}"


def test_missing_file_offline_says_what_where_and_source(isolated_data):
    with pytest.raises(DataError) as err:
        store.fetch("mnist", "train-images-idx3-ubyte.gz")
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert str(isolated_data / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "https://" in msg and "EECS598_DATA" in msg


def test_missing_cifar_offline_fails_clearly(isolated_data):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as err:
        cifar10(num_train=10, num_test=10)
    assert "cifar-10-batches-py" in str(err.value) and "cifar10-jpeg.zip" in str(err.value)


def test_unknown_file_is_an_error(isolated_data):
    with pytest.raises(DataError, match="unknown dataset file"):
        store.fetch("mnist", "nope.bin")


def _register(monkeypatch, name, files):
    registry = dict(store.REGISTRY)
    registry[name] = store.Dataset(name, "test dataset", "https://example.invalid", {f.name: f for f in files})
    monkeypatch.setattr(store, "REGISTRY", registry)


def test_checksum_mismatch_in_data_root_names_file_expected_and_found(isolated_data, monkeypatch):
    payload = b"not the real thing"
    (isolated_data / "toy").mkdir()
    (isolated_data / "toy" / "blob.bin").write_bytes(payload)
    expected = "0" * 64
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", sha256=expected)])
    with pytest.raises(DataError) as err:
        store.fetch("toy", "blob.bin")
    msg = str(err.value)
    assert "blob.bin" in msg and expected in msg and hashlib.sha256(payload).hexdigest() in msg


def test_download_verifies_and_keeps_good_file(isolated_data, monkeypatch, tmp_path):
    source = tmp_path / "server" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(b"hello data" * 1000)
    monkeypatch.delenv("EECS598_OFFLINE")
    _register(monkeypatch, "toy", [store.RemoteFile(
        "blob.bin", urls=(source.as_uri(),), sha256=hashlib.sha256(source.read_bytes()).hexdigest())])
    path = store.fetch("toy", "blob.bin")
    assert path == store.cache_dir() / "downloads" / "toy" / "blob.bin"
    assert path.read_bytes() == source.read_bytes()
    assert not list(isolated_data.iterdir()), "downloads must never go into the data root"
    # the stamp is the final file's (one stamp, no orphan of the temporary file): not hashed again
    assert len(list((store.cache_dir() / "verified").iterdir())) == 1
    monkeypatch.setattr(store, "file_digest", lambda *a, **k: pytest.fail("hashed again"))
    assert store.fetch("toy", "blob.bin") == path


def test_download_with_bad_checksum_keeps_nothing(isolated_data, monkeypatch, tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(b"corrupted")
    monkeypatch.delenv("EECS598_OFFLINE")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", urls=(source.as_uri(),), sha256="1" * 64)])
    with pytest.raises(DataError) as err:
        store.fetch("toy", "blob.bin")
    assert "mismatch" in str(err.value) and "1" * 64 in str(err.value)
    folder = store.cache_dir() / "downloads" / "toy"
    assert not folder.exists() or not list(folder.iterdir()), "a bad download must not be kept"


def test_a_cut_off_download_tries_the_next_url_and_raises_data_error(isolated_data, monkeypatch, tmp_path):
    """http.client.IncompleteRead (not an OSError) must not escape: the next mirror is tried,
    and if none works the error is a DataError naming each URL."""
    import http.client

    good = tmp_path / "blob.bin"
    good.write_bytes(b"hello data")
    monkeypatch.delenv("EECS598_OFFLINE")
    spec = store.RemoteFile("blob.bin", urls=("https://mirror-a.invalid/blob.bin", good.as_uri()),
                            sha256=hashlib.sha256(good.read_bytes()).hexdigest())
    _register(monkeypatch, "toy", [spec])
    real_urlopen, tried = store.urllib.request.urlopen, []

    def urlopen(url, timeout=None):
        tried.append(url)
        if url.startswith("https://mirror-a"):
            raise http.client.IncompleteRead(b"hel", 7)
        return real_urlopen(url, timeout=timeout)

    monkeypatch.setattr(store.urllib.request, "urlopen", urlopen)
    assert store.fetch("toy", "blob.bin").read_bytes() == b"hello data"
    assert tried == list(spec.urls)

    _register(monkeypatch, "toy2", [store.RemoteFile("blob.bin", urls=(spec.urls[0],), sha256=spec.sha256)])
    with pytest.raises(DataError, match="IncompleteRead") as err:
        store.fetch("toy2", "blob.bin")
    assert "mirror-a.invalid" in str(err.value)


def test_voc_archive_from_a_mirror_with_another_file_falls_through_to_the_official_host(
        isolated_data, monkeypatch, tmp_path):
    """The 460 MB VOC archive is md5-checked: a mirror serving something else is not kept and
    the next URL (the official host) is tried; a wrong copy in the data root is refused."""
    spec = store.REGISTRY["voc2007"].files["VOCtrainval_06-Nov-2007.tar"]
    assert spec.md5 == "c52e279531787c972589f7e41ab4ae64"
    assert spec.urls[-1].startswith("http://host.robots.ox.ac.uk/")
    wrong = tmp_path / "wrong.tar"
    wrong.write_bytes(b"an error page, not a tar")
    monkeypatch.delenv("EECS598_OFFLINE")
    real_urlopen, tried = store.urllib.request.urlopen, []

    def urlopen(url, timeout=None):
        tried.append(url)
        if url == spec.urls[0]:
            return real_urlopen(wrong.as_uri(), timeout=timeout)
        raise store.urllib.error.URLError("unreachable")

    monkeypatch.setattr(store.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError) as err:
        store.fetch("voc2007", "VOCtrainval_06-Nov-2007.tar")
    assert tried == list(spec.urls)
    assert "md5 mismatch" in str(err.value) and spec.md5 in str(err.value)
    folder = store.cache_dir() / "downloads" / "voc2007"
    assert not folder.exists() or not list(folder.iterdir()), "the wrong file must not be kept"

    (isolated_data / "voc2007").mkdir()
    (isolated_data / "voc2007" / spec.name).write_bytes(b"a damaged copy")
    with pytest.raises(DataError, match="md5 mismatch"):
        store.fetch("voc2007", spec.name)


def test_truncated_file_with_known_size_is_rejected(isolated_data):
    (isolated_data / "coco_captions").mkdir()
    (isolated_data / "coco_captions" / "coco.pt").write_bytes(b"x" * 100)
    with pytest.raises(DataError, match="truncated"):
        store.fetch("coco_captions", "coco.pt")


def test_verification_is_remembered_and_redone_when_file_changes(isolated_data, monkeypatch):
    (isolated_data / "toy").mkdir()
    path = isolated_data / "toy" / "blob.bin"
    path.write_bytes(b"abc")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", sha256=hashlib.sha256(b"abc").hexdigest())])
    store.fetch("toy", "blob.bin")
    path.write_bytes(b"abd")
    os.utime(path, ns=(1, 1))
    with pytest.raises(DataError, match="mismatch"):
        store.fetch("toy", "blob.bin")


def test_a_verification_counts_only_for_the_checksums_it_was_made_against(isolated_data, monkeypatch):
    """A file verified against one registry checksum is checked again when the registry
    expects another (a stamp keyed by path, size and mtime alone would let it through)."""
    (isolated_data / "toy").mkdir()
    (isolated_data / "toy" / "blob.bin").write_bytes(b"abc")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", sha256=hashlib.sha256(b"abc").hexdigest())])
    store.fetch("toy", "blob.bin")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", sha256="2" * 64)])
    with pytest.raises(DataError, match="mismatch"):
        store.fetch("toy", "blob.bin")


def test_tensor_cache_follows_the_sources_content_not_their_path_or_timestamps(isolated_data, tmp_path):
    """A copy of the sources elsewhere, with new timestamps, reuses the entry (a re-mounted data
    root does not rebuild minutes of features); a change of content, even of the same size and
    mtime, rebuilds it."""
    builds = []

    def build():
        builds.append(1)
        return {"x": torch.arange(3) + len(builds)}

    first = tmp_path / "a" / "captions.txt"
    first.parent.mkdir()
    first.write_text("image,caption\n1.jpg,a dog\n")
    assert torch.equal(store.cached_tensors("toy", build, first)["x"], torch.tensor([1, 2, 3]))
    copy = tmp_path / "b" / "captions.txt"
    copy.parent.mkdir()
    copy.write_text(first.read_text())
    os.utime(copy, ns=(5, 5))
    assert torch.equal(store.cached_tensors("toy", build, copy)["x"], torch.tensor([1, 2, 3]))
    assert len(builds) == 1
    stat = copy.stat()
    copy.write_text("image,caption\n1.jpg,a cat\n")
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(store.cached_tensors("toy", build, copy)["x"], torch.tensor([2, 3, 4]))
    assert len(builds) == 2
    # what else the tensors depend on (a decoder's seed): another version rebuilds, the same reuses
    assert torch.equal(store.cached_tensors("toy", build, copy, version="seed 1")["x"], torch.tensor([3, 4, 5]))
    assert torch.equal(store.cached_tensors("toy", build, copy, version="seed 1")["x"], torch.tensor([3, 4, 5]))
    assert len(builds) == 3


# ---------------------------------------------------------------- CIFAR-10 archives

def test_num_train_out_of_range_is_value_error():
    for bad in (0, -1, 50001, 2.5, True):
        with pytest.raises(ValueError, match="num_train"):
            cifar10(num_train=bad)
    with pytest.raises(ValueError, match="num_test"):
        cifar10(num_train=10, num_test=10001)


def test_sizes_may_be_numpy_or_torch_integers():
    """The course's loaders only range-checked the size, so a computed np.int64 / torch integer
    worked; it still does (as a Python int), and non-integers are still refused."""
    import numpy as np
    from eecs598.data.cifar import _check_num
    for good in (np.int64(5), torch.tensor(5), 5):
        value = _check_num(good, 10, "num_train")
        assert value == 5 and type(value) is int
    for bad in (np.float64(5.0), torch.tensor(5.0), np.int64(11), torch.tensor(0), np.bool_(True)):
        with pytest.raises(ValueError, match="num_train"):
            _check_num(bad, 10, "num_train")


def _jpeg_bytes(color):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_jpeg_zip_with_wrong_layout_is_rejected(tmp_path):
    path = tmp_path / "cifar10-jpeg.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train/airplane/0000.jpg", _jpeg_bytes((255, 0, 0)))
        z.writestr("train/spaceship/0000.jpg", _jpeg_bytes((0, 255, 0)))
    with pytest.raises(DataError, match="wrong layout") as err:
        cifar_mod._decode_jpeg_zip(path)
    assert "spaceship" in str(err.value)


def test_jpeg_zip_layout_decodes_with_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "TRAIN_SIZE", 20)
    monkeypatch.setattr(cifar_mod, "TEST_SIZE", 10)
    colors = {c: (20 * i, 255 - 20 * i, 128) for i, c in enumerate(cifar_mod.CLASSES)}
    path = tmp_path / "cifar10-jpeg.zip"
    with zipfile.ZipFile(path, "w") as z:
        for cls, color in colors.items():
            for i in range(2):
                z.writestr(f"train/{cls}/{i:04d}.jpg", _jpeg_bytes(color))
            z.writestr(f"test/{cls}/0000.jpg", _jpeg_bytes(color))
    data = cifar_mod._decode_jpeg_zip(path)
    assert data["x_train"].shape == (20, 3, 32, 32) and data["x_train"].dtype == torch.uint8
    assert sorted(data["y_train"].tolist()) == sorted(list(range(10)) * 2)
    for x, y in zip(data["x_test"], data["y_test"]):  # pixel colour identifies the class folder
        expected = torch.tensor(colors[cifar_mod.CLASSES[y]], dtype=torch.float32)
        assert (x.float().mean(dim=(1, 2)) - expected).abs().max() < 3


def test_truncated_zip_is_rejected(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("train/airplane/0000.jpg", _jpeg_bytes((1, 2, 3)))
    bad = tmp_path / "cifar10-jpeg.zip"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated or corrupt"):
        cifar_mod._decode_jpeg_zip(bad)


def _cifar_tarball(path, n_per_batch=3, truncate=False):
    import pickle
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({"data": torch.randint(0, 256, (n_per_batch, 3072), dtype=torch.uint8).numpy(),
                                 "labels": list(range(n_per_batch))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    raw = buf.getvalue()
    path.write_bytes(raw[: len(raw) // 2] if truncate else raw)


def test_official_tarball_layout_decodes(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_tarball(path)
    monkeypatch.setattr(cifar_mod, "TRAIN_SIZE", 15)
    monkeypatch.setattr(cifar_mod, "TEST_SIZE", 3)
    data = cifar_mod._decode_tarball(path)
    assert data["x_train"].shape == (15, 3, 32, 32) and data["x_test"].shape == (3, 3, 32, 32)
    assert data["y_train"].tolist() == [0, 1, 2] * 5


def test_truncated_tarball_is_rejected(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_tarball(path, truncate=True)
    with pytest.raises(DataError, match="truncated"):
        cifar_mod._decode_tarball(path)


def test_tarball_with_the_wrong_number_of_images_is_rejected(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_tarball(path)  # 15 training images, not 50,000
    with pytest.raises(DataError, match="train batches hold 15 images, not CIFAR-10's 50000"):
        cifar_mod._decode_tarball(path)


def test_extracted_folder_with_a_truncated_batch_names_it(tmp_path):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = pickle.dumps({"data": torch.zeros(2, 3072, dtype=torch.uint8).numpy(), "labels": [0, 1]})
        (folder / name).write_bytes(blob[:-10] if name == "data_batch_3" else blob)
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        cifar_mod._decode_folder(folder)


def test_extracted_folder_missing_batches_is_rejected(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match="data_batch_2"):
        cifar_mod._decode_folder(folder)


# ---------------------------------------------------------------- real CIFAR-10 copy

@requires_cifar
def test_cifar10_shapes_range_and_balance():
    x_train, y_train, x_test, y_test = cifar10()
    assert x_train.shape == (50000, 3, 32, 32) and x_test.shape == (10000, 3, 32, 32)
    assert x_train.dtype == torch.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert torch.equal(y_train.bincount(), torch.full((10,), 5000))
    assert torch.equal(y_test.bincount(), torch.full((10,), 1000))


@requires_cifar
def test_cifar10_subsets_are_deterministic_prefixes():
    a = cifar10(num_train=100, num_test=50, x_dtype=torch.float64)
    b = cifar10(num_train=300, num_test=70, x_dtype=torch.float64)
    assert a[0].dtype == torch.float64
    assert torch.equal(a[0], b[0][:100]) and torch.equal(a[1], b[1][:100])
    assert torch.equal(a[2], b[2][:50]) and torch.equal(a[3], b[3][:50])
    assert len(set(a[1].tolist())) == 10, "the first 100 samples must not be a single class"


@requires_cifar
def test_cifar_cache_goes_to_cache_not_data_root(tmp_path, monkeypatch):
    """The decoded tensors go to $EECS598_CACHE, never into the (possibly read-only) data root,
    and a second load reads them back without decoding. The decoders are stubbed, so the real
    copy is only located and verified, not decoded."""
    root = store.data_root() / "cifar10"
    before = sorted(p.name for p in root.iterdir())
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    decoded = []

    def fake_decode(path):
        decoded.append(path)
        x, y = torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10
        return {"x_train": x, "y_train": y, "x_test": x[:10], "y_test": y[:10]}

    for name in ("_decode_jpeg_zip", "_decode_tarball", "_decode_folder"):
        monkeypatch.setattr(cifar_mod, name, fake_decode)
    first, second = cifar_mod.load_cifar10_uint8(), cifar_mod.load_cifar10_uint8()
    assert len(decoded) == 1 and torch.equal(first["y_train"], second["y_train"])
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1
    assert sorted(p.name for p in root.iterdir()) == before


def test_jpeg_copy_order_is_pinned():
    """The JPEG copy is shuffled with torch.randperm under a fixed seed, and every CIFAR figure
    in results/ was measured on that order. If a torch release changes randperm, this fails
    (and the seed is part of the decoded tensors' cache key, so changing it rebuilds them)."""
    perm = lambda n: torch.randperm(n, generator=torch.Generator().manual_seed(cifar_mod._SHUFFLE_SEED))
    assert cifar_mod._SHUFFLE_SEED == 0
    assert perm(50000)[:8].tolist() == [36044, 49165, 37807, 11341, 6091, 16904, 36293, 28026]
    assert perm(10000)[:8].tolist() == [6044, 2890, 9399, 1917, 4919, 1729, 429, 7532]
    assert "seeded 0" in cifar_mod._jpeg_order()


@requires_cifar
def test_preprocess_cifar10_course_options():
    data = preprocess_cifar10(show_examples=False, bias_trick=True, num_train=1000, num_test=200,
                              dtype=torch.float64, device="cpu")
    assert data["X_train"].shape == (800, 3073) and data["X_val"].shape == (200, 3073)
    assert data["X_test"].shape == (200, 3073) and data["X_train"].dtype == torch.float64
    assert torch.all(data["X_train"][:, -1] == 1)
    # per-channel mean of the whole training set (train + val tail) is removed
    x = torch.cat([data["X_train"], data["X_val"]])[:, :-1].reshape(-1, 3, 32, 32)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-10
    raw_train, raw_y, _, _ = cifar10(num_train=1000, num_test=200, x_dtype=torch.float64)
    assert torch.equal(data["y_val"], raw_y[800:])  # validation = tail of the training set
    unflat = preprocess_cifar10(show_examples=False, flatten=False, validation_ratio=0.1,
                                num_train=100, num_test=10, device="cpu")
    assert unflat["X_train"].shape == (90, 3, 32, 32) and unflat["X_val"].shape == (10, 3, 32, 32)
    with pytest.raises(ValueError):
        preprocess_cifar10(show_examples=False, flatten=False, bias_trick=True, num_train=10, num_test=10)


# ---------------------------------------------------------------- MNIST

def _idx_bytes(array_uint8):
    header = struct.pack(">BBBB", 0, 0, 0x08, array_uint8.dim()) + struct.pack(f">{array_uint8.dim()}I", *array_uint8.shape)
    return header + array_uint8.numpy().tobytes()


def test_read_idx_round_trip_and_truncation(tmp_path):
    x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    good = tmp_path / "x.gz"
    good.write_bytes(gzip.compress(_idx_bytes(x)))
    assert torch.equal(read_idx(good), x)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(_idx_bytes(x)[:-10]))
    with pytest.raises(DataError, match="needs"):
        read_idx(bad)
    notidx = tmp_path / "n.gz"
    notidx.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="not a uint8 IDX"):
        read_idx(notidx)
    short_header = tmp_path / "h.gz"  # 3 dimensions announced, 2 bytes of them present
    short_header.write_bytes(gzip.compress(_idx_bytes(x)[:6]))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(short_header)


def test_mnist_with_wrong_content_is_rejected(isolated_data):
    (isolated_data / "mnist").mkdir()
    x = torch.zeros((2, 28, 28), dtype=torch.uint8)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (isolated_data / "mnist" / name).write_bytes(gzip.compress(_idx_bytes(x)))
    with pytest.raises(DataError, match="md5 of the decompressed content"):
        mnist()


def test_content_md5_applies_to_a_download_in_progress(tmp_path, monkeypatch):
    """A .gz registered by the md5 of its content verifies by that content under any name,
    including the temporary `<name>.XXXX.part` a download is checked as (a mirror may serve
    the same content compressed differently)."""
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    content = b"same content, compressed twice"
    spec = store.RemoteFile("x-ubyte.gz", urls=(), md5=hashlib.md5(gzip.compress(content, 9)).hexdigest(),
                            content_md5=hashlib.md5(content).hexdigest())
    part = tmp_path / "x-ubyte.gz.abc123.part"
    part.write_bytes(gzip.compress(content, 1))  # other bytes, same content
    store.verify_file(part, spec, remember=False)
    part.write_bytes(gzip.compress(b"other content"))
    with pytest.raises(DataError, match="md5 of the decompressed content"):
        store.verify_file(part, spec, remember=False)


@requires_mnist
def test_mnist_real_copy():
    x_train, y_train, x_test, y_test = mnist(num_test=100)
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (100, 1, 28, 28)
    assert 0 <= x_train.min() and x_train.max() == 1
    # the official order begins 5 0 4 1 9 2 1 3 1 4 (train) and 7 2 1 0 4 (test)
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


# ---------------------------------------------------------------- VOC, arithmetic, captions

def test_voc_transform_on_synthetic_image(isolated_data):
    from PIL import Image
    folder = isolated_data / "voc2007"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (448, 224), (255, 255, 255)).save(folder / "img" / "a.jpg")
    boxes = [{"name": "dog", "xyxy": [100.0, 20.0, 200.0, 120.0]},
             {"name": "cat", "xyxy": [0.0, 0.0, 50.0, 50.0]}]  # outside the centre crop
    (folder / "voc07_train.json").write_text(json.dumps([["img/a.jpg", boxes]]))
    original = store.REGISTRY["voc2007"].files["voc07_train.json"]
    assert original.sha256 is None  # so the synthetic JSON passes verification
    ds = VOC2007Detection("train", image_size=224, max_boxes=4)
    path, image, gt = ds[0]
    assert image.shape == (3, 224, 224)
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(image.mean(dim=(1, 2)), white, atol=1e-2)
    # 448x224 -> shorter side already 224; centre crop keeps x in [112, 336)
    assert gt.shape == (4, 5)
    assert torch.allclose(gt[0], torch.tensor([0.0, 20.0, 88.0, 120.0, 11.0]))
    assert torch.all(gt[1:] == -1)


def test_voc_course_server_paths_and_a_partial_copy(isolated_data):
    """The course's server JSON writes "./here/VOCdevkit/..." (its loader strips the prefix): such
    paths resolve like plain ones. An image missing from an otherwise present copy is a
    DataError that names the file and where to get the tree, not a bare FileNotFoundError."""
    from PIL import Image
    folder = isolated_data / "voc2007"
    (folder / "VOCdevkit" / "JPEGImages").mkdir(parents=True)
    Image.new("RGB", (240, 240), (0, 0, 0)).save(folder / "VOCdevkit" / "JPEGImages" / "a.jpg")
    box = [{"name": "dog", "xyxy": [10.0, 20.0, 30.0, 40.0]}]
    (folder / "voc07_train.json").write_text(json.dumps([["./here/VOCdevkit/JPEGImages/a.jpg", box],
                                                         ["./here/VOCdevkit/JPEGImages/b.jpg", box]]))
    ds = VOC2007Detection("train", image_size=224, max_boxes=2)
    path, image, gt = ds[0]
    assert path == str(folder / "VOCdevkit" / "JPEGImages" / "a.jpg") and image.shape == (3, 224, 224)
    assert ds.instances[1][0] == "VOCdevkit/JPEGImages/b.jpg"
    with pytest.raises(DataError, match=r"(?s)b\.jpg is missing.*VOCdevkit/VOC2007 tree.*Get it from: http"):
        ds[1]


def test_voc_transform_scales_and_crops_a_portrait_image(isolated_data):
    """A 300 x 500 (w x h) image: the shorter side is scaled to 224 (x 224/300; 500 -> 373 rows)
    and the centre crop drops (373 - 224) // 2 = 74 rows at the top. A red rectangle drawn where
    its box says must land where the mapped box says."""
    from PIL import Image, ImageDraw
    folder = isolated_data / "voc2007"
    (folder / "img").mkdir(parents=True)
    img = Image.new("RGB", (300, 500), (255, 255, 255))
    ImageDraw.Draw(img).rectangle([60, 150, 199, 399], fill=(255, 0, 0))  # pixels 60..199 x 150..399
    img.save(folder / "img" / "p.png")
    boxes = [{"name": "dog", "xyxy": [60.0, 150.0, 200.0, 400.0]}]
    (folder / "voc07_train.json").write_text(json.dumps([["img/p.png", boxes]]))
    _, image, gt = VOC2007Detection("train", image_size=224, max_boxes=2)[0]
    x1, x2 = 60 * 224 / 300, 200 * 224 / 300  # 44.8, 149.3
    y1, y2 = 150 * 373 / 500 - 74, min(400 * 373 / 500 - 74, 224)  # 37.9, 224 (clipped from 224.4)
    assert torch.allclose(gt[0], torch.tensor([x1, y1, x2, y2, 11.0]), atol=1e-4)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1)
    rgb = image.reshape(3, -1) * std + torch.tensor([0.485, 0.456, 0.406]).view(3, 1)
    red = ((rgb[0] > 0.9) & (rgb[1] < 0.1)).reshape(224, 224)
    rows, cols = red.nonzero().unbind(1)
    # bilinear resizing blurs the edges by about a pixel
    assert abs(cols.min() - x1) <= 1.5 and abs(cols.max() + 1 - x2) <= 1.5
    assert abs(rows.min() - y1) <= 1.5 and rows.max() == 223


@pytest.mark.skipif(not shared_data_available("voc2007", "voc07_val.json"), reason="VOC not in $EECS598_DATA")
def test_voc_real_copy():
    ds = VOC2007Detection("val", num_images=5)
    assert len(ds) == 5
    for _, image, gt in ds:
        assert image.shape == (3, 224, 224)
        real = gt[gt[:, 4] >= 0]
        assert len(real) >= 1 and real[:, :4].min() >= 0 and real[:, :4].max() <= 224
        assert torch.all(real[:, 2] > real[:, 0]) and torch.all(real[:, 3] > real[:, 1])


@pytest.mark.skipif(not shared_data_available("arithmetic"), reason="arithmetic set not in $EECS598_DATA")
def test_arithmetic_real_copy():
    data = arithmetic_expressions()
    assert len(data["inp_expression"]) == len(data["out_expression"]) == 5000
    assert data["inp_expression"][0] == "BOS NEGATIVE 30 subtract NEGATIVE 34 EOS"
    assert data["out_expression"][0] == "BOS POSITIVE 04 EOS"


def test_arithmetic_wrong_checksum(isolated_data):
    """A file of the right size and keys but other content fails on its checksum (an empty "{}"
    would fail on its size or keys even without one)."""
    (isolated_data / "arithmetic").mkdir()
    size = store.REGISTRY["arithmetic"].files["two_digit_op.json"].size
    content = json.dumps({"inp_expression": [], "out_expression": []})
    (isolated_data / "arithmetic" / "two_digit_op.json").write_text(content + " " * (size - len(content)))
    with pytest.raises(DataError, match="sha256 mismatch"):
        arithmetic_expressions()


def test_caption_folder_errors(isolated_data):
    folder = isolated_data / "mycaps"
    (folder / "Images").mkdir(parents=True)
    (folder / "captions.txt").write_text("img,text\na.jpg,hello\n")
    with pytest.raises(DataError, match="header"):
        caption_folder("mycaps")
    (folder / "captions.txt").write_text("image,caption\na.jpg,hello, world\n")
    with pytest.raises(DataError, match="missing"):
        caption_folder("mycaps")
    (folder / "Images" / "a.jpg").write_bytes(b"")
    assert caption_folder("mycaps") == [(folder / "Images" / "a.jpg", ["hello, world"])]


def test_flickr8k_1k_checksum_mismatch_explains_the_subset(isolated_data):
    """A different captions.txt (e.g. the full Kaggle Flickr8k's) under flickr8k-1k: there is
    nothing to fetch again, so the message says which copy the name expects and how to load
    another folder under another name (which then loads, unchecksummed)."""
    for name in ("flickr8k-1k", "flickr8k-full"):
        (isolated_data / name / "Images").mkdir(parents=True)
        (isolated_data / name / "Images" / "a.jpg").write_bytes(b"")
        (isolated_data / name / "captions.txt").write_text("image,caption\na.jpg,a dog runs\n")
    with pytest.raises(DataError) as err:
        caption_folder("flickr8k-1k")
    msg = str(err.value)
    assert "sha256 mismatch" in msg and "fetch it again" not in msg
    assert "1,000-image subset" in msg and "different name" in msg and "caption_dataset('<name>')" in msg
    assert caption_folder("flickr8k-full") == [(isolated_data / "flickr8k-full" / "Images" / "a.jpg", ["a dog runs"])]


def test_mismatch_of_a_file_without_url_does_not_say_fetch_again(isolated_data, monkeypatch):
    (isolated_data / "toy").mkdir()
    (isolated_data / "toy" / "blob.bin").write_bytes(b"x")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", sha256="0" * 64)])
    with pytest.raises(DataError, match="no download URL") as err:
        store.fetch("toy", "blob.bin")
    assert "fetch it again" not in str(err.value)


def test_caption_dataset_image_cache_serves_any_split(isolated_data, monkeypatch):
    """The resized-image cache holds all images in name order, independent of num_heldout: after
    a load with one split, a load with another (from the cache) still pairs every image with its
    own name. Each image is one flat colour that encodes its index (brute-force reference). A
    replaced photo, under the same name, is decoded again."""
    from PIL import Image

    from eecs598.data import caption_dataset

    folder = isolated_data / "toycaps"
    (folder / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(6):
        Image.new("RGB", (12, 10), (40 * i, 0, 0)).save(folder / "Images" / f"im{i}.png")
        lines += [f"im{i}.png,a red picture number {i}", f"im{i}.png,a picture"]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    loads = []
    real_load = text_mod.load_images_uint8
    monkeypatch.setattr(text_mod, "load_images_uint8", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    for num_heldout in (2, 4, 1):
        data = caption_dataset("toycaps", image_size=8, num_heldout=num_heldout)
        for split in ("train", "test"):
            red = [40 * int(n[2]) for n in data[f"{split}_names"]]
            assert data[f"{split}_images"][:, 0, 4, 4].tolist() == red, (num_heldout, split)
        assert len(data["test_names"]) == num_heldout
    assert len(loads) == 1  # decoded once, then served from the cache for every split
    Image.new("RGB", (12, 10), (0, 0, 200)).save(folder / "Images" / "im3.png")  # a photo replaced
    data = caption_dataset("toycaps", image_size=8, num_heldout=2)
    assert len(loads) == 2 and data["train_images"][1, :, 4, 4].tolist() == [0, 0, 200]


def test_caption_dataset_max_side_shrinks_only_larger_photos_first(isolated_data):
    """max_side: a 40 x 20 photo is shrunk to 20 x 10 (and re-encoded as JPEG) before the
    resize, a 12 x 10 one is not. The large photo is a 1-pixel checkerboard, so the two paths
    give about the same mean but not the same pixels; the cached tensors are separate."""
    from PIL import Image

    from eecs598.data import caption_dataset

    folder = isolated_data / "toycaps"
    (folder / "Images").mkdir(parents=True)
    board = Image.new("L", (40, 20))
    board.putdata([255 * ((x + y) % 2) for y in range(20) for x in range(40)])
    board.convert("RGB").save(folder / "Images" / "a_big.png")
    Image.new("RGB", (12, 10), (90, 0, 0)).save(folder / "Images" / "b_small.png")
    (folder / "captions.txt").write_text("image,caption\na_big.png,a board\nb_small.png,a red square\n")
    plain = caption_dataset("toycaps", image_size=8, num_heldout=1)
    shrunk = caption_dataset("toycaps", image_size=8, num_heldout=1, max_side=20)
    assert plain["max_side"] is None and shrunk["max_side"] == 20 and "20 px" in shrunk["source"]
    assert plain["shrink"] is None and shrunk["shrink"] == "max20q75"
    assert torch.equal(plain["train_images"], shrunk["train_images"])  # b_small: 12 px, not shrunk
    big_plain, big_shrunk = plain["test_images"][0].float(), shrunk["test_images"][0].float()
    assert abs(big_plain.mean() - big_shrunk.mean()) < 20
    assert not torch.equal(big_plain, big_shrunk)
    assert sorted(p.name for p in store.cache_dir().glob("toycaps_images_8*.pt")) == [
        "toycaps_images_8.pt", "toycaps_images_8_max20q75.pt"]


def test_caption_loaders_are_exported():
    """The package exports every loader the assignments' READMEs name (A4: eecs598.data.caption_dataset)."""
    import eecs598.data
    from eecs598.data import text

    for name in ("caption_folder", "caption_dataset", "coco_captions", "arithmetic_expressions"):
        assert getattr(eecs598.data, name) is getattr(text, name)


@pytest.mark.skipif(not shared_data_available("flickr8k-1k"), reason="Flickr8k subset not in $EECS598_DATA")
def test_caption_folder_real_copy():
    items = caption_folder("flickr8k-1k")
    assert len(items) == 1000 and all(len(caps) == 5 for _, caps in items)
    assert all(path.is_file() for path, _ in items[:20])


class _NotATensor:  # a pickled object that weights_only loading refuses
    pass


def test_coco_captions_loads_tensors_without_running_pickle_code(tmp_path, monkeypatch):
    """coco.pt is read with weights_only=True: the course's content (tensors, a vocab of lists,
    dicts and strings) loads; a file with other objects is refused unless trusted explicitly."""
    from eecs598.data import text
    vocab = {"idx_to_token": ["<NULL>", "<START>", "<END>", "<UNK>", "a"],
             "token_to_idx": {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4}}
    good = {"train_images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "train_captions": torch.zeros(2, 17,
            dtype=torch.long), "val_images": torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
            "val_captions": torch.zeros(1, 17, dtype=torch.long), "vocab": vocab}
    path = tmp_path / "coco.pt"
    torch.save(good, path)
    monkeypatch.setattr(text.store, "fetch", lambda *a, **k: path)
    monkeypatch.delenv(text.TRUST_PICKLES_ENV, raising=False)
    data = text.coco_captions()
    assert data["vocab"] == vocab and torch.equal(data["train_captions"], good["train_captions"])

    torch.save(dict(good, extra=_NotATensor()), path)
    with pytest.raises(DataError, match=text.TRUST_PICKLES_ENV):
        text.coco_captions()
    monkeypatch.setenv(text.TRUST_PICKLES_ENV, "1")
    assert isinstance(text.coco_captions()["extra"], _NotATensor)


def test_shared_data_available_looks_in_the_default_root_and_the_download_cache(monkeypatch, tmp_path):
    from eecs598.testing import shared_data_available

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("EECS598_DATA", raising=False)
    monkeypatch.delenv("EECS598_CACHE", raising=False)
    assert not shared_data_available("mnist")
    (home / ".cache" / "eecs598" / "data" / "mnist").mkdir(parents=True)
    assert shared_data_available("mnist")  # the default data root, no variable set
    monkeypatch.setenv("EECS598_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    assert not shared_data_available("voc2007", "voc07_val.json")
    downloaded = tmp_path / "cache" / "downloads" / "voc2007"
    downloaded.mkdir(parents=True)
    (downloaded / "voc07_val.json").write_text("[]")
    assert shared_data_available("voc2007", "voc07_val.json")  # fetched into the cache


def _tar_with(path, members):
    with tarfile.open(path, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("with_data_filter", [True, False])
def test_extract_tar_extracts_and_refuses_paths_outside_dest(tmp_path, monkeypatch, with_data_filter):
    from eecs598.data.voc import extract_tar

    if not with_data_filter:  # the branch for Pythons without tarfile's extraction filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    good, evil = tmp_path / "good.tar", tmp_path / "evil.tar"
    _tar_with(good, [("VOCdevkit/VOC2007/a.txt", b"ok")])
    _tar_with(evil, [("VOCdevkit/b.txt", b"fine"), ("../outside.txt", b"escape")])
    extract_tar(good, tmp_path / "dest")
    assert (tmp_path / "dest" / "VOCdevkit" / "VOC2007" / "a.txt").read_bytes() == b"ok"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["VOCdevkit"]  # no staging left
    with pytest.raises(DataError, match="unsafe"):  # tarfile's OutsideDestinationError, or our check
        extract_tar(evil, tmp_path / "dest2")
    assert not (tmp_path / "outside.txt").exists() and not list((tmp_path / "dest2").iterdir())


def test_extract_tar_is_all_or_nothing(tmp_path):
    """A truncated archive (an interrupted download) raises DataError and leaves no half tree,
    and a complete one replaces what an interrupted extraction left."""
    from eecs598.data.voc import extract_tar

    full = tmp_path / "full.tar"
    _tar_with(full, [(f"VOCdevkit/VOC2007/JPEGImages/{i:06d}.jpg", bytes(2000)) for i in range(20)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:20000])
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"cut\.tar: cannot extract it .*delete it and fetch it again"):
        extract_tar(cut, dest)
    assert not list(dest.iterdir())
    (dest / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    (dest / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000000.jpg").write_bytes(b"half")  # an old, cut tree
    extract_tar(full, dest)
    images = sorted((dest / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir())
    assert len(images) == 20 and all(p.stat().st_size == 2000 for p in images)


@requires_cifar
def test_preprocess_cifar10_centres_every_split_with_the_per_channel_training_mean():
    """From the raw uint8 images: every split / 255 minus the per-channel mean of the training
    images (train + validation), the test split included."""
    data = preprocess_cifar10(show_examples=False, flatten=False, num_train=1000, num_test=200,
                              dtype=torch.float64, device="cpu")
    raw = cifar_mod.load_cifar10_uint8()
    x_train, x_test = raw["x_train"][:1000].double() / 255, raw["x_test"][:200].double() / 255
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(torch.cat([data["X_train"], data["X_val"]]), x_train - mean, atol=1e-12)
    assert torch.allclose(data["X_test"], x_test - mean, atol=1e-12)


def test_caption_dataset_vocabulary_and_image_indices_come_from_the_training_split(isolated_data):
    """A word only the held-out captions use stays out of the vocabulary, and the training
    captions index the training images (0, 0, 1, 1), not all images."""
    from PIL import Image

    from eecs598.data import caption_dataset

    folder = isolated_data / "toycaps"
    (folder / "Images").mkdir(parents=True)
    lines = ["image,caption"]
    captions = {"im0.png": ["zebra zebra", "zebra"], "im1.png": ["a dog", "a dog runs"],
                "im2.png": ["a cat", "a cat runs"]}
    for i, (name, texts) in enumerate(captions.items()):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / "Images" / name)
        lines += [f"{name},{t}" for t in texts]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    data = caption_dataset("toycaps", image_size=4, num_heldout=1, min_count=2)
    assert data["test_names"] == ["im0.png"] and "zebra" not in data["vocab"]["token_to_idx"]
    assert data["train_image_idxs"].tolist() == [0, 0, 1, 1]


def test_a_local_cifar_copy_is_checksummed_before_it_is_decoded(isolated_data):
    (isolated_data / "cifar10").mkdir()
    with zipfile.ZipFile(isolated_data / "cifar10" / "cifar10-jpeg.zip", "w") as z:
        z.writestr("readme.txt", "not the project's copy")
    with pytest.raises(DataError, match="sha256 mismatch"):
        cifar_mod.load_cifar10_uint8()



def test_a_stalled_download_times_out_and_is_announced_before_it_connects(isolated_data, monkeypatch, capsys):
    """Each URL is opened with the short socket timeout (a network that drops packets fails in
    seconds per mirror), and the URL is printed before connecting."""
    monkeypatch.delenv("EECS598_OFFLINE")
    _register(monkeypatch, "toy", [store.RemoteFile("blob.bin", urls=("https://stalled.invalid/blob.bin",),
                                                    sha256="0" * 64)])
    timeouts = []

    def urlopen(url, timeout=None):
        assert "Downloading blob.bin from https://stalled.invalid/blob.bin" in capsys.readouterr().out
        timeouts.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(store.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="TimeoutError"):
        store.fetch("toy", "blob.bin")
    assert timeouts == [store.DOWNLOAD_TIMEOUT_S] and store.DOWNLOAD_TIMEOUT_S <= 30


def test_an_incomplete_extracted_cifar_folder_neither_hides_another_copy_nor_errors_obscurely(isolated_data):
    """An interrupted `tar xzf` leaves cifar-10-batches-py/ with batch files missing: the loader
    says so (not a bare FileNotFoundError) after looking for the archive or the JPEG copy beside it."""
    folder = isolated_data / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DataError, match=r"incomplete extracted archive \(missing data_batch_2, .*test_batch\)"):
        cifar_mod.load_cifar10_uint8()


def test_a_missing_file_without_url_gets_its_datasets_advice(isolated_data):
    with pytest.raises(DataError, match=r"(?s)not available.*no public URL.*Images/\*\.jpg.*caption_dataset\('<name>'\)"):
        store.fetch("flickr8k-1k", "captions.txt")


def test_an_undecodable_photo_is_named(tmp_path):
    from PIL import Image
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.new("RGB", (10, 8), (255, 0, 0)).save(good)
    bad.write_bytes(good.read_bytes()[:30])
    assert text_mod.load_images_uint8([good], size=4)[0, 0, 0, 0] == 255
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode this image"):
        text_mod.load_images_uint8([good, bad], size=4)
