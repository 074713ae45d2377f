"""A5: training machinery shared by the FCOS and Faster R-CNN experiments (course infrastructure,
no solution code): `fcos_experiments.py` and `rcnn_experiments.py` both use it.

With a frozen ImageNet backbone, the c3/c4/c5 features of the training images never change, so
the CPU protocols compute them once (`cache_backbone_features`, optionally also for the mirrored
images) and train only the FPN and the heads on them (`train_on_cached_features`). The detector
itself is not changed: for each call its backbone extractor (`detector.backbone.backbone`, the
feature extractor inside `common.DetectorBackboneWithFPN`) is replaced by `CachedFeatures`, which
hands the cached features to the FPN, and the detector's own `forward(images, gt_boxes)` computes
the losses (`images` is a "meta" tensor: only its shape is read). Any detector whose `.backbone`
is a `DetectorBackboneWithFPN` and whose training forward uses the images only for their shape
works (FCOS and FasterRCNN do).

    load_voc                       VOC 2007 split at 224 px (the experiments' datasets)
    checkpoint_path                $EECS598_CACHE/checkpoints/A5/<name>
    cpu_has_fast_bf16 / use_bf16 / autocast_for   bf16 autocast policy of a settings dict
    eval_batch_size                images per inference call (1 on a one-thread CPU)
    lr_factor                      warmup + cosine over max(iteration, time) progress
    cache_backbone_features        frozen-backbone features of a dataset (+ mirror images)
    CachedFeatures / cached_backbone   the pass-through stand-in for the backbone extractor
    losses_from_cached_features    a detector's training losses from cached features
    train_loop                     SGD within an iteration/time budget (any batches, any losses)
    train_on_cached_features       train_loop on batches of cached features
    metric_suffix / devices_label / handoff_details / training_device_speed_record
                                   records of a detector trained elsewhere
    save_sharded / load_sharded    a state dict in files of bounded size (gpu_handoff.py)
    save_detection_figures         PR curves (PNG) and drawn detections (JPEG) of an evaluated detector

Settings dicts `s` (the experiments' protocols) provide: learning_rate, weight_decay, max_iters,
time_limit (seconds or None), warmup_iters, batch_size; optional: warmup_start (default 0.001),
grad_clip (default 10.0; None turns clipping off), amp_bf16 (True / "auto" / absent).
"""
import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

import common
from eecs598.data.voc import VOC2007Detection
from eecs598.results import make_record
from eecs598.utils import cpu_flags, device_name, get_device


def load_voc(split, num_images=None):
    """`VOC2007Detection(split)` at 224 px (at most 40 boxes), optionally its first `num_images`."""
    return VOC2007Detection(split, image_size=224, max_boxes=40, num_images=num_images)


