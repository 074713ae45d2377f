"""Unit tests for A5/common.py (FPN backbone, location coordinates, IoU, NMS, training helpers).

References are independent of the code under test:
* `_torchvision_nms_reference` is a line-by-line Python port of torchvision's CPU kernel
  (torchvision/csrc/ops/cpu/nms_kernel.cpp): stable descending sort, areas and IoU in the
  boxes' dtype (numpy float32 scalars for float32 boxes), `ovr > iou_threshold` compared in
  double precision, suppressed boxes skipped. torchvision itself is not installed here.
* `box_iou_reference` (eecs598.testing) is a scalar Python double loop with
  torchvision.ops.box_iou's formula.
* FPN shapes/wiring are checked against the lateral/output convs applied by hand with
  torch.nn.functional; location coordinates against the flattening of a non-square map.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import common
import detection_training as dt
from eecs598.testing import assert_close, box_iou_reference


# ----------------------------------------------------------------------------- references
def _np_dtype(dtype):
    return {torch.float32: np.float32, torch.float64: np.float64}[dtype]


def _torchvision_nms_reference(boxes, scores, iou_threshold):
    """Python port of torchvision's nms_kernel_impl (CPU), scalar by scalar."""
    t = _np_dtype(boxes.dtype)
    b = boxes.numpy().astype(t)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)  # elementwise in the boxes' dtype, like at::Tensor ops
    # scores.sort(0, descending=True, stable=True): equal scores keep their index order.
    s = scores.tolist()
    order = sorted(range(len(s)), key=lambda k: -s[k])  # Python's sort is stable
    suppressed = [False] * len(s)
    keep = []
    zero = t(0)
    for _i in range(len(order)):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, len(order)):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1 = max(x1[i], x1[j])
            yy1 = max(y1[i], y1[j])
            xx2 = min(x2[i], x2[j])
            yy2 = min(y2[i], y2[j])
            w = max(zero, t(xx2 - xx1))
            h = max(zero, t(yy2 - yy1))
            inter = t(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = t(inter / t(t(areas[i] + areas[j]) - inter))
            if float(ovr) > iou_threshold:  # C++ promotes the float to double
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


def _batched_nms_reference(boxes, scores, class_ids, iou_threshold):
    """Per-class reference NMS, merged by decreasing score (ties: lower index first)."""
    keep = []
    for c in sorted(set(class_ids.tolist())):
        idx = [k for k in range(len(class_ids)) if class_ids[k] == c]
        kept = _torchvision_nms_reference(boxes[idx], scores[idx], iou_threshold)
        keep += [idx[k] for k in kept.tolist()]
    s = scores.tolist()
    return torch.tensor(sorted(sorted(keep), key=lambda k: -s[k]), dtype=torch.long)


def _random_boxes(n, generator, size=100.0, max_wh=40.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# ----------------------------------------------------------------------------- basics
def test_hello(capsys):
    common.hello_common()
    assert capsys.readouterr().out.strip() == "Hello from common.py!"


def test_box_iou_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    b1, b2 = _random_boxes(13, g, dtype=torch.float64), _random_boxes(17, g, dtype=torch.float64)
    b2[:3] = b1[:3]  # identical boxes -> IoU 1
    b2[3] = torch.tensor([500.0, 500.0, 510.0, 510.0], dtype=torch.float64)  # disjoint -> 0
    ours = common.box_iou(b1, b2)
    assert ours.shape == (13, 17)
    assert_close(ours, box_iou_reference(b1, b2), 1e-12, "box_iou float64")
    ours32 = common.box_iou(b1.float(), b2.float())
    assert ours32.dtype == torch.float32
    assert (ours32.double() - box_iou_reference(b1, b2)).abs().max() < 1e-5
    assert torch.allclose(torch.diagonal(ours[:3, :3]), torch.ones(3, dtype=torch.float64))


def test_box_iou_leading_batch_dimensions_broadcast():
    """(B, M, 4) with (B, N, 4), and (M, 4) with (B, N, 4): (B, M, N), each slice equal to the
    two-dimensional call."""
    g = torch.Generator().manual_seed(1)
    b1 = _random_boxes(3 * 5, g, dtype=torch.float64).reshape(3, 5, 4)
    b2 = _random_boxes(3 * 7, g, dtype=torch.float64).reshape(3, 7, 4)
    batched, shared = common.box_iou(b1, b2), common.box_iou(b1[0], b2)
    assert batched.shape == shared.shape == (3, 5, 7)
    for b in range(3):
        assert torch.equal(batched[b], common.box_iou(b1[b], b2[b]))
        assert torch.equal(shared[b], common.box_iou(b1[0], b2[b]))


def test_box_iou_touching_and_nested():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 0.0, 4.0, 2.0], [0.5, 0.5, 1.5, 1.5], [1.0, 0.0, 3.0, 2.0]])
    # touching -> 0; nested 1/4; half overlap 2 / (4 + 4 - 2) = 1/3
    assert_close(common.box_iou(a, b)[0], torch.tensor([0.0, 0.25, 1 / 3]), 1e-6, "iou")


