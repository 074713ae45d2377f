"""Unit tests for A5/two_stage_detector.py (Faster R-CNN).

References: brute-force Python loops written here (IoU, anchor matching, the training losses
from captured head outputs, a line-by-line port
of torchvision's CPU roi_align kernel), closed-form anchor geometry, autograd-free round
trips for the box coder, and counting for the samplers. Random backbones (pretrained=False)
and synthetic images only: no data needed.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import two_stage_detector as tsd
from common import DetectorBackboneWithFPN
from eecs598.testing import assert_close, box_iou_reference, host_reads, iou_of_two_boxes

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def _random_boxes(n, size=100.0, gen=None):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _locations(shapes):
    """Row-major (x, y) centres, written out independently of common.get_fpn_location_coords."""
    out = {}
    for level, (H, W) in shapes.items():
        s = STRIDES[level]
        out[level] = torch.tensor([[(j + 0.5) * s, (i + 0.5) * s] for i in range(H) for j in range(W)])
    return out


def test_hello(capsys):
    tsd.hello_two_stage_detector()
    assert "two_stage_detector.py" in capsys.readouterr().out


# --- anchors -----------------------------------------------------------------------------------

def test_generate_fpn_anchors_geometry():
    shapes = {"p3": (3, 5), "p4": (2, 3), "p5": (1, 2)}  # non-square maps
    locs = _locations(shapes)
    ratios = [0.5, 1.0, 2.0]
    anchors = tsd.generate_fpn_anchors(locs, STRIDES, stride_scale=4, aspect_ratios=ratios)
    for level, (H, W) in shapes.items():
        a = anchors[level]
        assert a.shape == (H * W * 3, 4)
        w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        area = (4 * STRIDES[level]) ** 2
        assert_close(w * h, torch.full_like(w, area), 1e-5, f"{level} areas")
        assert_close(h / w, torch.tensor(ratios).repeat(H * W), 1e-5, f"{level} aspect ratios (h/w)")
        centres = torch.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], dim=1)
        assert_close(centres, locs[level].repeat_interleave(3, dim=0), 1e-6, f"{level} centres")


def test_rpn_prediction_network_flattening_matches_anchors():
    """Element (i, j, a) of the conv output must land at flat index (i * W + j) * A + a."""
    torch.manual_seed(0)
    net = tsd.RPNPredictionNetwork(4, [6], num_anchors=3)
    feats = {"p3": torch.randn(2, 4, 3, 5), "p4": torch.randn(2, 4, 2, 3)}
    obj, box = net(feats)
    for level, f in feats.items():
        B, _, H, W = f.shape
        assert obj[level].shape == (B, H * W * 3) and box[level].shape == (B, H * W * 3, 4)
        h = net.stem_rpn(f)
        o, d = net.pred_obj(h), net.pred_box(h)
        for (b, i, j, a) in [(0, 0, 0, 0), (1, H - 1, 0, 2), (0, 1, W - 1, 1), (1, H - 1, W - 1, 0)]:
            k = (i * W + j) * 3 + a
            assert torch.allclose(obj[level][b, k], o[b, a, i, j])
            assert torch.allclose(box[level][b, k], d[b, 4 * a:4 * a + 4, i, j])


# --- IoU, box coder ---------------------------------------------------------------------------


def test_iou_vs_brute_force():
    gen = torch.Generator().manual_seed(1)
    b1, b2 = _random_boxes(13, gen=gen), _random_boxes(7, gen=gen)
    b2[0] = b1[0]  # identical box -> IoU 1
    b2[1] = torch.tensor([500.0, 500, 510, 510], dtype=torch.float64)  # disjoint -> 0
    assert_close(tsd.iou(b1, b2), box_iou_reference(b1, b2), 1e-12, "iou")


def test_delta_round_trip_and_formula():
    gen = torch.Generator().manual_seed(2)
    anchors, gt = _random_boxes(50, gen=gen), _random_boxes(50, gen=gen)
    deltas = tsd.rcnn_get_deltas_from_anchors(anchors, gt)
    a, g = anchors[3].tolist(), gt[3].tolist()
    aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
    ref = torch.tensor([((g[0] + g[2]) - (a[0] + a[2])) / 2 / aw, ((g[1] + g[3]) - (a[1] + a[3])) / 2 / ah,
                        math.log(gw / aw), math.log(gh / ah)], dtype=torch.float64)
    assert_close(deltas[3], ref, 1e-10, "deltas of one box")
    assert_close(tsd.rcnn_apply_deltas_to_anchors(deltas, anchors), gt, 1e-10, "round trip")
    # background rows (-1) are marked with -1e8
    gt5 = torch.cat([gt, torch.zeros(50, 1, dtype=torch.float64)], dim=1)
    gt5[7] = -1
    assert (tsd.rcnn_get_deltas_from_anchors(anchors, gt5)[7] == -1e8).all()


def test_apply_deltas_clamps_scale():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = tsd.rcnn_apply_deltas_to_anchors(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors)
    side = 10 * math.exp(math.log(1000 / 16))
    assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(side), 1e-5, "clamped width")
    assert torch.isfinite(boxes).all()


# --- matching and sampling ------------------------------------------------------------------

def _match_brute(anchors, gt, lo, hi, low_quality=True):
    gt = [g for g in gt.tolist() if g[4] != -1]
    out = []
    ious = box_iou_reference(anchors, torch.tensor([g[:4] for g in gt], dtype=torch.float64))
    best_per_gt = [max(ious[:, j].tolist()) for j in range(len(gt))]
    for i in range(len(anchors)):
        row = ious[i].tolist()
        j = max(range(len(gt)), key=lambda m: (row[m], -m))  # first max
        q = row[j]
        is_best = low_quality and any(row[m] == best_per_gt[m] and best_per_gt[m] > 0 for m in range(len(gt)))
        if q <= lo and not is_best:
            out.append([-1.0] * 5)
        elif lo < q < hi and not is_best:
            out.append([-1e8] * 5)
        else:
            out.append(gt[j])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("low_quality", [True, False])
def test_match_anchors_vs_brute_force(low_quality):
    gen = torch.Generator().manual_seed(3)
    anchors = _random_boxes(200, gen=gen)
    gt = torch.full((6, 5), -1.0, dtype=torch.float64)
    gt[:4, :4] = _random_boxes(4, gen=gen)
    gt[:4, 4] = torch.tensor([3.0, 0.0, 7.0, 19.0])
    gt[2, :2] = anchors[0, :2] + 1.0
    gt[2, 2:4] = gt[2, :2] + 2.0  # tiny box inside anchor 0: only a low-quality match
    anchors[10:12] = gt[[0, 3], :4] + 0.5  # near copies: high-IoU foreground
    ours = tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.3, 0.6), allow_low_quality_matches=low_quality)
    ref = _match_brute(anchors, gt, 0.3, 0.6, low_quality)
    assert_close(ours, ref, 1e-12, "matched gt boxes")
    assert ((ours[:, 4] >= 0).sum() > 0) and ((ours[:, 4] == -1).sum() > 0)
    if low_quality:  # the paper's second rule only adds foreground anchors
        strict = tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.3, 0.6), allow_low_quality_matches=False)
        assert (ours[:, 4] >= 0).sum() > (strict[:, 4] >= 0).sum()
        assert ((strict[:, 4] >= 0) <= (ours[:, 4] >= 0)).all()


def test_batched_match_equals_per_image_calls_and_reads_nothing_back():
    """(B, M, 5) GT against shared anchors: image b's rows equal a one-image call (and the brute
    force), for an image with an IoU tie (a duplicate GT of another class), one with a box
    without area beside real ones, and one of padding only; no host read (on a GPU: no wait)."""
    gen = torch.Generator().manual_seed(4)
    anchors = _random_boxes(150, gen=gen)
    gt = torch.full((3, 5, 5), -1.0, dtype=torch.float64)
    gt[0, :3, :4] = _random_boxes(3, gen=gen)
    gt[0, :3, 4] = torch.tensor([2.0, 5.0, 9.0])
    gt[0, 3] = gt[0, 1]
    gt[0, 3, 4] = 11.0  # same box, other class: ties go to the lower index
    gt[1, :2, :4] = _random_boxes(2, gen=gen)
    gt[1, :2, 4] = torch.tensor([1.0, 4.0])
    gt[1, 2] = torch.tensor([30.0, 30.0, 30.0, 80.0, 6.0])  # no area
    anchors[5:7] = gt[0, [0, 1], :4] + 0.25
    for low_quality in (True, False):
        batched = tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.3, 0.6), allow_low_quality_matches=low_quality)
        assert batched.shape == (3, 150, 5)
        for b in range(3):
            single = tsd.rcnn_match_anchors_to_gt(anchors, gt[b], (0.3, 0.6), allow_low_quality_matches=low_quality)
            assert torch.equal(batched[b], single)
        assert torch.equal(batched[0], _match_brute(anchors, gt[0], 0.3, 0.6, low_quality))
        assert torch.equal(batched[1], _match_brute(anchors, gt[1, :2], 0.3, 0.6, low_quality))
        assert (batched[2] == -1).all() and (batched[0, :, 4] == 5).any() and not (batched[0, :, 4] == 11).any()
    assert host_reads(lambda: tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.3, 0.6))) == {}
    empty = tsd.rcnn_match_anchors_to_gt(anchors, torch.empty(2, 0, 5, dtype=torch.float64), (0.3, 0.6))
    assert empty.shape == (2, 150, 5) and (empty == -1).all()


def test_gt_boxes_without_area_are_ignored_in_matching_and_the_losses_stay_finite():
    """A zero-width or zero-height GT box (x2 == x1) has IoU 0 / 0 with its own copy among the
    training proposals; it is ignored like padding, so no NaN target reaches the box loss."""
    proposals = torch.tensor([[0.0, 0, 50, 50], [10, 10, 10, 40], [10, 10, 40, 10]])
    gt = torch.tensor([[10.0, 10, 10, 40, 3], [10, 10, 40, 10, 4], [-1, -1, -1, -1, -1]])
    assert (tsd.rcnn_match_anchors_to_gt(proposals, gt, (0.5, 0.5)) == -1).all()
    torch.manual_seed(0)
    det = _detector().train()
    gt = _gt()
    gt[0, 2] = torch.tensor([20.0, 10, 20, 50, 3])  # beside two real boxes
    gt[1, 1] = torch.tensor([10.0, 10, 40, 10, 4])
    losses = det(torch.randn(2, 3, 224, 224), gt)
    assert all(torch.isfinite(v) for v in losses.values()), losses


def test_match_without_gt_is_all_background():
    anchors = _random_boxes(10)
    out = tsd.rcnn_match_anchors_to_gt(anchors, torch.full((40, 5), -1.0, dtype=torch.float64), (0.3, 0.6))
    assert out.shape == (10, 5) and (out == -1).all()


def test_sample_rpn_training_counts():
    torch.manual_seed(0)
    matched = torch.full((1000, 5), -1.0)
    matched[:30, 4] = 2.0           # 30 foreground
    matched[30:100] = -1e8          # 70 neutral, never sampled
    fg, bg = tsd.sample_rpn_training(matched, 256, 0.5)
    assert len(fg) == 30 and len(bg) == 226  # fewer fg than 128: background fills up
    assert (matched[fg, 4] >= 0).all() and (matched[bg, 4] == -1).all()
    assert len(set(fg.tolist())) == len(fg) and len(set(bg.tolist())) == len(bg)
    matched[:600, 4] = 1.0
    fg, bg = tsd.sample_rpn_training(matched, 256, 0.25)
    assert len(fg) == 64 and len(bg) == 192
    assert (matched[fg, 4] >= 0).all() and (matched[bg, 4] == -1).all()


# --- roi_align vs a port of torchvision's CPU kernel -----------------------------------------

def _bilinear(fmap, H, W, y, x):
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[y_low][x_low] + hy * lx * fmap[y_low][x_high]
            + ly * hx * fmap[y_high][x_low] + ly * lx * fmap[y_high][x_high])


def _roi_align_brute(features, rois, PH, PW, scale, sampling_ratio, aligned):
    """Line-by-line Python port of torchvision's roi_align_forward_kernel_impl (CPU)."""
    B, C, H, W = features.shape
    out = torch.zeros(len(rois), C, PH, PW, dtype=torch.float64)
    feats = features.tolist()
    for n, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        off = 0.5 if aligned else 0.0
        sw, sh, ew, eh = roi[1] * scale - off, roi[2] * scale - off, roi[3] * scale - off, roi[4] * scale - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / PH, rw / PW
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / PH)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / PW)
        count = max(gh * gw, 1)
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    val = 0.0
                    for iy in range(gh):
                        y = sh + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            x = sw + pw * bw + (ix + 0.5) * bw / gw
                            val += _bilinear(feats[b][c], H, W, y, x)
                    out[n, c, ph, pw] = val / count
    return out


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, True), (0, True), (3, False), (-1, False)])
def test_roi_align_vs_torchvision_port(sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64)  # non-square map
    rois = torch.tensor([
        [0, 3.3, 5.1, 40.7, 22.9],     # float coords, non-square ROI
        [1, 0.0, 0.0, 72.0, 56.0],     # the whole map (stride 8)
        [1, -12.0, -9.0, 20.0, 11.0],  # crosses the top-left border
        [0, 60.0, 40.0, 90.0, 70.0],   # crosses the bottom-right border
        [0, 30.0, 30.0, 30.5, 31.0],   # smaller than a feature pixel
        [1, 10.0, 20.0, 10.0, 20.0],   # empty
    ], dtype=torch.float64)
    for (PH, PW) in [(2, 3), (4, 4)]:
        ours = tsd.roi_align(features, rois, (PH, PW), spatial_scale=1 / 8,
                             sampling_ratio=sampling_ratio, aligned=aligned)
        ref = _roi_align_brute(features, rois, PH, PW, 1 / 8, sampling_ratio, aligned)
        assert ours.shape == (6, 3, PH, PW)
        assert_close(ours, ref, 1e-10, f"roi_align {PH}x{PW} sr={sampling_ratio} aligned={aligned}")


