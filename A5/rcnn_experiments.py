"""
Headline experiments of A5's Faster R-CNN (two_stage_detector.py): the notebook and
`make reproduce` (through A5/experiments.py, which calls `run`) use the same functions.

No solution code here: everything trains and predicts through two_stage_detector.py and
common.py; mAP comes from the project's VOC evaluator (eecs598.detection_eval).

Two protocols, chosen by the device (`protocol_for`):

* "cuda" (one GPU, ~6 minutes): end to end. EfficientNet-Lite0 (ImageNet weights) + FPN 128 +
  RPN + ROI head, all trained with `common.train_detector` (SGD momentum 0.9, warmup, steps at
  60% / 90%, horizontal flips, bf16 autocast, time_limit 360 s, checkpoint/resume under
  $EECS598_CACHE), evaluated with `common.evaluate_detector` (batch 1) on all 2,510
  voc07_val images. Target: mAP@0.5 >= 40%.
* "cpu" (~20 minutes of one CPU thread in total): the backbone is frozen, so its c3/c4/c5
  features are computed once (float16, in memory) for the 2,501 voc07_train images; the FPN,
  RPN and ROI head (64 channels) train on random batches of cached features, mirrored at random
  (the feature maps and boxes are flipped together: an approximation of the features of the
  flipped image, since the backbone is only approximately mirror-equivariant), with SGD
  momentum 0.9, linear warmup and a cosine decay over the time budget. Evaluation runs the
  whole detector on every voc07_val image (batches of 8, `FasterRCNN.detect_batch`).

    protocol_for / settings      which protocol and its hyperparameters (quick mode shrinks all)
    build_detector               backbone + FPN, RPN, FasterRCNN from a settings dict
    cache_backbone_features      frozen-backbone c3/c4/c5 features of a dataset, in memory
    train_on_cached_features     CPU protocol training (FPN + RPN + ROI head)
    predict_batched              detections of a dataset with detect_batch
    evaluate_predictions         VOC mAP (all-point and 11-point) of a list of predictions
    rpn_overfit / overfit        the course's sanity checks on a few images
    train_and_evaluate           one full protocol -> dict of figures
    run(device)                  result records (assignment "A5")
"""
import math
import os
import time

import torch
from torch import nn

import eecs598
import common
import two_stage_detector as tsd
from eecs598.data.voc import VOC2007Detection
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
                 score_thresh=0.05, nms_thresh=0.5),
    "cpu": dict(backbone="efficientnet_lite0", freeze_backbone=True, fpn_channels=64,
                rpn_stem=[64], roi_stem=[64], rpn_batch_per_image=256, roi_batch_per_image=64,
                pre_nms_topk=300, post_nms_topk=100, batch_size=8, learning_rate=0.02,
                weight_decay=1e-4, max_iters=100000, warmup_iters=50, time_limit=480,
                num_train=None, num_val=None, score_thresh=0.05, nms_thresh=0.5,
                eval_batch_size=8),
}
QUICK = dict(num_train=16, num_val=4, time_limit=8, max_iters=4, warmup_iters=1,
             fpn_channels=16, rpn_stem=[16], roi_stem=[16], batch_size=4, num_workers=0,
             pre_nms_topk=100, post_nms_topk=20)


def protocol_for(device):
    return "cuda" if eecs598.get_device(device).type == "cuda" else "cpu"


def settings(protocol):
    """Hyperparameters of a protocol ("cuda" or "cpu"); quick mode shrinks them to a smoke run."""
    s = dict(PROTOCOLS[protocol])
    if eecs598.quick_mode():
        s.update(QUICK)
    s["protocol"] = protocol
    return s


def load_voc(split, num_images=None):
    return VOC2007Detection(split, image_size=224, max_boxes=40, num_images=num_images)


def build_detector(s, pretrained=True):
    """EfficientNet-Lite0 + FPN, RPN and Faster R-CNN head as described by settings `s`."""
    backbone = common.DetectorBackboneWithFPN(s["fpn_channels"], backbone=s["backbone"],
                                              pretrained=pretrained, freeze_backbone=s["freeze_backbone"])
    rpn = tsd.RPN(s["fpn_channels"], s["rpn_stem"], batch_size_per_image=s["rpn_batch_per_image"],
                  pre_nms_topk=s["pre_nms_topk"], post_nms_topk=s["post_nms_topk"])
    return tsd.FasterRCNN(backbone, rpn, s["roi_stem"], NUM_CLASSES,
                          batch_size_per_image=s["roi_batch_per_image"])


