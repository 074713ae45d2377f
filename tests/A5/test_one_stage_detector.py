"""Tests of A5/one_stage_detector.py (FCOS).

References are independent of the code under test: brute-force Python loops over boxes and
locations, math formulas evaluated element by element, torch.nn.functional's
binary_cross_entropy_with_logits (for the focal loss) in float64. Tolerances are stated per test.
"""
import math
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import one_stage_detector as osd
from eecs598.testing import assert_close, host_reads, iou_of_two_boxes

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def hand_locations(shapes, strides):
    """Row-major (x, y) centres built with Python loops: k = i * W + j."""
    out = {}
    for level, (H, W) in shapes.items():
        s = strides[level]
        out[level] = torch.tensor([[(j + 0.5) * s, (i + 0.5) * s] for i in range(H) for j in range(W)],
                                  dtype=torch.float32)
    return out


def random_gt(n, size=224, num_classes=20, pad_to=None, gen=None):
    rows = []
    for _ in range(n):
        x1, x2 = sorted(random.uniform(0, size) for _ in range(2))
        y1, y2 = sorted(random.uniform(0, size) for _ in range(2))
        rows.append([x1, y1, x2 + 1, y2 + 1, float(random.randrange(num_classes))])
    gt = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    if pad_to is not None:
        gt = torch.cat([gt, torch.full((pad_to - n, 5), -1.0)])
    return gt


def test_hello_and_reexports():
    osd.hello_one_stage_detector()
    for name in ("DetectorBackboneWithFPN", "get_fpn_location_coords", "nms", "class_spec_nms"):
        assert callable(getattr(osd, name)), name


# --------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_sigmoid_focal_loss_matches_weighted_bce(alpha, gamma):
    """FL = alpha_t (1 - p_t)^gamma * BCE, with BCE from torch.nn.functional (float64, tol 1e-10)."""
    torch.manual_seed(0)
    x = torch.randn(7, 20, dtype=torch.float64) * 4
    x[0, :3] = torch.tensor([60.0, -60.0, 0.0], dtype=torch.float64)  # saturated logits stay finite
    t = (torch.rand(7, 20) < 0.3).to(torch.float64)
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    ref = alpha_t * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(x, t, reduction="none")
    ours = osd.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
    assert torch.isfinite(ours).all()
    assert_close(ours, ref, 1e-10, "focal loss")
    assert_close(osd.sigmoid_focal_loss(x, t, alpha, gamma, reduction="sum"), ref.sum(), 1e-10, "sum")
    assert_close(osd.sigmoid_focal_loss(x, t, alpha, gamma, reduction="mean"), ref.mean(), 1e-10, "mean")


