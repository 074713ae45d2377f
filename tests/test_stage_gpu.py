"""tools/stage_gpu.py: what it stages and its check against the device tool's 64 MiB limit."""
import json
import shutil
import subprocess

import pytest

import tools.stage_gpu as sg


def test_folder_bytes_counts_nested_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"1" * 1000)
    (tmp_path / "y.json").write_bytes(b"2" * 24)
    assert sg.folder_bytes(tmp_path) == 1024


def test_tracked_bytes_counts_tracked_and_untracked_but_not_ignored_files(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.pt\n")  # 5 bytes
    (tmp_path / "tracked.py").write_bytes(b"t" * 100)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.py", ".gitignore"], check=True)
    (tmp_path / "new.py").write_bytes(b"n" * 10)       # untracked, not ignored: the device tool copies it
    (tmp_path / "weights.pt").write_bytes(b"w" * 1000)  # ignored: not copied
    monkeypatch.setattr(sg, "ROOT", tmp_path)
    assert sg.tracked_bytes() == 115


def test_limit_is_64_mib_inclusive(tmp_path, monkeypatch, capsys):
    staged = tmp_path / ".gpu" / "cifar10"
    staged.mkdir(parents=True)
    monkeypatch.setattr(sg, "ROOT", tmp_path)
    monkeypatch.setattr(sg, "stage_cifar", lambda data: staged)
    monkeypatch.setattr(sg, "tracked_bytes", lambda: 60 * 2**20)
    (staged / "blob").write_bytes(b"\0" * (4 * 2**20))  # 64 MiB in all
    assert sg.main(["--what", "a3"]) == 0
    assert "fits the 64 MiB limit" in capsys.readouterr().out
    (staged / "one_more_byte").write_bytes(b"\0")
    assert sg.main(["--what", "a3"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_stage_voc_train_copies_the_listed_training_images(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "voc2007" / "JPEGImages").mkdir(parents=True)
    listing = [["JPEGImages/000005.jpg", []], ["JPEGImages/000007.jpg", []]]
    (data / "voc2007" / "voc07_train.json").write_text(json.dumps(listing))
    for name in ("000005.jpg", "000007.jpg", "000009.jpg"):  # 000009: a validation image
        (data / "voc2007" / "JPEGImages" / name).write_bytes(name.encode())
    monkeypatch.setattr(sg, "STAGE", tmp_path / ".gpu")
    folder = sg.stage_voc_train(data)
    assert folder == tmp_path / ".gpu" / "voc_train"
    staged = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert staged == ["voc2007/JPEGImages/000005.jpg", "voc2007/JPEGImages/000007.jpg", "voc2007/voc07_train.json"]
    assert (folder / "voc2007" / "JPEGImages" / "000007.jpg").read_bytes() == b"000007.jpg"