# ----------------------------------------------------------------------------- locations
def test_fpn_location_coords_row_major_non_square():
    shapes = {"p3": (2, 4, 3, 5), "p4": (2, 4, 2, 3)}  # H != W on purpose
    strides = {"p3": 8, "p4": 16}
    locs = common.get_fpn_location_coords(shapes, strides)
    for level, (_, _, H, W) in shapes.items():
        s = strides[level]
        assert locs[level].shape == (H * W, 2) and locs[level].dtype == torch.float32
        # A feature map whose channel 0 holds the column index and channel 1 the row index,
        # flattened exactly the way the detectors flatten predictions.
        feat = torch.stack(torch.meshgrid(torch.arange(H.__int__()), torch.arange(W), indexing="ij")[::-1])
        flat = feat[None].permute(0, 2, 3, 1).reshape(1, H * W, 2)[0].float()
        expected = (flat + 0.5) * s  # (j + 0.5) * s, (i + 0.5) * s
        assert torch.equal(locs[level], expected), (level, locs[level], expected)
        assert torch.equal(feat.flatten(1).t().float(), flat)


def test_fpn_location_coords_dtype_device():
    locs = common.get_fpn_location_coords({"p5": (1, 1, 7, 7)}, {"p5": 32}, dtype=torch.float64)
    assert locs["p5"].dtype == torch.float64
    assert locs["p5"][0].tolist() == [16.0, 16.0] and locs["p5"][1].tolist() == [48.0, 16.0]


# ----------------------------------------------------------------------------- NMS
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_torchvision_kernel_port(threshold, dtype):
    g = torch.Generator().manual_seed(int(threshold * 10))
    for trial in range(6):
        n = [1, 2, 30, 100, 200, 300][trial]
        boxes = _random_boxes(n, g, dtype=dtype)
        scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
        if trial >= 2:  # many exact ties in the scores
            scores = (scores * 8).floor() / 8
        keep = common.nms(boxes, scores, threshold)
        assert keep.dtype == torch.long
        ref = _torchvision_nms_reference(boxes, scores, threshold)
        assert torch.equal(keep, ref), f"n={n} thr={threshold}\nours {keep.tolist()}\nref {ref.tolist()}"


def test_nms_exact_threshold_edge_cases():
    # IoU exactly 0.5 (inter 2 / union 4): not suppressed at 0.5 (strict >).
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert common.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert common.nms(boxes, scores, 0.49).tolist() == [0]
    # IoU = 3/10 in float32 rounds to 0.3000000119 > 0.3 (double): torchvision suppresses.
    boxes = torch.tensor([[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0]])  # inter 3, union 10
    ref = _torchvision_nms_reference(boxes, scores, 0.3)
    assert ref.tolist() == [0]
    assert common.nms(boxes, scores, 0.3).tolist() == ref.tolist()
    # Equal scores: the lower index wins; identical boxes suppress each other.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3 + [[5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert common.nms(boxes, scores, 0.5).tolist() == [0, 3]
    # Empty input and zero-area boxes (0/0 = NaN is never > threshold).
    assert common.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert common.nms(boxes, torch.tensor([0.2, 0.1]), 0.5).tolist() == [0, 1]


def test_nms_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(common, "_NMS_BLOCK", 16)  # nms works on sorted blocks: use many
    g = torch.Generator().manual_seed(5)
    n = 250
    boxes = _random_boxes(n, g, size=100.0, max_wh=40.0)
    scores = (torch.rand(n, generator=g) * 50).floor() / 50
    keep = common.nms(boxes, scores, 0.5)
    ref = _torchvision_nms_reference(boxes, scores, 0.5)
    assert torch.equal(keep, ref)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_class_spec_nms_equals_per_class_nms(threshold):
    g = torch.Generator().manual_seed(11)
    n = 300
    boxes = _random_boxes(n, g)
    scores = (torch.rand(n, generator=g) * 16).floor() / 16
    class_ids = torch.randint(0, 4, (n,), generator=g)
    keep = common.class_spec_nms(boxes, scores, class_ids, threshold)
    ref = _batched_nms_reference(boxes, scores, class_ids, threshold)
    assert torch.equal(keep, ref), f"ours {keep.tolist()}\nref {ref.tolist()}"
    # identical boxes of different classes never suppress each other
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert common.class_spec_nms(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 1])).tolist() == [0, 1]
    assert common.class_spec_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)).tolist() == []


