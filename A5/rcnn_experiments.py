"""
Headline experiments of A5's Faster R-CNN (two_stage_detector.py): the notebook and
`make reproduce` (through A5/experiments.py, which calls `run`) use the same functions.

No solution code here: everything trains and predicts through two_stage_detector.py and
common.py; mAP comes from the project's VOC evaluator (eecs598.detection_eval).

Two protocols, chosen by the device (`protocol_for`):

* "cuda" (one GPU, ~6 minutes): end to end. EfficientNet-Lite0 (ImageNet weights) + FPN 128 +
  RPN + ROI head, all trained with `common.train_detector` (SGD momentum 0.9, warmup, steps at
  60% / 90% of the iteration or time budget, whichever comes first, horizontal flips, bf16
  autocast, time_limit 360 s, checkpoint/resume under $EECS598_CACHE/checkpoints/A5), evaluated
  with `common.evaluate_detector` (batches of 32 through `FasterRCNN.detect_batch`) on all 2,510
  voc07_val images. Target: mAP@0.5 >= 40%.
* "cpu" (~20 minutes of one CPU thread in total): the backbone is frozen, so its c3/c4/c5
  features are computed once (float16, in memory) for the 2,501 voc07_train images; the FPN,
  RPN and ROI head (64 channels) train on random batches of cached features, mirrored at random
  (the feature maps and boxes are flipped together: an approximation of the features of the
  flipped image, since the backbone is only approximately mirror-equivariant), with SGD
  momentum 0.9, linear warmup and a cosine decay over the time budget. Evaluation runs the
  whole detector on every voc07_val image (`common.evaluate_detector` with batches of 2, which
  go through `FasterRCNN.detect_batch`; the backbone is channels-last).

The feature cache, the training loop and schedule, the dataset and checkpoint helpers come from
`detection_training.py`, shared with the FCOS experiments.

    protocol_for / settings      which protocol and its hyperparameters (quick mode shrinks all)
    build_detector               backbone + FPN, RPN, FasterRCNN from a settings dict
    load_voc                     the VOC splits as datasets (detection_training.load_voc)
    cache_backbone_features      frozen-backbone c3/c4/c5 features of a dataset, in memory
    train_on_cached_features     CPU protocol training (FPN + RPN + ROI head)
    evaluate_predictions         VOC mAP (all-point and 11-point) of a list of predictions
    rpn_overfit / overfit        the course's sanity checks on a few images
    train_and_evaluate           one full protocol -> dict of figures
    run(device)                  result records (assignment "A5")
"""
import os
import time

import torch
from torch import nn

import eecs598
import common
import detection_training as dt
import two_stage_detector as tsd
from detection_training import load_voc
from eecs598.results import make_record
from eecs598.utils import device_name

ASSIGNMENT = "A5"
NUM_CLASSES = 20
DATA = ("PASCAL VOC 2007, the course's voc07_train.json (2,501 images) for training and "
        "voc07_val.json (2,510 images) for evaluation, 224x224 centre crops")

PROTOCOLS = {
    "cuda": dict(backbone="efficientnet_lite0", freeze_backbone=False, fpn_channels=128,
                 rpn_stem=[128], roi_stem=[128, 128], rpn_batch_per_image=256,
                 roi_batch_per_image=128, pre_nms_topk=1000, post_nms_topk=200,
                 batch_size=16, learning_rate=0.02, weight_decay=1e-4, max_iters=20000,
                 warmup_iters=300, time_limit=360, num_workers=8, num_train=None, num_val=None,
                 score_thresh=0.05, nms_thresh=0.5,
                 input_normalization="imagenet",  # the Lite0 input as the recipe was trialled (A5/README.md)
                 eval_batch_size=32),  # not measured against other sizes (no GPU lent so far)
    "cpu": dict(backbone="efficientnet_lite0", freeze_backbone=True, fpn_channels=64,
                rpn_stem=[64], roi_stem=[64], rpn_batch_per_image=256, roi_batch_per_image=64,
                pre_nms_topk=300, post_nms_topk=100, batch_size=8, learning_rate=0.02,
                weight_decay=1e-4, max_iters=100000, warmup_iters=50, time_limit=480,
                num_train=None, num_val=None, score_thresh=0.05, nms_thresh=0.5,
                input_normalization="lite",  # the weights' own pixel scaling (A5/README.md, "Input scaling")
                # with two threads 50.9 images/s against 39.2 one at a time and 44.6 in batches of 4
                # (an earlier comparison: 1.45x the images/s of batches of 8); on one thread one
                # image at a time (dt.eval_batch_size)
                eval_batch_size=2),
}
QUICK = dict(num_train=16, num_val=4, time_limit=8, max_iters=4, warmup_iters=1,
             fpn_channels=16, rpn_stem=[16], roi_stem=[16], batch_size=4,
             pre_nms_topk=100, post_nms_topk=20)  # num_workers kept: the smoke run tests the real loader


