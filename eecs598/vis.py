"""Visualization helpers: images, dataset grids (more come with later assignments)."""
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
