"""
FCOS: a one-stage, anchor-free object detector (Tian et al., 2019), as in the course.

Course names are kept. Shared detection code lives in `common.py` and is re-exported here,
because the course lists it under this module: `DetectorBackboneWithFPN` (pretrained
EfficientNet-Lite0 by default, FPN levels p3/p4/p5), `get_fpn_location_coords`, `nms`,
`class_spec_nms`.

What differs from the published reference solution (and why):
* the classification and box branches have **separate** stems (the reference put the same
  `nn.Conv2d` objects in both), with the paper's N(0, 0.01) initialization and the focal-loss
  prior bias -log((1 - 0.01) / 0.01) on the classification head;
* the sigmoid focal loss is written here (`sigmoid_focal_loss`), not taken from torchvision;
* location coordinates follow the row-major flattening of the predictions
  (location k = i * W + j has x = (j + 0.5) * stride, y = (i + 0.5) * stride);
* no torchvision and no hard-coded `.cuda()`: everything follows the input's device/dtype;
* training assigns the targets of the whole batch at once (`fcos_match_locations_to_gt` and the
  target helpers take a leading batch dimension), without reading anything back from the
  device: on a GPU, no waits (the course loops over images).

Conventions: boxes are (x1, y1, x2, y2) in input-image pixels; a GT row is (x1, y1, x2, y2, class)
and padding / background rows are all -1. Levels are keyed "p3", "p4", "p5".
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from common import DetectorBackboneWithFPN, class_spec_nms, get_fpn_location_coords, nms  # noqa: F401

__all__ = ["hello_one_stage_detector", "DetectorBackboneWithFPN", "get_fpn_location_coords", "nms",
           "class_spec_nms", "FCOSPredictionNetwork", "sigmoid_focal_loss", "fcos_match_locations_to_gt",
           "fcos_get_deltas_from_locations", "fcos_apply_deltas_to_locations",
           "fcos_make_centerness_targets", "FCOS"]

# Prior probability of foreground used to initialize the classification bias (FCOS / RetinaNet).
PRIOR_PROB = 0.01


def hello_one_stage_detector():
    print("Hello from one_stage_detector.py!")


def _flatten_level(x):
    """(B, C, H, W) -> (B, H*W, C), row-major over (H, W) like `get_fpn_location_coords`."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


