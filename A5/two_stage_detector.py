"""A5: Faster R-CNN (two-stage detector) with an FPN backbone, written from scratch (no torchvision).

Course API (names and signatures kept): `hello_two_stage_detector`, `RPNPredictionNetwork`,
`generate_fpn_anchors`, `iou`, `rcnn_match_anchors_to_gt`, `rcnn_get_deltas_from_anchors`,
`rcnn_apply_deltas_to_anchors`, `sample_rpn_training`, `mix_gt_with_proposals`, `RPN`,
`FasterRCNN` (with `forward` and `inference`). Added: `roi_align` (from scratch, torchvision's
`roi_align` semantics), `assign_fpn_levels`.

Conventions: boxes are (x1, y1, x2, y2) in input-image pixels; GT boxes are (B, M, 5) rows
(x1, y1, x2, y2, class) padded with -1; per-level predictions are flattened row-major
(location k = i * W + j, as `common.get_fpn_location_coords`) with the A anchors of a location
consecutive: flat index = k * A + a.

Differences from the reference solutions (on purpose):
* anchors: aspect ratio = height / width (area (stride_scale * stride)^2), built from row-major
  (x, y) locations; the reference swapped width and height;
* `iou` is vectorized (the reference used a Python double loop);
* matching also makes each GT box's highest-IoU anchor(s) foreground (the Faster R-CNN paper's
  second rule, Detectron's "allow low-quality matches"), so small or odd-shaped boxes get anchors;
* RPN objectness targets are 1 / 0 (the reference used class ids and logged negative BCE losses),
  and `post_nms_topk` is applied;
* the second stage pools the proposals MIXED WITH the GT boxes during training (the reference
  pooled the raw proposals), each box from the FPN level chosen by its size
  (k = floor(5 + log2(sqrt(area) / 224)) clamped to 3..5, the rule of the course's
  `mix_gt_with_proposals`; the FPN paper's k0 is 4, for images of about 800 pixels), with a
  from-scratch `roi_align`. On the 224-pixel crops boxes under 112 pixels (square root of the
  area) pool from p3, those from 112 to 224 from p4, and only boxes as large as the image from
  p5, so p5 serves the RPN almost alone;
* the classifier stem has ReLUs, and an optional class-specific box regression (on by default;
  `box_regression=False` gives the course's classification-only second stage);
* inference scores every (proposal, class) pair above the threshold (as torchvision's ROI heads)
  instead of only the best class per proposal, then `common.class_spec_nms`.

Beyond the course, for GPUs: `iou`, `rcnn_match_anchors_to_gt` and `rcnn_apply_deltas_to_anchors`
take leading batch dimensions, the RPN matches all images' anchors at once, and on an
accelerator its proposals' NMS runs for all images of a level at once on the device
(`common.nms_masks`; the CPU keeps `nms` per image, faster there). Same results either way.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

import common
from common import box_iou, class_spec_nms, get_fpn_location_coords, nms, nms_masks

# dw / dh are clamped at this value before exp (Detectron's log(1000 / 16)).
BOX_SCALE_CLAMP = math.log(1000.0 / 16)
# Delta weights of the second stage's box regression (as Detectron / torchvision ROI heads).
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def hello_two_stage_detector():
    print("Hello from two_stage_detector.py!")


class RPNPredictionNetwork(nn.Module):
    """RPN head: a shared conv stem on every FPN level, then objectness and box-delta convs.

    Args:
        in_channels: channels of the FPN features.
        stem_channels: list of output channels of the 3x3 conv + ReLU stem layers.
        num_anchors: anchors per location (A).
    `forward(feats_per_fpn_level)` returns `[object_logits, boxreg_deltas]`: dicts keyed by
    level with (B, H*W*A) and (B, H*W*A, 4) tensors, flattened row-major over locations and
    anchor-minor (flat index = (i * W + j) * A + a), matching `generate_fpn_anchors`.
    """

    def __init__(self, in_channels: int, stem_channels, num_anchors: int = 3):
        super().__init__()
        self.num_anchors = num_anchors
        stem_rpn = []
        ### BEGIN SOLUTION
        ### HINT: 3x3 convs (padding 1) + ReLU for each entry of stem_channels; init N(0, 0.01), bias 0.
        prev = in_channels
        for ch in stem_channels:
            conv = nn.Conv2d(prev, ch, 3, padding=1)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            stem_rpn += [conv, nn.ReLU()]
            prev = ch
        ### END SOLUTION
        self.stem_rpn = nn.Sequential(*stem_rpn)
        self.pred_obj = None
        self.pred_box = None
        ### BEGIN SOLUTION
        ### HINT: 1x1 convs: objectness (num_anchors channels) and box deltas (4 * num_anchors channels).
        self.pred_obj = nn.Conv2d(prev, num_anchors, 1)
        self.pred_box = nn.Conv2d(prev, 4 * num_anchors, 1)
        for conv in (self.pred_obj, self.pred_box):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        ### END SOLUTION

    def forward(self, feats_per_fpn_level):
        object_logits = {}
        boxreg_deltas = {}
        ### BEGIN SOLUTION
        ### HINT: (B, A, H, W) -> permute(0, 2, 3, 1) -> (B, H*W*A); (B, 4A, H, W) -> view (B, A, 4, H, W) -> permute to (B, H, W, A, 4) -> (B, H*W*A, 4).
        A = self.num_anchors
        for level, feat in feats_per_fpn_level.items():
            B, _, H, W = feat.shape
            h = self.stem_rpn(feat)
            object_logits[level] = self.pred_obj(h).permute(0, 2, 3, 1).reshape(B, H * W * A)
            box = self.pred_box(h).view(B, A, 4, H, W).permute(0, 3, 4, 1, 2)
            boxreg_deltas[level] = box.reshape(B, H * W * A, 4)
        ### END SOLUTION
        return [object_logits, boxreg_deltas]


@torch.no_grad()
def generate_fpn_anchors(locations_per_fpn_level, strides_per_fpn_level, stride_scale: int,
                         aspect_ratios=[0.5, 1.0, 2.0]):
    """Anchor boxes centred at every FPN location.

    Each anchor has area (stride_scale * stride)^2 and aspect ratio = height / width
    (so width = sqrt(area / ratio), height = sqrt(area * ratio)).

    Args:
        locations_per_fpn_level: {"p3": (H*W, 2) (x, y) centres, ...} from get_fpn_location_coords.
        strides_per_fpn_level: {"p3": 8, ...}.
        stride_scale: anchor side = stride_scale * stride for aspect ratio 1.
        aspect_ratios: A ratios (height / width).
    Returns:
        {"p3": (H*W*A, 4) anchors (x1, y1, x2, y2), ...}; anchor k * A + a sits at location k
        with aspect_ratios[a].
    """
    anchors_per_fpn_level = {level: None for level in locations_per_fpn_level}
    for level, locations in locations_per_fpn_level.items():
        stride = strides_per_fpn_level[level]
        ### BEGIN SOLUTION
        ### HINT: for each ratio r: w = sqrt(area / r), h = area / w; anchors (x - w/2, y - h/2, x + w/2, y + h/2); stack to (HW, A, 4) and reshape.
        area = float(stride_scale * stride) ** 2
        ratios = torch.as_tensor(aspect_ratios, dtype=locations.dtype, device=locations.device)
        widths = torch.sqrt(area / ratios)  # (A,)
        heights = area / widths
        half = torch.stack([widths, heights], dim=1) / 2  # (A, 2)
        centres = locations[:, None, :]  # (HW, 1, 2)
        anchors = torch.cat([centres - half[None], centres + half[None]], dim=2)  # (HW, A, 4)
        anchors_per_fpn_level[level] = anchors.reshape(-1, 4)
        ### END SOLUTION
    return anchors_per_fpn_level


def iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU, vectorized: boxes1 (M, 4), boxes2 (N, 4) xyxy -> (M, N). Leading batch
    dimensions broadcast: (..., M, 4) and (..., N, 4) -> (..., M, N)."""
    iou = None
    ### BEGIN SOLUTION
    ### HINT: intersection corners by broadcasting (M, 1, 2) against (1, N, 2) (or call common.box_iou); with boxes[..., k] leading batch dimensions work too.
    iou = box_iou(boxes1, boxes2)
    ### END SOLUTION
    return iou