@pytest.mark.parametrize("per_group_devices", [("cpu",), ()], ids=["class by class", "one pass"])
def test_class_spec_nms_spans_several_blocks(monkeypatch, per_group_devices):
    """Both ways class_spec_nms runs (class by class, on the CPU; one pass over all classes, on
    an accelerator) give torchvision's batched_nms result, ties across classes included."""
    monkeypatch.setattr(common, "_NMS_BLOCK", 8)
    monkeypatch.setattr(common, "_NMS_PER_GROUP_DEVICES", per_group_devices)
    g = torch.Generator().manual_seed(12)
    for n, num_classes in ((120, 3), (200, 20), (1, 1)):
        boxes = _random_boxes(n, g, size=60.0)
        scores = (torch.rand(n, generator=g) * 10).floor() / 10
        class_ids = torch.randint(0, num_classes, (n,), generator=g)
        keep = common.class_spec_nms(boxes, scores, class_ids, 0.5)
        assert torch.equal(keep, _batched_nms_reference(boxes, scores, class_ids, 0.5)), (n, num_classes)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_masks_equal_nms_set_by_set(threshold):
    """Six sets of 150 boxes (scores with ties, a third of the boxes invalid, one set all invalid,
    one of identical boxes): each set's mask marks exactly torchvision's NMS of its valid boxes,
    and with max_keep the first max_keep of them. A batch of zero boxes gives an empty mask."""
    g = torch.Generator().manual_seed(14)
    G, K = 6, 150
    boxes = _random_boxes(G * K, g, size=80.0, max_wh=40.0).reshape(G, K, 4)
    boxes[4] = boxes[4, :1]  # one set of identical boxes
    scores = (torch.rand(G, K, generator=g) * 20).floor() / 20
    valid = torch.rand(G, K, generator=g) > 0.33
    valid[3] = False
    for max_keep in (None, 7):
        keep = common.nms_masks(boxes, scores, threshold, valid=valid, max_keep=max_keep, rounds_per_check=2)
        assert keep.shape == (G, K) and keep.dtype == torch.bool
        for k in range(G):
            idx = valid[k].nonzero().squeeze(1)
            ref = idx[_torchvision_nms_reference(boxes[k, idx], scores[k, idx], threshold)][:max_keep]
            assert torch.equal(keep[k].nonzero().squeeze(1), ref.sort().values), (k, max_keep)
    assert keep[3].sum() == 0 and keep[4].sum() == 1
    assert torch.equal(common.nms_masks(boxes[0], scores[0], threshold),  # one set, all valid
                       torch.zeros(K, dtype=torch.bool).index_fill_(0, _torchvision_nms_reference(boxes[0], scores[0], threshold), True))
    assert common.nms_masks(torch.zeros(2, 0, 4), torch.zeros(2, 0)).shape == (2, 0)


@pytest.mark.parametrize("block", [16, 1024])
def test_nms_max_keep_returns_the_first_kept_boxes(monkeypatch, block):
    """nms(..., max_keep=k)[:k], as the RPN calls it, is the first k boxes of the full result
    (all of them when fewer survive), whether k falls inside the first block or beyond it.
    (Only the prefix is checked: the docstring lets an implementation ignore max_keep.)"""
    monkeypatch.setattr(common, "_NMS_BLOCK", block)
    g = torch.Generator().manual_seed(13)
    n = 400
    boxes = _random_boxes(n, g, size=100.0, max_wh=40.0)
    scores = (torch.rand(n, generator=g) * 40).floor() / 40
    ref = _torchvision_nms_reference(boxes, scores, 0.5)
    assert 40 < len(ref) < n
    for k in (1, 5, 17, 40, len(ref), n):
        keep = common.nms(boxes, scores, 0.5, max_keep=k)[:k]
        assert torch.equal(keep, ref[:k]), k


# ----------------------------------------------------------------------------- FPN
def _fpn_reference(c, fp):
    """p3-p5 from c3-c5 with the FPN's layers: lateral 1x1 convs, nearest 2x upsampling written as
    repeat_interleave, 3x3 output convs."""
    def conv(x, m, pad):
        return F.conv2d(x, m.weight, m.bias, padding=pad)

    def up(t):
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2)

    m5 = conv(c["c5"], fp["l5"], 0)
    m4 = conv(c["c4"], fp["l4"], 0) + up(m5)
    m3 = conv(c["c3"], fp["l3"], 0) + up(m4)
    return {"p3": conv(m3, fp["o3"], 1), "p4": conv(m4, fp["o4"], 1), "p5": conv(m5, fp["o5"], 1)}