def test_roi_align_list_input_and_gradient():
    torch.manual_seed(5)
    features = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0]], dtype=torch.float64),
             torch.tensor([[0.0, 0.0, 48.0, 48.0], [5.0, 5.0, 9.0, 20.0]], dtype=torch.float64)]
    out = tsd.roi_align(features, boxes, 3, spatial_scale=1 / 8)
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 40.0], [1, 0.0, 0.0, 48.0, 48.0], [1, 5.0, 5.0, 9.0, 20.0]],
                        dtype=torch.float64)
    assert_close(out, _roi_align_brute(features.detach(), rois, 3, 3, 1 / 8, 2, True), 1e-10, "list input")
    # linear in the features: numeric gradient of a random projection
    w = torch.randn_like(out)
    (out * w).sum().backward()
    eps = 1e-6
    for idx in [(0, 1, 2, 3), (1, 3, 0, 0), (1, 0, 5, 5)]:
        f2 = features.detach().clone()
        f2[idx] += eps
        num = ((tsd.roi_align(f2, boxes, 3, spatial_scale=1 / 8) * w).sum()
               - (out.detach() * w).sum()) / eps
        assert abs(num.item() - features.grad[idx].item()) < 1e-6


def test_assign_fpn_levels():
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 56, 56],
                          [0, 0, 10, 10], [0, 0, 224, 100]], dtype=torch.float32)
    ref = []
    for b in boxes.tolist():
        k = math.floor(5 + math.log2(math.sqrt((b[2] - b[0]) * (b[3] - b[1])) / 224))
        ref.append(min(max(k, 3), 5))
    assert tsd.assign_fpn_levels(boxes).tolist() == ref