# --------------------------------------------------------------------------------------------
class FeatureFeeder(nn.Module):
    """Stands in for the backbone feature extractor: returns the features set in `.feats`.

    `DetectorBackboneWithFPN.forward(images)` calls `self.backbone(images)`; with this module in
    its place the FPN runs on cached c3/c4/c5 features (the `images` tensor is ignored except
    for its shape, which the detector uses to clip boxes).
    """

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = dict(out_channels)
        self.feats = None

    def forward(self, images):
        return self.feats


@torch.no_grad()
def cache_backbone_features(extractor, dataset, device, batch_size=8, store_dtype=torch.float16,
                            verbose=False):
    """c3/c4/c5 features of every image of `dataset` (frozen extractor, eval mode), in memory.

    Returns dict(feats={"c3": (N, C3, 28, 28), ...} in `store_dtype` on `device`,
    gt=(N, 40, 5), image_size=(H, W), seconds).
    """
    extractor.eval()
    device = eecs598.get_device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, gts = {}, []
    t0 = time.time()
    for k, (_, images, gt) in enumerate(loader):
        out = extractor(images.to(device))
        for name, f in out.items():
            feats.setdefault(name, []).append(f.to(store_dtype))
        gts.append(gt.to(device))
        if verbose and k % 50 == 0:
            print(f"  features {k * batch_size}/{len(dataset)} ({time.time() - t0:.0f}s)", flush=True)
    image_size = tuple(images.shape[-2:])
    return {"feats": {n: torch.cat(v) for n, v in feats.items()}, "gt": torch.cat(gts),
            "image_size": image_size, "seconds": time.time() - t0}


