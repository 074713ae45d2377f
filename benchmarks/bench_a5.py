"""A5 speed benchmark: one training iteration of each detector, and the RPN's NMS two ways.

    python benchmarks/bench_a5.py [--device cpu|cuda] [--protocol gpu|cpu] [--steps 20] [--repeats 3]
                                  [--threads N] [--json PATH]

1. A training iteration (losses, backward, gradient clipping, SGD step: `detection_training.train_loop`)
   of FCOS and of Faster R-CNN under the device's protocol (`fcos_experiments.settings`,
   `rcnn_experiments.settings`): on the CPU the CPU protocol (frozen backbone: the FPN and heads
   train on cached backbone features, here random features of the cached shapes), elsewhere the
   GPU protocol (the whole detector on 224x224 images held on the device, bf16 autocast on GPUs
   that compute in it natively). Data loading is not timed. `--protocol` picks the other
   protocol (the GPU protocol on the CPU is slow, but exercises its code).
2. Faster R-CNN's iteration once more with the RPN's NMS run the other way: per image and level
   on the host (`common.nms`, the CPU's default) or for all images of a level at once on the
   device (`common.nms_masks`, the default elsewhere; `common._NMS_ON_HOST_DEVICES`). The ratio
   says whether the default suits the device.

Synthetic data: random images (or features), 1-6 random GT boxes per image, padded to 40 rows.
Per figure: `--steps` iterations after `--warmup` untimed ones, the device synchronized only
before and after (as in training, where the host runs ahead of the device), the median of
`--repeats` such runs, in milliseconds per iteration. Records (assignment "A5"):
fcos_train_step_ms_<tag>, faster_rcnn_train_step_ms_<tag> (the default NMS) and
faster_rcnn_step_speedup_nms_masks_vs_host_<tag> (iteration time with `nms` per image divided by
that with `nms_masks`: above 1, the device-side NMS is faster), with tag cpu_<n>thread(s) or
cuda, plus _<protocol>_protocol when `--protocol` is not the device's own. Quick mode
(EECS598_QUICK=1) shrinks the protocols and the counts to a smoke run.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "A5"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402

# What `make bench` (benchmarks/run_all.py) runs: the command behind the committed CPU rows, and
# the CUDA rows where a GPU is present.
MAKE_BENCH = [["--device", "cpu", "--threads", "1"]] + ([["--device", "cuda"]] if torch.cuda.is_available() else [])

DATA = ("synthetic: random 224x224 images (GPU protocol) or random backbone features of their shapes "
        "(CPU protocol), 1-6 random GT boxes of 20 classes per image")
IMAGE_SIZE = (224, 224)
POOL = 64  # synthetic images (or feature sets) the batches are drawn from


def random_gt(num_images, generator, rows=40):
    """(num_images, rows, 5) GT boxes: 1-6 random boxes of 10-150 px per image, padded with -1."""
    gt = torch.full((num_images, rows, 5), -1.0)
    for b in range(num_images):
        n = int(torch.randint(1, 7, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 150
        wh = torch.rand(n, 2, generator=generator) * 140 + 10
        gt[b, :n, :2], gt[b, :n, 2:4] = xy, (xy + wh).clamp(max=IMAGE_SIZE[0])
        gt[b, :n, 4] = torch.randint(0, 20, (n,), generator=generator).float()
    return gt


def synthetic_cache(detector, generator):
    """A `detection_training.cache_backbone_features`-like dict of random features (float16)."""
    channels = detector.backbone.backbone.out_channels
    feats = {level: torch.randn(POOL, c, IMAGE_SIZE[0] // s, IMAGE_SIZE[1] // s, generator=generator).half()
             for (level, c), s in zip(channels.items(), (8, 16, 32))}
    return {"feats": feats, "gt": random_gt(POOL, generator), "image_size": IMAGE_SIZE}


def train_steps(kind, detector, s, device, data, iters):
    """`iters` training iterations of `detector` under settings `s` (the protocol's own loop).
    Returns the seconds they took, the device synchronized before and after."""
    import detection_training as dt
    import fcos_experiments as fx
    import rcnn_experiments as rx

    s = {**s, "max_iters": iters, "time_limit": None, "warmup_iters": 0}
    quiet = {"log_period": 10**9, "verbose": False}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    if s["freeze_backbone"]:  # the CPU protocol: cached features
        train = fx.train_on_cached_features if kind == "fcos" else rx.train_on_cached_features
        train(detector, data, s, device, **quiet)
    elif kind == "fcos":
        fx.train_end_to_end(detector, data["images"], data["gt"], s, device, **quiet)
    else:  # Faster R-CNN's GPU protocol trains from a DataLoader; here the same images on the device
        gen = torch.Generator(device=device).manual_seed(0)

        def next_batch():
            idx = torch.randint(POOL, (s["batch_size"],), device=device, generator=gen)
            return data["images"][idx].float(), data["gt"][idx]

        dt.train_loop(detector, next_batch, detector, s, device, **quiet)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def time_detector(kind, device, protocol, steps, warmup, repeats, nms_on_host=None):
    """Median milliseconds per training iteration of `kind` ("fcos" or "faster_rcnn") under
    `protocol` ("gpu" or "cpu"); `nms_on_host` (Faster R-CNN) forces the RPN's NMS path.
    Returns (ms, every run's ms, settings)."""
    import common
    import fcos_experiments as fx
    import rcnn_experiments as rx

    mod = fx if kind == "fcos" else rx
    s = dict(mod.settings(protocol))
    if kind == "faster_rcnn" and device.type == "cuda":  # as rcnn_experiments.train's GPU protocol
        s["amp_bf16"] = "auto"
    torch.manual_seed(0)
    detector = (fx.build_fcos(s, pretrained=False) if kind == "fcos"
                else rx.build_detector(s, pretrained=False)).to(device)
    gen = torch.Generator().manual_seed(1)
    if s["freeze_backbone"]:
        data = synthetic_cache(detector, gen)
        data = {**data, "feats": {k: v.to(device) for k, v in data["feats"].items()}, "gt": data["gt"].to(device)}
    else:
        data = {"images": torch.randn(POOL, 3, *IMAGE_SIZE, generator=gen).to(device, torch.float16),
                "gt": random_gt(POOL, gen).to(device)}
    saved = common._NMS_ON_HOST_DEVICES
    if nms_on_host is not None:
        common._NMS_ON_HOST_DEVICES = (device.type,) if nms_on_host else ()
    try:
        if warmup:  # --warmup 0: none (train_steps' schedule needs at least one iteration)
            train_steps(kind, detector, s, device, data, warmup)
        runs = [1000 * train_steps(kind, detector, s, device, data, steps) / steps for _ in range(repeats)]
    finally:
        common._NMS_ON_HOST_DEVICES = saved
    return statistics.median(runs), runs, s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--protocol", choices=["gpu", "cpu"], default=None,
                        help="default: the device's own (cpu on the CPU, gpu elsewhere)")
    parser.add_argument("--steps", type=int, default=None, help="timed iterations per run (default 20; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 5; quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="merge the records into this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import common
    from eecs598.results import make_record, merge_records
    from eecs598.utils import device_name, get_device, pick

    device = get_device(args.device)
    steps = args.steps or pick(full=20, quick=2)
    warmup = args.warmup if args.warmup is not None else pick(full=5, quick=1)
    repeats = args.repeats or pick(full=3, quick=1)
    threads = torch.get_num_threads()
    own = "cpu" if device.type == "cpu" else "gpu"
    protocol = args.protocol or own
    tag = device.type if device.type != "cpu" else f"cpu_{threads}thread{'s' if threads > 1 else ''}"
    if protocol != own:
        tag += f"_{protocol}_protocol"
    name = device_name(device)
    timing = {"steps": steps, "warmup": warmup, "repeats": repeats, "statistic": "median", "cpu_threads": threads}

    records, t_start = [], time.time()

    def keep(record):  # written as soon as measured: a run cut short keeps what it has
        records.append(record)
        if args.json:
            merge_records(args.json, [record])

    fcos_ms, fcos_runs, fcos_s = time_detector("fcos", device, protocol, steps, warmup, repeats)
    print(f"FCOS ({fcos_s['protocol']} protocol): {fcos_ms:.1f} ms per iteration", flush=True)
    keep(make_record("A5", f"fcos_train_step_ms_{tag}", fcos_ms, "ms", DATA, name, time.time() - t_start,
                               details={**timing, "runs_ms": fcos_runs, "protocol": fcos_s["protocol"],
                                        "batch_size": fcos_s["batch_size"]}))
    default_on_host = device.type in common._NMS_ON_HOST_DEVICES
    per_path = {}
    for on_host in (default_on_host, not default_on_host):
        t0 = time.time()
        per_path[on_host] = time_detector("faster_rcnn", device, protocol, steps, warmup, repeats, nms_on_host=on_host)
        print(f"Faster R-CNN ({per_path[on_host][2]['protocol']} protocol), RPN NMS "
              f"{'per image on the host' if on_host else 'nms_masks on the device'}"
              f"{' (default)' if on_host == default_on_host else ''}: {per_path[on_host][0]:.1f} ms per iteration",
              flush=True)
        if on_host == default_on_host:
            ms, runs, s = per_path[on_host]
            keep(make_record(
                "A5", f"faster_rcnn_train_step_ms_{tag}", ms, "ms", DATA, name, time.time() - t0,
                details={**timing, "runs_ms": runs, "protocol": s["protocol"], "batch_size": s["batch_size"],
                         "rpn_nms": "nms per image" if on_host else "nms_masks"}))
    speedup = per_path[True][0] / per_path[False][0]
    print(f"nms_masks speed-up on the whole iteration: {speedup:.2f}x", flush=True)
    keep(make_record(
        "A5", f"faster_rcnn_step_speedup_nms_masks_vs_host_{tag}", speedup, "x", DATA, name, time.time() - t_start,
        details={**timing, "host_ms": per_path[True][0], "masks_ms": per_path[False][0],
                 "default": "nms per image" if default_on_host else "nms_masks"}))
    return records


if __name__ == "__main__":
    main()
