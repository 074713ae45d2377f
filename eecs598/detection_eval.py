"""PASCAL VOC detection metrics, from scratch: per-class AP at an IoU threshold and their mean.

Protocol (the official VOC devkit's, `VOCevaldet.m` / its Python port `voc_eval.py`):
* detections of one class from all images are sorted by decreasing score (stable: equal scores
  keep their input order, image by image);
* each detection, highest score first, is compared with the ground-truth (GT) boxes of its class
  in its image; it takes the GT box of highest IoU. If that IoU > `iou_threshold` (strictly, as
  `voc_eval.py`; the MATLAB `VOCevaldet.m` uses >=, which differs only at an IoU of exactly the
  threshold): a difficult GT box makes the detection "ignored" (neither TP nor FP); an unmatched GT box
  becomes matched and the detection is a true positive; an already matched GT box makes the
  detection a false positive (duplicate). IoU <= threshold (or no GT): false positive;
* recall = TP / (number of non-difficult GT boxes of the class), precision = TP / (TP + FP);
* AP "all-point" (VOC2010 and later, `voc_ap(use_07_metric=False)`): area under the precision
  envelope (precision made monotonically non-increasing), summed where recall changes;
  AP "11-point" (VOC2007 paper, `use_07_metric=True`): mean over recall t in {0, 0.1, ..., 1}
  of the highest precision at recall >= t (0 when recall t is never reached);
* a class without any non-difficult GT box has no defined AP: it is reported as NaN and left
  out of the mean (COCO does the same with -1); a class with GT but no detections has AP 0.

Differences from other tools, on purpose and documented:
* boxes are continuous pixel coordinates: area = (x2 - x1) * (y2 - y1), no "+1" (the VOC devkit
  adds 1 pixel to widths and heights because its boxes are integer pixel indices);
* 11-point AP counts a recall that is exactly t (for example 3 of 10 GT boxes at t = 0.3); the
  devkit's Python port compares with `np.arange(0, 1.1, 0.1)`, whose 0.30000000000000004,
  0.6000000000000001 and 0.7000000000000001 such a recall misses. The two differ only when a
  class's recall lands exactly on 0.3, 0.6 or 0.7;
* pycocotools (COCOeval) matches each detection to the best *still unmatched* GT with
  IoU >= threshold (here: the best GT overall, strict >), interpolates precision at 101 recall
  points (VOC: all points), and caps detections per image with `maxDets`. On realistic
  detections the two agree within a fraction of an AP point (see tests/eecs598 and `coco_map`).

Inputs are lists with one entry per image:
    predictions[i] = {"boxes": (M, 4), "classes": (M,), "scores": (M,)}
    ground_truths[i] = {"boxes": (K, 4), "classes": (K,), "difficult": (K,) bool (optional)}
as torch tensors or anything `numpy.asarray` accepts, boxes as (x1, y1, x2, y2).
"""
import math

import numpy as np

__all__ = ["voc_ap", "evaluate_detections", "coco_map", "format_ap_table"]


def _np(x, dtype, shape):
    """`x` as a numpy array of `shape` (-1: any length); None (a key left out) is empty."""
    if x is None:
        return np.zeros(tuple(0 if d == -1 else d for d in shape), dtype=dtype)
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # numpy has no bfloat16 (detections of a bf16 autocast model)
        x = x.numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def _iou_one_to_many(box, boxes):
    """IoU of one (4,) box with (K, 4) boxes, continuous coordinates (no +1)."""
    iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0)
    ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0)
    inter = iw * ih
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def voc_ap(recall, precision, use_07_metric=False):
    """Average precision from a precision/recall curve (arrays in detection order).

    use_07_metric=False: all-point interpolation (VOC2010+); True: 11-point (VOC2007).
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        ap = 0.0
        for i in range(11):
            # recall >= i/10 with a 1e-12 tolerance, so that e.g. recall 3/10 counts at t = 0.3
            # (np.arange(0, 1.1, 0.1) in the devkit's Python port gives 0.30000000000000004)
            reached = recall >= i / 10 - 1e-12
            ap += (precision[reached].max() if np.any(reached) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _to_numpy(predictions, ground_truths):
    """Convert every image's tensors to numpy once (boxes float64, classes int64). A key left
    out means none (`{}`: no detections); ValueError when an image's arrays differ in length."""
    preds, gts = [], []
    for k, pred in enumerate(predictions):
        arrays = (_np(pred.get("classes"), np.int64, (-1,)), _np(pred.get("scores"), np.float64, (-1,)),
                  _np(pred.get("boxes"), np.float64, (-1, 4)))
        preds.append(_same_length(arrays, f"prediction {k} (classes, scores, boxes)"))
    for k, gt in enumerate(ground_truths):
        classes = _np(gt.get("classes"), np.int64, (-1,))
        difficult = gt.get("difficult")
        difficult = (np.zeros(len(classes), bool) if difficult is None
                     else _np(difficult, bool, (-1,)))
        gts.append(_same_length((classes, _np(gt.get("boxes"), np.float64, (-1, 4)), difficult),
                                f"ground truth {k} (classes, boxes, difficult)"))
    return preds, gts


def _same_length(arrays, what):
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        raise ValueError(f"{what}: lengths {lengths} differ")
    return arrays