def _lr_factor(it, elapsed, s):
    """Linear warmup over warmup_iters, then cosine decay over the iteration or time budget."""
    warm = min(1.0, (it + 1) / max(s["warmup_iters"], 1))
    progress = it / s["max_iters"]
    if s.get("time_limit"):
        progress = max(progress, elapsed / s["time_limit"])
    return warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_on_cached_features(detector, cache, s, device, seed=0, log_period=25, verbose=True):
    """CPU protocol: train FPN + RPN + ROI head of `detector` on cached backbone features.

    Each iteration takes `batch_size` random cached images, mirrors each with probability 1/2
    (features and boxes), and minimises the sum of the detector's losses with SGD (momentum
    0.9, weight decay, gradient-norm clip 10); stops at max_iters or time_limit seconds.
    Returns dict(loss_history, iters, seconds).
    """
    device = eecs598.get_device(device)
    detector.to(device).train()
    feeder = FeatureFeeder(detector.backbone.backbone.out_channels)
    real_extractor, detector.backbone.backbone = detector.backbone.backbone, feeder
    params = [p for p in detector.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s["learning_rate"], momentum=0.9, weight_decay=s["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    n = cache["gt"].shape[0]
    H, W = cache["image_size"]
    dummy = torch.zeros(s["batch_size"], 3, H, W, device=device)
    losses, t0, it = [], time.time(), 0
    try:
        while it < s["max_iters"]:
            elapsed = time.time() - t0
            if s.get("time_limit") and elapsed >= s["time_limit"]:
                break
            for group in opt.param_groups:
                group["lr"] = s["learning_rate"] * _lr_factor(it, elapsed, s)
            idx = torch.randint(n, (s["batch_size"],), generator=gen).to(device)
            flip = (torch.rand(s["batch_size"], generator=gen) < 0.5).to(device)
            feats = {}
            for name, f in cache["feats"].items():
                f = f[idx].float()
                feats[name] = torch.where(flip[:, None, None, None], f.flip(-1), f)
            gt = cache["gt"][idx]
            gt = torch.where(flip[:, None, None], common.hflip_boxes(gt, W), gt)
            feeder.feats = feats
            out = detector(dummy[: len(idx)], gt)
            loss = sum(v for k, v in out.items() if k.startswith("loss"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            it += 1
            losses.append(loss.item())
            if verbose and it % log_period == 0:
                parts = ", ".join(f"{k} {v.item():.3f}" for k, v in out.items())
                print(f"[iter {it}] loss {sum(losses[-log_period:]) / log_period:.3f} ({parts}) "
                      f"lr {opt.param_groups[0]['lr']:.4f} {time.time() - t0:.0f}s", flush=True)
    finally:
        detector.backbone.backbone = real_extractor
        feeder.feats = None
    return {"loss_history": losses, "iters": it, "seconds": time.time() - t0}


@torch.no_grad()
def predict_batched(detector, dataset, device, score_thresh=0.05, nms_thresh=0.5, batch_size=8,
                    max_images=None):
    """Detections of every image of `dataset` with `detector.detect_batch` (eval mode).

    Returns (predictions, images_per_s): predictions as `common.predict_detections` gives them
    (dicts with image_path, boxes, classes, scores, gt_boxes, gt_classes; CPU tensors);
    images_per_s counts model time only (data loading excluded).
    """
    device = eecs598.get_device(device)
    detector.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds, model_s = [], 0.0
    for paths, images, gts in loader:
        t = time.perf_counter()
        outs = detector.detect_batch(images.to(device), score_thresh, nms_thresh)
        outs = [(b.float().cpu(), c.long().cpu(), s.float().cpu()) for b, c, s in outs]
        model_s += time.perf_counter() - t
        for path, (boxes, classes, scores), gt in zip(paths, outs, gts):
            gt = gt[gt[:, 4] >= 0]
            preds.append({"image_path": path, "boxes": boxes, "classes": classes, "scores": scores,
                          "gt_boxes": gt[:, :4].float(), "gt_classes": gt[:, 4].long()})
        if max_images is not None and len(preds) >= max_images:
            preds = preds[:max_images]
            break
    return preds, len(preds) / max(model_s, 1e-9)


def evaluate_predictions(preds, dataset):
    """VOC mAP@0.5 (all-point "map" and 11-point "map_07", per class) of `preds` on `dataset`,
    with the ground truth built as `common.evaluate_detector` builds it (difficult boxes as
    "ignore" when the dataset provides them)."""
    from eecs598 import detection_eval

    has_difficult = hasattr(dataset, "difficult_boxes")
    gts = []
    for i, p in enumerate(preds):
        gt = {"boxes": p["gt_boxes"], "classes": p["gt_classes"]}
        if has_difficult:
            diff = dataset.difficult_boxes(i)
            gt = {"boxes": torch.cat([gt["boxes"], diff[:, :4]]),
                  "classes": torch.cat([gt["classes"], diff[:, 4].long()]),
                  "difficult": torch.cat([torch.zeros(len(gt["classes"]), dtype=torch.bool),
                                          torch.ones(len(diff), dtype=torch.bool)])}
        gts.append(gt)
    names = [dataset.idx_to_class[i] for i in range(NUM_CLASSES)]
    result = detection_eval.evaluate_detections(preds, gts, NUM_CLASSES, iou_threshold=0.5,
                                                class_names=names)
    result["used_difficult"] = has_difficult
    return result


# --------------------------------------------------------------------------------------------
def _small_detector(device, fpn_channels=64):
    s = settings("cpu")
    s.update(fpn_channels=fpn_channels, rpn_stem=[fpn_channels], roi_stem=[fpn_channels])
    return build_detector(s).to(device), s


def rpn_overfit(device=None, num_images=None, iters=None, seed=0, verbose=False):
    """The course's RPN sanity check: train the FPN + RPN alone (frozen backbone, cached
    features) on a few training images; the RPN losses should fall. Returns dict(loss_history
    of the RPN loss sum, iters, seconds, parts: last iteration's losses)."""
    device = eecs598.get_device(device)
    eecs598.reset_seed(seed)
    num_images = num_images or eecs598.pick(full=160, quick=8)
    iters = iters or eecs598.pick(full=300, quick=12)
    det, s = _small_detector(device)
    cache = cache_backbone_features(det.backbone.backbone, load_voc("train", num_images), device)
    fpn, rpn = det.backbone, det.rpn
    params = [p for m in (fpn, rpn) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    feeder = FeatureFeeder(fpn.backbone.out_channels)
    real, fpn.backbone = fpn.backbone, feeder
    history, t0, gen = [], time.time(), torch.Generator().manual_seed(seed)
    fpn.train(), rpn.train()
    try:
        for it in range(iters):
            idx = torch.randint(num_images, (min(8, num_images),), generator=gen).to(device)
            feeder.feats = {k: v[idx].float() for k, v in cache["feats"].items()}
            out = rpn(fpn(torch.zeros(len(idx), 3, 224, 224, device=device)), fpn.fpn_strides,
                      cache["gt"][idx])
            loss = out["loss_rpn_obj"] + out["loss_rpn_box"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss))
            if verbose and (it + 1) % 20 == 0:
                print(f"[iter {it + 1}] rpn loss {loss.item():.3f} (obj {out['loss_rpn_obj'].item():.3f}, "
                      f"box {out['loss_rpn_box'].item():.3f})")
    finally:
        fpn.backbone = real
    return {"loss_history": history, "iters": iters, "seconds": time.time() - t0,
            "parts": {k: float(v) for k, v in out.items() if k.startswith("loss")}}


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
def calibrate_max_iters(detector, loader, s, device, autocast_dtype=None, iters=20, warmup=5):
    """How many iterations fit in s["time_limit"]: time `iters` training steps of a copy of
    the detector (after `warmup` untimed ones), so that the learning-rate schedule of
    `common.train_detector` (steps at 60% / 90% of max_iters) completes within the time limit.
    Returns (max_iters, seconds spent calibrating); the detector itself is not changed."""
    import copy

    t0 = time.time()
    probe = copy.deepcopy(detector)
    kw = dict(learning_rate=s["learning_rate"] * 0.01, weight_decay=s["weight_decay"], device=device,
              autocast_dtype=autocast_dtype, verbose=False, warmup_iters=1)
    common.train_detector(probe, loader, max_iters=warmup, **kw)
    timed = common.train_detector(probe, loader, max_iters=iters, **kw)
    del probe
    spent = time.time() - t0
    per_iter = timed["seconds"] / iters
    max_iters = int(0.95 * (s["time_limit"] - spent) / per_iter)
    return max(min(max_iters, s["max_iters"]), 1), spent


def save_checkpoint(detector, name):
    """State dict of the trained parts under $EECS598_CACHE (never in the repository)."""
    from eecs598.data.store import cache_dir
    path = cache_dir() / f"{name}.pt"
    torch.save({k: v for k, v in detector.state_dict().items()}, path)
    return str(path)


def train_and_evaluate(device=None, protocol=None, verbose=True, checkpoint=True):
    """Train Faster R-CNN with one protocol and evaluate on voc07_val.

    Returns dict(map, map_07, ap_per_class, images_per_s, iters, train_seconds, total_seconds,
    phases, settings, loss_history, detector, predictions, num_val).
    """
    device = eecs598.get_device(device)
    protocol = protocol or protocol_for(device)
    s = settings(protocol)
    eecs598.reset_seed(0)
    t_total = time.time()
    detector = build_detector(s).to(device)
    train_set, val_set = load_voc("train", s["num_train"]), load_voc("val", s["num_val"])
    phases = {}
    if protocol == "cpu":
        cache = cache_backbone_features(detector.backbone.backbone, train_set, device, verbose=verbose)
        phases["feature_extraction_s"] = cache["seconds"]
        if verbose:
            print(f"cached features of {cache['gt'].shape[0]} images in {cache['seconds']:.0f}s", flush=True)
        train = train_on_cached_features(detector, cache, s, device, verbose=verbose)
        del cache
    else:
        from eecs598.data.store import cache_dir
        loader = torch.utils.data.DataLoader(train_set, batch_size=s["batch_size"], shuffle=True,
                                             drop_last=True, num_workers=s["num_workers"],
                                             pin_memory=device.type == "cuda",
                                             persistent_workers=s["num_workers"] > 0)
        mode = "quick" if eecs598.quick_mode() else "full"
        ckpt = str(cache_dir() / f"a5_rcnn_train_state_{mode}.pt") if checkpoint else None
        autocast = torch.bfloat16 if device.type == "cuda" else None
        max_iters, calib_s = s["max_iters"], 0.0
        sidecar = ckpt + ".max_iters" if ckpt else None  # the calibrated schedule, for a resume
        if sidecar and os.path.exists(ckpt) and os.path.exists(sidecar):
            with open(sidecar) as f:
                max_iters = int(f.read())
        elif s.get("time_limit") and not eecs598.quick_mode():
            max_iters, calib_s = calibrate_max_iters(detector, loader, s, device, autocast)
            phases["calibration_s"] = calib_s
            if verbose:
                print(f"calibration: {max_iters} iterations fit in the time limit", flush=True)
            if sidecar:
                with open(sidecar, "w") as f:
                    f.write(str(max_iters))
        s["max_iters_used"] = max_iters
        train = common.train_detector(detector, loader, learning_rate=s["learning_rate"],
                                      weight_decay=s["weight_decay"], max_iters=max_iters,
                                      warmup_iters=min(s["warmup_iters"], max(max_iters // 5, 1)),
                                      device=device,
                                      time_limit=max(s["time_limit"] - calib_s, 1.0), checkpoint_path=ckpt,
                                      autocast_dtype=autocast, verbose=verbose, log_period=50)
        for path in (ckpt, sidecar):  # finished: the next run starts fresh (an interrupted one resumes)
            if path is not None and os.path.exists(path):
                os.remove(path)
    phases["train_s"] = train["seconds"]
    t = time.time()
    if protocol == "cpu":
        preds, images_per_s = predict_batched(detector, val_set, device, s["score_thresh"],
                                              s["nms_thresh"], batch_size=s["eval_batch_size"])
        result = evaluate_predictions(preds, val_set)
    else:
        result = common.evaluate_detector(detector, val_set, s["score_thresh"], s["nms_thresh"],
                                          device=device, verbose=verbose)
        preds, images_per_s = result["predictions"], result["images_per_s"]
    phases["eval_s"] = time.time() - t
    mode = "quick" if eecs598.quick_mode() else "full"
    ckpt_path = save_checkpoint(detector, f"a5_rcnn_{protocol}_{mode}") if checkpoint else None
    if verbose:
        print(f"mAP@0.5 {100 * result['map']:.2f}% (11-point {100 * result['map_07']:.2f}%) on "
              f"{len(preds)} val images; {train['iters']} iterations; {images_per_s:.1f} images/s")
    return {"map": result["map"], "map_07": result["map_07"], "ap_per_class": result["ap_per_class"],
            "result": result, "images_per_s": images_per_s, "iters": train["iters"],
            "train_seconds": train["seconds"], "total_seconds": time.time() - t_total,
            "phases": phases, "settings": s, "loss_history": train["loss_history"],
            "detector": detector, "predictions": preds, "num_val": len(preds),
            "checkpoint": ckpt_path}


def run(device=None):
    """Faster R-CNN mAP@0.5 on all of voc07_val (all-point and 11-point) and inference speed."""
    device = eecs598.get_device(device)
    out = train_and_evaluate(device, verbose=True)
    s = out["settings"]
    details = {
        "protocol": s["protocol"], "backbone": f"{s['backbone']} (ImageNet weights, "
        f"{'frozen' if s['freeze_backbone'] else 'fine-tuned'})",
        "iterations": out["iters"], "train_seconds": round(out["train_seconds"], 1),
        "phases_s": {k: round(v, 1) for k, v in out["phases"].items()},
        "num_val_images": out["num_val"], "images_per_s": round(out["images_per_s"], 2),
        "difficult_boxes_ignored": bool(out["result"].get("used_difficult", False)),
        "map_11_point": round(100 * out["map_07"], 2),
        "ap_per_class": {k: round(100 * v, 1) for k, v in out["ap_per_class"].items()},
        "settings": {k: v for k, v in s.items() if k != "protocol"},
        "torch_threads": torch.get_num_threads(),
        "final_loss": round(sum(out["loss_history"][-20:]) / max(len(out["loss_history"][-20:]), 1), 3),
    }
    dev, secs = device_name(device), out["total_seconds"]
    ref_note = "reference solution: never trained or evaluated (no number)"
    return [
        make_record(ASSIGNMENT, "faster_rcnn_map50", 100 * out["map"], "% mAP@0.5 (VOC all-point)",
                    DATA, dev, secs, reference=None, details={**details, "reference_note": ref_note}),
        make_record(ASSIGNMENT, "faster_rcnn_map50_voc07_11pt", 100 * out["map_07"],
                    "% mAP@0.5 (VOC07 11-point)", DATA, dev, secs, reference=None, details=details),
        make_record(ASSIGNMENT, "faster_rcnn_images_per_s", out["images_per_s"], "images/s",
                    DATA, dev, out["phases"]["eval_s"], reference=None,
                    details={"protocol": s["protocol"], "batch": s.get("eval_batch_size", 1),
                             "note": "model time only (data loading excluded), score_thresh 0.05"}),
    ]
