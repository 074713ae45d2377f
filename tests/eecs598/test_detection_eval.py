"""eecs598.detection_eval (VOC AP / mAP) and the detection drawing helpers of eecs598.vis.

References are independent of the code under test: AP values computed by hand for small
cases (written out in the comments), an "AP as a sum over true positives" formula for random
curves, and pycocotools' COCOeval (IoU threshold 0.5, one area range, large maxDets) on the
same synthetic detections, where the two protocols must agree within 1 mAP point.
"""
import math

import numpy as np
import pytest
import torch

from eecs598 import detection_eval as de


def _gt(boxes, classes, difficult=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
           "classes": torch.tensor(classes, dtype=torch.long)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


def _det(boxes, classes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "classes": torch.tensor(classes, dtype=torch.long),
            "scores": torch.tensor(scores, dtype=torch.float32)}


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def test_hand_computed_tp_fp_duplicate_and_miss():
    # image 0: GT A, B; image 1: GT C (one class). Detections by score:
    # 0.9 on A (TP), 0.8 on A again (duplicate: FP), 0.7 on B (TP), 0.6 on nothing (FP); C missed.
    # recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    # all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9; 11-point: t <= 0.3 -> 1 (4 points),
    # 0.4 <= t <= 0.6 -> 2/3 (3 points), t >= 0.7 -> 0: (4 + 2) / 11 = 6/11.
    gts = [_gt([A, B], [0, 0]), _gt([C], [0])]
    preds = [_det([A, [0.5, 0, 10, 10], B, [80, 80, 90, 90]], [0, 0, 0, 0], [0.9, 0.8, 0.7, 0.6]),
             _det([], [], [])]
    r = de.evaluate_detections(preds, gts, num_classes=1)
    assert r["ap_per_class"][0] == pytest.approx(5 / 9)
    assert r["ap07_per_class"][0] == pytest.approx(6 / 11)
    assert r["map"] == pytest.approx(5 / 9) and r["num_gt_per_class"][0] == 3
    rec, prec = r["pr_curves"][0]
    np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 1 / 2])


def test_bfloat16_detections_are_read():
    """Detections of a bf16 autocast model: the same AP as their float32 values (numpy has no
    bfloat16)."""
    gts = [_gt([A, B], [0, 0]), _gt([C], [0])]
    preds = [_det([A, [0.5, 0, 10, 10], B, [80, 80, 90, 90]], [0, 0, 0, 0], [0.9, 0.8, 0.7, 0.6]),
             _det([], [], [])]
    bf16 = [{k: (v.bfloat16() if v.is_floating_point() else v) for k, v in p.items()} for p in preds]
    assert de.evaluate_detections(bf16, gts, num_classes=1)["map"] == pytest.approx(5 / 9)