def test_mix_gt_with_proposals_includes_gt():
    props = {lvl: [torch.rand(5, 4) * 10, torch.rand(2, 4) * 10] for lvl in STRIDES}
    gt = torch.full((2, 40, 5), -1.0)
    gt[0, 0] = torch.tensor([0, 0, 224, 224, 4.0])   # p5 (200 x 200 would be p4)
    gt[0, 1] = torch.tensor([10, 10, 40, 50, 1.0])   # p3
    gt[1, 0] = torch.tensor([0, 0, 120, 130, 7.0])   # p4
    mixed = tsd.mix_gt_with_proposals(props, gt)
    counts = {lvl: [len(x) for x in mixed[lvl]] for lvl in STRIDES}
    assert counts == {"p3": [6, 2], "p4": [5, 3], "p5": [6, 2]}
    for b in range(2):
        allb = torch.cat([mixed[lvl][b] for lvl in STRIDES])
        for g in gt[b][gt[b, :, 4] != -1]:
            assert (allb == g[:4]).all(dim=1).any(), "every GT box is among the proposals"
    assert all(len(x) == 5 for x in props["p3"][:1])  # input not modified


# --- RPN and FasterRCNN end to end (random backbone, synthetic data) -------------------------

def _detector(fg_fraction=0.25, **kw):
    """A small FasterRCNN (random backbone); `kw` go to its RPN, fg_fraction to its ROI head."""
    backbone = DetectorBackboneWithFPN(16, pretrained=False)
    rpn = tsd.RPN(16, [16], batch_size_per_image=32, pre_nms_topk=50, post_nms_topk=7, **kw)
    return tsd.FasterRCNN(backbone, rpn, [8], num_classes=20, batch_size_per_image=16, fg_fraction=fg_fraction)