def protocol_for(device):
    return "cuda" if eecs598.get_device(device).type == "cuda" else "cpu"


def protocol_name(protocol):
    """"cuda" or "cpu" ("gpu", fcos_experiments' name, is taken as "cuda"); ValueError otherwise."""
    return dt.protocol_name(protocol, "cuda")


def eval_batch_size(device):
    """Images per `FasterRCNN.detect_batch` call on `device`: its protocol's (a detector trained
    elsewhere is evaluated with this machine's), as `dt.eval_batch_size` adjusts it."""
    return dt.eval_batch_size(settings(protocol_for(device)), device)


def settings(protocol):
    """Hyperparameters of a protocol ("cuda" or "cpu"); quick mode shrinks them to a smoke run."""
    protocol = protocol_name(protocol)
    s = dict(PROTOCOLS[protocol])
    if eecs598.quick_mode():
        s.update(QUICK)
    s["protocol"] = protocol
    return s


def build_detector(s, pretrained=True):
    """EfficientNet-Lite0 + FPN, RPN and Faster R-CNN head as described by settings `s` (the
    backbone's input scaling s["input_normalization"])."""
    backbone = common.DetectorBackboneWithFPN(s["fpn_channels"], backbone=s["backbone"],
                                              pretrained=pretrained, freeze_backbone=s["freeze_backbone"])
    rpn = tsd.RPN(s["fpn_channels"], s["rpn_stem"], batch_size_per_image=s["rpn_batch_per_image"],
                  pre_nms_topk=s["pre_nms_topk"], post_nms_topk=s["post_nms_topk"])
    detector = tsd.FasterRCNN(backbone, rpn, s["roi_stem"], NUM_CLASSES,
                              batch_size_per_image=s["roi_batch_per_image"])
    return dt.set_backbone_input(detector, s)


# --------------------------------------------------------------------------------------------
def cache_backbone_features(extractor, dataset, device, verbose=False):
    """Frozen c3/c4/c5 features of `dataset` in float16 on `device` (channels-last backbone;
    batches of 4 on the CPU, 32 elsewhere; no mirrored copies: this protocol mirrors cached
    features at random instead); see `dt.cache_backbone_features`."""
    return dt.cache_backbone_features(extractor, dataset, device, channels_last=True, store_device=device,
                                      verbose=verbose)


def train_on_cached_features(detector, cache, s, device, seed=0, log_period=25, verbose=True,
                             checkpoint_path=None):
    """CPU protocol: train FPN + RPN + ROI head of `detector` on cached backbone features with
    `dt.train_on_cached_features`, each cached image mirrored (features and boxes) with
    probability 1/2. Warmup: the learning rate ramps as (it + 1) / warmup_iters, which is
    `dt.lr_factor`'s linear warmup from 1 / warmup_iters over warmup_iters - 1 iterations.
    Returns the dict of `dt.train_loop` (loss_history per iteration, iters, seconds, ...)."""
    warm = max(s["warmup_iters"], 1)
    schedule = {**s, "warmup_iters": warm - 1, "warmup_start": 1.0 / warm}
    return dt.train_on_cached_features(detector, cache, schedule, device, seed=seed, log_period=log_period,
                                       verbose=verbose, checkpoint_path=checkpoint_path, random_flip=True)