def test_score_order_not_input_order():
    # The lower-scoring duplicate comes first in the input: it must still be the FP.
    gts = [_gt([A], [0])]
    preds = [_det([[1, 0, 10, 10], A], [0, 0], [0.3, 0.9])]
    r = de.evaluate_detections(preds, gts, 1)
    # TP then FP: recall 1, 1; precision 1, 1/2 -> AP 1
    assert r["ap_per_class"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(r["pr_curves"][0][1], [1.0, 0.5])


def test_iou_threshold_is_strict_and_classes_separate():
    # IoU([0,0,4,1], [0,0,2,1]) = 2/4 = 0.5 exactly: not > 0.5 -> FP (voc_eval.py: ovmax > 0.5)
    gts = [_gt([[0, 0, 4, 1]], [0])]
    r = de.evaluate_detections([_det([[0, 0, 2, 1]], [0], [0.9])], gts, 1)
    assert r["ap_per_class"][0] == 0.0
    r = de.evaluate_detections([_det([[0, 0, 2.1, 1]], [0], [0.9])], gts, 1)  # 2.1/4 > 0.5
    assert r["ap_per_class"][0] == pytest.approx(1.0)
    # a perfect box with the wrong class is a FP of that class and a miss of the right one
    r = de.evaluate_detections([_det([[0, 0, 4, 1]], [1], [0.9])], gts, 2)
    assert r["ap_per_class"][0] == 0.0 and math.isnan(r["ap_per_class"][1])
    assert r["map"] == 0.0 and r["num_det_per_class"][1] == 1


def test_best_iou_gt_already_taken_is_fp():
    # VOC assigns a detection to the GT of highest IoU; if that GT is taken it is a FP, even
    # when another GT overlaps it above the threshold. GT G1=[0,0,10,10], G2=[2,0,12,10].
    # d1 (0.9) = G1 -> TP. d2 (0.8) = [1,0,11,10]: IoU 9/11 with both G1 and G2 -> argmax G1
    # (first) which is taken -> FP. d3 (0.7) = G2 -> TP. recall 1/2, 1/2, 1;
    # precision 1, 1/2, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    preds = [_det([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]], [0, 0, 0], [0.9, 0.8, 0.7])]
    r = de.evaluate_detections(preds, gts, 1)
    assert r["ap_per_class"][0] == pytest.approx(5 / 6)


def test_difficult_boxes_are_ignored():
    # GT: A (difficult), B. Detections: 0.95 on A (ignored), 0.9 on B (TP), 0.5 on C (FP).
    # Only B counts: recall 1, 1; precision 1, 1/2 -> AP 1 (the difficult box is neither
    # counted as a positive nor its detection as a FP). Unmatched difficult GT: no miss.
    gts = [_gt([A, B], [0, 0], difficult=[True, False])]
    preds = [_det([A, B, C], [0, 0, 0], [0.95, 0.9, 0.5])]
    r = de.evaluate_detections(preds, gts, 1)
    assert r["ap_per_class"][0] == pytest.approx(1.0) and r["num_gt_per_class"][0] == 1
    assert r["num_det_per_class"][0] == 2
    r = de.evaluate_detections([_det([B], [0], [0.9])], gts, 1)
    assert r["ap_per_class"][0] == pytest.approx(1.0)
    # only difficult GT: no positives -> AP undefined (NaN), excluded from the mean
    r = de.evaluate_detections([_det([A], [0], [0.9])], [_gt([A], [0], [True])], 1)
    assert math.isnan(r["ap_per_class"][0]) and math.isnan(r["map"])


def test_classes_without_gt_or_detections():
    gts = [_gt([A], [0]), _gt([B], [2])]
    preds = [_det([A], [0], [0.8]), _det([], [], [])]
    r = de.evaluate_detections(preds, gts, 3, class_names=["x", "y", "z"])
    assert r["ap_per_class"]["x"] == 1.0          # perfect
    assert math.isnan(r["ap_per_class"]["y"])     # no GT: undefined, not in the mean
    assert r["ap_per_class"]["z"] == 0.0          # GT but no detections
    assert r["map"] == pytest.approx(0.5) and r["map_07"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        de.evaluate_detections(preds[:1], gts, 3)


def test_voc_ap_equals_sum_over_true_positives():
    # Independent formula: all-point AP = (1/npos) * sum over TPs k of max precision at
    # recall >= recall_k. 11-point by its definition on a brute-force loop.
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, npos = int(rng.integers(1, 40)), int(rng.integers(1, 30))
        tp = (rng.random(n) < 0.5).astype(float)
        tp[np.cumsum(tp) > npos] = 0
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        rec, prec = ctp / npos, ctp / (ctp + cfp)
        ref = sum(max(prec[k:]) for k in range(n) if tp[k]) / npos
        assert de.voc_ap(rec, prec) == pytest.approx(ref, abs=1e-12)
        ref07 = 0.0
        for t in [i / 10 for i in range(11)]:
            ps = [prec[k] for k in range(n) if rec[k] >= t - 1e-12]
            ref07 += (max(ps) if ps else 0.0) / 11
        assert de.voc_ap(rec, prec, use_07_metric=True) == pytest.approx(ref07, abs=1e-12)


def _synthetic(seed, num_images=60, num_classes=4):
    """GT boxes plus realistic detections: jittered hits, duplicates, misses, false alarms."""
    g = torch.Generator().manual_seed(seed)
    preds, gts = [], []
    for _ in range(num_images):
        k = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 150
        wh = 20 + torch.rand(k, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + wh], 1)
        classes = torch.randint(0, num_classes, (k,), generator=g)
        gts.append({"boxes": boxes, "classes": classes})
        det_b, det_c, det_s = [], [], []
        for b, c in zip(boxes, classes):
            for _ in range(int(torch.randint(0, 3, (1,), generator=g))):  # 0 (miss), 1, 2 (dup)
                det_b.append(b + torch.randn(4, generator=g) * 0.08 * (b[2:] - b[:2]).repeat(2))
                det_c.append(c)
                det_s.append(float(torch.rand(1, generator=g)) * 0.6 + 0.4)
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):  # false alarms
            xy = torch.rand(2, generator=g) * 150
            det_b.append(torch.cat([xy, xy + 20 + torch.rand(2, generator=g) * 60]))
            det_c.append(torch.randint(0, num_classes, (), generator=g))
            det_s.append(float(torch.rand(1, generator=g)) * 0.7)
        preds.append({"boxes": torch.stack(det_b) if det_b else torch.zeros(0, 4),
                      "classes": torch.tensor(det_c, dtype=torch.long),
                      "scores": torch.tensor(det_s)})
    return preds, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools_within_one_point(seed):
    pytest.importorskip("pycocotools")
    preds, gts = _synthetic(seed)
    ours = de.evaluate_detections(preds, gts, 4)
    coco, coco_per_class = de.coco_map(preds, gts, 4)
    print(f"seed {seed}: ours {100 * ours['map']:.2f}  pycocotools {100 * coco:.2f}")
    assert abs(ours["map"] - coco) < 0.01, (ours["ap_per_class"], coco_per_class)
    assert 0.2 < coco < 0.95  # a non-trivial case