def _gt():
    gt = torch.full((2, 40, 5), -1.0)
    gt[0, 0] = torch.tensor([20.0, 30, 120, 170, 3])
    gt[0, 1] = torch.tensor([150.0, 10, 200, 60, 11])
    gt[1, 0] = torch.tensor([0.0, 0, 224, 224, 14])
    return gt


def test_rpn_targets_are_binary_and_losses_nonnegative(monkeypatch):
    torch.manual_seed(0)
    det = _detector().train()
    seen = []
    real_bce = tsd.F.binary_cross_entropy_with_logits

    def spy(logits, targets, *a, **k):
        seen.append(targets.detach().clone())
        return real_bce(logits, targets, *a, **k)

    monkeypatch.setattr(tsd.F, "binary_cross_entropy_with_logits", spy)
    losses = det(torch.randn(2, 3, 224, 224), _gt())
    assert seen and all(set(t.unique().tolist()) <= {0.0, 1.0} for t in seen)
    assert any((t == 1).any() for t in seen), "some anchors are foreground"
    assert set(losses) >= {"loss_rpn_obj", "loss_rpn_box", "loss_cls"}
    for k, v in losses.items():
        assert k.startswith("loss") and v.ndim == 0 and torch.isfinite(v) and v >= 0, k
    sum(losses.values()).backward()
    assert det.rpn.pred_net.pred_obj.weight.grad.abs().sum() > 0
    assert det.cls_pred.weight.grad.abs().sum() > 0


def test_rpn_losses_without_proposals_are_the_same(monkeypatch):
    """with_proposals=False (training the RPN alone) skips the proposal step and gives the same
    losses."""
    torch.manual_seed(0)
    det = _detector().train()
    feats = det.backbone(torch.randn(2, 3, 224, 224))
    gt = _gt()
    torch.manual_seed(5)  # the same anchors sampled both times
    full = det.rpn(feats, det.backbone.fpn_strides, gt)
    monkeypatch.setattr(det.rpn, "predict_proposals", lambda *a, **k: pytest.fail("proposals computed"))
    torch.manual_seed(5)
    losses = det.rpn(feats, det.backbone.fpn_strides, gt, with_proposals=False)
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box"}
    for k in losses:
        assert torch.equal(losses[k], full[k]), k


@pytest.mark.parametrize("host_devices", [("cpu",), ()], ids=["nms per image", "nms_masks"])
def test_rpn_proposals_match_a_brute_force(monkeypatch, host_devices):
    """predict_proposals against Python loops in float64: per level and image, the pre_nms_topk
    anchors with the highest objectness, decoded (R-CNN deltas), clipped to the image, empty
    boxes dropped, greedy NMS at nms_thresh by descending objectness, the first post_nms_topk
    kept. The data makes the top-k cap, the clipping, the NMS and the post-NMS cap all act.
    Both ways the NMS runs: `nms` per image (the CPU) and `nms_masks` for the batch (accelerators)."""
    monkeypatch.setattr(common, "_NMS_ON_HOST_DEVICES", host_devices)
    gen = torch.Generator().manual_seed(6)
    rpn = tsd.RPN(16, [16], batch_size_per_image=32, pre_nms_topk=12, post_nms_topk=5, nms_thresh=0.5)
    H, W = 80, 100
    anchors, logits, deltas = {}, {}, {}
    for level, n in (("p3", 40), ("p4", 25)):
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([W, H]) * 0.25 - 10  # crowded: boxes overlap
        wh = torch.rand(n, 2, generator=gen) * 40 + 10
        anchors[level] = torch.cat([xy, xy + wh], dim=1).double()
        logits[level] = torch.randn(2, n, generator=gen, dtype=torch.float64)
        deltas[level] = torch.randn(2, n, 4, generator=gen, dtype=torch.float64) * 0.3
    props = rpn.predict_proposals(anchors, logits, deltas, (H, W))
    acted = {"topk": 0, "clip": 0, "nms": 0, "cap": 0}
    for level in anchors:
        for b in range(2):
            order = sorted(range(len(anchors[level])), key=lambda i: -logits[level][b, i].item())
            acted["topk"] += len(order) > rpn.pre_nms_topk
            cands = []
            for i in order[:rpn.pre_nms_topk]:
                x1, y1, x2, y2 = anchors[level][i].tolist()
                dx, dy, dw, dh = deltas[level][b, i].tolist()
                aw, ah = x2 - x1, y2 - y1
                cx, cy = x1 + aw / 2 + dx * aw, y1 + ah / 2 + dy * ah
                w, h = aw * math.exp(dw), ah * math.exp(dh)
                raw = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                box = [min(max(raw[0], 0), W), min(max(raw[1], 0), H), min(max(raw[2], 0), W), min(max(raw[3], 0), H)]
                acted["clip"] += box != raw
                if box[2] - box[0] > rpn.min_size and box[3] - box[1] > rpn.min_size:
                    cands.append(box)
            kept = []
            for box in cands:
                if all(not iou_of_two_boxes(k, box) > rpn.nms_thresh for k in kept):  # NaN (0 / 0) keeps, as nms
                    kept.append(box)
            acted["nms"] += kept[:rpn.post_nms_topk] != cands[:rpn.post_nms_topk]  # NMS changed the output
            acted["cap"] += len(kept) > rpn.post_nms_topk
            ref = torch.tensor(kept[:rpn.post_nms_topk], dtype=torch.float64).reshape(-1, 4)
            assert props[level][b].shape == ref.shape, (level, b)
            assert_close(props[level][b], ref, 1e-9, f"{level} image {b}")
    assert all(acted.values()), acted