def settings_digest(s):
    """8 hex digits naming a settings dict (part of a resume checkpoint's name: a run with other
    settings starts fresh instead of resuming a run it does not continue)."""
    return hashlib.sha256(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()[:8]


def checkpoint_path(name):
    """$EECS598_CACHE/checkpoints/A5/<name> (folder created; never inside the repository), or None
    when $EECS598_CACHE is not set."""
    root = os.environ.get("EECS598_CACHE")
    if not root:
        return None
    folder = os.path.join(root, "checkpoints", "A5")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


# ----------------------------------------------------------------------------- mixed precision
def cpu_has_fast_bf16():
    """True on CPUs with AMX bf16 tiles (oneDNN runs bf16 convolutions there ~2x faster than fp32)."""
    return "amx_bf16" in cpu_flags()


def cuda_has_fast_bf16(device):
    """True on GPUs with native bf16 (compute capability 8.0 and up: A100, H100, ...); a T4 or
    V100 (Colab's free GPUs) only emulates it, slower than float32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def use_bf16(s, device):
    """bf16 autocast for settings `s`: "amp_bf16" True (CUDA only), or "auto" (a GPU with native
    bf16, or a CPU with AMX); absent or False: never."""
    device = get_device(device)
    if s.get("amp_bf16") == "auto":
        return ((device.type == "cuda" and cuda_has_fast_bf16(device))
                or (device.type == "cpu" and cpu_has_fast_bf16()))
    return bool(s.get("amp_bf16")) and device.type == "cuda"


def autocast_for(s, device):
    """`torch.autocast` context (bf16) enabled when `use_bf16(s, device)`."""
    device = get_device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(s, device))


# ----------------------------------------------------------------------------- inference
def eval_batch_size(s, device):
    """Images per inference call on `device` for settings `s` (the device's protocol):
    s["eval_batch_size"], except 1 on a CPU running one thread. On this 2-core AMD EPYC
    (`common.predict_detections`, trained CPU-protocol weights, 400 val images, medians of 3
    interleaved rounds), batches help only with two threads: FCOS 67.8 images/s in batches of
    4 against 61.7 one at a time with two threads, but 36.8 against 43.6 with one; Faster R-CNN
    50.9 in batches of 2 against 39.2 with two threads, 23.8 against 27.2 with one."""
    if get_device(device).type == "cpu" and torch.get_num_threads() == 1:
        return 1
    return s.get("eval_batch_size", 1)


# ----------------------------------------------------------------------------- schedule
def lr_factor(it, elapsed, max_iters, time_limit=None, warmup_iters=0, warmup_start=0.001):
    """Learning-rate multiplier at iteration `it` after `elapsed` training seconds.

    progress = max(it / max_iters, elapsed / time_limit) (time ignored when time_limit is None
    or 0); factor = 0.5 * (1 + cos(pi * min(progress, 1))), times a linear warmup
    warmup_start + (1 - warmup_start) * it / warmup_iters while it < warmup_iters.
    Returns (factor, progress); training is over once progress >= 1.
    """
    progress = it / max_iters
    if time_limit:
        progress = max(progress, elapsed / time_limit)
    factor = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if it < warmup_iters:
        factor *= warmup_start + (1 - warmup_start) * it / warmup_iters
    return factor, progress


def set_backbone_input(detector, s):
    """Give the detector's backbone the input scaling of settings `s` ("input_normalization":
    "lite", EfficientNet-Lite0's own (pixel - 127) / 128, or "imagenet", the ImageNet-normalized
    input unchanged; absent: "imagenet", as detectors exported before the setting existed were
    trained; the backbone refuses what it cannot do). Returns `detector`."""
    detector.backbone.backbone.input_normalization = s.get("input_normalization", "imagenet")
    return detector


# ----------------------------------------------------------------------------- cached features
@torch.no_grad()
def cache_backbone_features(extractor, dataset, device, flip=False, batch_size=None,
                            store_dtype=torch.float16, store_device="cpu", bf16=False,
                            channels_last=False, verbose=False):
    """Run a frozen feature extractor (eval mode) once over `dataset` and keep its features.

    Args:
        extractor: images (B, 3, H, W) -> {"c3": ..., "c4": ..., "c5": ...}, e.g.
            `detector.backbone.backbone`.
        flip: also extract the features of every image mirrored horizontally (boxes mirrored
            with `common.hflip_boxes`); these copies follow the originals.
        batch_size: images per extractor call; None: 4 on the CPU, 32 elsewhere. (On the 2-core
            AMD EPYC, one thread, channels-last Lite0 takes 16 ms per image in batches of 4 and
            38 ms in batches of 32: a large batch's activations fall out of the core's cache.)
        store_dtype / store_device: where the features are kept (float16 halves the memory).
        bf16: run the extractor under bf16 autocast; channels_last: convert the extractor (in
            place) and its inputs to channels-last memory format.
    Returns:
        dict(feats={"c3": (M, C3, H/8, W/8), ...} in store_dtype on store_device,
             gt=(M, K, 5) float32 on store_device, image_size=(H, W), seconds), with
        M = len(dataset), or 2 * len(dataset) with `flip`.
    """
    device = get_device(device)
    if batch_size is None:
        batch_size = 4 if device.type == "cpu" else 32
    extractor.eval()
    if channels_last:
        extractor.to(device=device, memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    feats, gts = {}, []
    t0 = time.time()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        for mirrored in ((False, True) if flip else (False,)):
            for k, (_, images, gt) in enumerate(loader):
                images = images.to(device)
                if mirrored:
                    images, gt = images.flip(-1), common.hflip_boxes(gt, images.shape[-1])
                out = extractor(images.contiguous(memory_format=fmt))
                for level, f in out.items():
                    feats.setdefault(level, []).append(f.to(store_device, store_dtype).contiguous())
                gts.append(gt.to(store_device, torch.float32))
                if verbose and k % 50 == 0:
                    print(f"  features {k * batch_size}/{len(dataset)}{' (mirrored)' if mirrored else ''} "
                          f"({time.time() - t0:.0f}s)", flush=True)
    image_size = tuple(images.shape[-2:])
    return {"feats": {k: torch.cat(v) for k, v in feats.items()}, "gt": torch.cat(gts),
            "image_size": image_size, "seconds": time.time() - t0}


class CachedFeatures(nn.Module):
    """Stand-in for the backbone feature extractor of a `DetectorBackboneWithFPN`: returns the
    features set in `.feats` whatever it is called with (the detector's "images" then only
    serve for their shape)."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = dict(out_channels)
        self.feats = None

    def forward(self, images):
        return self.feats


@contextlib.contextmanager
def cached_backbone(detector):
    """Within the block, `detector.backbone.backbone` is a `CachedFeatures` (yielded); the real
    extractor is put back afterwards, also on errors."""
    fpn = detector.backbone
    real = fpn.backbone
    stand_in = CachedFeatures(real.out_channels)
    fpn.backbone = stand_in
    try:
        yield stand_in
    finally:
        fpn.backbone = real
        stand_in.feats = None


def _losses(detector, stand_in, feats, gt_boxes, image_size):
    stand_in.feats = feats
    images = torch.empty((gt_boxes.shape[0], 3, *image_size), device="meta")
    return detector(images, gt_boxes)


def losses_from_cached_features(detector, feats, gt_boxes, image_size):
    """The detector's training losses (its `forward(images, gt_boxes)` dict) for images of size
    `image_size` (H, W) whose backbone features {"c3", "c4", "c5"} (B, ...) are `feats`: the
    FPN, heads, matching and losses are exactly those of `detector(images, gt_boxes)`."""
    with cached_backbone(detector) as stand_in:
        return _losses(detector, stand_in, feats, gt_boxes, image_size)


def train_loop(detector, next_batch, loss_fn, s, device, log_period=50, verbose=True,
               checkpoint_path=None, checkpoint_period=500, generator=None):
    """SGD (momentum 0.9, s["weight_decay"]) on the trainable parameters of `detector` until the
    progress max(it / max_iters, elapsed / time_limit) of `lr_factor` reaches 1.

    Each iteration: learning rate s["learning_rate"] * lr_factor(...); `inputs, gt =
    next_batch()`; `losses = loss_fn(inputs, gt)` (a dict) under `autocast_for(s, device)`;
    the sum of its "loss*" entries is minimized, gradient norm clipped to
    s.get("grad_clip", 10.0) (None or 0: no clipping). The loop reads the losses back only
    every `log_period` iterations (and at iteration 1); `loss_fn` may synchronize on its own.

    With `checkpoint_path`, model, optimizer, `generator` state (the batch sampler's, if given),
    iteration, elapsed training time and history are saved every `checkpoint_period` iterations
    and at the end; a run restarted with the same path resumes there (the schedule depends only
    on iteration and elapsed time, so it continues too).

    Returns dict(loss_history [total loss per iteration], loss_parts {name: [per iteration]},
    log_period, iters, seconds (wall training time, summed over a resumed run's parts),
    resumed_at_s (training seconds already done when this call resumed; 0 for a fresh run),
    cpu_seconds (CPU time of this process in this call: on a shared CPU it tells how much of
    the wall-clock budget the run really got)).
    """
    device = get_device(device)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s["learning_rate"], momentum=0.9, weight_decay=s["weight_decay"])
    grad_clip = s.get("grad_clip", 10.0)
    history, parts, pending, names = [], {}, [], []
    it, elapsed_before = 0, 0.0
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        detector.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if generator is not None and state.get("generator") is not None:
            generator.set_state(state["generator"].cpu())
        it, elapsed_before = state["iteration"], state["elapsed"]
        history, parts = state["loss_history"], state["loss_parts"]
        if verbose:
            print(f"resumed from {checkpoint_path} at iteration {it} ({elapsed_before:.0f}s)")
    start, cpu_start = time.perf_counter(), time.process_time()

    def elapsed():
        return elapsed_before + time.perf_counter() - start

    def flush():  # move the pending per-iteration losses to the history (one device sync)
        values = torch.stack(pending).tolist()
        pending.clear()
        if not all(math.isfinite(v) for row in values for v in row):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {dict(zip(['total'] + names, values[-1]))}")
        history.extend(row[0] for row in values)
        for j, k in enumerate(names, 1):
            parts.setdefault(k, []).extend(row[j] for row in values)
        return len(values)

    def save():
        if checkpoint_path is not None:
            if pending:  # the saved history covers every iteration done
                flush()
            os.makedirs(os.path.dirname(os.path.abspath(checkpoint_path)), exist_ok=True)
            torch.save({"model": detector.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": None if generator is None else generator.get_state(),
                        "iteration": it, "elapsed": elapsed(),
                        "loss_history": history, "loss_parts": parts}, checkpoint_path + ".tmp")
            os.replace(checkpoint_path + ".tmp", checkpoint_path)

    while True:
        factor, progress = lr_factor(it, elapsed(), s["max_iters"], s.get("time_limit"),
                                     s["warmup_iters"], s.get("warmup_start", 0.001))
        if progress >= 1.0:
            break
        lr = s["learning_rate"] * factor
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, gt = next_batch()
        with autocast_for(s, device):
            losses = loss_fn(inputs, gt)
        names = [k for k in losses if k.startswith("loss")]
        total = sum(losses[k] for k in names)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        it += 1
        pending.append(torch.stack([total.detach().float()] + [losses[k].detach().float() for k in names]))
        if it % log_period == 0 or it == 1:
            n = flush()
            if verbose:
                print(f"iter {it:5d}  {elapsed():6.1f}s  lr {lr:.4f}  loss {sum(history[-n:]) / n:.3f}  "
                      + "  ".join(f"{k[5:]} {sum(v[-n:]) / n:.3f}" for k, v in parts.items()), flush=True)
        if it % checkpoint_period == 0:
            save()
    if pending:
        flush()
    save()
    return {"loss_history": history, "loss_parts": parts, "log_period": log_period, "iters": it,
            "seconds": elapsed(), "resumed_at_s": elapsed_before, "cpu_seconds": time.process_time() - cpu_start}


