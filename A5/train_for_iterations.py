"""Train an A5 detector under one of its protocols for a fixed number of iterations (instead of
the protocol's time budget), then evaluate it on voc07_val.

    python A5/train_for_iterations.py fcos --iters 3000 [--protocol gpu] [--num-val N]
                                      [--seed S] [--input-normalization lite]
                                      [--threads T] [--device cpu] [--json PATH]
    python A5/train_for_iterations.py faster_rcnn --iters 1000 ...

What it is for: the GPU protocols (end-to-end fine-tuning) are meant to run 6 minutes on a
GPU, and no GPU has been lent so far. On a CPU this trains the same recipe (settings, schedule
over `--iters`, seed 0, float32 unless the CPU has AMX) for as many iterations as one asks, so
that the recipe's accuracy at a given number of iterations is known before a GPU run; how many
iterations the GPU fits into its 360 s stays to be measured there. The protocol's learning-rate
schedule spans `--iters` (`max_iters`), with no time limit. Nothing is checkpointed and no row
is written to results/; `--json` saves the figures.

`--protocol` defaults to the GPU protocol ("gpu" for FCOS, "cuda" for Faster R-CNN; either name
works for both); "cpu" gives the CPU protocol at the same number of iterations, to compare.
`--seed` (default 0) seeds the initialization and the batches: runs differ by seed by several
points (A5/README.md). `--input-normalization` replaces the protocol's input scaling for the
EfficientNet-Lite0 backbone: "lite", the (pixel - 127) / 128 its weights were trained with (the
CPU protocols'), or "imagenet", the ImageNet-normalized input unchanged (the GPU protocols';
`eecs598.backbones`).
"""
import argparse
import json
import time
from pathlib import Path

import torch

import fcos_experiments
import rcnn_experiments
from eecs598 import backbones
from eecs598.utils import device_name, get_device

MODULES = {"fcos": fcos_experiments, "faster_rcnn": rcnn_experiments}


def train_and_evaluate(kind, iters, protocol="gpu", num_val=None, device=None, verbose=True, seed=0,
                       input_normalization=None):
    """Train `kind` ("fcos" / "faster_rcnn") under `protocol` for `iters` iterations with `seed`,
    evaluate on the first `num_val` voc07_val images (None: all 2,510); `input_normalization`:
    the EfficientNet-Lite0 backbone's input scaling (None: the protocol's). Returns a
    JSON-ready dict: kind, protocol, iters, batch_size, seed, input_normalization, train_s, map,
    map_07, num_val, images_per_s, eval_batch_size, device, threads, torch_version, final_loss
    (mean of the last 50 iterations), ap_per_class."""
    module = MODULES[kind]
    device = get_device(device)
    overrides = {"max_iters": iters, "time_limit": None, "seed": seed}
    if num_val is not None:
        overrides["num_val"] = num_val
    if input_normalization is not None:
        overrides["input_normalization"] = input_normalization
    start = time.perf_counter()
    trained = module.train(device, protocol, verbose=verbose, checkpoint=False, overrides=overrides)
    train_s = time.perf_counter() - start
    out = module.train_and_evaluate(device, verbose=verbose, trained=trained)
    result = out["eval"]  # common.evaluate_detector's dict, for either detector
    losses = out["train"]["loss_history"][-50:]
    return {"kind": kind, "protocol": out["protocol"], "iters": out["train"]["iters"],
            "batch_size": out["settings"]["batch_size"], "seed": seed,
            "input_normalization": trained["detector"].backbone.backbone.input_normalization,
            "train_s": round(train_s, 1),
            "map": result["map"], "map_07": result["map_07"], "num_val": out["num_val"],
            "images_per_s": result["images_per_s"], "eval_batch_size": result["batch_size"],
            "device": device_name(device), "threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "final_loss": sum(losses) / max(len(losses), 1),
            "ap_per_class": result["ap_per_class"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(MODULES))
    parser.add_argument("--iters", type=int, required=True, help="training iterations (the schedule spans them)")
    parser.add_argument("--protocol", default="gpu", help='"gpu" / "cuda" (end-to-end) or "cpu" (frozen backbone)')
    parser.add_argument("--num-val", type=int, default=None, help="evaluate on the first N val images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialization and the batches (default 0)")
    parser.add_argument("--input-normalization", choices=backbones.INPUT_NORMALIZATIONS, default=None,
                        help="EfficientNet-Lite0's input scaling (default: the protocol's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: CUDA if present, else CPU")
    parser.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = train_and_evaluate(args.kind, args.iters, args.protocol, args.num_val, args.device, seed=args.seed,
                             input_normalization=args.input_normalization)
    print(f"{args.kind} ({out['protocol']} protocol, seed {out['seed']}, {out['input_normalization']} input), "
          f"{out['iters']} iterations x {out['batch_size']} in "
          f"{out['train_s']:.0f} s on {out['device']}: mAP@0.5 {100 * out['map']:.2f}% "
          f"(11-point {100 * out['map_07']:.2f}%) on {out['num_val']} val images")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