def test_format_ap_table():
    r = de.evaluate_detections([_det([A], [0], [0.8])], [_gt([A], [0])], 2, class_names=["p", "q"])
    table = de.format_ap_table(r)
    assert "| p | 100.0 | 100.0 | 1 |" in table and "| q | n/a | n/a | 0 |" in table


def test_draw_helpers_run_headless():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from eecs598 import vis

    image = torch.rand(3, 32, 48)
    ax = vis.draw_detections(image, torch.tensor([[2.0, 3.0, 20.0, 30.0]]), torch.tensor([1]),
                             torch.tensor([0.75]), class_names=["cat", "dog"])
    assert len(ax.patches) == 1 and any("dog 0.75" in t.get_text() for t in ax.texts)
    r = de.evaluate_detections([_det([A, B], [0, 0], [0.8, 0.3])], [_gt([A], [0])], 1,
                               class_names=["cat"])
    axes = vis.plot_pr_curves(r)
    assert len(axes.lines) >= 1
    plt.close("all")


@pytest.mark.skipif(not __import__("eecs598.testing").testing.shared_data_available(
    "voc2007", "VOCdevkit", "VOC2007", "Annotations", "000005.xml"), reason="VOC XML not in $EECS598_DATA")
def test_voc_difficult_boxes_from_xml():
    from eecs598.data import VOC2007Detection

    ds = VOC2007Detection("val", num_images=2)
    assert ds.annotation_path(0).name == "000005.xml"
    # 000005.jpg is 299 x 224 in the data root's copy (shorter side 224): scale 1, centre crop
    # left = (299 - 224) // 2 = 37. Its XML marks two chairs difficult:
    # [3.0, 145.7, 40.1, 223.4] -> [0, 145.7, 3.1, 223.4]; [165.6, 111.1, 186.6, 131.4] -> x - 37.
    chair = float(ds.class_to_idx["chair"])
    expected = torch.tensor([[0.0, 145.7, 3.1, 223.4, chair], [128.6, 111.1, 149.6, 131.4, chair]])
    got = ds.difficult_boxes(0)
    assert got.shape == (2, 5)
    assert torch.allclose(got, expected, atol=1e-4), got
    # the JSON ground truth of the same image holds only the non-difficult objects
    _, _, gt = ds[0]
    assert int((gt[:, 4] >= 0).sum()) == 3


def test_a_duplicate_detection_of_a_difficult_box_is_ignored_too():
    """VOC's voc_eval ignores every detection whose best ground-truth box is difficult, the
    second one on it included (not a false positive)."""
    A, B = [0, 0, 10, 10], [20, 20, 30, 30]
    gts = [{"boxes": torch.tensor([A, B], dtype=torch.float), "classes": torch.tensor([0, 0]),
            "difficult": torch.tensor([True, False])}]
    preds = [{"boxes": torch.tensor([A, [0.5, 0, 10, 10], B], dtype=torch.float),
              "classes": torch.tensor([0, 0, 0]), "scores": torch.tensor([0.95, 0.94, 0.9])}]
    result = de.evaluate_detections(preds, gts, 1)
    assert result["ap_per_class"][0] == pytest.approx(1.0) and result["num_det_per_class"][0] == 1