def test_post_nms_topk_respected():
    torch.manual_seed(1)
    det = _detector().eval()
    feats = det.backbone(torch.randn(2, 3, 224, 224))
    with torch.no_grad():
        props = det.rpn(feats, det.backbone.fpn_strides)["proposals"]
    for level, per_image in props.items():
        assert len(per_image) == 2
        for p in per_image:
            assert p.shape[1] == 4 and 0 < p.shape[0] <= 7
            assert (p[:, 0] >= 0).all() and (p[:, 2] <= 224).all() and (p[:, 2] > p[:, 0]).all()


def test_rpn_clips_proposals_to_the_input_image():
    """A 100 x 100 input gives a 13 x 13 p3 map (stride 8: a 104-pixel canvas); proposals are
    clipped to the image's 100 pixels, in the detector and in detect_batch."""
    torch.manual_seed(3)
    det = _detector().eval()
    images = torch.randn(2, 3, 100, 100)
    spans = []
    real_rpn_forward = det.rpn.forward

    def spy(*args, **kwargs):
        out = real_rpn_forward(*args, **kwargs)
        spans.append(max(p[:, 2:].max().item() for per_image in out["proposals"].values()
                         for p in per_image if len(p)))
        return out

    det.rpn.forward = spy
    with torch.no_grad():
        det.rpn(det.backbone(images), det.backbone.fpn_strides)  # no image size: the p3 canvas
        det(images[:1], test_score_thresh=0.0)
        det.detect_batch(images, test_score_thresh=0.0)
    assert spans[0] > 100 and spans[0] <= 104
    assert spans[1] <= 100 and spans[2] <= 100


def test_faster_rcnn_inference_outputs_valid():
    torch.manual_seed(2)
    det = _detector().eval()
    with torch.no_grad():
        boxes, classes, scores = det(torch.randn(1, 3, 224, 224), test_score_thresh=0.0,
                                     test_nms_thresh=0.5)
    M = boxes.shape[0]
    assert M > 0 and boxes.shape == (M, 4) and classes.shape == (M,) and scores.shape == (M,)
    assert classes.dtype == torch.long and classes.min() >= 0 and classes.max() < 20
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 224).all() and (boxes[:, 3] <= 224).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (scores[:-1] >= scores[1:]).all() and (scores >= 0).all() and (scores <= 1).all()
    # no two kept boxes of the same class overlap by more than the NMS threshold
    for c in classes.unique():
        b = boxes[classes == c].double()
        ious = box_iou_reference(b, b) - torch.eye(len(b), dtype=torch.float64)
        assert (ious <= 0.5 + 1e-6).all()


def test_inference_from_logits_picks_classes_and_decodes():
    det = _detector().eval()
    proposals = torch.tensor([[10.0, 10, 50, 50], [100, 100, 150, 180], [12, 11, 52, 49], [11, 10, 51, 50]])
    logits = torch.full((4, 21), -10.0)
    logits[0, 1 + 4] = 10.0   # class 4
    logits[1, 1 + 9] = 10.0   # class 9
    logits[2, 1 + 4] = 9.0    # class 4 again, overlaps proposal 0 -> suppressed
    logits[3, 1 + 7] = 8.0    # class 7, overlaps proposal 0 as much: another class -> kept
    boxes, classes, scores = det.inference(torch.zeros(1, 3, 224, 224), proposals, logits, 0.5, 0.5)
    assert classes.tolist() == [4, 9, 7]
    assert_close(boxes, proposals[[0, 1, 3]], 1e-6, "boxes without deltas are the proposals")
    deltas = torch.zeros(4, 80)
    deltas[1, 9 * 4:9 * 4 + 4] = torch.tensor(tsd.ROI_BOX_WEIGHTS) * torch.tensor([0.1, 0.0, 0.0, 0.0])
    boxes, classes, _ = det.inference(torch.zeros(1, 3, 224, 224), proposals, logits, 0.5, 0.5,
                                      pred_box_deltas=deltas)
    assert_close(boxes[1], torch.tensor([105.0, 100, 155, 180]), 1e-5, "class-specific delta applied")


def test_batched_detection_matches_one_image_at_a_time():
    torch.manual_seed(3)
    det = _detector().double().eval()  # float64: near-tied random scores keep their order
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        batched = det.detect_batch(images, 0.0, 0.5)
        singles = [det(images[b:b + 1], test_score_thresh=0.0, test_nms_thresh=0.5) for b in range(2)]
    for (bb, bc, bs), (sb, sc, ss) in zip(batched, singles):
        assert bb.shape == sb.shape and torch.equal(bc, sc)
        assert_close(bb, sb, 1e-8, "boxes")
        assert_close(bs, ss, 1e-8, "scores")