def train_on_cached_features(detector, cache, s, device, seed=0, log_period=50, verbose=True,
                             checkpoint_path=None, random_flip=False, checkpoint_period=500):
    """Train the FPN and heads of `detector` (frozen backbone) on `cache_backbone_features` output.

    Each iteration draws s["batch_size"] random cache entries (a generator seeded with `seed`;
    originals and mirrored copies alike); with `random_flip`, each entry's feature maps and boxes
    are also mirrored with probability 1/2 (an approximation of the mirrored image's features,
    the backbone being only roughly mirror-equivariant). Losses: `losses_from_cached_features`;
    optimization, schedule, logging and checkpoints: `train_loop` (same arguments, same result).
    """
    device = get_device(device)
    detector.to(device).train()
    feats, gts = cache["feats"], cache["gt"]
    num, W = gts.shape[0], cache["image_size"][1]
    gen = torch.Generator().manual_seed(seed)

    def next_batch():
        idx = torch.randint(num, (s["batch_size"],), generator=gen)
        flip = (torch.rand(s["batch_size"], generator=gen) < 0.5).to(device) if random_flip else None
        batch = {}
        for level, f in feats.items():
            f = f[idx.to(f.device)].to(device, torch.float32)
            batch[level] = f if flip is None else torch.where(flip[:, None, None, None], f.flip(-1), f)
        gt = gts[idx.to(gts.device)].to(device)
        if flip is not None:
            gt = torch.where(flip[:, None, None], common.hflip_boxes(gt, W), gt)
        return batch, gt

    with cached_backbone(detector) as stand_in:
        return train_loop(detector, next_batch,
                          lambda batch, gt: _losses(detector, stand_in, batch, gt, cache["image_size"]),
                          s, device, log_period, verbose, checkpoint_path, checkpoint_period, generator=gen)