def evaluate_predictions(preds, dataset):
    """VOC mAP@0.5 (all-point "map" and 11-point "map_07", per class) of `preds` (the first
    len(preds) images of `dataset`), exactly as `common.evaluate_detector` computes it."""
    return common.evaluate_predictions(preds, dataset, num_classes=NUM_CLASSES)


# --------------------------------------------------------------------------------------------
def _small_detector(device, fpn_channels=64):
    s = settings("cpu")
    s.update(fpn_channels=fpn_channels, rpn_stem=[fpn_channels], roi_stem=[fpn_channels])
    return build_detector(s).to(device), s


class _RPNOnly(nn.Module):
    """The FPN + RPN of a Faster R-CNN as a detector whose losses are the RPN's alone."""

    def __init__(self, detector):
        super().__init__()
        self.backbone, self.rpn = detector.backbone, detector.rpn

    def forward(self, images, gt_boxes):
        out = self.rpn(self.backbone(images), self.backbone.fpn_strides, gt_boxes,
                       image_size=tuple(images.shape[-2:]), with_proposals=False)
        return {k: out[k] for k in ("loss_rpn_obj", "loss_rpn_box")}


def rpn_overfit(device=None, num_images=None, iters=None, seed=0, verbose=False):
    """The course's RPN sanity check: train the FPN + RPN alone (frozen backbone, cached
    features, lr 0.02 with a cosine decay, batches of min(8, num_images)) on a few training
    images; the RPN losses should fall. Returns dict(loss_history of the RPN loss sum per
    iteration, iters, seconds, parts: last iteration's losses)."""
    device = eecs598.get_device(device)
    eecs598.reset_seed(seed)
    num_images = num_images or eecs598.pick(full=160, quick=8)
    iters = iters or eecs598.pick(full=300, quick=12)
    det, s = _small_detector(device)
    s.update(learning_rate=0.02, weight_decay=1e-4, max_iters=iters, time_limit=None, warmup_iters=0,
             batch_size=min(8, num_images), grad_clip=None)
    cache = cache_backbone_features(det.backbone.backbone, load_voc("train", num_images), device)
    out = dt.train_on_cached_features(_RPNOnly(det), cache, s, device, seed=seed, log_period=20,
                                      verbose=verbose)
    out["parts"] = {k: v[-1] for k, v in out["loss_parts"].items()}
    return out


def overfit(device=None, num_images=None, iters=None, seed=0, verbose=False):
    """The course's full-model sanity check: Faster R-CNN (frozen backbone, cached features) on a
    few training images. Returns dict(detector, dataset, loss_history, iters, seconds)."""
    device = eecs598.get_device(device)
    eecs598.reset_seed(seed)
    num_images = num_images or eecs598.pick(full=160, quick=8)
    det, s = _small_detector(device)
    s.update(max_iters=iters or eecs598.pick(full=400, quick=12), time_limit=None, warmup_iters=10,
             batch_size=min(8, num_images))
    dataset = load_voc("train", num_images)
    cache = cache_backbone_features(det.backbone.backbone, dataset, device)
    out = train_on_cached_features(det, cache, s, device, seed=seed, log_period=20, verbose=verbose)
    return {"detector": det, "dataset": dataset, **out}