def test_an_image_without_detections_may_be_an_empty_dict_and_lengths_must_agree():
    gts = [{"boxes": [[0, 0, 10, 10]], "classes": [0]}, {"boxes": [[0, 0, 10, 10]], "classes": [0]}]
    preds = [{}, {"boxes": [[0, 0, 10, 10]], "classes": [0], "scores": [0.9]}]
    result = de.evaluate_detections(preds, gts, 1)
    assert result["ap_per_class"][0] == pytest.approx(0.5) and result["num_det_per_class"][0] == 1
    with pytest.raises(ValueError, match=r"prediction 0 \(classes, scores, boxes\): lengths \[1, 0, 1\]"):
        de.evaluate_detections([{"boxes": [[0, 0, 10, 10]], "classes": [0]}], gts[:1], 1)


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_detection_does_not_match_gt_of_another_class():
    # class-0 detection sits exactly on a class-1 GT; class-0 GT elsewhere
    gts = [_gt([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 0])]
    preds = [_det([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [0.9, 0.8])]
    r = de.evaluate_detections(preds, gts, num_classes=2)
    # class 0: FP then TP -> precision envelope 0.5 at recall 1 -> AP 0.5
    assert r["ap_per_class"][0] == pytest.approx(0.5)


def test_disjoint_boxes_have_zero_iou():
    # det lies below-right of GT: both overlaps negative; product must not count as intersection
    gts = [_gt([[0, 0, 10, 10]], [0])]
    preds = [_det([[11, 11, 12, 12]], [0], [0.9])]
    assert de.evaluate_detections(preds, gts, num_classes=1)["ap_per_class"][0] == 0.0
    gts = [_gt([[0, 0, 10, 10]], [0])]
    preds = [_det([[20, 20, 29, 29]], [0], [0.9])]   # (-10)*(-10)=100 "intersection" under the mutant
    assert de.evaluate_detections(preds, gts, num_classes=1)["ap_per_class"][0] == 0.0


def test_11_point_counts_a_recall_of_exactly_three_tenths():
    recall = np.array([1, 2, 3]) / 10
    precision = np.array([1.0, 1.0, 1.0])
    assert de.voc_ap(recall, precision, use_07_metric=True) == pytest.approx(4 / 11)


def test_equal_scores_keep_input_order():
    # 20 detections with equal score in one image, one GT matching only the LAST one.
    boxes = [[100 + 3 * i, 100, 101 + 3 * i, 101] for i in range(19)] + [[0, 0, 10, 10]]
    preds = [_det(boxes, [0] * 20, [0.5] * 20)]
    gts = [_gt([[0, 0, 10, 10]], [0])]
    rec, prec = de.evaluate_detections(preds, gts, num_classes=1)["pr_curves"][0]
    assert rec.tolist() == [0.0] * 19 + [1.0]


def test_coco_map_class_without_gt_is_nan_and_max_dets_used():
    pytest.importorskip("pycocotools")
    gts = [_gt([[0, 0, 10, 10]], [0])]
    preds = [_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 1], [0.9, 0.8])]
    m, per = de.coco_map(preds, gts, num_classes=2)
    assert per[0] == pytest.approx(1.0) and math.isnan(per[1]) and m == pytest.approx(1.0)
    # 150 FPs with high scores before the TP: capped at max_dets=100 the TP is dropped
    boxes = [[200 + 2 * i, 200, 201 + 2 * i, 201] for i in range(150)] + [[0, 0, 10, 10]]
    preds = [_det(boxes, [0] * 151, [1.0 - i * 1e-3 for i in range(151)])]
    m200, _ = de.coco_map(preds, gts, num_classes=1, max_dets=200)
    assert m200 > 0


def test_equal_scores_keep_input_order_on_large_inputs():
    rng = np.random.default_rng(0)
    n = 3000
    scores = np.round(rng.random(n), 1)
    is_tp = rng.random(n) < 0.5
    preds, gts = [], []
    for i in range(n):   # one image per detection
        gts.append(_gt([[0, 0, 10, 10]], [0]))
        box = [0, 0, 10, 10] if is_tp[i] else [50, 50, 60, 60]
        preds.append(_det([box], [0], [float(scores[i])]))
    rec, _ = de.evaluate_detections(preds, gts, num_classes=1)["pr_curves"][0]
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(rec, np.cumsum(is_tp[order]) / n)


def test_format_ap_table_columns():
    r = {"ap_per_class": {"cat": 0.5}, "ap07_per_class": {"cat": 0.25}, "num_gt_per_class": {"cat": 4},
         "map": 0.5, "map_07": 0.25}
    assert "| cat | 50.0 | 25.0 | 4 |" in de.format_ap_table(r)


def test_coco_map_rejects_difficult_boxes():
    pytest.importorskip("pycocotools")
    gts = [dict(_gt([[0, 0, 10, 10]], [0]), difficult=torch.tensor([True]))]
    with pytest.raises(ValueError):
        de.coco_map([_det([[0, 0, 10, 10]], [0], [0.9])], gts, num_classes=1)