def test_mixed_precision_keeps_box_coordinates_in_float32():
    """Under bf16 autocast, anchors / proposals / ROI coordinates stay float32 (bf16 would round
    pixel coordinates), and a training step gives finite losses."""
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    # Coordinates beyond 256 px, where bf16's spacing is 2 px: sampling at bf16-rounded
    # coordinates gives a relative error of 3.4e-2 here, against 2.4e-3 for the output's own
    # bf16 rounding. The reference samples the same bf16-rounded features in float64.
    feats = torch.randn(1, 3, 40, 48, generator=gen).bfloat16()
    rois = torch.tensor([[0, 261.3, 203.7, 301.9, 250.1], [0, 10.0, 11.0, 60.0, 50.0],
                         [0, 130.3, 290.9, 370.2, 317.7]])
    ref = _roi_align_brute(feats.double(), rois.double(), 2, 2, 1 / 8, 2, True)
    ours = tsd.roi_align(feats, rois, (2, 2), spatial_scale=1 / 8)
    assert ours.dtype == torch.bfloat16
    assert_close(ours.double(), ref, 6e-3, "bf16 roi_align")
    det = _detector().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = det.backbone(torch.randn(2, 3, 224, 224))
        out = det.rpn(feats, det.backbone.fpn_strides, _gt())
        losses = det(torch.randn(2, 3, 224, 224), _gt())
    assert all(p.dtype == torch.float32 for per_img in out["proposals"].values() for p in per_img)
    assert all(torch.isfinite(v.float()) for v in losses.values())


def _hand_deltas(boxes, gts):
    """R-CNN deltas with Python math, one (box, gt) pair per row."""
    out = []
    for a, g in zip(boxes.tolist(), gts.tolist()):
        aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
        out.append([((g[0] + g[2]) - (a[0] + a[2])) / 2 / aw, ((g[1] + g[3]) - (a[1] + a[3])) / 2 / ah,
                    math.log(gw / aw), math.log(gh / ah)])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 4)


def test_faster_rcnn_training_losses_match_a_reference(monkeypatch):
    """All four training losses recomputed from the captured head outputs and the sampled
    indices: matching checked against brute force (RPN: IoU 0.3 / 0.6 with the low-quality rule;
    ROI head: 0.5 / 0.5 without), BCE with targets 1/0 and L1 on the hand-made deltas of the RPN
    (divided by batch_size_per_image x B), cross-entropy with labels class + 1 (background 0)
    and L1 on the foreground's own-class deltas x ROI_BOX_WEIGHTS (divided by the sampled count)
    for the ROI head. float64 references, tol 1e-5."""
    torch.manual_seed(5)
    det = _detector().train()
    gt = _gt()
    matches, samples, captured = [], [], {}
    real_match, real_sample = tsd.rcnn_match_anchors_to_gt, tsd.sample_rpn_training

    def match_spy(anchors, gt_boxes, thresholds, **kw):
        out = real_match(anchors, gt_boxes, thresholds, **kw)
        per_image = zip(gt_boxes, out) if gt_boxes.dim() == 3 else [(gt_boxes, out)]  # a batch: one record per image
        for g, o in per_image:
            matches.append((anchors.detach().double(), g.double(), tuple(thresholds),
                            kw.get("allow_low_quality_matches", True), o.double()))
        return out

    def sample_spy(matched, *args, **kw):
        fg, bg = real_sample(matched, *args, **kw)
        samples.append((fg.clone(), bg.clone()))
        return fg, bg

    monkeypatch.setattr(tsd, "rcnn_match_anchors_to_gt", match_spy)
    monkeypatch.setattr(tsd, "sample_rpn_training", sample_spy)
    hooks = [det.rpn.pred_net.register_forward_hook(lambda m, i, o: captured.setdefault("rpn", o)),
             det.cls_pred.register_forward_hook(lambda m, i, o: captured.setdefault("cls", o)),
             det.box_pred.register_forward_hook(lambda m, i, o: captured.setdefault("box", o))]
    try:
        losses = det(torch.randn(2, 3, 224, 224), gt)
    finally:
        for h in hooks:
            h.remove()
    assert len(matches) == len(samples) == 4  # RPN: 2 images, then the ROI head: 2 images
    for anchors, g, (lo, hi), low_quality, out in matches:
        assert torch.equal(out, _match_brute(anchors, g, lo, hi, low_quality))
    assert [m[2] for m in matches] == [(0.3, 0.6)] * 2 + [(0.5, 0.5)] * 2
    assert [m[3] for m in matches] == [True, True, False, False]

    # RPN
    obj = torch.cat(list(captured["rpn"][0].values()), dim=1).double().detach()  # (B, N)
    deltas = torch.cat(list(captured["rpn"][1].values()), dim=1).double().detach()  # (B, N, 4)
    ref_obj = ref_box = 0.0
    for b in range(2):
        anchors, _, _, _, matched = matches[b]
        fg, bg = samples[b]
        assert len(fg) > 0
        logits = obj[b, torch.cat([fg, bg])]
        targets = torch.cat([torch.ones(len(fg)), torch.zeros(len(bg))]).double()
        ref_obj += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item()
        ref_box += (deltas[b, fg] - _hand_deltas(anchors[fg], matched[fg, :4])).abs().sum().item()
    total = det.rpn.batch_size_per_image * 2
    assert_close(losses["loss_rpn_obj"].double(), torch.tensor(ref_obj / total), 1e-5, "loss_rpn_obj")
    assert_close(losses["loss_rpn_box"].double(), torch.tensor(ref_box / total), 1e-5, "loss_rpn_box")

    # ROI head
    labels, boxes, targets = [], [], []
    for b in range(2):
        proposals, _, _, _, matched = matches[2 + b]
        fg, bg = samples[2 + b]
        idx = torch.cat([fg, bg])
        labels += [int(matched[i, 4].item()) + 1 for i in fg.tolist()] + [0] * len(bg)
        boxes.append(proposals[idx])
        targets.append(matched[idx, :4])
    labels = torch.tensor(labels)
    cls = captured["cls"].double().detach()
    assert cls.shape == (len(labels), 21) and (labels > 0).any()
    assert_close(losses["loss_cls"].double(), F.cross_entropy(cls, labels), 1e-5, "loss_cls")
    fg_rows = (labels > 0).nonzero().squeeze(1)
    pred = captured["box"].double().detach().view(len(labels), 20, 4)[fg_rows, labels[fg_rows] - 1]
    target = _hand_deltas(torch.cat(boxes)[fg_rows], torch.cat(targets)[fg_rows]) * torch.tensor(tsd.ROI_BOX_WEIGHTS)
    assert_close(losses["loss_box"].double(), (pred - target).abs().sum() / len(labels), 1e-5, "loss_box")