# --------------------------------------------------------------------------------------------
def train(device=None, protocol=None, verbose=True, checkpoint=True, overrides=None):
    """Train Faster R-CNN on voc07_train with one protocol ("cuda"/"cpu", default from the device).

    overrides: settings replacing the protocol's (e.g. {"max_iters": 1000, "time_limit": None}:
    a fixed number of iterations, as `train_for_iterations.py` runs the GPU recipe on a CPU);
    "seed" (default 0) seeds the initialization and the batches.

    With `checkpoint` (and $EECS598_CACHE set), the training state is saved under
    $EECS598_CACHE/checkpoints/A5/faster_rcnn_<protocol>[_quick]_<settings digest>_train.pt while
    training (an interrupted run with the same settings resumes there; removed once training
    ends) and the final weights as faster_rcnn_<protocol>[_quick].pt.

    Returns dict(settings, train (history: loss_history, iters, seconds), phases, detector,
    num_train, protocol, device (its name), checkpoint (the final weights' path or None)).
    """
    device = eecs598.get_device(device)
    protocol = protocol_name(protocol or protocol_for(device))
    s = {**settings(protocol), **(overrides or {})}
    seed = s.get("seed", 0)
    eecs598.reset_seed(seed)
    detector = build_detector(s).to(device)
    train_set = load_voc("train", s["num_train"])
    phases = {}
    tag = f"faster_rcnn_{protocol}{'_quick' if eecs598.quick_mode() else ''}"
    ckpt = dt.checkpoint_path(f"{tag}_{dt.settings_digest(s)}_train.pt") if checkpoint else None  # resume
    bf16 = dt.use_bf16(s, device)  # the CPU protocol's policy (its settings ask for none)
    if protocol == "cpu":
        cache = cache_backbone_features(detector.backbone.backbone, train_set, device, verbose=verbose)
        phases["feature_extraction_s"] = cache["seconds"]
        if verbose:
            print(f"cached features of {cache['gt'].shape[0]} images in {cache['seconds']:.0f}s", flush=True)
        history = train_on_cached_features(detector, cache, s, device, seed=seed, verbose=verbose,
                                           checkpoint_path=ckpt)
        del cache
    else:
        workers = min(s["num_workers"], os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(train_set, batch_size=s["batch_size"], shuffle=True,
                                             drop_last=True, num_workers=workers,
                                             pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0)
        # common.train_detector's steps come at 60% / 90% of max_iters or of time_limit,
        # whichever is reached first, so the schedule completes within the time budget.
        autocast = torch.bfloat16 if device.type == "cuda" and dt.cuda_has_fast_bf16(device) else None
        bf16 = autocast is not None
        max_iters = s["max_iters"]
        history = common.train_detector(detector, loader, learning_rate=s["learning_rate"],
                                        weight_decay=s["weight_decay"], max_iters=max_iters,
                                        warmup_iters=min(s["warmup_iters"], max(max_iters // 5, 1)),
                                        device=device, time_limit=s["time_limit"], checkpoint_path=ckpt,
                                        autocast_dtype=autocast, verbose=verbose, log_period=50)
    if ckpt is not None and os.path.exists(ckpt):  # finished: the next run starts fresh
        os.remove(ckpt)
    phases["train_s"] = history["seconds"]
    ckpt_path = dt.checkpoint_path(f"{tag}.pt") if checkpoint else None
    if ckpt_path is not None:
        torch.save(detector.state_dict(), ckpt_path)
    return {"settings": s, "train": history, "phases": phases, "detector": detector,
            "num_train": len(train_set), "protocol": protocol, "device": device_name(device),
            "checkpoint": ckpt_path, "bf16_autocast": bf16}


def train_and_evaluate(device=None, protocol=None, verbose=True, checkpoint=True, trained=None):
    """`train` (or take `trained`, a dict as `train` returns, e.g. from gpu_handoff.import_trained),
    then evaluate on voc07_val on `device`.

    Returns dict(map, map_07, ap_per_class, images_per_s, iters, train_seconds, total_seconds,
    phases, settings, loss_history, detector, predictions, num_val, checkpoint, protocol, device,
    result and eval (both `common.evaluate_detector`'s dict; "eval" as fcos_experiments names it))
    plus the other entries of `trained`.
    """
    device = eecs598.get_device(device)
    t_total = time.time()
    out = dict(trained) if trained is not None else train(device, protocol, verbose, checkpoint)
    s, detector, history = out["settings"], out["detector"], out["train"]
    val_set = load_voc("val", s["num_val"])
    detector.backbone.backbone.to(memory_format=torch.channels_last)  # also an imported detector
    t = time.time()
    result = common.evaluate_detector(detector, val_set, s["score_thresh"], s["nms_thresh"], device=device,
                                      num_classes=NUM_CLASSES, verbose=False,
                                      batch_size=eval_batch_size(device))
    preds, images_per_s = result["predictions"], result["images_per_s"]
    phases = dict(out["phases"], eval_s=time.time() - t)
    if verbose:
        print(f"mAP@0.5 {100 * result['map']:.2f}% (11-point {100 * result['map_07']:.2f}%) on "
              f"{len(preds)} val images; {history['iters']} iterations; {images_per_s:.1f} images/s")
    return dict(out, map=result["map"], map_07=result["map_07"], ap_per_class=result["ap_per_class"],
                result=result, eval=result, images_per_s=images_per_s, iters=history["iters"],
                train_seconds=history["seconds"],
                total_seconds=time.time() - t_total + (history["seconds"] if trained is not None else 0.0),
                phases=phases, loss_history=history["loss_history"], predictions=preds, num_val=len(preds))


def run(device=None, trained=None, figures_dir=None):
    """Faster R-CNN mAP@0.5 on all of voc07_val (all-point and 11-point) and inference speed.
    `trained`: a detector trained elsewhere (`gpu_handoff.import_trained`), evaluated here. The
    GPU protocol's metrics end in "_gpu_protocol", so they sit beside the CPU protocol's.
    `figures_dir`: also write the run's PR curves and detections there
    (`detection_training.save_detection_figures`, prefix faster_rcnn[_gpu_protocol])."""
    device = eecs598.get_device(device)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = train_and_evaluate(device, verbose=True, trained=trained)
    s = out["settings"]
    details = {
        "protocol": s["protocol"], "backbone": f"{s['backbone']} (ImageNet weights, "
        f"{'frozen' if s['freeze_backbone'] else 'fine-tuned'})",
        "backbone_input_normalization": s.get("input_normalization", "imagenet"),
        "iterations": out["iters"], "train_seconds": round(out["train_seconds"], 1),
        "phases_s": {k: round(v, 1) for k, v in out["phases"].items()},
        "num_val_images": out["num_val"], "images_per_s": round(out["images_per_s"], 2),
        "difficult_boxes_ignored": bool(out["result"].get("used_difficult", False)),
        "map_11_point": round(100 * out["map_07"], 2),
        "ap_per_class": {k: round(100 * v, 1) for k, v in out["ap_per_class"].items()},
        "settings": {k: v for k, v in s.items() if k != "protocol"},
        "torch_threads": torch.get_num_threads(), "load_average_at_start": load_before,
        "final_loss": round(sum(out["loss_history"][-20:]) / max(len(out["loss_history"][-20:]), 1), 3),
        "bf16_autocast": out.get("bf16_autocast"),  # in training (evaluation runs in float32)
        **dt.handoff_details(out, device),
    }
    dev, secs, suffix = dt.devices_label(out, device), out["total_seconds"], dt.metric_suffix(out["protocol"])
    if figures_dir is not None:
        dt.save_detection_figures(out["detector"], out["result"], figures_dir, f"faster_rcnn{suffix}", device)
    ref_note = "reference solution: never trained or evaluated (no number)"
    records = [
        make_record(ASSIGNMENT, f"faster_rcnn_map50{suffix}", 100 * out["map"], "% mAP@0.5 (VOC all-point)",
                    DATA, dev, secs, reference=None, details={**details, "reference_note": ref_note}),
        make_record(ASSIGNMENT, f"faster_rcnn_map50_voc07_11pt{suffix}", 100 * out["map_07"],
                    "% mAP@0.5 (VOC07 11-point)", DATA, dev, secs, reference=None, details=details),
        make_record(ASSIGNMENT, f"faster_rcnn_images_per_s{suffix}", out["images_per_s"], "images/s",
                    DATA, device_name(device), out["phases"]["eval_s"], reference=None,
                    details={"protocol": s["protocol"], "batch": out["result"]["batch_size"],
                             "note": "model time only (data loading excluded), score_thresh 0.05"}),
    ]
    if dt.handoff_details(out, device):  # trained elsewhere: that machine's inference speed too
        records.append(dt.training_device_speed_record(
            ASSIGNMENT, f"faster_rcnn_images_per_s{suffix}_training_device", out, "images/s", DATA,
            {"protocol": s["protocol"], "batch": out.get("training_device_batch_size", 1),
             "note": "model time only (data loading excluded), score_thresh 0.05"}))
    return records