class FCOSPredictionNetwork(nn.Module):
    """FCOS head, shared across FPN levels.

    Two separate stems of conv3x3 + ReLU layers (one for classification, one for box
    regression and centerness), then three conv3x3 heads:
      pred_cls: stem_channels[-1] -> num_classes   (on the classification stem)
      pred_box: stem_channels[-1] -> 4             (on the box stem; LTRB deltas / stride)
      pred_ctr: stem_channels[-1] -> 1             (on the box stem; centerness logit)
    Every conv has weights ~ N(0, 0.01) and zero bias, except pred_cls whose bias is
    -log((1 - p) / p) with p = 0.01 so that every location starts at 1% foreground.

    Args:
        num_classes: number of object classes (no background class).
        in_channels: channels of the FPN features.
        stem_channels: list of output channels of each stem conv (may be empty: heads directly on FPN).
        norm: None (the course) or "group" to put GroupNorm(32 or fewer groups) after each stem
            conv, as the FCOS paper does.
    """

    def __init__(self, num_classes, in_channels, stem_channels, norm=None):
        super().__init__()
        self.num_classes = num_classes
        stem_channels = list(stem_channels)
        ### BEGIN SOLUTION
        ### HINT: build separate stem_cls / stem_box (nn.Sequential of conv3x3 + ReLU), heads pred_cls / pred_box / pred_ctr, then initialize
        def make_stem():
            layers, prev = [], in_channels
            for ch in stem_channels:
                conv = nn.Conv2d(prev, ch, kernel_size=3, padding=1)
                nn.init.normal_(conv.weight, mean=0.0, std=0.01)
                nn.init.zeros_(conv.bias)
                layers.append(conv)
                if norm == "group":
                    layers.append(nn.GroupNorm(math.gcd(32, ch), ch))
                elif norm is not None:
                    raise ValueError(f"norm must be None or 'group', got {norm!r}")
                layers.append(nn.ReLU())
                prev = ch
            return nn.Sequential(*layers)

        # Two independent stems: no module (hence no parameter) is shared between the branches.
        self.stem_cls = make_stem()
        self.stem_box = make_stem()
        head_in = stem_channels[-1] if stem_channels else in_channels
        self.pred_cls = nn.Conv2d(head_in, num_classes, kernel_size=3, padding=1)
        self.pred_box = nn.Conv2d(head_in, 4, kernel_size=3, padding=1)
        self.pred_ctr = nn.Conv2d(head_in, 1, kernel_size=3, padding=1)
        for head in (self.pred_cls, self.pred_box, self.pred_ctr):
            nn.init.normal_(head.weight, mean=0.0, std=0.01)
            nn.init.zeros_(head.bias)
        nn.init.constant_(self.pred_cls.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        ### END SOLUTION

    def forward(self, feats_per_fpn_level):
        """
        Args:
            feats_per_fpn_level: {"p3": (B, in_channels, H3, W3), "p4": ..., "p5": ...}.
        Returns:
            [class_logits, boxreg_deltas, centerness_logits], each a dict keyed by level:
            class_logits[level] (B, H*W, num_classes), boxreg_deltas[level] (B, H*W, 4),
            centerness_logits[level] (B, H*W, 1); locations flattened row-major.
        """
        class_logits, boxreg_deltas, centerness_logits = {}, {}, {}
        ### BEGIN SOLUTION
        ### HINT: per level: stem_cls then pred_cls; stem_box then pred_box and pred_ctr (both on the box branch); _flatten_level turns (B, K, H, W) into (B, H*W, K).
        for level, feat in feats_per_fpn_level.items():
            cls_feat = self.stem_cls(feat)
            box_feat = self.stem_box(feat)
            class_logits[level] = _flatten_level(self.pred_cls(cls_feat))
            boxreg_deltas[level] = _flatten_level(self.pred_box(box_feat))
            centerness_logits[level] = _flatten_level(self.pred_ctr(box_feat))
        ### END SOLUTION
        return [class_logits, boxreg_deltas, centerness_logits]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """Sigmoid focal loss (Lin et al., 2017), elementwise.

        p = sigmoid(x),  p_t = p if t = 1 else 1 - p,  alpha_t = alpha if t = 1 else 1 - alpha
        FL = -alpha_t (1 - p_t)^gamma log(p_t)

    Written from the formula with a stable log-sigmoid: the binary cross-entropy
    max(x, 0) - x t + log(1 + e^-|x|), which is -log(p_t) for t in {0, 1}, stands for -log(p_t)
    (for soft targets t in [0, 1] it is the BCE, as in torchvision). alpha < 0 disables the
    alpha weighting.

    Args:
        inputs: logits, any shape. targets: same shape, in [0, 1].
        reduction: "none" | "sum" | "mean".
    """
    ### BEGIN SOLUTION
    ### HINT: the formula above, elementwise; compute -log(p_t) with the stable form, then apply `reduction`.
    p = torch.sigmoid(inputs)
    ce = inputs.clamp(min=0) - inputs * targets + torch.log1p(torch.exp(-inputs.abs()))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    ### END SOLUTION
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return loss


@torch.no_grad()
def fcos_match_locations_to_gt(locations_per_fpn_level, strides_per_fpn_level, gt_boxes):
    """Assign each FPN location to at most one GT box (FCOS target assignment), for one image
    or for a batch of images at once.

    A location (x, y) of a level with stride s may match a GT box when
      1. it lies strictly inside the box: l, t, r, b > 0 with l = x - x1, t = y - y1,
         r = x2 - x, b = y2 - y;
      2. m = max(l, t, r, b) is in the level's size range  4s < m <= 8s, with the lower bound of
         the finest level set to 0 and the upper bound of the coarsest level set to infinity
         (p3: (0, 64], p4: (64, 128], p5: (128, inf) for strides 8/16/32). Half-open, so every
         distance belongs to exactly one level; the paper writes closed ranges
         (m_{i-1} <= m <= m_i), which give a distance of exactly 64 or 128 to two levels.
    Among several candidate boxes, the one with the smallest area wins; equal areas go to the
    lower GT index. Rows of gt_boxes with class -1 (padding) never match.

    Args:
        locations_per_fpn_level: {level: (L, 2)} (x, y) centres in image pixels.
        strides_per_fpn_level: {level: int stride}.
        gt_boxes: (N, 5) rows (x1, y1, x2, y2, class) of one image, padded with -1; or
            (B, N, 5) for B images (the same rows per image as B separate calls).
    Returns:
        {level: (L, 5)} (or (B, L, 5)) the matched GT row per location; background locations
        are all -1.
    """
    matched_gt_boxes = {}
    ### BEGIN SOLUTION
    ### HINT: per level: which GT boxes contain each location (rule 1) and fit the level's size range (rule 2); of those, the smallest area. Index the GT columns as gt_boxes[..., k] so that a leading batch dimension works too.
    # Written without boolean indexing or data-dependent shapes, so that on a GPU the whole
    # batch is matched with a few kernels per level and no waits for the device.
    smallest, largest = min(strides_per_fpn_level.values()), max(strides_per_fpn_level.values())
    x1, y1, x2, y2, cls = (gt_boxes[..., None, :, k] for k in range(5))  # each (..., 1, N)
    valid = cls != -1
    areas = (x2 - x1) * (y2 - y1)
    for level, centers in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        x, y = centers[:, 0:1], centers[:, 1:2]  # (L, 1)
        ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # (..., L, N, 4)
        lower = 0.0 if stride == smallest else stride * 4.0
        upper = math.inf if stride == largest else stride * 8.0
        max_dist = ltrb.amax(dim=-1)
        match = valid & (ltrb.amin(dim=-1) > 0) & (max_dist > lower) & (max_dist <= upper)  # (..., L, N)
        out = gt_boxes.new_full((*gt_boxes.shape[:-2], centers.shape[0], 5), -1.0)
        if gt_boxes.shape[-2] > 0:
            cost = torch.where(match, areas, math.inf)
            best = cost.argmin(dim=-1, keepdim=True)  # (..., L, 1); first minimum: ties go to the lower index
            rows = torch.gather(gt_boxes, -2, best.expand(*best.shape[:-1], 5))  # (..., L, 5)
            out = torch.where(match.any(dim=-1, keepdim=True), rows, out)
        matched_gt_boxes[level] = out
    ### END SOLUTION
    return matched_gt_boxes


def _is_background(gt_boxes):
    """(..., >=4) -> (...) bool: rows whose four box coordinates are all -1."""
    return (gt_boxes[..., :4] == -1).all(dim=-1)


def fcos_get_deltas_from_locations(locations, gt_boxes, stride):
    """LTRB distances from each location to the edges of its GT box, divided by the stride.

    Args:
        locations: (N, 2) (x, y) centres. gt_boxes: (N, 4 or 5) matched boxes (background: -1),
            or (B, N, 4 or 5) for B images (locations broadcast).
        stride: the FPN level's stride.
    Returns:
        deltas (N, 4) (or (B, N, 4)) = (x - x1, y - y1, x2 - x, y2 - y) / stride; background
        rows are -1.
    """
    ### BEGIN SOLUTION
    ### HINT: distances from (x, y) to the four edges, divided by the stride; background rows (-1) stay -1. Index columns as [..., k] (and stack on dim=-1) so that a leading batch dimension works too.
    x, y = locations[..., 0], locations[..., 1]
    deltas = torch.stack([x - gt_boxes[..., 0], y - gt_boxes[..., 1],
                          gt_boxes[..., 2] - x, gt_boxes[..., 3] - y], dim=-1) / stride
    deltas = torch.where(_is_background(gt_boxes)[..., None], -1.0, deltas)
    ### END SOLUTION
    return deltas


def fcos_apply_deltas_to_locations(deltas, locations, stride):
    """Inverse of `fcos_get_deltas_from_locations`: boxes (N, 4) xyxy from LTRB deltas (N, 4).

    Negative deltas are clamped to 0 first (the box then collapses onto the location on that
    side), so any prediction decodes to a valid box with x1 <= x <= x2 and y1 <= y <= y2.
    """
    ### BEGIN SOLUTION
    ### HINT: clamp the deltas at 0, scale by the stride, subtract from / add to (x, y).
    d = deltas.clamp(min=0) * stride
    x, y = locations[:, 0], locations[:, 1]
    output_boxes = torch.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], dim=1)
    ### END SOLUTION
    return output_boxes