# --- wiring that the end-to-end tests cannot see (found by a mutation audit) -----------------

def test_roi_head_training_proposals_include_every_gt_box(monkeypatch):
    """In training the second stage matches the proposals AND every ground-truth box (Faster
    R-CNN mixes them in, so early training has positives)."""
    torch.manual_seed(0)
    det = _detector().train()
    gt = _gt()
    seen = []
    real = tsd.rcnn_match_anchors_to_gt

    def spy(boxes, gt_boxes, thresholds, **kw):
        seen.append((boxes.detach().clone(), tuple(thresholds)))
        return real(boxes, gt_boxes, thresholds, **kw)

    monkeypatch.setattr(tsd, "rcnn_match_anchors_to_gt", spy)
    det(torch.randn(2, 3, 224, 224), gt)
    roi = [b for b, thresholds in seen if thresholds == (0.5, 0.5)]
    assert len(roi) == 2
    for b in range(2):
        for g in gt[b][gt[b, :, 4] >= 0]:
            assert (roi[b] == g[:4]).all(dim=1).any(), f"GT {g.tolist()} missing from image {b}'s ROI boxes"


def test_roi_features_pool_each_box_on_its_level_in_input_order():
    """Boxes of three sizes in an order that interleaves the levels, two images: row k of
    roi_features is the aligned RoIAlign (7x7, 2x2 samples) of box k on the map of level
    floor(5 + log2(sqrt(area) / 224)) clamped to 3..5, at that level's stride."""
    torch.manual_seed(0)
    det = _detector().eval()
    feats = {level: torch.randn(2, 2, 224 // s, 224 // s, dtype=torch.float64) for level, s in STRIDES.items()}
    boxes = [torch.tensor([[0.0, 0, 224, 224], [10, 20, 40, 60], [30, 30, 170, 180]], dtype=torch.float64),
             torch.tensor([[5.0, 5, 200, 210], [50, 60, 70, 90]], dtype=torch.float64)]
    out = det.roi_features(feats, boxes)
    assert out.shape == (5, 2, 7, 7)
    k = 0
    for b, per_image in enumerate(boxes):
        for box in per_image.tolist():
            side = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            level = f"p{min(max(math.floor(5 + math.log2(side / 224)), 3), 5)}"
            ref = _roi_align_brute(feats[level], torch.tensor([[b] + box]), 7, 7, 1 / STRIDES[level], 2, True)
            assert_close(out[k], ref[0], 1e-9, f"box {k} ({level})")
            k += 1


def test_rpn_proposals_clip_x_to_width_and_y_to_height():
    """A non-square image (H 50, W 120): x is clipped to the width, y to the height."""
    rpn = tsd.RPN(16, [16], batch_size_per_image=32, pre_nms_topk=10, post_nms_topk=10)
    anchors = {"p3": torch.tensor([[60.0, 10, 140, 40], [10, 30, 40, 90]])}
    proposals = rpn.predict_proposals(anchors, {"p3": torch.tensor([[1.0, 0.5]])}, {"p3": torch.zeros(1, 2, 4)},
                                      (50, 120))
    assert_close(proposals["p3"][0], torch.tensor([[60.0, 10, 120, 40], [10, 30, 40, 50]]), 1e-7, "clipped")


def test_faster_rcnn_inference_clips_non_square_and_caps_detections():
    """Inference clips x to the width and y to the height of a non-square image, and keeps at
    most detections_per_image boxes, the best ones, in score order."""
    det = _detector().eval()
    proposals = torch.tensor([[60.0, 10, 140, 40], [10, 30, 40, 90]]
                             + [[float(12 * i), 0, 12 * i + 10, 10] for i in range(8)])
    logits = torch.full((10, 21), -10.0)
    logits[:, 0] = 0.0
    logits[:, 3] = 3.0 - 0.2 * torch.arange(10.0)  # class 2 (column 0 is background), decreasing scores
    clipped = torch.tensor([[60.0, 10, 120, 40], [10, 30, 40, 50]])
    boxes, _, _ = det.inference(torch.zeros(1, 3, 50, 120), proposals, logits, 0.5, 0.5)
    assert_close(boxes[:2], clipped, 1e-6, "clipped")
    det.detections_per_image = 4
    boxes, _, scores = det.inference(torch.zeros(1, 3, 50, 120), proposals, logits, 0.5, 0.5)
    assert len(boxes) == 4 and (scores[:-1] > scores[1:]).all()
    assert_close(boxes, torch.cat([clipped, proposals[2:4]]), 1e-6, "the best 4")


# --- gaps found by mutation testing: stems, NMS threshold, matching boundaries, sampling, ROI
# inference scores --------------------------------------------------------------------------

def test_rpn_and_roi_head_stems_have_relu():
    """A ReLU after each stem convolution (without, a stem is one linear map)."""
    torch.manual_seed(0)
    head = tsd.RPNPredictionNetwork(8, [8, 8], num_anchors=3)
    x = torch.randn(2, 8, 5, 6)
    assert sum(isinstance(m, nn.ReLU) for m in head.stem_rpn) == 2 and (head.stem_rpn(x) >= 0).all()
    det = _detector()
    roi = torch.randn(3, 16, 7, 7)
    assert sum(isinstance(m, nn.ReLU) for m in det.stem) == 1 and (det.stem(roi) >= 0).all()


def test_rpn_proposals_honour_nms_thresh():
    rpn = tsd.RPN(8, [], batch_size_per_image=8, nms_thresh=0.9, pre_nms_topk=10, post_nms_topk=10)
    anchors = {"p3": torch.tensor([[30.0, 30, 70, 70], [34, 30, 74, 70]])}  # IoU 0.818
    props = rpn.predict_proposals(anchors, {"p3": torch.tensor([[2.0, 1.0]])},
                                  {"p3": torch.zeros(1, 2, 4)}, (224, 224))
    assert len(props["p3"][0]) == 2
    rpn.nms_thresh = 0.5
    props = rpn.predict_proposals(anchors, {"p3": torch.tensor([[2.0, 1.0]])},
                                  {"p3": torch.zeros(1, 2, 4)}, (224, 224))
    assert len(props["p3"][0]) == 1


def test_match_threshold_boundaries():
    """IoU == thresholds[1] is foreground, IoU == thresholds[0] background (exact in float)."""
    gt = torch.tensor([[0.0, 0, 10, 10, 5]])
    anchors = torch.tensor([[0.0, 0, 10, 5], [0.0, 0, 10, 2.5], [0.0, 0, 10, 4]])  # IoU 0.5, 0.25, 0.4
    out = tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.25, 0.5), allow_low_quality_matches=False)
    assert out[0, 4] == 5 and out[1, 4] == -1 and out[2, 4] == -1e8


