"""Visualization helpers: images, dataset grids, training curves, detections, attention maps."""
import numpy as np
import torch


def tensor_to_image(tensor):
    """(3, H, W) float tensor in [0, 1] -> (H, W, 3) uint8 numpy array."""
    tensor = tensor.detach().mul(255).add_(0.5).clamp_(0, 255)
    return tensor.permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def visualize_dataset(X_data, y_data, samples_per_class, class_list):
    """A grid image: `samples_per_class` random images of each class, one row per class.

    X_data: (N, 3, H, W) in [0, 1]; y_data: (N,) int labels; class_list: names, index = label.
    The class name is written at the left of each row. Returns an (rows*H', cols*W', 3)
    uint8 array ready for `plt.imshow`.
    """
    from PIL import Image, ImageDraw

    samples = []
    for y, cls in enumerate(class_list):
        idxs = (y_data == y).nonzero().view(-1)
        row = [torch.zeros_like(X_data[0]) for _ in range(2)]  # room for the label
        for _ in range(samples_per_class):
            if len(idxs):
                row.append(X_data[idxs[torch.randint(len(idxs), (1,)).item()]])
        samples.append(row)
    width = max(len(r) for r in samples)
    rows = [torch.cat([*r, *[torch.zeros_like(X_data[0])] * (width - len(r))], dim=2) for r in samples]
    grid = tensor_to_image(torch.cat(rows, dim=1).float())
    image = Image.fromarray(np.ascontiguousarray(grid))
    draw = ImageDraw.Draw(image)
    height = X_data.shape[2]
    for y, cls in enumerate(class_list):
        draw.text((2, y * height + max(height // 2 - 5, 0)), str(cls)[:10], fill=(255, 255, 255))
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------
# Training curves and weight grids (A2, A3 and later assignments share these)
# ---------------------------------------------------------------------------------------------
def _stat(stats, name):
    """Read `name` from a stats dict or from an object with that attribute (e.g. a Solver)."""
    return stats[name] if isinstance(stats, dict) else getattr(stats, name)


def plot_stats(stat_dict):
    """Loss history (left) and train / val accuracy per epoch (right) of one training run.

    stat_dict: a dict with loss_history, train_acc_history, val_acc_history, or a trained Solver.
    """
    import matplotlib.pyplot as plt

    plt.subplot(1, 2, 1)
    plt.plot(_stat(stat_dict, "loss_history"), "o", markersize=2)
    plt.title("Loss history")
    plt.xlabel("Iteration")
    plt.ylabel("Loss")
    plt.subplot(1, 2, 2)
    plt.plot(_stat(stat_dict, "train_acc_history"), "o-", label="train")
    plt.plot(_stat(stat_dict, "val_acc_history"), "o-", label="val")
    plt.title("Classification accuracy history")
    plt.xlabel("Epoch")
    plt.ylabel("Classification accuracy")
    plt.legend()
    plt.gcf().set_size_inches(14, 4)
    plt.show()


def plot_acc_curves(stat_dict):
    """Train (left) and val (right) accuracy curves of several runs: {label: stats dict or Solver}."""
    import matplotlib.pyplot as plt

    for position, name, title in ((1, "train_acc_history", "Train"), (2, "val_acc_history", "Validation")):
        plt.subplot(1, 2, position)
        for key, stats in stat_dict.items():
            plt.plot(_stat(stats, name), label=str(key))
        plt.title(f"{title} accuracy history")
        plt.xlabel("Epoch")
        plt.ylabel("Classification accuracy")
    plt.legend(fontsize=9)
    plt.gcf().set_size_inches(14, 5)
    plt.show()


def visualize_grid(Xs, ubound=255.0, padding=1):
    """Lay out a batch of images as one grid image.

    Xs: (N, H, W, C) tensor. Each tile is min-max scaled to [0, ubound] on its own; tiles are
    separated by `padding` pixels. Returns a (grid_H, grid_W, C) float64 tensor on the CPU.
    """
    import math

    Xs = Xs.detach().to("cpu", torch.float64)
    N, H, W, C = Xs.shape
    grid_size = int(math.ceil(math.sqrt(N)))
    grid = torch.zeros((H * grid_size + padding * (grid_size - 1),
                        W * grid_size + padding * (grid_size - 1), C), dtype=torch.float64)
    for idx in range(N):
        row, col = divmod(idx, grid_size)
        y0, x0 = row * (H + padding), col * (W + padding)
        img = Xs[idx]
        low, high = img.min(), img.max()
        grid[y0:y0 + H, x0:x0 + W] = ubound * (img - low) / (high - low).clamp(min=1e-12)
    return grid


def show_net_weights(net_or_W1):
    """Show first-layer weights W1 (3072, H) of a CIFAR-10 net (or W1 itself) as H 32x32 images."""
    import matplotlib.pyplot as plt

    W1 = net_or_W1.params["W1"] if hasattr(net_or_W1, "params") else net_or_W1
    W1 = W1.detach().to("cpu").reshape(3, 32, 32, -1).permute(3, 1, 2, 0)
    plt.imshow(visualize_grid(W1, padding=3).to(torch.uint8).numpy())
    plt.gca().axis("off")
    plt.show()


# ----------------------------------------------------------------------------- detection (A5)
def _to_list(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x).tolist()


def _draw_box(ax, box, label, color, linewidth=2, text_color="white", alpha=0.8):
    """One (x1, y1, x2, y2) box outline on `ax`, with `label` (if any) on a patch of its colour
    above the top-left corner."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box[:4]
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth))
    if label is not None:
        ax.text(x1, y1, label, fontsize=8, color=text_color, verticalalignment="bottom",
                bbox={"facecolor": color, "alpha": alpha, "pad": 1, "edgecolor": "none"})


def draw_detections(image, boxes, classes, scores=None, class_names=None, ax=None, title=None,
                    score_format="{:.2f}", linewidth=2):
    """Draw (x1, y1, x2, y2) boxes with class labels (and scores) on an image.

    Args:
        image: (3, H, W) float tensor in [0, 1] (un-normalized), or an (H, W, 3) uint8 array.
        boxes: (M, 4) in image pixels; classes: (M,) class indices; scores: optional (M,).
        class_names: list/dict index -> name (default: the index).
        ax: matplotlib Axes to draw on (default: a new figure).
    Returns:
        the Axes (one Rectangle patch and one text label per box).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    if torch.is_tensor(image):
        image = tensor_to_image(image.detach().cpu().float())
    ax.imshow(image)
    boxes, classes, scores = _to_list(boxes), _to_list(classes), _to_list(scores)
    cmap = plt.get_cmap("tab20")
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        cls = int(cls)
        name = class_names[cls] if class_names is not None else str(cls)
        label = name if scores is None else f"{name} {score_format.format(scores[k])}"
        _draw_box(ax, box, label, cmap(cls % 20), linewidth)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def detection_visualizer(img, idx_to_class, bbox=None, pred=None, points=None, ax=None):
    """The course's detection figure: ground-truth boxes in red, predictions in green with their
    scores, optional points as dots.

    Args:
        img: (3, H, W) tensor (float in [0, 1] or uint8), or an (H, W, 3) uint8 array / tensor.
        idx_to_class: dict or list, class index -> name.
        bbox: (N, 4) or (N, 5) ground-truth boxes (x1, y1, x2, y2[, class]).
        pred: (M, 6) predictions (x1, y1, x2, y2, class, score).
        points: (P, 2) (x, y) locations, e.g. FPN location centers.
    Returns:
        the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    if torch.is_tensor(img):
        img = img.detach().cpu()
        if img.shape[0] == 3:  # (3, H, W): uint8 in [0, 255] or float in [0, 1]
            img = tensor_to_image(img.float() / 255 if img.dtype == torch.uint8 else img.float())
        else:
            img = img.numpy()
    ax.imshow(img)
    for rows, color in ((bbox, "red"), (pred, "lime")):
        for row in _to_list(rows) if rows is not None else []:
            label = None
            if len(row) > 4:
                label = str(idx_to_class[int(row[4])]) + (f" {row[5]:.2f}" if len(row) > 5 else "")
            _draw_box(ax, row, label, color, text_color="black", alpha=0.7)
    if points is not None:
        points = np.asarray(_to_list(points), dtype=float).reshape(-1, 2)
        ax.scatter(points[:, 0], points[:, 1], s=4, c="yellow")
    ax.set_axis_off()
    return ax


def attention_visualizer(img, attn_weights, token):
    """The course's attention figure: the attention map (Hf, Wf), resized to the image by
    nearest neighbour, blended 50/50 over the image (3, H, W) (uint8 in [0, 255], or float in
    [0, 1]), under a 25-pixel black banner that names `token`.
    Returns an (H + 25, W, 3) float32 RGB array in [0, 1] for `plt.imshow`."""
    from PIL import Image, ImageDraw

    img = img.detach().cpu()
    img = img.float().div(255.0) if img.dtype == torch.uint8 else img.float()
    _, H, W = img.shape
    attn = torch.nn.functional.interpolate(attn_weights.detach().cpu().float()[None, None], size=(H, W),
                                           mode="nearest")[0, 0]
    blended = 0.5 * img.permute(1, 2, 0) + 0.5 * attn[:, :, None]
    banner = Image.new("RGB", (W, 25))
    ImageDraw.Draw(banner).text((10, 5), str(token), fill=(255, 255, 255))
    banner = torch.from_numpy(np.asarray(banner, dtype=np.float32) / 255.0)
    return torch.cat([banner, blended]).clamp(0, 1).numpy()


def plot_pr_curves(result, classes=None, ax=None, title=None):
    """Precision-recall curves from `eecs598.detection_eval.evaluate_detections`' result.

    One line per class that has ground truth (or only `classes`), labelled with its AP.
    Returns the Axes.
    """
    import math

    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in result["pr_curves"].items():
        ap = result["ap_per_class"][name]
        if (classes is not None and name not in classes) or math.isnan(ap) or len(recall) == 0:
            continue
        ax.plot(recall, precision, label=f"{name} ({100 * ap:.1f})", linewidth=1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"PR curves, mAP@{result['iou_threshold']} = {100 * result['map']:.1f}%")
    if ax.lines:
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    return ax