@torch.no_grad()
def rcnn_match_anchors_to_gt(anchor_boxes: torch.Tensor, gt_boxes: torch.Tensor, iou_thresholds,
                             allow_low_quality_matches: bool = True) -> torch.Tensor:
    """Match anchors (or proposals) to GT boxes by IoU.

    Rules: each anchor takes the GT with the highest IoU; IoU <= iou_thresholds[0] -> background
    (the whole row -1); iou_thresholds[0] < IoU < iou_thresholds[1] -> neutral (the row -1e8);
    IoU >= iou_thresholds[1] -> foreground. With `allow_low_quality_matches` (the paper's second
    rule) the anchor(s) with the highest IoU for each GT box (ties included, IoU > 0) are
    foreground too, matched to their own highest-IoU GT.

    Args:
        anchor_boxes: (N, 4); gt_boxes: (M, 5) padded with -1 rows, or (B, M, 5) for B images
        with the same anchors (the same rows per image as B separate calls). GT boxes without
        area (x2 <= x1 or y2 <= y1) are ignored like padding: their IoU with themselves is 0 / 0.
    Returns:
        matched_gt_boxes: (N, 5) (or (B, N, 5)) (x1, y1, x2, y2, class), -1 rows (background),
        -1e8 rows (neutral).
    """
    # Padding and boxes without area take no part: their IoU column is set to -1, below any real
    # IoU (no boolean indexing, so on a GPU nothing waits for the device).
    valid = (gt_boxes[..., 4] != -1) & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
    if gt_boxes.shape[-2] == 0:
        return torch.full((*gt_boxes.shape[:-2], anchor_boxes.shape[0], 5), -1.0, dtype=anchor_boxes.dtype,
                          device=anchor_boxes.device)
    matched_gt_boxes = None
    ### BEGIN SOLUTION
    ### HINT: iou matrix (N, M) (masked where not valid); max over GT per anchor; set rows by the thresholds with torch.where. Index GT columns as gt_boxes[..., k] so that a leading batch dimension works too.
    match_matrix = torch.where(valid[..., None, :], iou(anchor_boxes, gt_boxes[..., :4]), -1.0)  # (..., N, M)
    quality, idx = match_matrix.max(dim=-1)  # (..., N); ties: the first maximum
    matched_gt_boxes = torch.gather(gt_boxes, -2, idx[..., None].expand(*idx.shape, 5))
    background = quality <= iou_thresholds[0]
    neutral = (quality > iou_thresholds[0]) & (quality < iou_thresholds[1])
    if allow_low_quality_matches:
        best_per_gt = match_matrix.amax(dim=-2, keepdim=True)  # (..., 1, M)
        is_best = ((match_matrix == best_per_gt) & (best_per_gt > 0)).any(dim=-1)
        background &= ~is_best
        neutral &= ~is_best
    matched_gt_boxes = torch.where(background[..., None], -1.0,
                                   torch.where(neutral[..., None], -1e8, matched_gt_boxes))
    ### END SOLUTION
    return matched_gt_boxes