def fcos_make_centerness_targets(deltas):
    """Centerness sqrt(min(l, r) min(t, b) / (max(l, r) max(t, b))) of LTRB deltas (N, 4).

    Returns (N,); background rows (deltas all -1) get -1. Leading batch dimensions are kept:
    (B, N, 4) -> (B, N).
    """
    ### BEGIN SOLUTION
    ### HINT: the formula in the docstring per row; guard the division; background rows get -1. Unbind and reduce over dim=-1 so that a leading batch dimension works too.
    l, t, r, b = deltas.unbind(dim=-1)
    ratio = (torch.minimum(l, r) * torch.minimum(t, b)) / (torch.maximum(l, r) * torch.maximum(t, b)).clamp(min=1e-12)
    centerness = torch.where((deltas == -1).all(dim=-1), -1.0, torch.sqrt(ratio.clamp(min=0)))
    ### END SOLUTION
    return centerness


class FCOS(nn.Module):
    """FCOS detector: backbone + FPN (`DetectorBackboneWithFPN`) and `FCOSPredictionNetwork`.

    Args:
        num_classes: 20 for VOC. fpn_channels: FPN width. stem_channels: list, head stem widths.
        backbone, pretrained, freeze_backbone: passed to `DetectorBackboneWithFPN`.
        head_norm: None (course) or "group" (GroupNorm in the head stems, as the paper).

    Training losses (dict, each summed over locations and divided by B times an exponential
    moving average of the foreground count per image, EMA 0.9 / 0.1 starting at 150, as the course):
      loss_cls: sigmoid focal loss (alpha 0.25, gamma 2) against one-hot class targets
                (all zeros at background locations);
      loss_box: 0.25 * L1 between predicted and GT LTRB deltas (divided by stride), foreground only
                (the course's choice; GIoU is the paper's);
      loss_ctr: binary cross-entropy of the centerness logit vs the centerness target, foreground only.
    """

    # Inference caps (the paper's values): candidates per level before NMS, detections after NMS.
    pre_nms_topk = 1000
    max_detections_per_image = 100

    def __init__(self, num_classes, fpn_channels, stem_channels, backbone="efficientnet_lite0",
                 pretrained=True, freeze_backbone=False, head_norm=None):
        super().__init__()
        self.num_classes = num_classes
        ### BEGIN SOLUTION
        ### HINT: self.backbone = DetectorBackboneWithFPN(fpn_channels, backbone=..., pretrained=..., freeze_backbone=...); self.pred_net = FCOSPredictionNetwork(num_classes, fpn_channels, stem_channels, norm=head_norm) (the rest of the class and the tests use these two names).
        self.backbone = DetectorBackboneWithFPN(fpn_channels, backbone=backbone, pretrained=pretrained,
                                                freeze_backbone=freeze_backbone)
        self.pred_net = FCOSPredictionNetwork(num_classes, fpn_channels, stem_channels, norm=head_norm)
        ### END SOLUTION
        # Running mean of foreground locations per image (a buffer, so checkpoints keep it).
        self.register_buffer("_normalizer", torch.tensor(150.0))

    def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
        """
        Args:
            images: (B, 3, H, W) ImageNet-normalized.
            gt_boxes: (B, N, 5) padded with -1 (training), or None (inference, B == 1).
        Returns:
            with gt_boxes: {"loss_cls", "loss_box", "loss_ctr"} scalars;
            without: `inference(...)` -> (pred_boxes (M, 4), pred_classes (M,), pred_scores (M,)).
        """
        feats_per_fpn_level = self.backbone(images)
        return self.forward_fpn(feats_per_fpn_level, images, gt_boxes, test_score_thresh, test_nms_thresh)

    def forward_fpn(self, feats_per_fpn_level, images, gt_boxes=None, test_score_thresh=None,
                    test_nms_thresh=None):
        """`forward` from FPN features. `images` is only used for its shape (B, 3, H, W): a
        "meta" tensor works, which lets training run on precomputed backbone features."""
        ### BEGIN SOLUTION
        ### HINT: pred_net -> per-level predictions; self.fpn_locations (their coordinates); no gt_boxes: return self.inference(..., test_score_thresh, test_nms_thresh). Training: fcos_match_locations_to_gt and fcos_get_deltas_from_locations on the whole batch (or per image), concatenate levels (_cat_across_fpn_levels), in training mode only, update the buffer self._normalizer in place to 0.9 times itself plus 0.1 times the foreground locations per image of this batch, then elementwise loss_cls (sigmoid_focal_loss on one-hot targets without background), loss_box (0.25 * L1 on foreground) and loss_ctr (BCE with fcos_make_centerness_targets, foreground only); the code below sums and normalizes them.
        pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits = self.pred_net(feats_per_fpn_level)
        strides = self.backbone.fpn_strides
        locations_per_fpn_level = self.fpn_locations(feats_per_fpn_level)
        cdtype = next(iter(locations_per_fpn_level.values())).dtype  # targets and losses too
        if gt_boxes is None:
            return self.inference(images, locations_per_fpn_level, pred_cls_logits, pred_boxreg_deltas,
                                  pred_ctr_logits, test_score_thresh, test_nms_thresh)

        gt_boxes = gt_boxes.to(cdtype)
        # The whole batch at once: (B, L, 5) and (B, L, 4) over all levels, in the same level
        # order as the predictions.
        matched = fcos_match_locations_to_gt(locations_per_fpn_level, strides, gt_boxes)
        matched_deltas = {level: fcos_get_deltas_from_locations(locations_per_fpn_level[level], boxes,
                                                                strides[level])
                          for level, boxes in matched.items()}
        matched_boxes = self._cat_across_fpn_levels(matched)
        matched_deltas = self._cat_across_fpn_levels(matched_deltas)
        pred_cls = self._cat_across_fpn_levels(pred_cls_logits).to(cdtype)
        pred_box = self._cat_across_fpn_levels(pred_boxreg_deltas).to(cdtype)
        pred_ctr = self._cat_across_fpn_levels(pred_ctr_logits).to(cdtype).squeeze(-1)

        num_images = gt_boxes.shape[0]
        fg = matched_boxes[:, :, 4] != -1  # (B, L)
        if self.training:  # a loss computed in eval mode (validation) leaves the normalizer alone
            self._normalizer.mul_(0.9).add_(0.1 * fg.sum() / num_images)  # on the device: no sync

        gt_classes = matched_boxes[:, :, 4].long()
        # One-hot classes (background: all zeros) by comparison, which needs no host read
        # (F.one_hot reads its input's range back on the CPU). A class id out of range would
        # silently become background here, so it is checked (on a GPU, by the device).
        torch._assert_async(((gt_classes >= -1) & (gt_classes < self.num_classes)).all(),
                            f"GT class ids must be -1 (padding) or 0..{self.num_classes - 1}")
        classes = torch.arange(self.num_classes, device=gt_classes.device)
        cls_targets = (gt_classes[:, :, None] == classes).to(pred_cls.dtype)
        loss_cls = sigmoid_focal_loss(pred_cls, cls_targets)

        fg_f = fg.to(pred_box.dtype)
        loss_box = 0.25 * (pred_box - matched_deltas).abs() * fg_f[:, :, None]

        ctr_targets = fcos_make_centerness_targets(matched_deltas.reshape(-1, 4)).reshape(fg.shape)
        loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr, ctr_targets.clamp(min=0),
                                                      reduction="none") * fg_f
        ### END SOLUTION
        normalizer = self._normalizer * num_images
        return {"loss_cls": loss_cls.sum() / normalizer, "loss_box": loss_box.sum() / normalizer,
                "loss_ctr": loss_ctr.sum() / normalizer}

    def fpn_locations(self, feats_per_fpn_level):
        """{level: (H_l * W_l, 2)} (x, y) image coordinates of the FPN locations, ordered as the
        flattened predictions (`get_fpn_location_coords`), in at least float32 (bf16 features
        under autocast would round pixel coordinates; a float64 model gets float64)."""
        any_feat = next(iter(feats_per_fpn_level.values()))
        shapes = {level: feat.shape for level, feat in feats_per_fpn_level.items()}
        return get_fpn_location_coords(shapes, self.backbone.fpn_strides,
                                       dtype=torch.promote_types(any_feat.dtype, torch.float32),
                                       device=any_feat.device)

    @torch.no_grad()
    def detect_batch(self, images, test_score_thresh=None, test_nms_thresh=None):
        """Eval-mode detections for a batch of any size: backbone, FPN and head run on the whole
        batch, then `inference` on each image's predictions.

        Args:
            images: (B, 3, H, W) ImageNet-normalized.
        Returns:
            a list of B tuples (pred_boxes (M, 4), pred_classes (M,), pred_scores (M,)), as
            `forward` gives for one image.
        """
        feats_per_fpn_level = self.backbone(images)
        predictions = self.pred_net(feats_per_fpn_level)  # (cls, box, ctr), each {level: (B, L, .)}
        locations_per_fpn_level = self.fpn_locations(feats_per_fpn_level)
        return [self.inference(images[b:b + 1], locations_per_fpn_level,
                               *({level: p[b:b + 1] for level, p in pred.items()} for pred in predictions),
                               test_score_thresh, test_nms_thresh)
                for b in range(images.shape[0])]

    @staticmethod
    def _cat_across_fpn_levels(dict_with_fpn_levels, dim=1):
        """Concatenate the per-level tensors of a dict along `dim` (levels in insertion order)."""
        return torch.cat(list(dict_with_fpn_levels.values()), dim=dim)

    def inference(self, images, locations_per_fpn_level, pred_cls_logits, pred_boxreg_deltas,
                  pred_ctr_logits, test_score_thresh=0.3, test_nms_thresh=0.5):
        """Detections for ONE image (batch index 0). A threshold of None is its default (as
        `FasterRCNN.inference` takes None), so `forward` and `detect_batch` pass theirs through.

        Per level: score = sqrt(sigmoid(cls) * sigmoid(ctr)) of the best class at each location,
        keep scores > test_score_thresh (at most `pre_nms_topk` per level), decode the boxes,
        clip them to the image; then class-specific NMS over all levels and keep the
        `max_detections_per_image` best.

        Returns:
            pred_boxes (M, 4) xyxy in image pixels, pred_classes (M,) long, pred_scores (M,).
        """
        test_score_thresh = 0.3 if test_score_thresh is None else test_score_thresh
        test_nms_thresh = 0.5 if test_nms_thresh is None else test_nms_thresh
        height, width = images.shape[-2:]
        strides = self.backbone.fpn_strides
        ### BEGIN SOLUTION
        ### HINT: per level: scores, threshold, top-k, decode with fcos_apply_deltas_to_locations, clip; then class_spec_nms over all levels.
        boxes_all, classes_all, scores_all = [], [], []
        for level, locations in locations_per_fpn_level.items():
            cls_logits = pred_cls_logits[level][0].to(locations.dtype)  # (L, C)
            deltas = pred_boxreg_deltas[level][0].to(locations.dtype)  # (L, 4)
            ctr_logits = pred_ctr_logits[level][0].to(locations.dtype)  # (L, 1)
            scores = torch.sqrt(cls_logits.sigmoid() * ctr_logits.sigmoid())
            scores, classes = scores.max(dim=1)
            keep = torch.nonzero(scores > test_score_thresh).squeeze(1)
            if keep.numel() > self.pre_nms_topk:
                keep = keep[scores[keep].topk(self.pre_nms_topk).indices]
            boxes = fcos_apply_deltas_to_locations(deltas[keep], locations[keep], strides[level])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height)
            boxes_all.append(boxes)
            classes_all.append(classes[keep])
            scores_all.append(scores[keep])
        pred_boxes = torch.cat(boxes_all)
        pred_classes = torch.cat(classes_all)
        pred_scores = torch.cat(scores_all)
        keep = class_spec_nms(pred_boxes, pred_scores, pred_classes, iou_threshold=test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        pred_boxes, pred_classes, pred_scores = pred_boxes[keep], pred_classes[keep], pred_scores[keep]
        ### END SOLUTION
        return pred_boxes, pred_classes, pred_scores