def test_focal_loss_gradient_matches_autograd_reference():
    """Gradients of our loss vs gradients of the BCE-based formula (float64, tol 1e-9)."""
    torch.manual_seed(1)
    x1 = (torch.randn(5, 6, dtype=torch.float64) * 3).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    t = (torch.rand(5, 6) < 0.5).to(torch.float64)
    osd.sigmoid_focal_loss(x1, t).sum().backward()
    p = torch.sigmoid(x2)
    p_t = p * t + (1 - p) * (1 - t)
    ref = ((0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2
           * F.binary_cross_entropy_with_logits(x2, t, reduction="none")).sum()
    ref.backward()
    assert_close(x1.grad, x2.grad, 1e-9, "focal loss gradient")


# --------------------------------------------------------------------------- box coder
def test_deltas_hand_values_and_round_trip():
    """Deltas vs LTRB / stride computed by hand (exact); apply(get(...)) returns the boxes (tol 1e-6)."""
    random.seed(0)
    locs, boxes = [], []
    for _ in range(50):
        x1, y1 = random.uniform(0, 150), random.uniform(0, 150)
        x2, y2 = x1 + random.uniform(2, 70), y1 + random.uniform(2, 70)
        locs.append([random.uniform(x1 + 0.5, x2 - 0.5), random.uniform(y1 + 0.5, y2 - 0.5)])
        boxes.append([x1, y1, x2, y2, 3.0])
    locations = torch.tensor(locs, dtype=torch.float64)
    gt = torch.tensor(boxes, dtype=torch.float64)
    gt[::7] = -1  # background rows
    for stride in (8, 16, 32):
        deltas = osd.fcos_get_deltas_from_locations(locations, gt, stride)
        ref = torch.empty(50, 4, dtype=torch.float64)
        for k in range(50):
            if k % 7 == 0:
                ref[k] = -1
            else:
                (x, y), (x1, y1, x2, y2) = locs[k], boxes[k][:4]
                ref[k] = torch.tensor([(x - x1) / stride, (y - y1) / stride, (x2 - x) / stride, (y2 - y) / stride],
                                      dtype=torch.float64)
        assert_close(deltas, ref, 1e-12, f"deltas stride {stride}")
        fg = gt[:, 4] != -1
        back = osd.fcos_apply_deltas_to_locations(deltas[fg], locations[fg], stride)
        assert_close(back, gt[fg, :4], 1e-6, "round trip")


def test_apply_deltas_clamps_negative_to_zero():
    loc = torch.tensor([[50.0, 60.0]])
    deltas = torch.tensor([[-2.0, 1.0, 3.0, -0.5]])
    box = osd.fcos_apply_deltas_to_locations(deltas, loc, 8)
    assert torch.equal(box, torch.tensor([[50.0, 52.0, 74.0, 60.0]]))


def test_centerness_matches_hand_formula():
    """sqrt(min(l,r) min(t,b) / (max(l,r) max(t,b))) with Python math (tol 1e-12); background -1."""
    random.seed(1)
    rows = [[random.uniform(0.01, 9) for _ in range(4)] for _ in range(40)]
    deltas = torch.tensor(rows, dtype=torch.float64)
    deltas[5] = -1
    deltas[17] = -1
    ours = osd.fcos_make_centerness_targets(deltas)
    ref = []
    for k, (l, t, r, b) in enumerate(rows):
        if k in (5, 17):
            ref.append(-1.0)
        else:
            ref.append(math.sqrt(min(l, r) * min(t, b) / (max(l, r) * max(t, b))))
    assert_close(ours, torch.tensor(ref, dtype=torch.float64), 1e-12, "centerness")
    # A location at the exact centre has centerness 1.
    assert_close(osd.fcos_make_centerness_targets(torch.tensor([[2.0, 3.0, 2.0, 3.0]])), torch.ones(1), 1e-7)


# --------------------------------------------------------------------------- matching
def brute_force_match(locations, strides, gt):
    """Reference matching with Python loops (same rules as the docstring)."""
    smallest, largest = min(strides.values()), max(strides.values())
    out = {}
    for level, locs in locations.items():
        s = strides[level]
        lower = 0.0 if s == smallest else 4.0 * s
        upper = math.inf if s == largest else 8.0 * s
        rows = []
        for x, y in locs.tolist():
            best, best_area = None, math.inf
            for n, (x1, y1, x2, y2, c) in enumerate(gt.tolist()):
                if c == -1:
                    continue
                l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
                m = max(l, t, r, b)
                if min(l, t, r, b) > 0 and lower < m <= upper:
                    area = (x2 - x1) * (y2 - y1)
                    if area < best_area:  # strict: equal areas keep the lower index
                        best, best_area = n, area
            rows.append(gt[best].tolist() if best is not None else [-1.0] * 5)
        out[level] = torch.tensor(rows, dtype=torch.float32)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matching_matches_brute_force(seed):
    """Random GT sets (with padding rows and boxes of equal area), non-square maps: exact equality."""
    random.seed(seed)
    H, W = 96 + 32 * seed, 160
    shapes = {lvl: (H // s, W // s) for lvl, s in STRIDES.items()}
    locations = hand_locations(shapes, STRIDES)
    gt = random_gt(6 + seed, size=min(H, W), pad_to=12)
    # Ties: a shifted copy with exactly the same area, and an exact duplicate with another class.
    x1, y1, x2, y2, _ = gt[0].tolist()
    gt[8] = torch.tensor([x1 + 4, y1 + 4, x2 + 4, y2 + 4, 5.0])
    gt[9] = torch.tensor([x1, y1, x2, y2, 7.0])
    ours = osd.fcos_match_locations_to_gt(locations, STRIDES, gt)
    ref = brute_force_match(locations, STRIDES, gt)
    assert set(ours) == set(ref)
    for level in ref:
        assert ours[level].shape == ref[level].shape
        assert torch.equal(ours[level], ref[level]), f"level {level}: {(ours[level] != ref[level]).any(1).sum()} rows differ"
    assert sum((r[:, 4] != -1).sum().item() for r in ref.values()) > 0


def test_matching_size_ranges_and_empty_gt():
    """One 200x200 box: the centre location's max distance ~100 -> p4 only; no GT -> all background."""
    shapes = {lvl: (224 // s, 224 // s) for lvl, s in STRIDES.items()}
    locations = hand_locations(shapes, STRIDES)
    gt = torch.tensor([[12.0, 12.0, 212.0, 212.0, 4.0], [-1, -1, -1, -1, -1]])
    out = osd.fcos_match_locations_to_gt(locations, STRIDES, gt)
    centre = {lvl: ((112 // s) * (224 // s) + 112 // s) for lvl, s in STRIDES.items()}
    assert out["p4"][centre["p4"], 4] == 4
    assert out["p3"][centre["p3"], 4] == -1 and out["p5"][centre["p5"], 4] == -1
    empty = osd.fcos_match_locations_to_gt(locations, STRIDES, torch.full((3, 5), -1.0))
    assert all((v == -1).all() for v in empty.values())


def test_batched_matching_deltas_and_centerness_equal_per_image_calls():
    """(B, N, 5) GT: every level's (B, L, 5) rows equal B separate one-image calls (and the brute
    force), including an image of padding only and equal-area ties; deltas (B, L, 4) and
    centerness (B, L) equal the per-image results; zero GT columns (B, 0, 5) give background."""
    random.seed(7)
    H, W = 128, 160
    shapes = {lvl: (H // s, W // s) for lvl, s in STRIDES.items()}
    locations = hand_locations(shapes, STRIDES)
    gt = torch.stack([random_gt(5, size=min(H, W), pad_to=9), random_gt(8, size=min(H, W), pad_to=9),
                      torch.full((9, 5), -1.0)])
    x1, y1, x2, y2, _ = gt[0, 0].tolist()
    gt[0, 6] = torch.tensor([x1 + 4, y1 + 4, x2 + 4, y2 + 4, 5.0])  # same area as row 0
    batched = osd.fcos_match_locations_to_gt(locations, STRIDES, gt)
    for b in range(3):
        single = osd.fcos_match_locations_to_gt(locations, STRIDES, gt[b])
        ref = brute_force_match(locations, STRIDES, gt[b])
        for lvl, s in STRIDES.items():
            assert batched[lvl].shape == (3, len(locations[lvl]), 5)
            assert torch.equal(batched[lvl][b], single[lvl]) and torch.equal(single[lvl], ref[lvl])
            deltas = osd.fcos_get_deltas_from_locations(locations[lvl], batched[lvl], s)
            assert torch.equal(deltas[b], osd.fcos_get_deltas_from_locations(locations[lvl], single[lvl], s))
            assert torch.equal(osd.fcos_make_centerness_targets(deltas)[b],
                               osd.fcos_make_centerness_targets(deltas[b]))
    assert all((batched[lvl][2] == -1).all() for lvl in STRIDES)
    assert sum((batched[lvl][:2, :, 4] != -1).sum().item() for lvl in STRIDES) > 20
    empty = osd.fcos_match_locations_to_gt(locations, STRIDES, torch.empty(2, 0, 5))
    assert all(v.shape == (2, len(locations[lvl]), 5) and (v == -1).all() for lvl, v in empty.items())


# --------------------------------------------------------------------------- prediction network
def test_prediction_network_separate_stems_and_init():
    torch.manual_seed(0)
    net = osd.FCOSPredictionNetwork(num_classes=20, in_channels=64, stem_channels=[128, 128])
    cls_params = {id(p) for p in net.stem_cls.parameters()}
    box_params = {id(p) for p in net.stem_box.parameters()}
    assert cls_params and box_params and not (cls_params & box_params), "stems share parameters"
    assert not ({p.data_ptr() for p in net.stem_cls.parameters()} & {p.data_ptr() for p in net.stem_box.parameters()})
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 + 3
    for conv in convs:
        # N(0, 0.01): the sample std of >= 20k weights is within 5% of 0.01 (many sigma).
        assert abs(conv.weight.std().item() - 0.01) < 5e-4 and abs(conv.weight.mean().item()) < 1e-3
    prior = -math.log((1 - 0.01) / 0.01)
    assert_close(net.pred_cls.bias, torch.full((20,), prior), 1e-7, "prior bias")
    for conv in convs:
        if conv is not net.pred_cls:
            assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    # Sigmoid of the initial logits is ~1% foreground.
    feats = {"p3": torch.randn(1, 64, 6, 5)}
    cls_logits = net(feats)[0]["p3"]
    assert abs(torch.sigmoid(cls_logits).mean().item() - 0.01) < 2e-3


def test_prediction_network_shapes_and_row_major_order():
    """Output shapes on non-square maps; location k of `get_fpn_location_coords` is feature (i, j)."""
    torch.manual_seed(0)
    C = 20
    net = osd.FCOSPredictionNetwork(num_classes=C, in_channels=16, stem_channels=[])
    with torch.no_grad():  # centerness head = copy of input channel 0 (centre tap 1, no bias)
        net.pred_ctr.weight.zero_()
        net.pred_ctr.weight[0, 0, 1, 1] = 1.0
    shapes = {"p3": (2, 16, 5, 7), "p4": (2, 16, 3, 4), "p5": (2, 16, 2, 1)}
    feats = {lvl: torch.randn(*shape) for lvl, shape in shapes.items()}
    cls, box, ctr = net(feats)
    locations = osd.get_fpn_location_coords(shapes, STRIDES)
    for lvl, (B, _, H, W) in shapes.items():
        assert cls[lvl].shape == (B, H * W, C) and box[lvl].shape == (B, H * W, 4) and ctr[lvl].shape == (B, H * W, 1)
        assert locations[lvl].shape == (H * W, 2)
        s = STRIDES[lvl]
        for k, (x, y) in enumerate(locations[lvl].tolist()):
            i, j = int(y // s), int(x // s)
            assert (x, y) == ((j + 0.5) * s, (i + 0.5) * s)
            assert torch.allclose(ctr[lvl][:, k, 0], feats[lvl][:, 0, i, j], atol=1e-6)


# --------------------------------------------------------------------------- full detector
@pytest.fixture(scope="module")
def small_fcos():
    torch.manual_seed(0)
    return osd.FCOS(num_classes=20, fpn_channels=32, stem_channels=[32], pretrained=False)


def _losses_with_head_outputs(model, images, gt):
    """model(images, gt) with the prediction network's outputs captured: (losses, (cls, box, ctr)
    dicts per level, the normalizer before, and after); the normalizer is then reset to 150."""
    old, captured = model._normalizer.item(), {}
    hook = model.pred_net.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        losses = model(images, gt)
    finally:
        hook.remove()
        new = model._normalizer.item()
        model._normalizer.fill_(150.0)
    return losses, captured["out"], old, new


def test_fcos_losses_on_background_only_images(small_fcos):
    """No GT: box/centerness losses are 0 and loss_cls is the focal loss of all-zero targets
    divided by B times the updated EMA normalizer (0.9 * old + 0.1 * 0); reference from BCE."""
    model = small_fcos.train()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 128)
    gt = torch.full((2, 40, 5), -1.0)
    losses, head_out, old, _ = _losses_with_head_outputs(model, images, gt)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
    logits = torch.cat(list(head_out[0].values()), dim=1).double().detach()
    p = torch.sigmoid(logits)
    ref = (0.75 * p ** 2 * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                                              reduction="none")).sum() / (2 * 0.9 * old)
    assert_close(losses["loss_cls"].double(), ref, 1e-5, "loss_cls")


def test_fcos_eval_mode_losses_leave_the_normalizer_alone(small_fcos):
    """A loss computed in eval mode (a validation loss) uses the normalizer but does not update
    it; in training mode the same call moves it (0.9 * old + 0.1 * foreground per image)."""
    torch.manual_seed(2)
    images = torch.randn(1, 3, 96, 128)
    gt = torch.tensor([[[10.0, 10.0, 60.0, 70.0, 3.0]]])
    try:
        _, _, old, new = _losses_with_head_outputs(small_fcos.eval(), images, gt)
        assert new == old == 150.0
        _, _, old, new = _losses_with_head_outputs(small_fcos.train(), images, gt)
        assert new != old
    finally:
        small_fcos.train()


def test_fcos_loss_decreases_on_tiny_overfit():
    """Frozen random backbone, 2 images of 96x96 with 3 boxes: 40 Adam steps lower the total loss by 30%.

    The losses are divided by an EMA of the foreground count that moves during training, so the
    comparison uses the un-normalized sum (loss * normalizer)."""
    torch.manual_seed(0)
    model = osd.FCOS(num_classes=20, fpn_channels=32, stem_channels=[32], pretrained=False,
                     freeze_backbone=True).train()
    images = torch.randn(2, 3, 96, 96)
    gt = torch.full((2, 40, 5), -1.0)
    gt[0, :2] = torch.tensor([[8.0, 10.0, 60.0, 70.0, 3.0], [40.0, 30.0, 90.0, 95.0, 11.0]])
    gt[1, 0] = torch.tensor([20.0, 20.0, 80.0, 76.0, 7.0])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(40):
        losses = model(images, gt)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item() * model._normalizer.item())
    assert all(math.isfinite(h) for h in history)
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5, history


def test_fcos_inference_returns_valid_boxes(small_fcos):
    """Eval mode, threshold 0: boxes inside the image, x1 <= x2, y1 <= y2, valid classes, scores
    sorted, at most 100, and no two same-class boxes overlap with IoU > the NMS threshold."""
    model = small_fcos.eval()
    torch.manual_seed(2)
    H, W = 96, 128
    with torch.no_grad():
        boxes, classes, scores = model(torch.randn(1, 3, H, W), test_score_thresh=0.0, test_nms_thresh=0.5)
    model.train()
    M = boxes.shape[0]
    assert 0 < M <= 100 and boxes.shape == (M, 4) and classes.shape == (M,) and scores.shape == (M,)
    assert classes.dtype == torch.long and classes.min() >= 0 and classes.max() < 20
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (scores[:-1] >= scores[1:]).all() and (scores >= 0).all() and (scores <= 1).all()
    b = boxes.tolist()
    for m in range(M):
        for n in range(m + 1, M):
            if classes[m] != classes[n]:
                continue
            iw = min(b[m][2], b[n][2]) - max(b[m][0], b[n][0])
            ih = min(b[m][3], b[n][3]) - max(b[m][1], b[n][1])
            inter = max(iw, 0) * max(ih, 0)
            union = (b[m][2] - b[m][0]) * (b[m][3] - b[m][1]) + (b[n][2] - b[n][0]) * (b[n][3] - b[n][1]) - inter
            assert union <= 0 or inter / union <= 0.5 + 1e-6


def test_fcos_detect_batch_matches_one_image_at_a_time():
    """detect_batch runs backbone and head on the whole batch, then each image's `inference`: the
    detections of `forward` on that image alone (float64, so near-tied random scores keep their
    order); through `common.predict_detections` with batch_size 2 as well, with a last batch of 1."""
    torch.manual_seed(5)
    model = osd.FCOS(num_classes=20, fpn_channels=16, stem_channels=[16], pretrained=False).double().eval()
    images = torch.randn(3, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        batched = model.detect_batch(images, test_score_thresh=0.04, test_nms_thresh=0.5)
        singles = [model(images[b:b + 1], test_score_thresh=0.04, test_nms_thresh=0.5) for b in range(3)]
    assert len(batched) == 3 and sum(len(s) for _, _, s in singles) > 0
    for (bb, bc, bs), (sb, sc, ss) in zip(batched, singles):
        assert bb.shape == sb.shape and torch.equal(bc, sc)
        torch.testing.assert_close(bb, sb, rtol=0, atol=1e-9)
        torch.testing.assert_close(bs, ss, rtol=0, atol=1e-12)
    dataset = [(f"{i}", images[i], torch.full((4, 5), -1.0)) for i in range(3)]
    preds, stats = common.predict_detections(model, dataset, 0.04, 0.5, batch_size=2, return_stats=True)
    assert stats["batch_size"] == 2 and [p["image_path"] for p in preds] == ["0", "1", "2"]
    for p, (sb, sc, ss) in zip(preds, singles):
        assert torch.equal(p["classes"], sc)
        torch.testing.assert_close(p["boxes"], sb.float(), rtol=0, atol=1e-4)
    # default thresholds are inference's own (0.3 / 0.5)
    with torch.no_grad():
        default = model.detect_batch(images[:1])[0]
        own = model(images[:1])
    assert all(torch.equal(a, b) for a, b in zip(default, own))


def test_fcos_inference_top_k_and_class_specific_nms_match_a_brute_force(small_fcos):
    """Hand-made head outputs through the whole of inference with pre_nms_topk = 6: per level the
    6 best locations above the threshold (by their best class's score), boxes decoded and
    clipped, then greedy NMS by descending score among boxes OF THE SAME CLASS only, capped at
    max_detections_per_image. Python loops in float64. The data has different-class pairs
    overlapping beyond the NMS threshold, which class-agnostic NMS would wrongly suppress."""
    torch.manual_seed(5)
    H, W = 64, 96
    strides = small_fcos.backbone.fpn_strides
    shapes = {lvl: (H // s, W // s) for lvl, s in strides.items()}
    locations = hand_locations(shapes, strides)
    num_classes = 3  # few classes, so that same-class overlaps happen too
    cls = {lvl: torch.randn(1, len(loc), 20) - 6 for lvl, loc in locations.items()}
    for lvl in cls:
        cls[lvl][..., :num_classes] += 6
    box = {lvl: torch.rand(1, len(loc), 4) * 2 + 0.5 for lvl, loc in locations.items()}
    ctr = {lvl: torch.randn(1, len(loc), 1) for lvl, loc in locations.items()}
    thresh, nms_thresh, topk = 0.3, 0.5, 6
    old_topk = small_fcos.pre_nms_topk
    small_fcos.pre_nms_topk = topk
    try:
        boxes, classes, scores = small_fcos.inference(torch.zeros(1, 3, H, W), locations, cls, box, ctr,
                                                      test_score_thresh=thresh, test_nms_thresh=nms_thresh)
    finally:
        small_fcos.pre_nms_topk = old_topk
    candidates, levels_capped = [], 0
    for lvl, loc in locations.items():
        s = strides[lvl]
        level = []
        for k, (x, y) in enumerate(loc.tolist()):
            per_class = [math.sqrt(1 / (1 + math.exp(-v)) / (1 + math.exp(-ctr[lvl][0, k, 0].item())))
                         for v in cls[lvl][0, k].tolist()]
            best = max(range(20), key=lambda c: (per_class[c], -c))
            if per_class[best] <= thresh:
                continue
            l, t, r, b = box[lvl][0, k].tolist()
            level.append((per_class[best], best, [min(max(x - l * s, 0), W), min(max(y - t * s, 0), H),
                                                  min(max(x + r * s, 0), W), min(max(y + b * s, 0), H)]))
        levels_capped += len(level) > topk
        candidates += sorted(level, key=lambda item: -item[0])[:topk]
    candidates.sort(key=lambda item: -item[0])
    kept = []
    for cand in candidates:
        if all(k[1] != cand[1] or not iou_of_two_boxes(k[2], cand[2]) > nms_thresh for k in kept):  # NaN (0 / 0) keeps, as nms
            kept.append(cand)
    kept = kept[:small_fcos.max_detections_per_image]
    assert levels_capped >= 2, "the top-k cap must act on several levels"
    assert any(a[1] != b[1] and iou_of_two_boxes(a[2], b[2]) > nms_thresh for a in kept for b in kept), \
        "the data must hold different-class boxes that overlap beyond the NMS threshold"
    assert len(kept) < len(candidates), "NMS must suppress something"
    assert classes.tolist() == [k[1] for k in kept]
    assert_close(scores.double(), torch.tensor([k[0] for k in kept], dtype=torch.float64), 1e-5, "scores")
    assert_close(boxes.double(), torch.tensor([k[2] for k in kept], dtype=torch.float64), 1e-5, "boxes")


def _focal_reference(logits, targets, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss element by element from BCE-with-logits (float64), summed."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * bce).sum()


def test_fcos_losses_with_boxes_match_a_brute_force_reference(small_fcos):
    """Two images with GT boxes (one with padding rows): every loss from the captured head
    outputs, brute-force matching (Python loops), LTRB deltas / stride and centerness by hand,
    the focal loss from BCE, 0.25 L1 and BCE on the foreground, all divided by B times the
    updated normalizer 0.9 old + 0.1 (foreground count / B). float64 reference, tol 1e-5."""
    model = small_fcos.train()
    torch.manual_seed(3)
    H, W = 96, 128
    images = torch.randn(2, 3, H, W)
    gt = torch.full((2, 4, 5), -1.0)
    gt[0, :3] = torch.tensor([[8.0, 10.0, 60.0, 70.0, 3.0], [40.0, 30.0, 120.0, 95.0, 11.0],
                              [2.0, 50.0, 30.0, 90.0, 0.0]])
    gt[1, :1] = torch.tensor([[20.0, 20.0, 100.0, 76.0, 7.0]])
    losses, head_out, old, new_normalizer = _losses_with_head_outputs(model, images, gt)
    cls_out, box_out, ctr_out = (torch.cat(list(d.values()), dim=1).double().detach() for d in head_out)
    strides = model.backbone.fpn_strides
    shapes = {lvl: (H // s, W // s) for lvl, s in strides.items()}
    locations = hand_locations(shapes, strides)
    total = {"loss_cls": 0.0, "loss_box": 0.0, "loss_ctr": 0.0}
    num_fg = 0
    for b in range(2):
        matched = brute_force_match(locations, strides, gt[b])
        rows, k = [], 0
        for lvl in locations:  # the predictions' level order
            for (x, y), m in zip(locations[lvl].tolist(), matched[lvl].tolist()):
                rows.append((k, x, y, strides[lvl], m))
                k += 1
        targets = torch.zeros_like(cls_out[b])
        for k, x, y, s, (x1, y1, x2, y2, c) in rows:
            if c == -1:
                continue
            num_fg += 1
            targets[k, int(c)] = 1.0
            l, t, r, bt = (x - x1) / s, (y - y1) / s, (x2 - x) / s, (y2 - y) / s
            total["loss_box"] += 0.25 * sum(abs(box_out[b, k, j].item() - d) for j, d in enumerate((l, t, r, bt)))
            centerness = math.sqrt(min(l, r) * min(t, bt) / (max(l, r) * max(t, bt)))
            total["loss_ctr"] += F.binary_cross_entropy_with_logits(
                ctr_out[b, k, 0], torch.tensor(centerness, dtype=torch.float64)).item()
        total["loss_cls"] += _focal_reference(cls_out[b], targets).item()
    assert num_fg > 10  # boxes of several sizes: foreground on more than one level
    normalizer = 0.9 * old + 0.1 * num_fg / 2
    assert new_normalizer == pytest.approx(normalizer, rel=1e-6)
    for name, value in total.items():
        assert_close(losses[name].double(), torch.tensor(value / (2 * normalizer), dtype=torch.float64), 1e-5, name)


def test_a_fcos_training_step_never_waits_for_the_device(small_fcos):
    """Matching, targets, losses and backward of a batch read nothing back from the device and
    make no data-dependent shapes (on a GPU: no host waits; a per-image version with boolean
    indexing made 163 such reads for a batch of 16). The profiler does see such reads (control)."""
    torch.manual_seed(4)
    images = torch.randn(3, 3, 96, 128)
    gt = torch.full((3, 5, 5), -1.0)
    gt[0, :2] = torch.tensor([[8.0, 10.0, 60.0, 70.0, 3.0], [40.0, 30.0, 120.0, 95.0, 11.0]])
    gt[2, :1] = torch.tensor([[20.0, 20.0, 100.0, 76.0, 7.0]])
    try:
        assert host_reads(lambda: sum(small_fcos.train()(images, gt).values()).backward()) == {}
    finally:
        small_fcos.zero_grad()
        small_fcos._normalizer.fill_(150.0)
    control = host_reads(lambda: (gt[gt[:, :, 4] != -1], gt.sum().item()))
    assert control == {"aten::nonzero": 1, "aten::_local_scalar_dense": 1}


def test_fcos_rejects_class_ids_out_of_range(small_fcos):
    """A class id >= num_classes (a 1-based dataset, say) raises instead of training as background."""
    gt = torch.tensor([[[10.0, 10.0, 60.0, 70.0, 20.0]]])
    try:
        with pytest.raises(RuntimeError, match="class ids"):
            small_fcos.train()(torch.randn(1, 3, 96, 128), gt)
    finally:
        small_fcos._normalizer.fill_(150.0)


def test_fcos_inference_matches_a_brute_force_decode(small_fcos):
    """Hand-made head outputs: per location the best class's sqrt(sigmoid(cls) * sigmoid(ctr)),
    kept above the threshold, boxes (x - l s, y - t s, x + r s, y + b s) clipped to the image;
    with an NMS threshold of 1 nothing is suppressed, so the detections are exactly those,
    by descending score. Python loops in float64 (tol 1e-5)."""
    torch.manual_seed(4)
    H, W = 64, 96
    strides = small_fcos.backbone.fpn_strides
    shapes = {lvl: (H // s, W // s) for lvl, s in strides.items()}
    locations = hand_locations(shapes, strides)
    cls = {lvl: torch.randn(1, len(loc), 20) for lvl, loc in locations.items()}
    box = {lvl: torch.rand(1, len(loc), 4) * 3 for lvl, loc in locations.items()}
    ctr = {lvl: torch.randn(1, len(loc), 1) for lvl, loc in locations.items()}
    thresh = 0.8
    boxes, classes, scores = small_fcos.inference(torch.zeros(1, 3, H, W), locations, cls, box, ctr,
                                                  test_score_thresh=thresh, test_nms_thresh=1.0)
    ref = []
    for lvl, loc in locations.items():
        s = strides[lvl]
        for k, (x, y) in enumerate(loc.tolist()):
            per_class = [math.sqrt(1 / (1 + math.exp(-v)) / (1 + math.exp(-ctr[lvl][0, k, 0].item())))
                         for v in cls[lvl][0, k].tolist()]
            best = max(range(20), key=lambda c: (per_class[c], -c))  # first maximum
            if per_class[best] <= thresh:
                continue
            l, t, r, b = box[lvl][0, k].tolist()
            ref.append((per_class[best], best, [min(max(x - l * s, 0), W), min(max(y - t * s, 0), H),
                                                min(max(x + r * s, 0), W), min(max(y + b * s, 0), H)]))
    ref.sort(key=lambda item: -item[0])
    assert 5 < len(ref) <= small_fcos.max_detections_per_image
    assert len(scores) == len(ref)
    assert_close(scores.double(), torch.tensor([r[0] for r in ref], dtype=torch.float64), 1e-5, "scores")
    assert classes.tolist() == [r[1] for r in ref]
    assert_close(boxes.double(), torch.tensor([r[2] for r in ref], dtype=torch.float64), 1e-5, "boxes")


def test_a_float64_fcos_computes_in_float64(small_fcos):
    """A `.double()` model keeps float64 end to end (losses, locations, detections), so that a
    float64 finite-difference check of the loss holds to 1e-6 relative: with the predictions
    rounded to float32 on the way to the loss, a central difference with step 1e-5 on the
    box-head bias is off by several percent."""
    import copy
    model = copy.deepcopy(small_fcos).double().train()
    torch.manual_seed(4)
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    gt = torch.tensor([[[8.0, 6.0, 50.0, 40.0, 3.0], [30.0, 20.0, 90.0, 62.0, 7.0]]], dtype=torch.float64)
    with torch.no_grad():
        feats = model.backbone(images)
    bias = model.pred_net.pred_box.bias
    direction = torch.randn_like(bias)

    def total(shift):
        model._normalizer.fill_(150.0)
        with torch.no_grad():
            bias.add_(shift * direction)
        try:
            losses = model.forward_fpn(feats, images, gt)
        finally:
            with torch.no_grad():
                bias.sub_(shift * direction)
        assert all(v.dtype == torch.float64 for v in losses.values())
        return sum(losses.values())

    model.zero_grad()
    total(0.0).backward()
    analytic = (bias.grad * direction).sum().item()
    step = 1e-5
    with torch.no_grad():
        numeric = ((total(step) - total(-step)) / (2 * step)).item()
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic), (numeric, analytic)

    model.eval()
    with torch.no_grad():
        boxes, _, scores = model(images, test_score_thresh=0.0)
    assert boxes.dtype == scores.dtype == torch.float64 and boxes.shape[0] > 0


# --- gaps found by mutation testing: head layout, stems, level ranges, thresholds ----------

def test_fcos_head_cls_and_box_are_flattened_row_major():
    """class_logits / boxreg_deltas row k = feature (i, j) with k = i * W + j (non-square maps)."""
    torch.manual_seed(0)
    net = osd.FCOSPredictionNetwork(num_classes=3, in_channels=8, stem_channels=[])
    with torch.no_grad():
        for head in (net.pred_cls, net.pred_box):  # output channel o = input channel o (centre tap)
            head.weight.zero_(); head.bias.zero_()
            for o in range(head.out_channels):
                head.weight[o, o, 1, 1] = 1.0
    feats = {"p3": torch.randn(2, 8, 5, 7), "p4": torch.randn(2, 8, 3, 4)}
    cls, box, _ = net(feats)
    for lvl, f in feats.items():
        ref = f.permute(0, 2, 3, 1).reshape(2, -1, 8)
        assert torch.allclose(cls[lvl], ref[..., :3], atol=1e-6), lvl
        assert torch.allclose(box[lvl], ref[..., :4], atol=1e-6), lvl


def test_fcos_head_centerness_is_on_the_box_branch_and_stems_have_relu():
    torch.manual_seed(0)
    net = osd.FCOSPredictionNetwork(num_classes=3, in_channels=8, stem_channels=[8, 8])
    f = torch.randn(2, 8, 4, 5)
    for stem in (net.stem_cls, net.stem_box):  # a ReLU after each of the two convolutions
        assert sum(isinstance(m, nn.ReLU) for m in stem) == 2 and (stem(f) >= 0).all()
    _, _, ctr = net({"p3": f})
    ref = net.pred_ctr(net.stem_box(f)).permute(0, 2, 3, 1).reshape(2, -1, 1)
    assert torch.allclose(ctr["p3"], ref, atol=1e-6)


def test_fcos_coarsest_level_has_no_upper_bound():
    """A box larger than 8 * 32 = 256 px from the location still matches p5 (range (128, inf))."""
    locations = {"p3": torch.tensor([[300.0, 300.0]]), "p4": torch.tensor([[304.0, 304.0]]),
                 "p5": torch.tensor([[16.0, 16.0]])}
    gt = torch.tensor([[0.0, 0.0, 600.0, 600.0, 7.0]])
    out = osd.fcos_match_locations_to_gt(locations, STRIDES, gt)
    assert out["p5"][0, 4] == 7 and out["p3"][0, 4] == -1 and out["p4"][0, 4] == -1


def test_fcos_inference_honours_test_nms_thresh():
    model = osd.FCOS(num_classes=2, fpn_channels=8, stem_channels=[], pretrained=False)
    locations = {"p3": torch.tensor([[50.0, 50.0], [54.0, 50.0]])}
    cls = {"p3": torch.tensor([[[5.0, -9.0], [4.0, -9.0]]])}
    box = {"p3": torch.full((1, 2, 4), 20.0 / 8)}  # boxes (30,30,70,70) and (34,30,74,70): IoU 0.818
    ctr = {"p3": torch.full((1, 2, 1), 5.0)}
    img = torch.zeros(1, 3, 224, 224)
    loose = model.inference(img, locations, cls, box, ctr, test_score_thresh=0.1, test_nms_thresh=0.9)
    tight = model.inference(img, locations, cls, box, ctr, test_score_thresh=0.1, test_nms_thresh=0.5)
    assert len(loose[0]) == 2 and len(tight[0]) == 1


def test_focal_loss_alpha_zero_weights_positives_zero():
    """torchvision semantics: alpha >= 0 applies alpha_t, so alpha = 0 zeroes the positives' loss."""
    x = torch.randn(50)
    loss = osd.sigmoid_focal_loss(x, torch.ones(50), alpha=0.0)
    assert torch.count_nonzero(loss) == 0