def _class_pr(predictions, ground_truths, c, iou_threshold):
    """Precision/recall arrays (in score order), TP/FP flags and the GT count for class c.

    `predictions` / `ground_truths` as returned by `_to_numpy`.
    """
    gt_per_image, num_pos = [], 0
    for classes, boxes, difficult in ground_truths:
        sel = classes == c
        gt_per_image.append((boxes[sel], difficult[sel], np.zeros(int(sel.sum()), bool)))
        num_pos += int((~difficult[sel]).sum())

    image_ids, scores, boxes = [], [], []
    for i, (classes, det_scores, det_boxes) in enumerate(predictions):
        sel = classes == c
        if sel.any():
            image_ids.append(np.full(int(sel.sum()), i))
            scores.append(det_scores[sel])
            boxes.append(det_boxes[sel])
    if not image_ids:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), num_pos
    image_ids, scores, boxes = np.concatenate(image_ids), np.concatenate(scores), np.concatenate(boxes)
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        gt_boxes, gt_difficult, matched = gt_per_image[image_ids[k]]
        if len(gt_boxes) == 0:
            fp[d] = 1
            continue
        ious = _iou_one_to_many(boxes[k], gt_boxes)
        j = int(np.argmax(ious))
        if ious[j] > iou_threshold:
            if gt_difficult[j]:
                continue  # ignored: neither TP nor FP
            if not matched[j]:
                matched[j] = True
                tp[d] = 1
            else:
                fp[d] = 1  # duplicate detection
        else:
            fp[d] = 1
    keep = (tp + fp) > 0  # drop ignored detections
    tp, fp = np.cumsum(tp[keep]), np.cumsum(fp[keep])
    recall = tp / num_pos if num_pos > 0 else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, tp, fp, num_pos


def evaluate_detections(predictions, ground_truths, num_classes, iou_threshold=0.5,
                        class_names=None):
    """Per-class VOC AP and mAP at `iou_threshold` (see the module docstring for the protocol).

    Args:
        predictions, ground_truths: lists with one dict per image (same length and order).
        num_classes: classes are 0 .. num_classes - 1.
        class_names: optional names used as keys of the per-class dicts (default: indices).
    Returns:
        dict with "map" (mean all-point AP over classes that have GT, in [0, 1]), "map_07"
        (mean 11-point AP), "ap_per_class" and "ap07_per_class" ({name: AP or NaN}),
        "num_gt_per_class" ({name: non-difficult GT count}), "num_det_per_class" (detections
        counted as TP or FP: those matched to a difficult box are ignored and left out),
        "pr_curves" ({name: (recall array, precision array)}), "iou_threshold".
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truths)} ground truths")
    names = list(class_names) if class_names is not None else list(range(num_classes))
    ap, ap07, npos, ndet, curves = {}, {}, {}, {}, {}
    np_preds, np_gts = _to_numpy(predictions, ground_truths)
    for c in range(num_classes):
        recall, precision, _, _, num_pos = _class_pr(np_preds, np_gts, c, iou_threshold)
        name = names[c]
        npos[name], ndet[name] = num_pos, len(recall)
        curves[name] = (recall, precision)
        if num_pos == 0:
            ap[name] = ap07[name] = float("nan")
        elif len(recall) == 0:
            ap[name] = ap07[name] = 0.0
        else:
            ap[name] = voc_ap(recall, precision, use_07_metric=False)
            ap07[name] = voc_ap(recall, precision, use_07_metric=True)

    def mean(d):
        vals = [v for v in d.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    return {"map": mean(ap), "map_07": mean(ap07), "ap_per_class": ap, "ap07_per_class": ap07,
            "num_gt_per_class": npos, "num_det_per_class": ndet, "pr_curves": curves,
            "iou_threshold": iou_threshold}


def coco_map(predictions, ground_truths, num_classes, iou_threshold=0.5, max_dets=10000):
    """The same mAP computed by pycocotools (COCOeval) for cross-checking; needs `pycocotools`.

    COCO-format GT/detections are built from the same inputs (boxes as [x, y, w, h]); the
    evaluation uses iouThrs=[iou_threshold], maxDets=[max_dets], one area range "all", and
    COCO's 101-point interpolation. COCO has no equivalent of VOC's "difficult" boxes (its
    "iscrowd" changes the IoU), so inputs with difficult boxes raise ValueError. Returns (mAP in [0, 1] over classes with GT,
    {class index: AP or NaN}).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib
    import io

    images, anns, dets = [], [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        if gt.get("difficult") is not None and _np(gt["difficult"], bool, (-1,)).any():
            raise ValueError("coco_map cannot mimic VOC's difficult boxes; drop them first")
        images.append({"id": i + 1, "width": 1, "height": 1})
        for b, c in zip(_np(gt.get("boxes"), np.float64, (-1, 4)), _np(gt.get("classes"), np.int64, (-1,))):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for b, c, s in zip(_np(pred.get("boxes"), np.float64, (-1, 4)),
                           _np(pred.get("classes"), np.int64, (-1,)),
                           _np(pred.get("scores"), np.float64, (-1,))):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        coco_gt.createIndex()
        if not dets:
            raise ValueError("coco_map needs at least one detection")
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([iou_threshold])
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (101 recall points, classes)
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, k]
        per_class[cat - 1] = float(np.mean(p)) if (p > -1).all() else float("nan")
    vals = [v for v in per_class.values() if not math.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per_class


def format_ap_table(result, digits=1):
    """Markdown table of per-class AP (percent) from `evaluate_detections`' result."""
    lines = ["| class | AP (all-point) | AP (VOC07 11-point) | GT boxes |", "|---|---|---|---|"]
    for name, ap in result["ap_per_class"].items():
        ap07 = result["ap07_per_class"][name]
        fmt = (lambda v: "n/a" if math.isnan(v) else f"{100 * v:.{digits}f}")
        lines.append(f"| {name} | {fmt(ap)} | {fmt(ap07)} | {result['num_gt_per_class'][name]} |")
    lines.append(f"| **mean** | **{100 * result['map']:.{digits}f}** | "
                 f"**{100 * result['map_07']:.{digits}f}** | |")
    return "\n".join(lines)