def rcnn_get_deltas_from_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """R-CNN box deltas of GT boxes relative to anchors.

    dx = (gx - ax) / aw, dy = (gy - ay) / ah, dw = log(gw / aw), dh = log(gh / ah) with centres
    (gx, gy), (ax, ay) and sizes (gw, gh), (aw, ah).

    Args:
        anchors: (N, 4); gt_boxes: (N, 4) or (N, 5) matched boxes; background rows (-1) get
        deltas -1e8 (a marker, never used in the loss).
    Returns:
        deltas: (N, 4).
    """
    deltas = None
    ### BEGIN SOLUTION
    ### HINT: centres and sizes of both; background rows are those whose coordinates are all -1.
    boxes = gt_boxes[:, :4]
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = boxes[:, 0] + 0.5 * gw, boxes[:, 1] + 0.5 * gh
    background = (boxes == -1).all(dim=1)
    gw, gh = gw.clamp(min=1e-6), gh.clamp(min=1e-6)
    deltas = torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=1)
    deltas = torch.where(background[:, None], torch.full_like(deltas, -1e8), deltas)
    ### END SOLUTION
    return deltas


def rcnn_apply_deltas_to_anchors(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of `rcnn_get_deltas_from_anchors`: deltas (N, 4), anchors (N, 4) -> boxes (N, 4)
    (leading batch dimensions work too: (..., N, 4)).

    dw and dh are clamped at log(1000 / 16) before exp so that a wild prediction cannot overflow.
    """
    output_boxes = None
    ### BEGIN SOLUTION
    ### HINT: clamp deltas[..., 2:] at BOX_SCALE_CLAMP; centre = anchor centre + d * anchor size; size = anchor size * exp(d).
    dw = deltas[..., 2].clamp(max=BOX_SCALE_CLAMP)
    dh = deltas[..., 3].clamp(max=BOX_SCALE_CLAMP)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    cx, cy = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
    w, h = aw * torch.exp(dw), ah * torch.exp(dh)
    output_boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    ### END SOLUTION
    return output_boxes


@torch.no_grad()
def sample_rpn_training(gt_boxes: torch.Tensor, num_samples: int, fg_fraction: float):
    """Sample foreground and background anchors for a training batch.

    Args:
        gt_boxes: (N, 5) matched GT per anchor (class >= 0 foreground, -1 background, -1e8 neutral).
        num_samples: total number of anchors to sample.
        fg_fraction: at most this fraction is foreground; background fills the rest (as far as
        there is enough of it).
    Returns:
        fg_idx, bg_idx: 1-D LongTensors of anchor indices (random, without repetition).
    """
    foreground = (gt_boxes[:, 4] >= 0).nonzero().squeeze(1)
    background = (gt_boxes[:, 4] == -1).nonzero().squeeze(1)
    fg_idx, bg_idx = None, None
    ### BEGIN SOLUTION
    ### HINT: num_fg = min(int(num_samples * fg_fraction), #foreground); num_bg = num_samples - num_fg; random permutations.
    num_fg = min(int(num_samples * fg_fraction), foreground.numel())
    num_bg = min(num_samples - num_fg, background.numel())
    fg_idx = foreground[torch.randperm(foreground.numel(), device=foreground.device)[:num_fg]]
    bg_idx = background[torch.randperm(background.numel(), device=background.device)[:num_bg]]
    ### END SOLUTION
    return fg_idx, bg_idx


def assign_fpn_levels(boxes: torch.Tensor, k0: int = 5, canonical_size: float = 224.0,
                      min_level: int = 3, max_level: int = 5) -> torch.Tensor:
    """FPN level of each box: floor(k0 + log2(sqrt(area) / canonical_size)) clamped to [min, max].

    With k0 = 5 and canonical size 224, sqrt(area) < 112 goes to p3 (56-112 gives level 3, smaller
    boxes are clamped up to it), 112 to 224 to p4, and 224 or more (a box as large as a 224-pixel
    image) to p5.
    boxes: (N, 4) -> (N,) long levels.
    """
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    level = torch.floor(k0 + torch.log2(torch.sqrt(area) / canonical_size + 1e-8))
    return level.clamp(min_level, max_level).to(torch.long)


@torch.no_grad()
def mix_gt_with_proposals(proposals_per_fpn_level, gt_boxes: torch.Tensor):
    """Add the GT boxes of each image to its proposals (at the FPN level chosen by their size).

    Args:
        proposals_per_fpn_level: {"p3": [ (N_b, 4) per image ], ...}.
        gt_boxes: (B, M, 5) padded with -1.
    Returns:
        the same structure (new lists) where image b's GT boxes are appended to the level
        `assign_fpn_levels` gives them.

    The level a GT box is filed under is the course's API. `FasterRCNN.forward` then merges each
    image's levels and `roi_features` assigns every box (proposal or GT) its level again by the
    same rule, so where a box is filed does not change which map it is pooled from.
    """
    mixed = {level: list(props) for level, props in proposals_per_fpn_level.items()}
    for b, gtb in enumerate(gt_boxes):
        gtb = gtb[gtb[:, 4] != -1]
        if len(gtb) == 0:
            continue
        levels = assign_fpn_levels(gtb[:, :4])
        for level in mixed:
            subset = gtb[levels == int(level[1:]), :4]
            if len(subset):
                mixed[level][b] = torch.cat([mixed[level][b], subset.to(mixed[level][b].dtype)], dim=0)
    return mixed


def _interp_weights_1d(coords, size, count):
    """Bilinear weights of sample coordinates along one axis, torchvision's roi_align rules.

    coords: (K, P, G) sample positions (feature-pixel units, already shifted by -0.5 when
    aligned); count: (K,) number of valid samples per bin along this axis (samples g >= count
    are ignored). Returns (K, P, size): the mean over valid samples of the 1-D interpolation
    weights; a sample outside [-1, size] gets weight 0 (torchvision: zero contribution).
    """
    K, P, G = coords.shape
    valid = (coords >= -1.0) & (coords <= size)
    valid &= torch.arange(G, device=coords.device)[None, None, :] < count[:, None, None]
    y = coords.clamp(min=0)
    low = torch.floor(y).long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    y = torch.where(at_edge, low.to(y.dtype), y)
    frac = y - low.to(y.dtype)
    grid = torch.arange(size, device=coords.device)
    w = (grid == low[..., None]).to(y.dtype) * (1 - frac)[..., None] \
        + (grid == high[..., None]).to(y.dtype) * frac[..., None]  # (K, P, G, size)
    w = w * valid[..., None].to(y.dtype)
    return w.sum(dim=2) / count.clamp(min=1).to(y.dtype)[:, None, None]


def roi_align(features: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """RoIAlign from scratch, with the semantics of torchvision.ops.roi_align.

    Each ROI is split into output_size bins; each bin averages a grid of sampling_ratio x
    sampling_ratio bilinearly interpolated points (sampling_ratio <= 0: ceil(roi size / bins)
    points per axis, per ROI). With aligned=True box corners are shifted by -0.5 pixel (pixel
    centres at integer + 0.5); with aligned=False ROIs are at least 1x1. Points outside
    [-1, size] contribute 0; points in [-1, 0] are clamped to the border.

    Because the sampling grid of a bin is a product of y and x positions, bilinear
    interpolation factorizes: out[k, c] = Wy[k] @ features[b_k, c] @ Wx[k]^T with per-ROI
    weight matrices Wy (PH, H) and Wx (PW, W) (averaged over the samples). Batched, no loops
    over ROIs or samples; differentiable with respect to the features.

    Args:
        features: (B, C, H, W).
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2) in image pixels, or a list of B
            tensors (K_b, 4).
        output_size: int or (PH, PW).
        spatial_scale: feature pixels per image pixel (1 / stride).
    Returns:
        (K, C, PH, PW).
    """
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b[:, :4]], dim=1)
                           for i, b in enumerate(boxes)], dim=0)
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    B, C, H, W = features.shape
    K = boxes.shape[0]
    if K == 0:
        return features.new_zeros((0, C, PH, PW))
    # Coordinates and weights in at least float32 (bf16/fp16 features under autocast would
    # round pixel coordinates); the products run in the features' dtype.
    cdtype = torch.promote_types(features.dtype, torch.float32)
    boxes = boxes.detach().to(cdtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / PH, roi_w / PW
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=features.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / PH).long()
        grid_w = torch.ceil(roi_w / PW).long()
    Gh, Gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def sample_coords(start, bin_size, grid, P, G):
        p = torch.arange(P, device=features.device, dtype=cdtype)
        g = torch.arange(G, device=features.device, dtype=cdtype)
        gsz = grid.clamp(min=1).to(cdtype)
        return (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
                + (g[None, None, :] + 0.5) * (bin_size / gsz)[:, None, None])  # (K, P, G)

    wy = _interp_weights_1d(sample_coords(y1, bin_h, grid_h, PH, Gh), H, grid_h).to(features.dtype)
    wx = _interp_weights_1d(sample_coords(x1, bin_w, grid_w, PW, Gw), W, grid_w).to(features.dtype)
    batch_idx = boxes[:, 0].long()
    order, pieces = [], []
    for b in torch.unique(batch_idx).tolist():  # loop over images only
        sel = (batch_idx == b).nonzero().squeeze(1)
        tmp = torch.einsum("kph,chw->kcpw", wy[sel], features[b])
        pieces.append(torch.einsum("kcpw,kqw->kcpq", tmp, wx[sel]))
        order.append(sel)
    return _unpermute(torch.cat(pieces), torch.cat(order))


def _unpermute(values, order):
    """Rows of `values` belong to positions `order` (a permutation): return them in position order."""
    return values[torch.argsort(order)]


class RPN(nn.Module):
    """Region Proposal Network: prediction head + anchors + matching + losses + proposals.

    `forward(feats_per_fpn_level, strides_per_fpn_level, gt_boxes=None)` returns a dict with
    "proposals" ({"p3": [ (N_b, 4) per image ], ...}, detached; left out with
    `with_proposals=False`, which skips their decoding, top-k and NMS) and, in training mode,
    "loss_rpn_obj" (BCE with 1/0 targets) and "loss_rpn_box" (L1 on foreground deltas), both
    summed over the sampled anchors and divided by batch_size_per_image * B.
    """

    def __init__(self, fpn_channels: int, stem_channels, batch_size_per_image: int,
                 anchor_stride_scale: int = 8, anchor_aspect_ratios=[0.5, 1.0, 2.0],
                 anchor_iou_thresholds=(0.3, 0.6), nms_thresh: float = 0.7,
                 pre_nms_topk: int = 400, post_nms_topk: int = 100, fg_fraction: float = 0.5,
                 min_size: float = 1e-3):
        super().__init__()
        self.pred_net = RPNPredictionNetwork(fpn_channels, stem_channels,
                                             num_anchors=len(anchor_aspect_ratios))
        self.batch_size_per_image = batch_size_per_image
        self.anchor_stride_scale = anchor_stride_scale
        self.anchor_aspect_ratios = anchor_aspect_ratios
        self.anchor_iou_thresholds = anchor_iou_thresholds
        self.nms_thresh = nms_thresh
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.fg_fraction = fg_fraction
        self.min_size = min_size

    def forward(self, feats_per_fpn_level, strides_per_fpn_level, gt_boxes=None, image_size=None,
                with_proposals=True):
        """image_size: (H, W) of the input images, the canvas proposals are clipped to; None:
        the p3 map's size times its stride (the same for inputs whose sides are multiples of 8).
        with_proposals=False: the losses only (training the RPN alone)."""
        num_images = feats_per_fpn_level["p3"].shape[0]
        pred_obj_logits, pred_boxreg_deltas = self.pred_net(feats_per_fpn_level)
        p3 = feats_per_fpn_level["p3"]
        shapes = {level: feat.shape for level, feat in feats_per_fpn_level.items()}
        # anchors in at least float32, also when the features are bf16 / fp16 (autocast)
        locations = get_fpn_location_coords(shapes, strides_per_fpn_level,
                                            dtype=torch.promote_types(p3.dtype, torch.float32),
                                            device=p3.device)
        anchors_per_fpn_level = generate_fpn_anchors(locations, strides_per_fpn_level,
                                                     self.anchor_stride_scale,
                                                     self.anchor_aspect_ratios)
        if image_size is None:
            image_size = (p3.shape[2] * strides_per_fpn_level["p3"], p3.shape[3] * strides_per_fpn_level["p3"])
        output_dict = {}
        if with_proposals:
            output_dict["proposals"] = self.predict_proposals(
                anchors_per_fpn_level, pred_obj_logits, pred_boxreg_deltas, image_size)
        if not self.training:
            return output_dict

        anchor_boxes = self._cat_across_fpn_levels(anchors_per_fpn_level, dim=0)  # (N, 4)
        obj_logits = self._cat_across_fpn_levels(pred_obj_logits)  # (B, N)
        box_deltas = self._cat_across_fpn_levels(pred_boxreg_deltas)  # (B, N, 4)
        loss_obj, loss_box = None, None
        ### BEGIN SOLUTION
        ### HINT: match every image's anchors to its GT (one call for the batch, or per image), sample batch_size_per_image anchors, BCE with targets 1 (fg) / 0 (bg), L1 on fg deltas.
        matched = rcnn_match_anchors_to_gt(anchor_boxes, gt_boxes, self.anchor_iou_thresholds)  # (B, N, 5)
        obj_pred, obj_tgt, box_pred, box_tgt = [], [], [], []
        for b in range(num_images):
            fg_idx, bg_idx = sample_rpn_training(matched[b], self.batch_size_per_image, self.fg_fraction)
            idx = torch.cat([fg_idx, bg_idx])
            obj_pred.append(obj_logits[b, idx])
            obj_tgt.append(torch.cat([torch.ones_like(fg_idx), torch.zeros_like(bg_idx)]).to(obj_logits.dtype))
            box_pred.append(box_deltas[b, fg_idx])
            box_tgt.append(rcnn_get_deltas_from_anchors(anchor_boxes[fg_idx], matched[b, fg_idx]))
        loss_obj = F.binary_cross_entropy_with_logits(torch.cat(obj_pred), torch.cat(obj_tgt), reduction="sum")
        loss_box = F.l1_loss(torch.cat(box_pred), torch.cat(box_tgt), reduction="sum")
        ### END SOLUTION
        total = self.batch_size_per_image * num_images
        output_dict["loss_rpn_obj"] = loss_obj / total
        output_dict["loss_rpn_box"] = loss_box / total
        return output_dict

    @torch.no_grad()
    def predict_proposals(self, anchors_per_fpn_level, pred_obj_logits, pred_boxreg_deltas, image_size):
        """Proposals per level and image: decode, clip to the image, keep the pre_nms_topk most
        object-like, NMS (nms_thresh), keep at most post_nms_topk.

        Returns {"p3": [ (N_b, 4) per image ], ...} with N_b <= post_nms_topk.
        """
        img_h, img_w = image_size
        proposals_all_levels = {level: [] for level in anchors_per_fpn_level}
        for level, anchors in anchors_per_fpn_level.items():
            ### BEGIN SOLUTION
            ### HINT: per image (or for the whole batch at once): topk objectness, rcnn_apply_deltas_to_anchors, clamp x to [0, W] and y to [0, H], drop empty boxes, nms, [:post_nms_topk].
            # The whole batch at once up to the NMS: (B, k) best anchors per image, best first.
            logits = pred_obj_logits[level]  # (B, A)
            k = min(self.pre_nms_topk, logits.shape[1])
            scores, idx = logits.topk(k, dim=1)
            deltas = torch.gather(pred_boxreg_deltas[level], 1, idx[..., None].expand(*idx.shape, 4))
            boxes = rcnn_apply_deltas_to_anchors(deltas, anchors[idx])  # (B, k, 4)
            boxes = torch.stack([boxes[..., 0].clamp(0, img_w), boxes[..., 1].clamp(0, img_h),
                                 boxes[..., 2].clamp(0, img_w), boxes[..., 3].clamp(0, img_h)], dim=-1)
            ok = ((boxes[..., 2] - boxes[..., 0]) > self.min_size) & ((boxes[..., 3] - boxes[..., 1]) > self.min_size)
            if boxes.device.type in common._NMS_ON_HOST_DEVICES:
                for b in range(boxes.shape[0]):
                    kept = boxes[b][ok[b]]
                    keep = nms(kept, scores[b][ok[b]], self.nms_thresh, max_keep=self.post_nms_topk)
                    proposals_all_levels[level].append(kept[keep[: self.post_nms_topk]])
            else:  # on an accelerator, every image's NMS at once on the device (the same boxes)
                keep = nms_masks(boxes, scores, self.nms_thresh, valid=ok, max_keep=self.post_nms_topk)
                proposals_all_levels[level].extend(boxes[keep].split(keep.sum(dim=1).tolist()))
            ### END SOLUTION
        return proposals_all_levels

    @staticmethod
    def _cat_across_fpn_levels(dict_with_fpn_levels, dim: int = 1):
        return torch.cat(list(dict_with_fpn_levels.values()), dim=dim)


class FasterRCNN(nn.Module):
    """Faster R-CNN: backbone + FPN, RPN, RoIAlign on the size-assigned FPN level, ROI head.

    ROI head: 3x3 conv + ReLU stem (`stem_channels`), flatten, Linear to num_classes + 1 logits
    (class 0 = background), and with `box_regression` a Linear to 4 * num_classes
    class-specific deltas (R-CNN parameterisation scaled by ROI_BOX_WEIGHTS).

    Training (`forward(images, gt_boxes)`): proposals + GT (`mix_gt_with_proposals`) are matched
    to GT at IoU 0.5 (> 0.5 foreground, <= 0.5 background), batch_size_per_image of them sampled
    with up to `fg_fraction` foreground; returns the RPN losses plus "loss_cls" (cross-entropy)
    and "loss_box" (L1 on foreground, own class). Eval with B == 1: `inference(...)` ->
    (boxes (M, 4), classes (M,), scores (M,)); with B > 1, a list of such tuples (also
    `detect_batch`).
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, stem_channels, num_classes: int,
                 batch_size_per_image: int, roi_size=(7, 7), box_regression: bool = True,
                 fg_fraction: float = 0.25, sampling_ratio: int = 2, detections_per_image: int = 100):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.num_classes = num_classes
        self.roi_size = roi_size
        self.batch_size_per_image = batch_size_per_image
        self.box_regression = box_regression
        self.fg_fraction = fg_fraction
        self.sampling_ratio = sampling_ratio
        self.detections_per_image = detections_per_image
        self.cls_pred = None
        self.box_pred = None
        ### BEGIN SOLUTION
        ### HINT: self.stem = nn.Sequential of 3x3 conv + ReLU per stem_channels entry (padding 1, from backbone.out_channels) then nn.Flatten(); self.cls_pred = nn.Linear(stem_channels[-1] * roi_h * roi_w, num_classes + 1); with box_regression, self.box_pred = nn.Linear(same inputs, 4 * num_classes) (the provided _detect calls self.stem, self.cls_pred and self.box_pred).
        layers, prev = [], backbone.out_channels
        for ch in stem_channels:
            layers += [nn.Conv2d(prev, ch, 3, padding=1), nn.ReLU()]
            prev = ch
        self.stem = nn.Sequential(*layers, nn.Flatten())
        in_features = prev * roi_size[0] * roi_size[1]
        self.cls_pred = nn.Linear(in_features, num_classes + 1)
        nn.init.normal_(self.cls_pred.weight, std=0.01)
        nn.init.zeros_(self.cls_pred.bias)
        if box_regression:
            self.box_pred = nn.Linear(in_features, 4 * num_classes)
            nn.init.normal_(self.box_pred.weight, std=0.001)
            nn.init.zeros_(self.box_pred.bias)
        ### END SOLUTION

    def roi_features(self, feats_per_fpn_level, boxes_per_image):
        """RoIAlign of every box on its FPN level (assign_fpn_levels).

        boxes_per_image: list of B tensors (N_b, 4). Returns (sum N_b, C, *roi_size), image-major.
        """
        boxes = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b[:, :4]], dim=1)
                           for i, b in enumerate(boxes_per_image)], dim=0)
        levels = assign_fpn_levels(boxes[:, 1:])
        order, pieces = [], []
        for level, feats in feats_per_fpn_level.items():
            sel = (levels == int(level[1:])).nonzero().squeeze(1)
            if sel.numel():
                pieces.append(roi_align(feats, boxes[sel], self.roi_size,
                                        spatial_scale=1.0 / self.backbone.fpn_strides[level],
                                        sampling_ratio=self.sampling_ratio, aligned=True))
                order.append(sel)
        if not pieces:
            some = feats_per_fpn_level["p3"]
            return some.new_zeros((0, some.shape[1], *self.roi_size))
        return _unpermute(torch.cat(pieces), torch.cat(order))

    def forward(self, images: torch.Tensor, gt_boxes=None, test_score_thresh=None,
                test_nms_thresh=None):
        feats_per_fpn_level = self.backbone(images)
        output_dict = self.rpn(feats_per_fpn_level, self.backbone.fpn_strides,
                               gt_boxes if self.training else None, image_size=tuple(images.shape[-2:]))
        proposals_per_fpn_level = output_dict["proposals"]
        if self.training:
            proposals_per_fpn_level = mix_gt_with_proposals(proposals_per_fpn_level, gt_boxes)
        num_images = images.shape[0]
        proposals = [torch.cat([proposals_per_fpn_level[level][b] for level in proposals_per_fpn_level])
                     for b in range(num_images)]

        if not self.training:
            outputs = self._detect(images, feats_per_fpn_level, proposals, test_score_thresh,
                                   test_nms_thresh)
            return outputs[0] if num_images == 1 else outputs

        loss_cls, loss_box = None, None
        ### BEGIN SOLUTION
        ### HINT: match each image's proposals (mixed with GT) at IoU (0.5, 0.5), sample with sample_rpn_training(matched, self.batch_size_per_image, self.fg_fraction), roi features of the sampled boxes through self.stem; loss_cls = cross-entropy of self.cls_pred with class + 1 (background 0); with box_regression, loss_box = L1 between the foreground's own-class deltas of self.box_pred and rcnn_get_deltas_from_anchors(sampled box, its GT) * ROI_BOX_WEIGHTS, summed and divided by the number of sampled boxes (without box_regression loss_box stays None).
        sampled_boxes, labels, matched_boxes = [], [], []
        for b in range(num_images):
            matched = rcnn_match_anchors_to_gt(proposals[b], gt_boxes[b], (0.5, 0.5),
                                               allow_low_quality_matches=False)
            fg_idx, bg_idx = sample_rpn_training(matched, self.batch_size_per_image, self.fg_fraction)
            idx = torch.cat([fg_idx, bg_idx])
            sampled_boxes.append(proposals[b][idx])
            lab = (matched[idx, 4] + 1).long()  # background rows are matched to -1: label 0
            labels.append(lab)
            matched_boxes.append(matched[idx, :4])
        hidden = self.stem(self.roi_features(feats_per_fpn_level, sampled_boxes))
        labels = torch.cat(labels)
        loss_cls = F.cross_entropy(self.cls_pred(hidden), labels)
        if self.box_regression:
            fg = (labels > 0).nonzero().squeeze(1)
            deltas = self.box_pred(hidden).view(-1, self.num_classes, 4)
            pred = deltas[fg, labels[fg] - 1]
            weights = hidden.new_tensor(ROI_BOX_WEIGHTS)
            target = rcnn_get_deltas_from_anchors(torch.cat(sampled_boxes)[fg],
                                                  torch.cat(matched_boxes)[fg]) * weights
            loss_box = F.l1_loss(pred, target, reduction="sum") / max(labels.numel(), 1)
        ### END SOLUTION
        out = {"loss_rpn_obj": output_dict["loss_rpn_obj"], "loss_rpn_box": output_dict["loss_rpn_box"],
               "loss_cls": loss_cls}
        if loss_box is not None:
            out["loss_box"] = loss_box
        return out

    @torch.no_grad()
    def detect_batch(self, images, test_score_thresh=None, test_nms_thresh=None):
        """Eval-mode detections for a batch of any size (backbone, FPN and RPN run batched).

        Returns a list of B tuples (pred_boxes, pred_classes, pred_scores), as `forward` gives
        for one image.
        """
        feats = self.backbone(images)
        proposals_per_fpn_level = self.rpn(feats, self.backbone.fpn_strides, None,
                                           image_size=tuple(images.shape[-2:]))["proposals"]
        proposals = [torch.cat([proposals_per_fpn_level[level][b] for level in proposals_per_fpn_level])
                     for b in range(images.shape[0])]
        return self._detect(images, feats, proposals, test_score_thresh, test_nms_thresh)

    def _detect(self, images, feats, proposals, test_score_thresh, test_nms_thresh):
        """ROI head + `inference` for each image of a batch (eval mode): list of tuples."""
        outputs = []
        for b in range(images.shape[0]):
            feats_b = {level: f[b:b + 1] for level, f in feats.items()}
            hidden = self.stem(self.roi_features(feats_b, [proposals[b]]))
            deltas = self.box_pred(hidden) if self.box_regression else None
            outputs.append(self.inference(images[b:b + 1], proposals[b], self.cls_pred(hidden),
                                          test_score_thresh, test_nms_thresh, pred_box_deltas=deltas))
        return outputs

    @torch.no_grad()
    def inference(self, images, proposals, pred_cls_logits, test_score_thresh=None,
                  test_nms_thresh=None, pred_box_deltas=None):
        """Detections of one image.

        Args:
            images: (1, 3, H, W) (for the size to clip to).
            proposals: (N, 4), a list with one (N, 4) tensor, or {"p3": [ (N_l, 4) ], ...}.
            pred_cls_logits: (N, num_classes + 1), class 0 = background.
            test_score_thresh: keep (proposal, class) pairs with softmax score > this (default 0.5).
            test_nms_thresh: IoU threshold of class-specific NMS (default 0.5).
            pred_box_deltas: (N, 4 * num_classes) or None (then the proposal is the box).
        Returns:
            pred_boxes (M, 4), pred_classes (M,) long in [0, num_classes), pred_scores (M,),
            sorted by score, at most detections_per_image.
        """
        test_score_thresh = 0.5 if test_score_thresh is None else test_score_thresh
        test_nms_thresh = 0.5 if test_nms_thresh is None else test_nms_thresh
        if isinstance(proposals, dict):
            proposals = torch.cat([props[0] for props in proposals.values()], dim=0)
        elif isinstance(proposals, (list, tuple)):
            proposals = torch.cat(list(proposals), dim=0)
        H, W = images.shape[-2:]
        pred_boxes, pred_classes, pred_scores = None, None, None
        ### BEGIN SOLUTION
        ### HINT: softmax, drop the background column, keep scores > threshold (proposal i, class c), decode class-specific deltas if any, clip, class_spec_nms.
        probs = F.softmax(pred_cls_logits, dim=1)[:, 1:]  # (N, C)
        prop_idx, cls_idx = (probs > test_score_thresh).nonzero(as_tuple=True)
        scores = probs[prop_idx, cls_idx]
        boxes = proposals[prop_idx]
        if pred_box_deltas is not None:
            deltas = pred_box_deltas.view(-1, self.num_classes, 4)[prop_idx, cls_idx]
            boxes = rcnn_apply_deltas_to_anchors(deltas / deltas.new_tensor(ROI_BOX_WEIGHTS), boxes)
        boxes = torch.stack([boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H),
                             boxes[:, 2].clamp(0, W), boxes[:, 3].clamp(0, H)], dim=1)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, cls_idx = boxes[ok], scores[ok], cls_idx[ok]
        if scores.numel() > 1000:  # bound the NMS work: the 1000 best (proposal, class) pairs
            top = scores.topk(1000).indices
            boxes, scores, cls_idx = boxes[top], scores[top], cls_idx[top]
        keep = class_spec_nms(boxes, scores, cls_idx, test_nms_thresh)[: self.detections_per_image]
        pred_boxes, pred_classes, pred_scores = boxes[keep], cls_idx[keep], scores[keep]
        ### END SOLUTION
        return pred_boxes, pred_classes, pred_scores