# ----------------------------------------------------------------------------- figures
def save_detection_figures(detector, result, directory, prefix, device, num_images=3,
                           score_thresh=0.4, nms_thresh=0.5):
    """Write an evaluated detector's figures into `directory`:
    `<prefix>_pr_curves.png`, the per-class precision-recall curves of `result` (the dict of
    `common.evaluate_detector`), and `<prefix>_detections_<k>.jpg` for k < `num_images`: the
    detections (score above `score_thresh`, after NMS at `nms_thresh`) on the k-th voc07_val
    image beside its ground truth. The images are the first ones of the split, not picked.
    Returns the written paths."""
    import matplotlib.pyplot as plt
    from eecs598 import vis

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ax = vis.plot_pr_curves(result)
    pr_path = directory / f"{prefix}_pr_curves.png"
    ax.figure.savefig(pr_path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    paths = [pr_path]
    val_set = load_voc("val", num_images)
    common.inference_with_detector(detector, val_set, val_set.idx_to_class, score_thresh, nms_thresh,
                                   output_dir=directory, device=device, max_images=num_images, show=False,
                                   file_prefix=f"{prefix}_detections", image_format="jpg")
    return paths + [directory / f"{prefix}_detections_{k}.jpg" for k in range(num_images)]


# ----------------------------------------------------------------------------- training elsewhere
# A GPU machine that cannot hold the validation images (a size limit on what travels to it) can
# train, measure its speed and hand the weights back (gpu_handoff.py); the mAP is then computed
# here. These helpers let the experiments' records say so.

def protocol_name(protocol, gpu_name):
    """The canonical name of a protocol: "cpu", or `gpu_name` (the module's own name for its GPU
    protocol) for "gpu" and "cuda" alike. ValueError for anything else."""
    if protocol == "cpu":
        return "cpu"
    if protocol in ("gpu", "cuda"):
        return gpu_name
    raise ValueError(f"unknown protocol {protocol!r}; choose from ['cpu', 'cuda', 'gpu']")


def metric_suffix(protocol):
    """"" for the CPU protocol, "_gpu_protocol" for the GPU one: both sets of rows can coexist."""
    return "" if protocol == "cpu" else "_gpu_protocol"


def devices_label(out, device):
    """The record's device: where `out` (a train / train_and_evaluate dict) was trained and, if
    elsewhere, where it was evaluated."""
    here = device_name(device)
    trained_on = out.get("device", here)
    return here if trained_on == here else f"{trained_on} (training); {here} (evaluation)"


def handoff_details(out, device):
    """Details entries for a detector trained on another machine (empty if trained here)."""
    if out.get("device", device_name(device)) == device_name(device):
        return {}
    return {"trained_on": out["device"], "evaluated_on": device_name(device),
            "training_torch_version": out.get("torch_version"),
            "training_device_images_per_s": out.get("training_device_images_per_s")}


def training_device_speed_record(assignment, metric, out, unit, data, details):
    """The record of the inference speed measured on the machine that trained `out` (a detector
    trained elsewhere: gpu_handoff.export timed it there)."""
    return make_record(assignment, metric, out["training_device_images_per_s"], unit, data, out["device"],
                       out["training_device_eval_seconds"], reference=None,
                       details={**details, "measured_on": out["training_device_speed_images"]})


def save_sharded(state_dict, folder, name, max_bytes=15 * 2**20):
    """Save a state dict as <folder>/<name>.shard<k>.pt files of at most about `max_bytes` each
    (whole tensors per file; a tensor larger than max_bytes gets a file of its own), moved to the
    CPU. Shards of an earlier, larger save under the same name are deleted, so `load_sharded`
    never mixes old tensors in. Returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    shards, size = [{}], 0
    for key, value in state_dict.items():
        nbytes = value.numel() * value.element_size() if torch.is_tensor(value) else 0
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value.detach().cpu() if torch.is_tensor(value) else value
        size += nbytes
    paths = []
    for k, shard in enumerate(shards):
        paths.append(os.path.join(folder, f"{name}.shard{k}.pt"))
        torch.save(shard, paths[-1])
    k = len(shards)
    while os.path.exists(stale := os.path.join(folder, f"{name}.shard{k}.pt")):
        os.remove(stale)
        k += 1
    return paths


def load_sharded(folder, name):
    """The state dict `save_sharded` wrote (all <folder>/<name>.shard<k>.pt, k = 0, 1, ...)."""
    state, k = {}, 0
    while os.path.exists(path := os.path.join(folder, f"{name}.shard{k}.pt")):
        state.update(torch.load(path, map_location="cpu", weights_only=True))
        k += 1
    if k == 0:
        raise FileNotFoundError(f"no {name}.shard0.pt in {folder}")
    return state