@pytest.mark.parametrize("freeze", [False, True])
def test_fpn_matches_functional_reference(freeze):
    torch.manual_seed(0)
    model = common.DetectorBackboneWithFPN(8, pretrained=False, freeze_backbone=freeze)
    assert model.out_channels == 8 and model.fpn_strides == {"p3": 8, "p4": 16, "p5": 32}
    model.eval()
    images = torch.randn(2, 3, 64, 96)  # non-square
    with torch.no_grad():
        out = model(images)
        c = model.backbone(images)
        ref = _fpn_reference(c, model.fpn_params)
    for level, stride in model.fpn_strides.items():
        assert out[level].shape == (2, 8, 64 // stride, 96 // stride)
        assert_close(out[level], ref[level], 1e-5, level)
    model.train()
    assert model.backbone.training is (not freeze)
    assert all(p.requires_grad is (not freeze) for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.fpn_params.parameters())


# ----------------------------------------------------------------------------- flips
def test_hflip_boxes_matches_flipped_mask():
    W, H = 20, 10
    gt = torch.tensor([[[2.0, 1.0, 7.0, 4.0, 3.0], [15.0, 5.0, 20.0, 9.0, 0.0],
                        [-1.0, -1.0, -1.0, -1.0, -1.0]]])
    flipped = common.hflip_boxes(gt, W)
    for k in range(2):
        x1, y1, x2, y2 = gt[0, k, :4].long().tolist()
        mask = torch.zeros(H, W)
        mask[y1:y2, x1:x2] = 1
        cols = mask.flip(-1).sum(0).nonzero()[:, 0]
        assert flipped[0, k].tolist() == [cols.min().item(), y1, cols.max().item() + 1, y2,
                                          gt[0, k, 4].item()]
    assert flipped[0, 2].tolist() == [-1.0] * 5
    images = torch.arange(2 * 3 * H * W, dtype=torch.float32).reshape(2, 3, H, W)
    gt2 = gt.repeat(2, 1, 1)
    g = torch.Generator().manual_seed(0)
    out_img, out_gt = common.random_hflip(images, gt2, p=1.0, generator=g)
    assert torch.equal(out_img, images.flip(-1)) and torch.equal(out_gt, flipped.repeat(2, 1, 1))
    out_img, out_gt = common.random_hflip(images, gt2, p=0.0, generator=g)
    assert torch.equal(out_img, images) and torch.equal(out_gt, gt2)


# ----------------------------------------------------------------------------- training
class _ToyDetector(torch.nn.Module):
    """Regresses the mean GT box from the image mean; returns course-style loss dicts."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
        pred = self.lin(images.mean(dim=(2, 3)))
        if self.training:
            target = gt_boxes[:, 0, :4] / 10
            return {"loss_box": ((pred - target) ** 2).mean(), "loss_aux": pred.abs().mean() * 0.01,
                    "not_a_loss": torch.tensor(100.0)}
        gt = self._gt
        return gt[:, :4], gt[:, 4].long(), torch.linspace(1, 0.5, len(gt))


class _ToyDataset(torch.utils.data.Dataset):
    idx_to_class = {0: "a", 1: "b", 2: "c"}

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.gt = torch.full((n, 5, 5), -1.0)
        self.gt[:, 0] = torch.tensor([1.0, 2.0, 5.0, 6.0, 0.0])
        self.gt[:, 1] = torch.tensor([3.0, 1.0, 7.0, 4.0, 2.0])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return f"img{i}.jpg", self.images[i], self.gt[i]


def test_lr_schedule_warmup_and_steps():
    f = [common._lr_factor(it, 100, 10) for it in range(100)]
    assert f[0] == pytest.approx(0.001) and f[5] == pytest.approx(0.001 * 0.5 + 0.5)
    assert f[10] == 1.0 and f[59] == 1.0 and f[60] == pytest.approx(0.1) and f[90] == pytest.approx(0.01)


def test_train_detector_runs_and_resumes(tmp_path, capsys):
    ds = _ToyDataset(8)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)  # same batch each step
    kwargs = dict(learning_rate=0.05, max_iters=12, log_period=4, warmup_iters=3, augment=False)
    torch.manual_seed(0)
    straight = _ToyDetector()
    out = common.train_detector(straight, loader, **kwargs)
    assert out["iters"] == 12 and len(out["loss_history"]) == 12 and not out["stopped_early"]
    assert out["loss_history"][-1] < out["loss_history"][0]
    assert "loss_box" in capsys.readouterr().out

    torch.manual_seed(0)
    resumed = _ToyDetector()
    ckpt = str(tmp_path / "ckpt.pt")
    first = common.train_detector(resumed, loader, checkpoint_path=ckpt, **{**kwargs, "max_iters": 12},
                                  time_limit=0.0)  # stops after one iteration
    assert first["stopped_early"] and first["iters"] == 1
    fresh = _ToyDetector()  # a new process would start from a new model
    second = common.train_detector(fresh, loader, checkpoint_path=ckpt, **kwargs)
    assert second["iters"] == 12 and len(second["loss_history"]) == 12
    assert second["resumed_at_s"] > 0 and second["seconds"] >= second["resumed_at_s"]  # total training time
    for a, b in zip(straight.parameters(), fresh.parameters()):
        assert_close(b, a, 1e-6, "resumed weights vs straight run")


def test_train_detector_checkpoints_hold_every_iterations_loss(tmp_path, monkeypatch):
    """Checkpoints between log lines (period 5, logging every 3) still hold one loss per
    iteration done, so that a resumed run's history is complete."""
    saved = []
    real_save = common._save_checkpoint
    monkeypatch.setattr(common, "_save_checkpoint", lambda path, state: (
        saved.append((state["iteration"], len(state["loss_history"]))), real_save(path, state)))
    loader = torch.utils.data.DataLoader(_ToyDataset(8), batch_size=8, shuffle=False)
    out = common.train_detector(_ToyDetector(), loader, learning_rate=0.05, max_iters=12, log_period=3,
                                warmup_iters=3, augment=False, checkpoint_period=5, verbose=False,
                                checkpoint_path=str(tmp_path / "ckpt.pt"))
    assert saved == [(5, 5), (10, 10), (12, 12)] and len(out["loss_history"]) == 12


def test_predict_and_evaluate_perfect_detector():
    ds = _ToyDataset(3)
    det = _ToyDetector()
    det._gt = ds.gt[0][ds.gt[0][:, 4] >= 0]
    preds, stats = common.predict_detections(det, ds, 0.05, 0.5, "cpu", return_stats=True)
    assert len(preds) == 3 and stats["num_images"] == 3 and stats["images_per_s"] > 0
    assert preds[0]["boxes"].shape == (2, 4) and preds[0]["classes"].dtype == torch.long
    assert preds[0]["gt_boxes"].shape == (2, 4) and preds[0]["gt_classes"].tolist() == [0, 2]
    result = common.evaluate_detector(det, ds, verbose=False)
    # every GT box detected exactly once: AP 1 for classes a and c; b has no GT -> NaN, excluded
    assert result["map"] == pytest.approx(1.0) and result["map_07"] == pytest.approx(1.0)
    assert math.isnan(result["ap_per_class"]["b"]) and result["ap_per_class"]["a"] == 1.0
    assert not result["used_difficult"]


@pytest.mark.skipif(not __import__("eecs598.testing").testing.shared_data_available(
    "voc2007", "voc07_val.json"), reason="VOC not in $EECS598_DATA")
def test_evaluate_detector_oracle_on_voc_with_difficult():
    """An oracle that outputs every GT box (and the difficult ones) gets mAP 1 on real VOC."""
    from eecs598.data import VOC2007Detection

    ds = VOC2007Detection("val", num_images=6)

    class Oracle(torch.nn.Module):
        def __init__(self, with_difficult):
            super().__init__()
            self.k, self.with_difficult = 0, with_difficult

        def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
            _, _, gt = ds[self.k]
            gt = gt[gt[:, 4] >= 0]
            scores = torch.full((len(gt),), 0.5)
            if self.with_difficult:  # difficult objects detected with the highest scores
                diff = ds.difficult_boxes(self.k)
                gt, scores = torch.cat([gt, diff]), torch.cat([scores, torch.ones(len(diff))])
            self.k += 1
            return gt[:, :4], gt[:, 4].long(), scores

    n_difficult = sum(len(ds.difficult_boxes(i)) for i in range(len(ds)))
    assert n_difficult > 0  # 000005.jpg has two
    for with_difficult in (False, True):
        r = common.evaluate_detector(Oracle(with_difficult), ds, verbose=False)
        assert r["used_difficult"] and r["num_images"] == 6
        assert r["map"] == pytest.approx(1.0) and r["map_07"] == pytest.approx(1.0)
    # without the difficult flags, detections of difficult objects become false positives
    r = common.evaluate_detector(Oracle(True), ds, use_difficult=False, verbose=False)
    assert not r["used_difficult"] and r["map"] < 1.0
    # a DataLoader over the dataset is evaluated the same way (its dataset holds the difficult boxes)
    r = common.evaluate_detector(Oracle(True), torch.utils.data.DataLoader(ds, batch_size=1), verbose=False)
    assert r["used_difficult"] and r["map"] == pytest.approx(1.0)
    assert r["ap_per_class"].keys() == {ds.idx_to_class[i] for i in range(len(ds.idx_to_class))}


def test_inference_with_detector_draws(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    ds = _ToyDataset(2)
    det = _ToyDetector()
    det._gt = ds.gt[0][ds.gt[0][:, 4] >= 0]
    preds = common.inference_with_detector(det, ds, ds.idx_to_class, 0.3, 0.5,
                                           output_dir=str(tmp_path), max_images=2, show=False)
    assert len(preds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections_0.png", "detections_1.png"]
    common.inference_with_detector(det, ds, ds.idx_to_class, 0.3, 0.5, output_dir=str(tmp_path / "named"),
                                   max_images=1, show=False, file_prefix="fcos_detections")
    assert [p.name for p in (tmp_path / "named").iterdir()] == ["fcos_detections_0.png"]
    common.inference_with_detector(det, ds, ds.idx_to_class, 0.3, 0.5, output_dir=str(tmp_path / "jpg"),
                                   max_images=1, show=False, image_format="jpg")
    assert (tmp_path / "jpg" / "detections_0.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG file


def test_inference_with_detector_draws_each_image_with_its_own_detections(monkeypatch):
    """With a shuffling DataLoader the images drawn are those the detections came from."""
    import matplotlib
    matplotlib.use("Agg")
    from eecs598 import vis
    from eecs598.data.voc import IMAGENET_MEAN, IMAGENET_STD
    drawn = []
    monkeypatch.setattr(vis, "draw_detections", lambda image, *a, **k: drawn.append(image))
    ds = _ToyDataset(8)
    det = _ToyDetector()
    det._gt = ds.gt[0][ds.gt[0][:, 4] >= 0]
    torch.manual_seed(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True)
    preds = common.inference_with_detector(det, loader, ds.idx_to_class, 0.3, 0.5, max_images=4, show=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert len(preds) == 4 and len(drawn) == 8 and "image" not in preds[0]
    for k, p in enumerate(preds):
        index = int(p["image_path"][len("img"):-len(".jpg")])
        assert torch.equal(drawn[2 * k], (ds.images[index] * std + mean).clamp(0, 1)), k


def test_lr_schedule_time_aware_steps():
    """The x0.1 steps also come at 60% / 90% of the time budget when that is reached first."""
    f = lambda it, elapsed: common._lr_factor(it, 1000, 10, elapsed=elapsed, time_limit=100.0)  # noqa: E731
    assert f(20, 59.0) == 1.0 and f(20, 60.0) == pytest.approx(0.1) and f(20, 90.0) == pytest.approx(0.01)
    assert f(600, 0.0) == pytest.approx(0.1)  # the iteration budget still counts
    assert common._lr_factor(20, 1000, 10, elapsed=1e6) == 1.0  # no time limit: iterations only


def test_train_detector_decays_when_time_limit_stops_it():
    """Stopped by its time limit long before max_iters, training still ends on the lowest rate."""
    import time as _time

    class Slow(_ToyDetector):
        def forward(self, images, gt_boxes=None, **kw):
            _time.sleep(0.02)
            return super().forward(images, gt_boxes, **kw)

    loader = torch.utils.data.DataLoader(_ToyDataset(8), batch_size=4)
    out = common.train_detector(Slow(), loader, learning_rate=0.05, max_iters=10**6, warmup_iters=1,
                                time_limit=0.5, augment=False, verbose=False)
    assert out["stopped_early"] and 0 < out["iters"] < 10**6
    assert out["lr"] == pytest.approx(0.05 * 0.01)


def test_fpn_top_down_with_non_constant_coarse_features():
    """The random (pretrained=False) backbone's c4 / c5 are nearly constant (std about 1e-6 and
    1e-8), which hides the top-down path from test_fpn_matches_functional_reference. Random maps
    instead; reference: nearest 2x upsampling written as repeat_interleave."""
    torch.manual_seed(0)
    model = common.DetectorBackboneWithFPN(8, pretrained=False)
    channels = model.backbone.out_channels
    feats = {"c3": torch.randn(2, channels["c3"], 8, 12), "c4": torch.randn(2, channels["c4"], 4, 6),
             "c5": torch.randn(2, channels["c5"], 2, 3)}
    model.backbone = dt.CachedFeatures(channels)
    model.backbone.feats = feats
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96))
        ref = _fpn_reference(feats, model.fpn_params)
    for level in ref:
        assert_close(out[level], ref[level], 1e-5, level)


def test_train_detector_clips_gradients():
    """One iteration (time_limit 0), no warmup, a gradient of norm about 4.5e4: the update's norm
    is learning_rate * grad_clip."""
    torch.manual_seed(0)

    class Huge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, images, gt_boxes=None, **kw):
            return {"loss_big": 1e4 * (self.lin.weight.sum() + self.lin.bias.sum())}

    model = Huge()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    data = [("a", torch.zeros(3, 8, 8), torch.full((2, 5), -1.0))]
    out = common.train_detector(model, torch.utils.data.DataLoader(data, batch_size=1), learning_rate=0.1,
                                weight_decay=0.0, max_iters=100, warmup_iters=0, time_limit=0.0,
                                augment=False, grad_clip=1.0, verbose=False)
    assert out["iters"] == 1
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (before - after).norm().item() == pytest.approx(0.1, rel=1e-5)


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

class _Clock:
    """A fake `time.perf_counter` that advances only when a fake model "runs"."""
    now = 0.0

    @classmethod
    def read(cls):
        return cls.now


class _Fixed(nn.Module):
    """Returns one box whose x1 is the image's first pixel value (identifies the image); each
    call takes `sleep` seconds of the fake clock."""
    def __init__(self, sleep=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.sleep = sleep

    def forward(self, images, test_score_thresh=None, test_nms_thresh=None):
        _Clock.now += self.sleep
        v = images[0, 0, 0, 0]
        return torch.stack([v, v, v + 1, v + 1])[None], torch.zeros(1, dtype=torch.long), torch.ones(1)


class _DS(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        gt = torch.full((2, 5), -1.0)
        gt[0] = torch.tensor([i, i, i + 1, i + 1, i % 3])
        return f"img{i}", torch.full((3, 4, 4), float(i)), gt

    def difficult_boxes(self, i):
        return torch.tensor([[i + 10.0, 0, i + 11.0, 1, 0]])


def test_predict_detections_pairs_detections_with_their_image_in_a_batched_loader():
    """A DataLoader of batch 3 with a one-image detector: image k's detections, path and gt stay
    together (kills enumerate(outs) without `start`, and images[start])."""
    loader = torch.utils.data.DataLoader(_DS(6), batch_size=3, shuffle=False)
    preds = common.predict_detections(_Fixed(), loader, keep_images=True)
    assert [p["image_path"] for p in preds] == [f"img{i}" for i in range(6)]
    for i, p in enumerate(preds):
        assert p["boxes"][0, 0].item() == i == p["gt_boxes"][0, 0].item() == p["image"][0, 0, 0].item()


def test_predict_detections_images_per_s_counts_all_calls(monkeypatch):
    """images_per_s = images / summed model time (kills `model_seconds =` and `/ step`)."""
    monkeypatch.setattr(common.time, "perf_counter", _Clock.read)
    _, stats = common.predict_detections(_Fixed(sleep=0.02), _DS(5), return_stats=True)
    assert stats["num_images"] == 5
    assert stats["images_per_s"] == pytest.approx(50.0)  # 5 images in 5 x 0.02 s


def test_evaluate_predictions_uses_each_images_difficult_boxes(monkeypatch):
    """difficult boxes of image i go with image i (kills difficult_boxes(0))."""
    from eecs598 import detection_eval
    seen = {}
    monkeypatch.setattr(detection_eval, "evaluate_detections",
                        lambda preds, gts, *a, **k: seen.setdefault("gts", gts) and {})
    ds = _DS(3)
    preds = common.predict_detections(_Fixed(), ds)
    common.evaluate_predictions(preds, ds, num_classes=3)
    assert [g["boxes"][-1, 0].item() for g in seen["gts"]] == [10.0, 11.0, 12.0]


def test_lr_factor_steps_at_60_and_90_percent():
    assert common._lr_factor(85, 100, 0) == pytest.approx(0.1)  # kills 0.8 for the second step
    assert common._lr_factor(90, 100, 0) == pytest.approx(0.01)


class _TwoLoss(nn.Module):
    """Two losses on two parameters; records the gt boxes it saw."""
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.b = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, images, gt_boxes):
        self.seen.append(gt_boxes.clone())
        return {"loss_a": self.a ** 2, "loss_b": self.b ** 2}


def _loader():
    return torch.utils.data.DataLoader(_DS(4), batch_size=4, shuffle=False)


def test_train_detector_sums_all_losses_and_flips_with_augment():
    """Every "loss*" term is minimized (kills loss_names[:1]); augment=True mirrors some batches
    (kills `if augment` dropped); augment=False never does."""
    torch.manual_seed(0)
    det = _TwoLoss()
    common.train_detector(det, _loader(), max_iters=20, log_period=5, verbose=False, augment=True)
    assert det.a.item() < 0.9 and det.b.item() < 0.9
    first = _loader().dataset[1][2][0, 0].item()
    assert any(s[1, 0, 0].item() != first for s in det.seen)
    det2 = _TwoLoss()
    common.train_detector(det2, _loader(), max_iters=5, verbose=False, augment=False)
    assert all(s[1, 0, 0].item() == first for s in det2.seen)


def test_train_detector_default_warmup():
    """default warmup min(500, max_iters // 10): 10 iterations end at lr * 0.01 (kills max(...))."""
    r = common.train_detector(_TwoLoss(), _loader(), learning_rate=0.1, max_iters=10, verbose=False)
    assert r["lr"] == pytest.approx(0.1 * 0.01)


def test_train_detector_checkpoint_elapsed_accumulates(tmp_path):
    """The checkpoint's elapsed includes earlier runs' time (kills elapsed = this run's time only)."""
    path = str(tmp_path / "ck.pt")
    common.train_detector(_TwoLoss(), _loader(), max_iters=2, verbose=False, checkpoint_path=path)
    st = torch.load(path, weights_only=False)
    st["elapsed"] = 1000.0
    torch.save(st, path)
    r = common.train_detector(_TwoLoss(), _loader(), max_iters=4, verbose=False, checkpoint_path=path)
    assert r["resumed_at_s"] == 1000.0
    assert torch.load(path, weights_only=False)["elapsed"] >= 1000.0


def test_train_loop_checkpoint_elapsed_accumulates(tmp_path):
    """train_loop's checkpoint elapsed includes the resumed time (kills perf_counter() - start)."""
    det = _TwoLoss()
    s = {"learning_rate": 0.01, "weight_decay": 0.0, "max_iters": 4, "warmup_iters": 0}
    path = str(tmp_path / "ck.pt")
    step = lambda: (None, None)
    fn = lambda inp, gt: det(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 5))
    dt.train_loop(det, step, fn, dict(s, max_iters=2), "cpu", verbose=False, checkpoint_path=path)
    st = torch.load(path, weights_only=False)
    st["elapsed"] = 5.0
    torch.save(st, path)
    dt.train_loop(det, step, fn, dict(s, max_iters=4, time_limit=1e6), "cpu", verbose=False, checkpoint_path=path)
    assert torch.load(path, weights_only=False)["elapsed"] >= 5.0


def test_train_loop_uses_warmup_start(monkeypatch):
    """s["warmup_start"] reaches lr_factor (kills the dropped argument)."""
    got = []
    real = dt.lr_factor
    monkeypatch.setattr(dt, "lr_factor", lambda *a: got.append(a) or real(*a))
    det = _TwoLoss()
    s = {"learning_rate": 0.01, "weight_decay": 0.0, "max_iters": 1, "warmup_iters": 1, "warmup_start": 0.5}
    dt.train_loop(det, lambda: (None, None), lambda i, g: det(None, torch.zeros(1, 1, 5)), s, "cpu", verbose=False)
    assert got[0][-1] == 0.5


class _Batched(_Fixed):
    def detect_batch(self, images, score_thresh, nms_thresh):
        _Clock.now += self.sleep
        sleep, self.sleep = self.sleep, 0.0
        try:
            return [self.forward(images[k:k + 1]) for k in range(images.shape[0])]
        finally:
            self.sleep = sleep


def test_predict_detections_batched_images_and_speed(monkeypatch):
    """detect_batch path: kept images are each image's own (kills images[start]); images_per_s
    counts images, not calls (kills len(results) / step)."""
    monkeypatch.setattr(common.time, "perf_counter", _Clock.read)
    preds, stats = common.predict_detections(_Batched(sleep=0.03), _DS(6), batch_size=3, keep_images=True,
                                             return_stats=True)
    assert [p["image"][0, 0, 0].item() for p in preds] == list(range(6))
    assert stats["batch_size"] == 3 and stats["images_per_s"] == pytest.approx(100.0)  # 6 images in 2 x 0.03 s