def test_low_quality_matches_need_positive_iou():
    """A GT box that overlaps no anchor must not turn every anchor into foreground."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    gt = torch.tensor([[100.0, 100, 110, 110, 3], [-1, -1, -1, -1, -1]])
    out = tsd.rcnn_match_anchors_to_gt(anchors, gt, (0.3, 0.6), allow_low_quality_matches=True)
    assert (out[:, 4] == -1).all()


def test_sample_rpn_training_is_random_and_floors_the_fraction():
    matched = torch.full((1000, 5), -1.0)
    matched[:500, 4] = 1.0
    torch.manual_seed(0)
    seen_fg, seen_bg = set(), set()
    for _ in range(50):
        fg, bg = tsd.sample_rpn_training(matched, 64, 0.5)
        seen_fg |= set(fg.tolist()); seen_bg |= set(bg.tolist())
    # each index has a 1 - (1 - 32/500)^50 = 96% chance of being drawn; first-k would give 32
    assert len(seen_fg) > 400 and len(seen_bg) > 400
    fg, bg = tsd.sample_rpn_training(matched, 10, 0.25)  # int(2.5) = 2 foreground at most
    assert len(fg) == 2 and len(bg) == 8


def test_roi_head_sampling_uses_its_fg_fraction(monkeypatch):
    torch.manual_seed(0)
    det = _detector(fg_fraction=1 / 16).train()  # 16 per image: at most 1 foreground
    gt = torch.full((1, 4, 5), -1.0)
    gt[0, 0] = torch.tensor([20.0, 30, 120, 170, 3])
    gt[0, 1] = torch.tensor([150.0, 10, 200, 60, 11])
    calls, real = [], tsd.sample_rpn_training
    def spy(matched, *a, **k):
        fg, bg = real(matched, *a, **k)
        calls.append(len(fg))
        return fg, bg
    monkeypatch.setattr(tsd, "sample_rpn_training", spy)
    det(torch.randn(1, 3, 224, 224), gt)
    assert calls[-1] == 1  # the ROI head's call (after the RPN's); GT boxes give >= 2 candidates


def test_roi_inference_scores_include_background_and_every_class():
    det = _detector().eval()
    prop = torch.tensor([[10.0, 10, 50, 50], [100.0, 100, 150, 150]])
    logits = torch.full((2, 21), -10.0)
    logits[0, 0], logits[0, 3] = 5.0, 3.0   # background wins: p(class 2) = 0.12 < 0.5
    logits[1, 2], logits[1, 6] = 0.0, 0.0   # classes 1 and 5 at ~0.5 each
    img = torch.zeros(1, 3, 224, 224)
    boxes, classes, scores = det.inference(img, prop[:1], logits[:1], 0.5, 0.5)
    assert len(boxes) == 0
    boxes, classes, scores = det.inference(img, prop[1:], logits[1:], 0.2, 0.5)
    assert sorted(classes.tolist()) == [1, 5]
    assert torch.allclose(scores, F.softmax(logits[1], 0)[[2, 6]], atol=1e-6)
